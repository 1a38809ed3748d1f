// The runs page's search bar: the operators and known values of the chosen field.

const field = document.getElementById("chip-field");
const operator = document.getElementById("chip-operator");
const values = document.getElementById("chip-values");
const value = document.getElementById("chip-value");

function parse(text) {
  try { return JSON.parse(text || "[]"); } catch { return []; }
}

function update() {
  const option = field.selectedOptions[0];
  if (!option) return;
  const operators = parse(option.dataset.operators);
  const previous = operator.value;
  operator.replaceChildren(...operators.map((op) => {
    const o = document.createElement("option");
    o.textContent = op;
    return o;
  }));
  if (operators.includes(previous)) operator.value = previous;
  values.replaceChildren(...parse(option.dataset.values).map((v) => {
    const o = document.createElement("option");
    o.value = v;
    return o;
  }));
  const kind = option.dataset.kind;
  value.placeholder = kind === "number" ? "0.01 (between: 0.01..0.1)" : kind === "time" ? "2026-12-01T00:00:00Z" : "";
  toggleValue();
}

function toggleValue() {
  const none = operator.value === "is empty" || operator.value === "is not empty";
  value.disabled = none;
}

if (field && operator) {
  field.addEventListener("change", update);
  operator.addEventListener("change", toggleValue);
  update();
}
