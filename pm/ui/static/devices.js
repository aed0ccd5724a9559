// Devices: GET /devices (id-prefix search, presence filter, paged), refreshed every
// REFRESH_MS; #/devices/<id> adds one device's details and recent tasks.
import { api } from "./api.js";
import { append, el, fill, jsonText, pager, when } from "./dom.js";

const REFRESH_MS = 3000;
const PAGE = 50;
const RECENT_TASKS = 10;

function deviceDetails(device, tasks) {
  return el("section", { id: "device-details" },
    el("h2", {}, "Device ", el("span", { id: "device-id" }, device.id), " ", el("span", { id: "device-presence", class: `presence-${device.presence}` }, device.presence)),
    el("dl", { class: "counts" },
      el("dt", {}, "last seen"), el("dd", {}, when(device.lastSeen) || "never"),
      el("dt", {}, "connected"), el("dd", {}, when(device.connectedAt)),
      el("dt", {}, "disconnected"), el("dd", {}, when(device.disconnectedAt)),
      el("dt", {}, "pending"), el("dd", {}, String(device.pending)),
      el("dt", {}, "in flight"), el("dd", {}, device.inFlight === null ? "nothing" : `task ${device.inFlight}`),
      el("dt", {}, "latency (median)"), el("dd", {}, device.latencyP50 === null ? "not measured" : `${(device.latencyP50 * 1000).toFixed(0)} ms`),
      el("dt", {}, "tasks"), el("dd", {}, jsonText(device.counts)),
    ),
    el("h3", {}, `Recent tasks (newest ${RECENT_TASKS})`),
    el("table", { id: "device-tasks" },
      el("thead", {}, el("tr", {}, ["job", "task", "method", "resource", "status", "result", "finished"].map((h) => el("th", {}, h)))),
      el("tbody", {}, tasks.map((task) => el("tr", { class: `status-${task.__task.status}` },
        el("td", {}, el("a", { href: `#/jobs/${task.jobId}` }, String(task.jobId))),
        el("td", { class: "num" }, String(task.id)),
        el("td", {}, task.method),
        el("td", { class: "resource" }, task.resource),
        el("td", {}, task.__task.status),
        el("td", { class: "result" }, jsonText(task.__task.result)),
        el("td", {}, when(task.__task.finishAt)),
      ))),
    ),
  );
}

export function show(root, selected) {
  let offset = 0;
  const search = el("input", { id: "devices-search", placeholder: "id starts with…", on: { input: () => { offset = 0; refresh(); } } });
  const presence = el("select", { id: "devices-presence", on: { change: () => { offset = 0; refresh(); } } },
    ["", "online", "offline", "unknown"].map((value) => el("option", { value }, value || "any presence")));
  const details = el("div");
  const table = el("table", { id: "devices-table" });
  const paging = el("div");
  const note = el("p", { class: "muted", id: "devices-note" });
  append(root, el("h1", {}, "Devices"), details, el("div", { class: "filters" }, el("label", {}, "Search ", search), el("label", {}, "Presence ", presence)), table, paging, note);

  async function refreshDetails() {
    if (!selected) return;
    try {
      const [{ body: device }, { body: tasks }] = await Promise.all([
        api(`/devices/${encodeURIComponent(selected)}`),
        api(`/devices/${encodeURIComponent(selected)}/tasks`, { query: { limit: RECENT_TASKS } }),
      ]);
      fill(details, deviceDetails(device, tasks));
    } catch (error) {
      fill(details, el("p", { class: "error" }, `${selected}: ${error.message}`));
    }
  }

  async function refresh() {
    const query = { limit: PAGE, offset };
    if (search.value.trim()) query.q = search.value.trim();
    if (presence.value) query.presence = presence.value;
    try {
      const { body: devices, headers } = await api("/devices", { query });
      const total = Number(headers.get("X-Total-Count") ?? devices.length);
      fill(table, 
        el("thead", {}, el("tr", {}, ["device", "presence", "last seen", "pending", "in flight", "latency", "tasks"].map((h) => el("th", {}, h)))),
        el("tbody", {}, devices.map((device) => el("tr", { class: `presence-${device.presence}`, "data-device": device.id },
          el("td", {}, el("a", { href: `#/devices/${encodeURIComponent(device.id)}` }, device.id)),
          el("td", { class: "device-presence" }, device.presence),
          el("td", {}, when(device.lastSeen)),
          el("td", { class: "num" }, String(device.pending)),
          el("td", {}, device.inFlight === null ? "" : `task ${device.inFlight}`),
          el("td", {}, device.latencyP50 === null ? "" : `${(device.latencyP50 * 1000).toFixed(0)} ms`),
          el("td", {}, jsonText(device.counts)),
        ))),
      );
      fill(paging, pager(offset, PAGE, total, (next) => { offset = next; refresh(); }, "devices"));
      note.textContent = `${total} devices; updated ${new Date().toLocaleTimeString()}`;
    } catch (error) {
      note.textContent = `cannot list devices: ${error.message}`;
    }
  }
  refresh();
  refreshDetails();
  const timer = setInterval(() => { refresh(); refreshDetails(); }, REFRESH_MS);
  return () => clearInterval(timer);
}
