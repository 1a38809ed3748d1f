// Deploy and roll back (admin sessions), over `POST /api/agents/{agent}/versions/{id}/deploy`.
import { api, toast } from "/static/app.js";

const errorBox = document.getElementById("deploy-error");
const agent = document.getElementById("slots")?.dataset.agent;

async function deploy(version, environment, schemaId) {
  errorBox.textContent = "";
  const body = { environment };
  if (schemaId) body.schema_id = Number(schemaId);
  try {
    await api("POST", `/api/agents/${encodeURIComponent(agent)}/versions/${encodeURIComponent(version)}/deploy`, body);
    toast(`Deployed to ${environment}`);
    window.location.reload();
  } catch (e) {
    errorBox.textContent = e.message;
  }
}

document.getElementById("deploy")?.addEventListener("submit", (event) => {
  event.preventDefault();
  deploy(document.getElementById("deploy-version").value, document.getElementById("deploy-environment").value);
});

document.addEventListener("click", (event) => {
  const button = event.target.closest("button.rollback");
  if (!button) return;
  deploy(button.dataset.version, button.dataset.environment, button.dataset.schema);
});
