// New job: batch entries (method, resource, JSON data, destinations pasted or read from a
// file), the job options the API has, an optional dry-run preview, and the API's 400
// message shown next to the field it names (msgspec's "... - at `$.batch[0].data`").
import { ApiError, api, openapi } from "./api.js";
import { append, el } from "./dom.js";

const METHODS = ["get", "post", "put", "delete"];
// Job fields this form draws itself; any other field of JobRequest in /openapi.json (the
// rollout, abort, retry, priority and schedule options of issue 12) gets a generic input.
const DRAWN = new Set(["batch", "timeout", "expiresIn"]);

function parseDestinations(text) {
  return text.split(/[\s,;]+/).map((id) => id.trim()).filter((id) => id && !id.startsWith("#"));
}

/** "number", "integer", "boolean", "string" or "json": how to ask for a schema's value. */
function kindOf(schema, components) {
  if (schema?.$ref) return kindOf(components[schema.$ref.split("/").pop()], components);
  const options = schema?.anyOf ?? [schema];
  for (const option of options) {
    if (option?.type === "integer" || option?.type === "number" || option?.type === "boolean") return option.type;
    if (option?.type === "string" && !option.enum) return "string";
  }
  return "json";
}

function fieldError(id) {
  return el("div", { class: "field-error", id: `${id}-error` });
}

