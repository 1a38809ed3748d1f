// The AI reviewer's settings, saved over `PUT /api/agents/{agent}/reviewer`.
import { api, toast } from "/static/app.js";

const form = document.getElementById("reviewer");
const errorBox = document.getElementById("reviewer-error");

form?.addEventListener("submit", async (event) => {
  event.preventDefault();
  errorBox.textContent = "";
  const body = {
    instructions: document.getElementById("reviewer-instructions").value,
    model: document.getElementById("reviewer-model").value.trim(),
  };
  const button = form.querySelector('button[type="submit"]');
  button.disabled = true;
  try {
    await api("PUT", `/api/agents/${encodeURIComponent(form.dataset.agent)}/reviewer`, body);
    toast("Reviewer saved");
    window.location.reload();
  } catch (e) {
    errorBox.textContent = e.message;
    button.disabled = false;
  }
});
