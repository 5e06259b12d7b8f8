// The duplicates page: mark which photo of a group to keep. Text is always set with textContent.
"use strict";

function showRoles(section) {
  // Marked photos are kept; with none marked, the suggested keeper is.
  const cards = [...section.querySelectorAll(".card.dup")];
  const anyMarked = cards.some((c) => c.classList.contains("is-marked"));
  for (const card of cards) {
    const kept = anyMarked ? card.classList.contains("is-marked") : card.dataset.suggested === "1";
    card.classList.toggle("is-keeper", kept);
    card.querySelector(".role").textContent = kept ? "keep" : "extra";
  }
}

async function mark(button) {
  const card = button.closest(".card.dup");
  const keep = button.dataset.keep === "true";
  button.disabled = true;
  try {
    const response = await fetch("/api/duplicates/keepers", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ file_id: Number(card.dataset.id), keep: keep }),
    });
    const body = await response.json();
    if (!response.ok) {
      throw new Error(body.error || response.statusText);
    }
    card.classList.toggle("is-marked", keep);
    button.classList.toggle("chosen", keep);
    button.dataset.keep = keep ? "false" : "true";
    button.textContent = keep ? "unmark" : "keep this";
    showRoles(card.closest(".dup-group"));
  } catch (error) {
    button.textContent = "failed: " + error.message;
  } finally {
    button.disabled = false;
  }
}

document.addEventListener("click", (event) => {
  const button = event.target.closest("button.keep");
  if (button) {
    mark(button);
  }
});
