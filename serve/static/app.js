// The status page: the list of the caller's tenant's tasks (`/#`), and one task (`/#task/<id>`, a
// link to share). Plain JavaScript modules over the HTTP API (no build step, no library); the API
// key, if the server wants one, is kept in this browser's localStorage and sent as a bearer token.

import { $ } from "./common.js";
import { act, decide, leaveTask, showTask } from "./task.js";
import { initList, loadWorkflows, refreshList, showOps, showProcesses } from "./tasks.js";

const LIST_EVERY_MS = 2000;
const OPS_EVERY = 2; // the operators' sections: every other refresh of the list

let timer = null;

function taskIdOf(hash) {
  try { return decodeURIComponent(hash.slice("#task/".length)); } catch { return hash.slice("#task/".length); }
}

function route() {
  const onTask = location.hash.startsWith("#task/");
  $("#tasks-view").hidden = onTask;
  $("#task-view").hidden = !onTask;
  clearInterval(timer);
  if (onTask) { showTask(taskIdOf(location.hash)); return; }
  leaveTask();
  let round = 0;
  const tick = () => {
    refreshList().catch(() => {});
    if (round++ % OPS_EVERY === 0) { showProcesses().catch(() => {}); showOps().catch(() => {}); }
  };
  loadWorkflows().catch(() => {});
  tick();
  timer = setInterval(tick, LIST_EVERY_MS);
}

$("#key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  localStorage.setItem("raysquad-key", $("#key").value);
  $("#key-form").hidden = true;
  route();
});
$("#cancel").addEventListener("click", () => act("cancel"));
$("#retry").addEventListener("click", () => act("retry"));
$("#approve").addEventListener("click", () => decide("approve"));
$("#deny").addEventListener("click", () => decide("deny"));
initList();
window.addEventListener("hashchange", route);
route();
