// The playground: runs the form on every chosen model at once (`POST /api/playground`,
// streamed), one column per model; the form's state goes into the URL.
import { api, apiStream } from "/static/app.js";

const form = document.getElementById("playground");
const messages = document.getElementById("messages");
const columns = document.getElementById("columns");
const template = document.getElementById("column-template");
const errorBox = document.getElementById("playground-error");

function state() {
  const rows = [...messages.querySelectorAll(".message-row")].map((row) => ({
    role: row.querySelector('[name="role"]').value,
    content: row.querySelector('[name="content"]').value,
  }));
  const number = (id) => {
    const v = document.getElementById(id).value.trim();
    return v === "" ? null : Number(v);
  };
  return {
    models: [...form.querySelectorAll('[name="model"]')].map((i) => i.value.trim()).filter(Boolean),
    messages: rows.filter((m) => m.content.trim() !== ""),
    temperature: number("temperature"),
    max_tokens: number("max_tokens"),
    agent: document.getElementById("agent").value.trim() || null,
    input: document.getElementById("input").value.trim() || null,
    version_id: document.getElementById("version_id").value.trim() || null,
  };
}

document.getElementById("add-message").addEventListener("click", () => {
  const rows = messages.querySelectorAll(".message-row");
  const copy = rows[rows.length - 1].cloneNode(true);
  copy.querySelector("textarea").value = "";
  copy.querySelector("select").value = "user";
  messages.appendChild(copy);
  copy.querySelector("textarea").focus();
});

messages.addEventListener("click", (event) => {
  const button = event.target.closest(".remove-message");
  if (!button || messages.querySelectorAll(".message-row").length <= 1) return;
  button.closest(".message-row").remove();
});

function column(model) {
  const node = template.content.firstElementChild.cloneNode(true);
  node.querySelector(".model-name").textContent = model;
  node.dataset.model = model;
  columns.appendChild(node);
  return node;
}

function badge(parent, text, kind) {
  const b = document.createElement("span");
  b.className = `badge ${kind}`;
  b.textContent = text;
  parent.appendChild(b);
  parent.appendChild(document.createTextNode(" "));
}

function money(usd) {
  if (!usd) return "$0";
  return usd >= 0.01 ? `$${usd.toFixed(4)}` : `$${usd.toFixed(6)}`;
}

function link(parent, href, text) {
  const a = document.createElement("a");
  a.href = href;
  a.textContent = text;
  parent.appendChild(a);
  parent.appendChild(document.createTextNode(" "));
  return a;
}

function summarize(col, result, agent) {
  const stats = col.querySelector(".stats");
  const badges = col.querySelector(".badges");
  badge(badges, result.status || (result.error ? "error" : "success"), result.error ? "error" : "success");
  if (result.cheapest) badge(badges, "cheapest", "best");
  if (result.fastest) badge(badges, "fastest", "best");
  if (result.error) {
    const message = result.error.message || JSON.stringify(result.error);
    col.querySelector(".output").textContent += (col.querySelector(".output").textContent ? "\n" : "") + message;
  } else if (!col.querySelector(".output").textContent && result.output) {
    col.querySelector(".output").textContent = typeof result.output === "string" ? result.output : JSON.stringify(result.output, null, 2);
  }
  const usage = result.usage || {};
  stats.textContent = `${money(result.cost_usd)} · ${Math.round((result.duration_seconds || 0) * 1000)} ms · ${usage.prompt_tokens ?? 0} in / ${usage.completion_tokens ?? 0} out tokens`;
  const links = col.querySelector(".links");
  if (result.run_id) {
    link(links, `/runs/${encodeURIComponent(result.run_id)}`, "Open run");
    const save = document.createElement("button");
    save.type = "button";
    save.textContent = "Save as version";
    save.addEventListener("click", async () => {
      save.disabled = true;
      try {
        const run = await api("GET", `/api/runs/${encodeURIComponent(result.run_id)}`);
        if (!run.version_id) throw new Error("this run has no version");
        save.replaceWith(document.createTextNode("Saved as version "));
        link(links, `/agents/${encodeURIComponent(run.agent)}/versions#v-${encodeURIComponent(run.version_id)}`, run.version_id.slice(0, 12));
      } catch (e) {
        save.disabled = false;
        errorBox.textContent = e.message;
      }
    });
    links.appendChild(save);
  }
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  errorBox.textContent = "";
  const s = state();
  history.replaceState(null, "", `/playground?s=${encodeURIComponent(JSON.stringify(s))}`);
  if (s.models.length === 0) { errorBox.textContent = "Choose at least one model."; return; }
  if (s.messages.length === 0 && !s.version_id) { errorBox.textContent = "Write a message, or name a version."; return; }
  const body = { models: s.models, stream: true };
  if (s.messages.length) body.messages = s.messages;
  if (s.version_id) body.version_id = s.version_id;
  if (s.temperature !== null) body.temperature = s.temperature;
  if (s.max_tokens !== null) body.max_tokens = s.max_tokens;
  if (s.agent) body.metadata = { agent_id: s.agent };
  if (s.input) {
    try { body.input = JSON.parse(s.input); } catch { errorBox.textContent = "The input variables are not JSON."; return; }
  }
  columns.replaceChildren();
  const cols = s.models.map(column);
  const run = document.getElementById("run");
  run.disabled = true;
  try {
    await apiStream("/api/playground", body, (event) => {
      if (event.type === "chunk") {
        const col = cols[event.index];
        const choice = event.chunk && event.chunk.choices && event.chunk.choices[0];
        const delta = choice && choice.delta;
        if (col && delta) {
          if (delta.content) col.querySelector(".output").textContent += delta.content;
          for (const call of delta.tool_calls || []) {
            col.querySelector(".output").textContent += (call.function && (call.function.name || "") + (call.function.arguments || "")) || "";
          }
        }
      } else if (event.type === "error") {
        const col = cols[event.index];
        if (col) col.dataset.failed = "1";
      } else if (event.type === "summary") {
        (event.models || []).forEach((result, i) => cols[i] && summarize(cols[i], result, s.agent));
        columns.dataset.done = "1";
      }
    });
  } catch (e) {
    errorBox.textContent = e.message;
  } finally {
    run.disabled = false;
  }
});
