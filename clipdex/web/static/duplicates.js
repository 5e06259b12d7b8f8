// The duplicates page: mark which photo of a group to keep, and wait for the groups while they are
// found in the background. Text is always set with textContent.
"use strict";

async function poll(status) {
  // Ask how far the search got until the groups are ready, then show them.
  try {
    const response = await fetch("/api/duplicates/status");
    const body = await response.json();
    if (body.state === "ready") {
      window.location.reload();
      return;
    }
    if (body.state === "failed") {
      status.textContent = "Finding duplicates failed: " + body.error;
      return;
    }
    status.textContent = "Finding duplicates… " + (body.total ? body.stage + " " + body.done + " of " + body.total : "");
  } catch (error) {
    status.textContent = "Finding duplicates… (the server did not answer: " + error.message + ")";
  }
  setTimeout(() => poll(status), Number(status.dataset.poll) || 1000);
}

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

const dupStatus = document.getElementById("dup-status");
if (dupStatus && dupStatus.dataset.state === "finding") {
  setTimeout(() => poll(dupStatus), Number(dupStatus.dataset.poll) || 1000);
}
