// The label page's learning panel: "learn from N corrections", the cross-validated gain, and the
// photos the set is least sure of, each correctable in place (app.js records the click).
// Text from the server is always set with textContent, never as HTML.
(function () {
  "use strict";

  const panel = document.getElementById("learning");
  if (!panel) return;
  const api = "/api/labels/" + encodeURIComponent(panel.dataset.set);
  const status = document.getElementById("learn-status");
  const button = document.getElementById("learn-button");
  const link = document.getElementById("learned-link");
  const summary = document.getElementById("learn-summary");
  const table = document.getElementById("learn-scores");
  const notes = document.getElementById("learn-notes");
  const next = document.getElementById("learn-next");
  const ROWS = [["zero_shot", "zero-shot"], ["probe", "linear probe"], ["combined", "zero-shot + corrections"],
    ["baseline", "majority class"], ["selection", "chosen weight (selection score)"]];

  const PRIORS = { "text-encoder": "the prompts, encoded again", "stored-probabilities":
    "the stored zero-shot probabilities (the model's weights are not here)" };

  function number(x) { return String(Number(Number(x).toPrecision(3))); }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function card(photo, labels, set) {
    const div = el("div", "card labelled");
    div.dataset.id = photo.id;
    div.dataset.set = set;
    const a = el("a");
    a.href = "/photo/" + encodeURIComponent(photo.id);
    const img = el("img");
    img.src = "/thumb/" + encodeURIComponent(photo.id);
    img.alt = photo.name;
    img.loading = "lazy";
    a.append(img);
    const meta = el("span", "meta");
    meta.append(el("b", "", photo.label), " " + photo.prob.toFixed(2) + " ",
      el("span", "margin", "margin " + photo.margin.toFixed(3)), el("span", "name", " " + photo.name));
    const fix = el("span", "fix");
    labels.forEach((label) => {
      const b = el("button", "correct", label);
      b.type = "button";
      b.dataset.label = label;
      b.title = "mark as " + label;
      fix.append(b);
    });
    div.append(a, meta, fix, el("span", "corrected-note"));
    return div;
  }

  function showScores(learned) {
    const tbody = table.querySelector("tbody");
    tbody.replaceChildren();
    const metrics = (learned && learned.metrics) || {};
    ROWS.forEach(([key, name]) => {
      const s = metrics[key];
      if (!s) return;
      const tr = el("tr");
      tr.dataset.row = key;
      tr.append(el("th", "", name), el("td", "", s.accuracy.toFixed(3)),
        el("td", "", s.balanced_accuracy.toFixed(3)), el("td", "", s.macro_f1.toFixed(3)));
      tbody.append(tr);
    });
    table.hidden = !tbody.children.length;
    summary.textContent = "";
    if (!learned) return;
    const side = "; zero-shot side: " + (PRIORS[learned.prior] || learned.prior) + ".";
    if (learned.source === "corrections" && metrics.zero_shot && metrics.combined) {
      // nested: the weight chosen inside each outer fold, so the gain is an estimate for new photos
      const before = metrics.zero_shot.balanced_accuracy, after = metrics.combined.balanced_accuracy;
      const gain = after - before;
      summary.textContent = "Cross-validated (nested) on " + metrics.combined.count + " corrected photos: " +
        "balanced accuracy " + before.toFixed(3) + " (zero-shot) → " + after.toFixed(3) + " (combined), " +
        (gain >= 0 ? "+" : "") + gain.toFixed(3) + "; the stored probe's weight " + learned.weight + ", C " +
        number(learned.C) + (metrics.selection ? " (selection score " +
        metrics.selection.balanced_accuracy.toFixed(3) + " on the folds it was chosen on)" : "") + side;
    } else if (learned.source === "corrections" && metrics.zero_shot && metrics.selection) {
      summary.textContent = "Selection score on " + metrics.selection.count + " corrected photos (the weight " +
        "was chosen on these same folds: not an estimate; 3 corrections a label give one): balanced accuracy " +
        metrics.zero_shot.balanced_accuracy.toFixed(3) + " (zero-shot) → " +
        metrics.selection.balanced_accuracy.toFixed(3) + "; the probe's weight " + learned.weight + ", C " +
        number(learned.C) + side;
    } else if (learned.source === "table") {
      summary.textContent = "Learned from column " + learned.target + " of " + learned.table +
        (learned.levels ? " (" + learned.levels + ")" : "") + "; cross-validated, " + learned.folds + "-fold, C " +
        number(learned.C) + ".";
    }
  }

  function showState(state, rebuildNext) {
    panel.hidden = false;
    const counts = state.corrections || {};
    const total = Object.values(counts).reduce((a, b) => a + b, 0);
    const per = Object.entries(counts).map(([label, n]) => label + " " + n).join(", ");
    if (state.source) {
      status.textContent = total + " corrections" + (per ? " (" + per + ")" : "") + "." +
        (state.needs ? " To learn, " + state.needs + "." : "");
      button.style.display = "";
      button.disabled = !state.can_learn;
      button.textContent = "Learn from " + total + " corrections";
    } else {
      status.textContent = state.needs || "";
      button.style.display = "none";  // the stylesheet's button rule would show a [hidden] one
    }
    if (state.learned_set && state.learned_set !== state.set) {
      link.hidden = false;
      link.href = "/labels/" + encodeURIComponent(state.learned_set);
      link.textContent = "see " + state.learned_set;
    } else if (state.source && state.source !== state.set) {
      link.hidden = false;
      link.href = "/labels/" + encodeURIComponent(state.source);
      link.textContent = "back to zero-shot " + state.source;
    }
    showScores(state.learned);
    if (rebuildNext) {
      next.replaceChildren(...state.next.map((p) => card(p, state.labels, state.correct_in)));
    }
  }

  async function load(rebuildNext) {
    const response = await fetch(api + "/learning");
    if (response.ok) showState(await response.json(), rebuildNext);
  }

  button.addEventListener("click", async () => {
    button.disabled = true;
    const label = button.textContent;
    button.textContent = "Learning…";
    notes.textContent = "";
    const response = await fetch(api + "/learn", { method: "POST", headers: { "Content-Type": "application/json" },
      body: "{}" });
    const data = await response.json();
    button.textContent = label;
    if (!response.ok) {
      notes.textContent = data.error;
      button.disabled = false;
      return;
    }
    showState(data.state, true);
    notes.textContent = (data.learned.notes || []).join(" ");
  });

  // A correction made in the list (app.js records it) updates the counts and the button.
  new MutationObserver((changes) => {
    if (changes.some((c) => c.target.classList && c.target.classList.contains("is-corrected"))) load(false);
  }).observe(next, { attributes: true, subtree: true, attributeFilter: ["class"] });

  load(true);
})();
