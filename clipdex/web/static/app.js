// clipdex's pages: infinite scroll, drag-and-drop search by example, one-click corrections.
// Text from the server is always set with textContent, never as HTML.
(function () {
  "use strict";

  // A result card; a moment of a video (r.t set) shows "video.mp4 @ 0:01:23" and opens its
  // player page with the query, whose timeline then shows the video's other moments for it.
  function card(r, q) {
    const moment = r.t !== undefined && r.t !== null;
    const a = document.createElement("a");
    a.className = moment ? "card moment" : "card";
    a.href = "/photo/" + encodeURIComponent(r.id) + (moment && q ? "?" + new URLSearchParams({ q: q }) : "");
    a.dataset.id = r.id;
    if (moment) { a.dataset.t = r.t; a.dataset.video = r.video_id; }
    const img = document.createElement("img");
    img.src = "/thumb/" + encodeURIComponent(r.id);
    img.alt = moment ? r.moment : r.name;
    img.loading = "lazy";
    const meta = document.createElement("span");
    meta.className = "meta";
    const score = document.createElement("b");
    score.className = "score";
    score.textContent = r.score.toFixed(3);
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = " " + (moment ? r.moment : r.name);
    meta.append(score, name);
    a.append(img);
    if (moment) {  // the moment's time over its frame: the name below may be cut short
      const when = document.createElement("span");
      when.className = "when";
      when.textContent = r.moment.split(" @ ").pop();
      a.append(when);
    }
    a.append(meta);
    return a;
  }

  // More results as the page scrolls (the "More results" link works without JS).
  const grid = document.getElementById("results");
  const more = document.getElementById("more");
  if (grid && more && "IntersectionObserver" in window) {
    let loading = false;
    const pageSize = Number(grid.dataset.pageSize);
    const observer = new IntersectionObserver(async (entries) => {
      if (!entries.some((e) => e.isIntersecting) || loading) return;
      loading = true;
      const like = grid.dataset.like;
      // The page's filters (folder, dates, label), already in URL form, go with every request.
      const params = new URLSearchParams(grid.dataset.filters || "");
      if (!like) params.set("q", grid.dataset.q);
      params.set("offset", grid.dataset.next);
      params.set("k", pageSize);
      const response = await fetch((like ? "/api/similar/" + encodeURIComponent(like) + "?" : "/api/search?") + params);
      if (response.ok) {
        const data = await response.json();
        data.results.forEach((r) => grid.append(card(r, like ? "" : grid.dataset.q)));
        grid.dataset.next = Number(grid.dataset.next) + data.results.length;
        if (data.results.length < pageSize) { observer.disconnect(); more.parentElement.remove(); }
      }
      loading = false;
    }, { rootMargin: "600px" });
    observer.observe(more);
  }

  // Search by example: choose or drop a photo.
  const drop = document.getElementById("drop");
  const file = document.getElementById("file");
  const uploadForm = document.getElementById("upload-form");
  if (drop && file && uploadForm) {
    file.addEventListener("change", () => { if (file.files.length) uploadForm.submit(); });
    ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
    ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.remove("over"); }));
    drop.addEventListener("drop", (e) => {
      if (e.dataTransfer.files.length) { file.files = e.dataTransfer.files; uploadForm.submit(); }
    });
  }

  // Changing the label set refreshes the label choices; choosing a folder searches in it at once.
  const searchForm = document.getElementById("search-form");
  const setSelect = document.getElementById("set");
  if (setSelect) setSelect.addEventListener("change", () => {
    const label = document.getElementById("label");
    if (label) label.value = "";
    searchForm.requestSubmit();
  });
  ["folder", "only"].forEach((id) => {
    const select = document.getElementById(id);
    if (select) select.addEventListener("change", () => searchForm.requestSubmit());
  });

  // Filters left empty stay out of the URL (a search link keeps only what was chosen).
  if (searchForm) searchForm.addEventListener("submit", () => {
    searchForm.querySelectorAll("#filters select, #filters input").forEach((field) => {
      if (!field.value) field.disabled = true;
    });
    window.addEventListener("pageshow", () => searchForm.querySelectorAll("[disabled]").forEach((f) => { f.disabled = false; }), { once: true });
  });

  // One click records a correction (ground truth) for a photo.
  document.addEventListener("click", async (event) => {
    const button = event.target.closest("button.correct");
    if (!button) return;
    const holder = button.closest("[data-set]");
    const response = await fetch("/api/labels/" + encodeURIComponent(holder.dataset.set) + "/corrections", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ file_id: Number(holder.dataset.id), label: button.dataset.label }),
    });
    if (!response.ok) return;
    holder.querySelectorAll("button.correct").forEach((b) => b.classList.toggle("chosen", b === button));
    holder.classList.add("is-corrected");
    let note = holder.querySelector(".corrected-note, .corrected");
    if (!note) { note = document.createElement("span"); note.className = "corrected"; holder.querySelector("h3").append(note); }
    note.textContent = "corrected: " + button.dataset.label;
  });
})();
