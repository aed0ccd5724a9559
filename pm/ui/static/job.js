// One job: live counts over its WebSocket (?tasks=none&interval=1: one snapshot a second at
// most, a bounded cost whatever the job's size), an outcome histogram from those counts, and
// its tasks one page at a time through GET /jobs/{id}/tasks (a 100,000-task job is never
// loaded whole). The task page is read when the page opens, on paging, filters and Refresh,
// and when the job ends, never on a timer: 100 open dashboards polling it cost a running
// job more than its 10% budget (docs/dashboard.md has the measurement).
import { api, offers, watchJob } from "./api.js";
import { drawBars } from "./chart.js";
import { append, duration, el, fill, jsonText, pager, progressBar, when } from "./dom.js";

const PAGE = 50;
const TASK_STATUSES = ["pending", "sent", "resolved", "error", "timeout", "cancelled", "expired"];
// Least seconds between two job snapshots on the WebSocket (a progress view needs no more).
const SNAPSHOT_INTERVAL = 1;
const RECONNECT_MS = 2000;
const KNOWN_FIELDS = new Set([
  "id", "createdAt", "finishAt", "timeout", "status", "progress", "totalCount", "doneCount",
  "finishCount", "errorCount", "pendingCount", "sentCount", "expiredCount", "collection", "outcomes",
]);
const FINAL = new Set(["resolved", "timeout", "cancelled"]);

/** Histogram bars from the job's `outcomes` field (issue 12), in whichever shape it has:
 * {status: {code: n}}, {label: n} or [{status, code, count}]. */
function outcomeBars(outcomes) {
  const bars = [];
  if (Array.isArray(outcomes)) {
    for (const item of outcomes) bars.push({ label: `${item.status ?? ""} ${item.code ?? ""}`.trim(), value: Number(item.count ?? 0) });
  } else {
    for (const [status, value] of Object.entries(outcomes)) {
      if (value && typeof value === "object") {
        for (const [code, count] of Object.entries(value)) bars.push({ label: `${status} ${code}`, value: Number(count) });
      } else {
        bars.push({ label: status, value: Number(value) });
      }
    }
  }
  return bars;
}