export function show(root) {
  const entries = el("div", { id: "entries" });
  const jobError = el("div", { class: "field-error", id: "job-error" });
  const options = el("fieldset", { id: "job-options" }, el("legend", {}, "Job options"));
  const preview = el("pre", { id: "job-preview", class: "preview", hidden: true });
  const buttons = el("div", { class: "controls" });
  const form = el("form", { id: "job-form", novalidate: true }, entries, options, jobError, buttons, preview);
  append(root, el("h1", {}, "New job"), form);
  const extras = [];
  let entryCount = 0;

  function addEntry() {
    const n = entryCount++;
    const id = (name) => `entry-${n}-${name}`;
    const data = el("textarea", { id: id("data"), rows: 3, placeholder: "{}" });
    const dataError = fieldError(id("data"));
    data.addEventListener("input", () => {
      dataError.textContent = "";
      if (!data.value.trim()) return;
      try {
        const value = JSON.parse(data.value);
        if (value === null || typeof value !== "object" || Array.isArray(value)) dataError.textContent = "data must be a JSON object";
      } catch (error) {
        dataError.textContent = `not valid JSON: ${error.message}`;
      }
    });
    const destinations = el("textarea", { id: id("destinations"), rows: 3, placeholder: "one device id per line (or comma-separated)" });
    const file = el("input", { type: "file", id: id("file"), accept: ".txt,.csv,text/plain" });
    file.addEventListener("change", async () => {
      const chosen = file.files[0];
      if (!chosen) return;
      const ids = parseDestinations(await chosen.text());
      destinations.value = [...parseDestinations(destinations.value), ...ids].join("\n");
    });
    const entry = el("fieldset", { class: "entry", id: id("fieldset") },
      el("legend", {}, `Batch entry ${n + 1}`),
      el("label", {}, "Method ", el("select", { id: id("method") }, METHODS.map((m) => el("option", { value: m }, m)))), fieldError(id("method")),
      el("label", {}, "Resource ", el("input", { id: id("resource"), placeholder: "/system/status", required: true })), fieldError(id("resource")),
      el("label", {}, "Data (JSON object) ", data), dataError,
      el("label", {}, "Destinations ", destinations), el("label", {}, "or from a file ", file), fieldError(id("destinations")),
      el("label", {}, "Timeout (s, optional) ", el("input", { id: id("timeout"), type: "number", min: "0", step: "any" })), fieldError(id("timeout")),
    );
    append(entries, entry);
  }

  function readBody() {
    const batch = [];
    for (let n = 0; n < entryCount; n++) {
      const value = (name) => document.getElementById(`entry-${n}-${name}`).value;
      const entry = { method: value("method"), resource: value("resource").trim(), __destination: parseDestinations(value("destinations")) };
      const data = value("data").trim();
      entry.data = data ? JSON.parse(data) : {};
      if (value("timeout")) entry.timeout = Number(value("timeout"));
      batch.push(entry);
    }
    const body = { batch };
    const timeout = document.getElementById("job-timeout").value;
    if (timeout) body.timeout = Number(timeout);
    const expiresIn = document.getElementById("job-expiresIn").value;
    if (expiresIn) body.expiresIn = Number(expiresIn);
    for (const { name, kind, input } of extras) {
      if (kind === "boolean") { if (input.checked) body[name] = true; continue; }
      const text = input.value.trim();
      if (!text) continue;
      body[name] = kind === "json" ? JSON.parse(text) : kind === "string" ? text : Number(text);
    }
    return body;
  }

  function clearErrors() {
    for (const node of form.querySelectorAll(".field-error")) node.textContent = "";
    preview.hidden = true;
  }

  /** The element id for a msgspec path such as $.batch[0].__destination[2]. */
  function fieldOf(path, message) {
    let match = path.match(/^\$\.batch\[(\d+)\](?:\.(\w+))?/);
    if (match) {
      const field = match[2] ?? (message.includes("__destination") ? "destinations" : "resource");
      const name = field === "__destination" ? "destinations" : field;
      return `entry-${match[1]}-${name}`;
    }
    match = path.match(/^\$\.(\w+)/);
    if (match) return `job-${match[1]}`;
    return "job";
  }

  function showError(error) {
    const message = error instanceof ApiError ? error.message : String(error.message ?? error);
    const path = message.match(/`(\$[^`]*)`/);
    const target = path ? document.getElementById(`${fieldOf(path[1], message)}-error`) : null;
    (target ?? jobError).textContent = message;
    (target ?? jobError).scrollIntoView({ block: "nearest" });
  }

  async function send(dryRun) {
    clearErrors();
    let body;
    try {
      body = readBody();
    } catch (error) {
      jobError.textContent = `the form has invalid JSON: ${error.message}`;
      return;
    }
    try {
      const answer = await api("/jobs", { method: "POST", body, query: dryRun ? { dryRun: "true" } : undefined });
      if (dryRun) {
        preview.hidden = false;
        preview.textContent = JSON.stringify(answer.body, null, 2);
      } else {
        location.hash = `#/jobs/${answer.body.id}`;
      }
    } catch (error) {
      showError(error);
    }
  }

  async function addOptions() {
    append(options, 
      el("label", {}, "Job timeout (s) ", el("input", { id: "job-timeout", type: "number", min: "0", step: "any" })), fieldError("job-timeout"),
      el("label", {}, "Expires in (s) ", el("input", { id: "job-expiresIn", type: "number", min: "0", step: "any" })), fieldError("job-expiresIn"),
    );
    const document_ = await openapi();
    const components = document_.components?.schemas ?? {};
    const properties = components.JobRequest?.properties ?? {};
    for (const [name, schema] of Object.entries(properties)) {
      if (DRAWN.has(name)) continue;
      const kind = kindOf(schema, components);
      const input = kind === "boolean" ? el("input", { id: `job-${name}`, type: "checkbox" })
        : kind === "json" ? el("textarea", { id: `job-${name}`, rows: 2, placeholder: "JSON" })
        : el("input", { id: `job-${name}`, type: kind === "string" ? "text" : "number", step: "any" });
      extras.push({ name, kind, input });
      append(options, el("label", { title: schema.description ?? "" }, `${name} `, input), fieldError(`job-${name}`));
    }
    const dryRun = (document_.paths?.["/jobs"]?.post?.parameters ?? []).some((p) => p.name === "dryRun");
    append(buttons, 
      el("button", { type: "button", id: "add-entry", on: { click: addEntry } }, "Add entry"),
      dryRun ? el("button", { type: "button", id: "job-dry-run", on: { click: () => send(true) } }, "Preview (dry run)") : null,
      el("button", { type: "submit", id: "job-submit" }, "Create job"),
    );
  }

  form.addEventListener("submit", (event) => { event.preventDefault(); send(false); });
  addEntry();
  addOptions().catch((error) => { jobError.textContent = `cannot read /openapi.json: ${error.message}`; });
}
