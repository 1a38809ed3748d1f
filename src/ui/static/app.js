// Shared by every page: calls to the JSON API with the session's CSRF token, a toast, and
// the buttons that copy text (`data-copy`).

const csrfMeta = document.querySelector('meta[name="csrf-token"]');
export const csrf = csrfMeta ? csrfMeta.content : "";

/** Calls the JSON API; resolves to the parsed body, throws an Error with the API's message. */
export async function api(method, path, body) {
  const headers = { "accept": "application/json" };
  if (csrf) headers["x-flowgate-csrf"] = csrf;
  const init = { method, headers, credentials: "same-origin" };
  if (body !== undefined) {
    headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.status === 204) return null;
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { raw: text }; }
  if (!response.ok) {
    const message = data && data.error && data.error.message ? data.error.message : `HTTP ${response.status}`;
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
  return data;
}

/** Starts a JSON API call whose answer is an SSE stream; calls `onEvent` with each event. */
export async function apiStream(path, body, onEvent) {
  const headers = { "accept": "text/event-stream", "content-type": "application/json" };
  if (csrf) headers["x-flowgate-csrf"] = csrf;
  const response = await fetch(path, { method: "POST", headers, credentials: "same-origin", body: JSON.stringify(body) });
  if (!response.ok) {
    let message = `HTTP ${response.status}`;
    try { const data = await response.json(); message = data.error.message || message; } catch { /* keep */ }
    throw new Error(message);
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = frame.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      if (!data || data === "[DONE]") continue;
      try { onEvent(JSON.parse(data)); } catch { /* a frame that is not JSON is skipped */ }
    }
  }
}

export function toast(message) {
  const el = document.getElementById("toast");
  if (!el) return;
  el.textContent = message;
  el.classList.add("show");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => el.classList.remove("show"), 2500);
}

document.addEventListener("click", async (event) => {
  const button = event.target.closest("[data-copy]");
  if (!button) return;
  const text = button.dataset.copy === "location" ? window.location.href : button.dataset.copy;
  try {
    await navigator.clipboard.writeText(text);
    toast("Copied");
  } catch {
    toast(text);
  }
});

// Table rows that link somewhere open it on click (the row's first link stays the keyboard path).
document.addEventListener("click", (event) => {
  const row = event.target.closest("tr[data-href]");
  if (!row || event.target.closest("a, button, input, select")) return;
  window.location.href = row.dataset.href;
});

// Forms marked `data-json` (sign-in, sign-out) are posted as JSON: without a key configured,
// flowgate takes only JSON posts from browsers. Without script they post as plain forms.
document.addEventListener("submit", async (event) => {
  const form = event.target.closest("form[data-json]");
  if (!form) return;
  event.preventDefault();
  const body = Object.fromEntries(new FormData(form).entries());
  const response = await fetch(form.action, {
    method: "POST",
    headers: { "content-type": "application/json", "accept": "text/html" },
    credentials: "same-origin",
    body: JSON.stringify(body),
  });
  if (response.redirected) {
    window.location.href = response.url;
    return;
  }
  // The page answered with itself and a message: show the message here.
  const page = new DOMParser().parseFromString(await response.text(), "text/html");
  const message = page.querySelector(".error-text")?.textContent || `HTTP ${response.status}`;
  let box = form.parentElement.querySelector(".error-text");
  if (!box) {
    box = document.createElement("p");
    box.className = "error-text";
    box.setAttribute("role", "alert");
    form.before(box);
  }
  box.textContent = message;
});
