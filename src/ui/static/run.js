// The run page's actions, over the JSON API: share and revoke the share link, replay the run.
import { api, toast } from "/static/app.js";

const actions = document.getElementById("run-actions");
const runId = actions ? actions.dataset.run : null;
const errorBox = document.getElementById("action-error");
const shareBox = document.getElementById("share-box");
const shareUrl = document.getElementById("share-url");

function fail(error) {
  errorBox.textContent = error.message;
}

document.getElementById("share")?.addEventListener("click", async () => {
  errorBox.textContent = "";
  try {
    const share = await api("POST", `/api/runs/${encodeURIComponent(runId)}/share`, {});
    shareUrl.value = share.url;
    shareBox.classList.remove("hidden");
    shareUrl.focus();
    shareUrl.select();
    toast("Share link ready");
  } catch (e) { fail(e); }
});

document.getElementById("copy-share")?.addEventListener("click", async () => {
  try { await navigator.clipboard.writeText(shareUrl.value); toast("Copied"); } catch { toast(shareUrl.value); }
});

document.getElementById("revoke")?.addEventListener("click", async () => {
  errorBox.textContent = "";
  try {
    await api("DELETE", `/api/runs/${encodeURIComponent(runId)}/share`);
    shareUrl.value = "";
    shareBox.classList.add("hidden");
    toast("Share link revoked");
  } catch (e) { fail(e); }
});

document.getElementById("replay")?.addEventListener("submit", async (event) => {
  event.preventDefault();
  errorBox.textContent = "";
  const model = document.getElementById("replay-model").value.trim();
  const button = event.target.querySelector("button");
  button.disabled = true;
  button.textContent = "Replaying…";
  try {
    const answer = await api("POST", `/api/runs/${encodeURIComponent(runId)}/replay`, { model });
    window.location.href = `/runs/${encodeURIComponent(answer.run_id)}`;
  } catch (e) {
    fail(e);
    button.disabled = false;
    button.textContent = "Replay";
  }
});

// Reviewing the run's output, over `POST /api/agents/{agent}/reviews`: a person's review
// replaces the AI reviewer's, and the page shows the one kept.
document.getElementById("review-form")?.addEventListener("submit", async (event) => {
  event.preventDefault();
  const box = document.getElementById("review-error");
  box.textContent = "";
  const verdict = event.submitter?.value;
  if (!verdict) return;
  const agent = document.getElementById("review").dataset.agent;
  const comment = document.getElementById("review-comment").value.trim();
  const body = { run_id: runId, verdict };
  if (comment) body.comment = comment;
  for (const b of event.target.querySelectorAll("button")) b.disabled = true;
  try {
    await api("POST", `/api/agents/${encodeURIComponent(agent)}/reviews`, body);
    toast(`Reviewed ${verdict}`);
    window.location.reload();
  } catch (e) {
    box.textContent = e.message;
    for (const b of event.target.querySelectorAll("button")) b.disabled = false;
  }
});
