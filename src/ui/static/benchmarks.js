// Starts a benchmark from the Benchmarks page, over `POST /api/agents/{agent}/benchmarks`,
// then opens it.
import { api } from "/static/app.js";

const form = document.getElementById("start");
const list = document.getElementById("candidates");
const errorBox = document.getElementById("start-error");
const MAX_CANDIDATES = 8;

function rows() {
  return [...list.querySelectorAll(".candidate")];
}

function refresh() {
  const n = rows().length;
  document.getElementById("add-candidate").disabled = n >= MAX_CANDIDATES;
  for (const button of list.querySelectorAll(".remove-candidate")) button.disabled = n <= 1;
}

document.getElementById("add-candidate")?.addEventListener("click", () => {
  const all = rows();
  const copy = all[all.length - 1].cloneNode(true);
  copy.querySelector('input[name="model"]').value = "";
  list.append(copy);
  refresh();
});

list?.addEventListener("click", (event) => {
  const button = event.target.closest(".remove-candidate");
  if (!button || rows().length <= 1) return;
  button.closest(".candidate").remove();
  refresh();
});

form?.addEventListener("submit", async (event) => {
  event.preventDefault();
  errorBox.textContent = "";
  const candidates = rows().map((row) => {
    const candidate = {};
    const version = row.querySelector('select[name="version"]').value;
    const model = row.querySelector('input[name="model"]').value.trim();
    if (version) candidate.version_id = version;
    if (model) candidate.model = model;
    return candidate;
  });
  if (candidates.some((c) => !c.version_id && !c.model)) {
    errorBox.textContent = "A candidate without a version needs a model.";
    return;
  }
  const body = {
    dataset: document.getElementById("bench-dataset").value,
    concurrency: Number(document.getElementById("bench-concurrency").value),
    candidates,
  };
  const button = form.querySelector('button[type="submit"]');
  button.disabled = true;
  try {
    const agent = form.getAttribute("data-agent"); // (`form.dataset` is its "dataset" select)
    const answer = await api("POST", `/api/agents/${encodeURIComponent(agent)}/benchmarks`, body);
    window.location.href = `/agents/${encodeURIComponent(agent)}/benchmarks/${encodeURIComponent(answer.benchmark.id)}`;
  } catch (e) {
    errorBox.textContent = e.message;
    button.disabled = false;
  }
});

if (form) refresh();
