// The dashboard's router: #/fleet, #/jobs, #/jobs/<id>, #/devices, #/devices/<id>, #/new.
// Each page module's show(root, parameter) draws into root and returns a function that stops
// its timers and sockets when the page is left.
import { append, clear, el } from "./dom.js";
import * as devices from "./devices.js";
import * as fleet from "./fleet.js";
import * as job from "./job.js";
import * as jobs from "./jobs.js";
import * as newJob from "./new-job.js";

const ROUTES = [
  [/^#\/fleet$/, fleet, "nav-fleet"],
  [/^#\/jobs$/, jobs, "nav-jobs"],
  [/^#\/jobs\/(\d+)$/, job, "nav-jobs"],
  [/^#\/devices$/, devices, "nav-devices"],
  [/^#\/devices\/([A-Za-z0-9._:-]{1,64})$/, devices, "nav-devices"],
  [/^#\/new$/, newJob, "nav-new"],
];

let leave = () => {};

function route() {
  const hash = location.hash || "#/fleet";
  leave();
  leave = () => {};
  const root = clear(document.getElementById("app"));
  for (const link of document.querySelectorAll("nav a")) link.classList.remove("active");
  for (const [pattern, page, nav] of ROUTES) {
    const match = hash.match(pattern);
    if (match) {
      document.getElementById(nav).classList.add("active");
      leave = page.show(root, match[1] === undefined ? undefined : decodeURIComponent(match[1])) ?? leave;
      return;
    }
  }
  append(root, el("p", { class: "error" }, "No such page: ", hash));
}

window.addEventListener("hashchange", route);
route();
