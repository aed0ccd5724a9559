// Fleet overview: GET /fleet every REFRESH_MS (one small answer whatever the fleet's size).
import { api } from "./api.js";
import { drawLines } from "./chart.js";
import { append, el, fill } from "./dom.js";

const REFRESH_MS = 2000;

function figure(id, label, value, kind) {
  return el("div", { class: `figure ${kind ?? ""}` }, el("span", { class: "figure-value", id }, String(value)), el("span", { class: "figure-label" }, label));
}

export function show(root) {
  const figures = el("div", { class: "figures" });
  const health = el("div", { id: "fleet-health" });
  const canvas = el("canvas", { id: "fleet-throughput", class: "chart" });
  const status = el("p", { class: "muted", id: "fleet-status" });
  append(root, el("h1", {}, "Fleet"), figures, el("h2", {}, "Tasks per second"), canvas, el("h2", {}, "Gateway"), health, status);

  async function refresh() {
    try {
      const { body: fleet } = await api("/fleet");
      fill(figures, 
        figure("fleet-online", "devices online", fleet.devicesOnline, "good"),
        figure("fleet-offline", "devices offline", fleet.devicesOffline, fleet.devicesOffline ? "bad" : ""),
        figure("fleet-in-flight", "tasks in flight", fleet.tasksInFlight),
        figure("fleet-jobs-running", "jobs running", fleet.jobsRunning),
        figure("fleet-dispatched", "tasks dispatched", fleet.tasksDispatched),
        figure("fleet-answered", "tasks answered", fleet.tasksAnswered),
      );
      const samples = fleet.throughput;
      drawLines(
        canvas,
        [
          { label: "dispatched/s", colour: "#1565c0", values: samples.map((s) => s.dispatchedPerSecond) },
          { label: "answered/s", colour: "#2e7d32", values: samples.map((s) => s.answeredPerSecond) },
        ],
        fleet.sampleInterval,
      );
      const h = fleet.health;
      fill(health, 
        el(
          "dl",
          {},
          el("dt", {}, "status"),
          el("dd", { id: "fleet-health-status", class: h.status === "ok" ? "good" : "bad" }, h.status),
          el("dt", {}, "broker"),
          el("dd", { id: "fleet-broker", class: h.brokerConnected ? "good" : "bad" }, h.brokerConnected ? "connected" : "disconnected"),
          el("dt", {}, "broker reconnects"),
          el("dd", {}, String(h.brokerReconnects)),
          el("dt", {}, "embedded broker restarts"),
          el("dd", { id: "fleet-broker-restarts" }, h.embeddedBrokerRestarts === null ? "not embedded" : String(h.embeddedBrokerRestarts)),
          el("dt", {}, "answer path"),
          el("dd", {}, h.answerPath ? (h.answerPath.ok ? `ok (${h.answerPath.lastRoundTripMs?.toFixed(1) ?? "?"} ms)` : "lost") : "not probed"),
        ),
      );
      status.textContent = `updated ${new Date().toLocaleTimeString()}`;
    } catch (error) {
      status.textContent = `cannot read /fleet: ${error.message}`;
    }
  }
  refresh();
  const timer = setInterval(refresh, REFRESH_MS);
  return () => clearInterval(timer);
}
