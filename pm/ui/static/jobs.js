// Jobs: a table of GET /jobs, polled every REFRESH_MS.
//
// Why polling and not the job WebSockets: the list needs one row per job, new jobs included;
// a WebSocket follows one job that already exists and takes one of its watcher slots
// (limits.max_watchers_per_job). One GET of a page of 20 jobs every 2 s costs the gateway
// the same however many jobs run, and sees new jobs as they come.
import { api } from "./api.js";
import { append, duration, el, fill, pager, progressBar, when } from "./dom.js";

const REFRESH_MS = 2000;
const PAGE = 20;
const STATUSES = ["", "pending", "dispatching", "resolved", "timeout", "cancelled"];

export function show(root) {
  let offset = 0;
  let status = "";
  const select = el("select", { id: "jobs-status", on: { change: () => { status = select.value; offset = 0; refresh(); } } },
    STATUSES.map((value) => el("option", { value }, value || "any status")));
  const table = el("table", { id: "jobs-table" });
  const paging = el("div");
  const note = el("p", { class: "muted", id: "jobs-note" });
  append(root, el("h1", {}, "Jobs"), el("label", {}, "Status ", select), table, paging, note);

  async function refresh() {
    try {
      const query = { limit: PAGE, offset };
      if (status) query.status = status;
      const { body: jobs, headers } = await api("/jobs", { query });
      const total = Number(headers.get("X-Total-Count") ?? jobs.length);
      fill(table, 
        el("thead", {}, el("tr", {}, ["id", "status", "progress", "tasks", "resolved", "errors", "pending", "created", "finished", "duration"].map((h) => el("th", {}, h)))),
        el("tbody", {}, jobs.map((job) =>
          el("tr", { id: `job-row-${job.id}`, class: `status-${job.status}` },
            el("td", {}, el("a", { href: `#/jobs/${job.id}` }, String(job.id))),
            el("td", { class: "job-status" }, job.status),
            el("td", {}, progressBar(job.progress, `${job.progress}%`)),
            el("td", { class: "num" }, String(job.totalCount)),
            el("td", { class: "num" }, String(job.finishCount)),
            el("td", { class: "num" }, String(job.errorCount)),
            el("td", { class: "num" }, String(job.pendingCount)),
            el("td", {}, when(job.createdAt)),
            el("td", {}, when(job.finishAt)),
            el("td", {}, duration(job.createdAt, job.finishAt)),
          ))),
      );
      fill(paging, pager(offset, PAGE, total, (next) => { offset = next; refresh(); }, "jobs"));
      note.textContent = `${total} jobs; updated ${new Date().toLocaleTimeString()}`;
    } catch (error) {
      note.textContent = `cannot list jobs: ${error.message}`;
    }
  }
  refresh();
  const timer = setInterval(refresh, REFRESH_MS);
  return () => clearInterval(timer);
}
