// Building the page without HTML strings: every piece of data becomes a text node, so
// nothing a device sends (a result, an id, a resource) can ever be parsed as markup.

/**
 * el("td", {class: "num", title: "x"}, "text", otherNode) -> an element.
 * Attributes are set one by one (never through markup); children that are not nodes are
 * added as text. `on: {click: fn}` adds listeners.
 */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "on") {
      for (const [event, handler] of Object.entries(value)) node.addEventListener(event, handler);
    } else if (name === "class") {
      node.className = value;
    } else if (name in node && typeof value !== "string") {
      node[name] = value;
    } else {
      node.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(node, ...children);
  return node;
}

export function append(node, ...children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function clear(node) {
  node.replaceChildren();
  return node;
}

/** Replace what `node` holds by `children` (arrays flattened, strings as text). */
export function fill(node, ...children) {
  node.replaceChildren();
  return append(node, ...children);
}

/** Any JSON value as one line of text (for results and data). */
export function jsonText(value) {
  if (value === undefined || value === null) return "";
  return JSON.stringify(value);
}

export function when(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleString();
}

export function duration(startIso, endIso) {
  if (!startIso) return "";
  const start = new Date(startIso).getTime();
  const end = endIso ? new Date(endIso).getTime() : Date.now();
  const seconds = Math.max(0, (end - start) / 1000);
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

/** A progress bar: an outer box and an inner one whose width is set through the CSSOM
 * (the policy allows no inline style attribute, but script-set styles are allowed). */
export function progressBar(percent, label) {
  const inner = el("div", { class: "bar-fill" });
  inner.style.width = `${Math.max(0, Math.min(100, percent))}%`;
  return el("div", { class: "bar", title: label ?? `${percent}%` }, inner, el("span", {}, label ?? `${percent}%`));
}

/** Previous / next buttons and "a-b of total" for a paged listing. */
export function pager(offset, limit, total, go, idPrefix) {
  const last = Math.min(offset + limit, total);
  return el(
    "div",
    { class: "pager" },
    el("button", { id: `${idPrefix}-prev`, disabled: offset <= 0, on: { click: () => go(Math.max(0, offset - limit)) } }, "‹ Previous"),
    el("span", { id: `${idPrefix}-range` }, total ? `${offset + 1}–${last} of ${total}` : "none"),
    el("button", { id: `${idPrefix}-next`, disabled: last >= total, on: { click: () => go(offset + limit) } }, "Next ›"),
  );
}