export function show(root, jobId) {
  let job = null;
  let socket = null;
  let stopped = false;
  let tasksLoaded = false;
  let finalLoaded = false;
  let offset = 0;

  const statusText = el("span", { id: "job-status" }, "connecting");
  const progress = el("div", { id: "job-progress" });
  const counts = el("dl", { id: "job-counts", class: "counts" });
  const extra = el("dl", { id: "job-extra", class: "counts" });
  const controls = el("div", { id: "job-controls", class: "controls" });
  const message = el("p", { id: "job-message", class: "muted" });
  const canvas = el("canvas", { id: "job-histogram", class: "chart" });
  const legend = el("table", { id: "job-histogram-table", class: "small" });
  const statusFilter = el("select", { id: "tasks-status", on: { change: () => { offset = 0; loadTasks(); } } },
    el("option", { value: "" }, "any status"), TASK_STATUSES.map((s) => el("option", { value: s }, s)));
  const deviceFilter = el("input", { id: "tasks-device", placeholder: "device id", on: { change: () => { offset = 0; loadTasks(); } } });
  const refresh = el("button", { id: "tasks-refresh", on: { click: () => loadTasks() } }, "Refresh");
  const tasks = el("table", { id: "tasks-table" });
  const paging = el("div");
  const tasksNote = el("p", { class: "error", id: "tasks-note" });

  append(root, 
    el("h1", {}, `Job ${jobId} `, statusText),
    progress, counts, extra, controls, message,
    el("h2", {}, "Outcomes"), canvas, legend,
    el("h2", {}, "Tasks"),
    el("div", { class: "filters" }, el("label", {}, "Status ", statusFilter), el("label", {}, "Device ", deviceFilter), refresh),
    tasks, paging, tasksNote,
  );

  function drawJob() {
    statusText.textContent = job.status;
    statusText.className = `status-${job.status}`;
    fill(progress, progressBar(job.progress, `${job.progress}% · ${job.doneCount}/${job.totalCount} settled`));
    const rows = [
      ["tasks", job.totalCount], ["resolved", job.finishCount], ["failed", job.errorCount],
      ["sent", job.sentCount], ["pending", job.pendingCount], ["expired", job.expiredCount],
      ["created", when(job.createdAt)], ["finished", when(job.finishAt)],
      ["duration", duration(job.createdAt, job.finishAt)], ["timeout", job.timeout === null ? "none" : `${job.timeout} s`],
    ];
    fill(counts, rows.flatMap(([name, value]) => [el("dt", {}, name), el("dd", { id: `job-${name}` }, String(value))]));
    // Fields this page does not know yet (rollout, abort, ETA... as the API grows): as text.
    fill(extra, Object.entries(job).filter(([name]) => !KNOWN_FIELDS.has(name))
      .flatMap(([name, value]) => [el("dt", {}, name), el("dd", { id: `job-field-${name}` }, typeof value === "object" ? jsonText(value) : String(value))]));
    drawHistogram();
    for (const button of controls.querySelectorAll("button")) button.disabled = FINAL.has(job.status) && button.dataset.final !== "ok";
    scheduleReload();
  }

  function scheduleReload() {
    // The first snapshot, and the final one: the task page as it is then.
    const ended = FINAL.has(job?.status);
    if (tasksLoaded && (!ended || finalLoaded)) return;
    tasksLoaded = true;
    finalLoaded = ended;
    loadTasks();
  }

  function drawHistogram() {
    let bars;
    if (job?.outcomes) {
      // Final tasks by status × answer code, and the ones not final yet from the counts.
      bars = [...outcomeBars(job.outcomes), { label: "sent", value: job.sentCount }, { label: "pending", value: job.pendingCount }]
        .filter((bar) => bar.value);
    } else {
      // Before the API has an outcome histogram: the snapshot's own counts, no request.
      // (errorCount holds every failed final status: error, timeout, cancelled, expired.)
      bars = [
        { label: "resolved", value: job.finishCount },
        { label: "error (error, timeout, cancelled)", value: job.errorCount - job.expiredCount },
        { label: "expired", value: job.expiredCount },
        { label: "sent", value: job.sentCount },
        { label: "pending", value: job.pendingCount },
      ].filter((bar) => bar.value);
    }
    drawBars(canvas, bars);
    fill(legend, bars.map((bar) => el("tr", {}, el("td", {}, bar.label), el("td", { class: "num" }, String(bar.value)))));
  }

  async function loadTasks() {
    const query = { limit: PAGE, offset };
    if (statusFilter.value) query.status = statusFilter.value;
    if (deviceFilter.value.trim()) query.device = deviceFilter.value.trim();
    try {
      const { body, headers } = await api(`/jobs/${jobId}/tasks`, { query });
      if (stopped) return;
      const total = Number(headers.get("X-Total-Count") ?? body.length);
      tasksNote.textContent = "";
      fill(tasks, 
        el("thead", {}, el("tr", {}, ["task", "device", "method", "resource", "status", "progress", "result", "finished"].map((h) => el("th", {}, h)))),
        el("tbody", {}, body.map((task) => el("tr", { class: `status-${task.__task.status}` },
          el("td", { class: "num" }, String(task.id)),
          el("td", {}, el("a", { href: `#/devices/${encodeURIComponent(task.__destination)}` }, task.__destination)),
          el("td", {}, task.method),
          el("td", { class: "resource" }, task.resource),
          el("td", {}, task.__task.status + (task.__task.waiting ? ` (${task.__task.waiting})` : "")),
          el("td", { class: "num" }, `${task.__task.progress}%`),
          el("td", { class: "result" }, jsonText(task.__task.result)),
          el("td", {}, when(task.__task.finishAt)),
        ))),
      );
      fill(paging, pager(offset, PAGE, total, (next) => { offset = next; loadTasks(); }, "tasks"));
    } catch (error) {
      tasksNote.textContent = error.message;
    }
  }

  function control(label, id, action) {
    return el("button", { id, on: { click: async () => {
      message.textContent = `${label}…`;
      try {
        const answer = await action();
        message.textContent = `${label}: done`;
        if (answer?.body?.status) { job = { ...job, ...answer.body }; drawJob(); }
      } catch (error) {
        message.textContent = `${label}: ${error.message}`;
      }
    } } }, label);
  }

  async function addControls() {
    // Read from /openapi.json once: buttons for what this gateway offers (issue 12 adds
    // pause, resume, retry and a non-deleting cancel).
    const [cancel, pause, resume, retry] = await Promise.all(
      ["cancel", "pause", "resume", "retry"].map((name) => offers(`/jobs/{id}/${name}`, "post")));
    const post = (name) => () => api(`/jobs/${jobId}/${name}`, { method: "POST", body: {} });
    if (cancel) append(controls, control("Cancel", "job-cancel", post("cancel")));
    else append(controls, control("Cancel (and delete)", "job-cancel", () => api(`/jobs/${jobId}`, { method: "DELETE" })));
    if (pause) append(controls, control("Pause", "job-pause", post("pause")));
    if (resume) append(controls, control("Resume", "job-resume", post("resume")));
    if (retry) {
      const button = control("Retry failed", "job-retry", post("retry"));
      button.dataset.final = "ok";
      append(controls, button);
    }
    if (job) drawJob();
  }

  function connect() {
    socket = watchJob(jobId, { tasks: "none", interval: SNAPSHOT_INTERVAL }, (msg) => {
      if (msg.type === "job") { job = msg.job; drawJob(); }
    }, (code) => {
      if (stopped) return;
      if (job && FINAL.has(job.status)) return;
      message.textContent = `live updates interrupted (close ${code}); reconnecting`;
      setTimeout(() => { if (!stopped) connect(); }, RECONNECT_MS);
    });
  }

  // Not GET /jobs/{id}: it lists every task id. The WebSocket's first message is the job;
  // a one-task page says first whether the job exists at all.
  api(`/jobs/${jobId}/tasks`, { query: { limit: 1 } }).then(connect, (error) => { statusText.textContent = error.message; });
  addControls();

  return () => {
    stopped = true;
    socket?.close();
  };
}
