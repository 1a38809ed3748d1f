// A benchmark's page: while it runs, polls `GET /api/agents/{agent}/benchmarks/{id}` for the
// progress (and the server's table, when more is done); once it stops, shows the final page.
// Cancel is `POST …/cancel`.
import { api, toast } from "/static/app.js";

const section = document.getElementById("bench");
const errorBox = document.getElementById("bench-error");
const POLL_MS = 700;

const path = section
  ? `/api/agents/${encodeURIComponent(section.dataset.agent)}/benchmarks/${encodeURIComponent(section.dataset.id)}`
  : null;
let shown = Number(document.getElementById("progress")?.value || 0);

/** The table as the server draws it (one formatting, the page's). */
async function refreshTable() {
  const response = await fetch(window.location.href, { credentials: "same-origin", headers: { accept: "text/html" } });
  if (!response.ok) return;
  const page = new DOMParser().parseFromString(await response.text(), "text/html");
  const fresh = page.querySelector("#bench-table tbody");
  const current = document.querySelector("#bench-table tbody");
  if (fresh && current) current.replaceWith(document.importNode(fresh, true));
}

async function poll() {
  try {
    const state = await api("GET", path);
    const done = Number(state.done);
    const progress = document.getElementById("progress");
    progress.max = state.total;
    progress.value = done;
    progress.textContent = `${done} / ${state.total}`;
    document.getElementById("progress-text").textContent = `${done} / ${state.total}`;
    const status = state.benchmark.status;
    document.getElementById("status").textContent = status;
    if (status !== "running") {
      window.location.reload();
      return;
    }
    if (done !== shown) {
      shown = done;
      await refreshTable();
    }
  } catch (e) {
    errorBox.textContent = e.message;
  }
  setTimeout(poll, POLL_MS);
}

document.getElementById("cancel")?.addEventListener("click", async (event) => {
  errorBox.textContent = "";
  event.target.disabled = true;
  try {
    await api("POST", `${path}/cancel`, {});
    toast("Cancelling");
  } catch (e) {
    errorBox.textContent = e.message;
    event.target.disabled = false;
  }
});

if (section && section.dataset.status === "running") setTimeout(poll, POLL_MS);
