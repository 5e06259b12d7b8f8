// The Topics page: "Find topics" posts to /api/topics and reloads the page on the new set.
// Messages from the server are set with textContent, never as HTML.
(function () {
  "use strict";
  const form = document.getElementById("find-topics");
  const status = document.getElementById("find-status");
  if (!form || !status) return;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const body = { name: String(data.get("name") || "topics"), seed: Number(data.get("seed") || 0) };
    if (data.get("k")) body.k = Number(data.get("k"));
    const button = form.querySelector("button");
    button.disabled = true;
    status.textContent = "finding topics…";
    try {
      const response = await fetch("/api/topics", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
      });
      const answer = await response.json();
      if (!response.ok) {
        status.textContent = answer.error || ("failed: " + response.status);
        return;
      }
      status.textContent = answer.topics.length + " topics found";
      window.location.assign("/topics?" + new URLSearchParams({ set: answer.set }));
    } catch (e) {
      status.textContent = "failed: " + e;
    } finally {
      button.disabled = false;
    }
  });
})();
