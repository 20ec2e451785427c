// The list page: the tenant's tasks by status (GET /v1/stats; a count is a filter), how many
// finished per minute lately (a sparkline), its tasks filtered by status and workflow, a search by
// id; for operators, the processes (GET /v1/actors) and the queues (GET /v1/overview).

import { $, STATUSES, api, badge, duration, el, fullDate, getJson, runTime, shorten, svg, taskPath, text, when } from "./common.js";

const filters = { status: "", workflow: "" };
let asked = 0; // the last list asked for: an answer to an earlier one (other filters) is dropped

export function initList() {
  const status = $("#filter-status");
  for (const s of STATUSES) status.append(el("option", null, s));
  status.addEventListener("change", () => { filters.status = status.value; refreshList(); });
  const workflow = $("#filter-workflow");
  workflow.addEventListener("change", () => { filters.workflow = workflow.value; refreshList(); });
  $("#find").addEventListener("submit", (e) => { e.preventDefault(); find($("#find-id").value.trim()); });
  $("#find-id").addEventListener("input", () => { $("#find-error").hidden = true; });
}

export function refreshList() {
  return Promise.all([showTasks(), showStats()]);
}

// The workflows the runtime runs, for the workflow filter (asked once a page load).
export async function loadWorkflows() {
  const workflows = await getJson("/v1/workflows");
  if (!workflows) return;
  const select = $("#filter-workflow");
  select.replaceChildren(el("option", null, "all"));
  select.firstChild.value = "";
  for (const w of workflows.map((w) => w.name).sort()) {
    const option = el("option", null, w);
    option.title = workflows.find((x) => x.name === w).description || "";
    select.append(option);
  }
  select.value = filters.workflow;
}

async function find(id) {
  if (!id) return;
  const r = await api(taskPath(id));
  if (r.ok) { location.hash = `#task/${encodeURIComponent(id)}`; return; }
  text($("#find-error"), r.status === 404 ? `no task ${id}` : `task ${id}: ${r.status} ${r.statusText}`);
  $("#find-error").hidden = false;
}

function setStatus(status) {
  filters.status = filters.status === status ? "" : status;
  $("#filter-status").value = filters.status;
  refreshList();
}

async function showTasks() {
  const query = new URLSearchParams({ limit: "50" });
  if (filters.status) query.set("status", filters.status);
  if (filters.workflow) query.set("workflow", filters.workflow);
  const mine = ++asked;
  const page = await getJson(`/v1/tasks?${query}`);
  if (!page || mine !== asked) return;
  const body = $("#tasks tbody");
  body.replaceChildren(...page.items.map(taskRow));
  const what = [filters.status, "tasks", filters.workflow && `of ${filters.workflow}`].filter(Boolean).join(" ");
  $("#tasks-empty").hidden = page.items.length > 0;
  text($("#tasks-empty"), `No ${what}.`);
  text($("#tasks-updated"), `${page.items.length}${page.next_cursor ? "+" : ""} shown · updated ${new Date().toLocaleTimeString()}`);
}

function taskRow(t) {
  const row = el("tr");
  row.dataset.id = t.id;
  row.className = `status-${t.status}`;
  const a = el("a", "id", t.id);
  a.href = `#task/${t.id}`;
  const { s, soFar } = runTime(t);
  const took = el("td", `duration${soFar ? " so-far" : ""}`, s === null ? "–" : `${duration(s)}${soFar ? " so far" : ""}`);
  const error = el("td", "error", t.error ? shorten(t.error, 70) : "");
  if (t.error) error.title = t.error;
  const created = el("td", "created", when(t.created_at));
  created.title = fullDate(t.created_at);
  row.append(el("td", null, a), el("td", "workflow", t.workflow), el("td", null, badge(t.status)), took,
             el("td", "runs", t.runs), error, created);
  return row;
}

async function showStats() {
  const stats = await getJson("/v1/stats?window_s=900&bucket_s=60");
  if (!stats) return;
  const total = Object.values(stats.counts).reduce((a, b) => a + b, 0);
  const all = countButton("", "all", total);
  $("#counts").replaceChildren(all, ...STATUSES.map((s) => countButton(s, s, stats.counts[s] || 0)));
  drawSparkline(stats.throughput);
}

function countButton(status, label, n) {
  const button = el("button", `count status-${status || "all"}`, [el("span", "n", n.toLocaleString()), el("span", "what", label)]);
  button.type = "button";
  button.dataset.status = status;
  button.setAttribute("aria-pressed", String(filters.status === status));
  button.title = status ? `show only ${status} tasks (again: all)` : "show tasks of every status";
  button.addEventListener("click", () => setStatus(status));
  return button;
}

// Finishes per bucket as an inline SVG: a line over a filled area, the latest point marked, and a
// hover title per bucket.
function drawSparkline(throughput) {
  const { finished, bucket_s: bucketS, since } = throughput;
  const box = $("#sparkline");
  const W = 320, H = 56, PAD = 4;
  const n = finished.length;
  const peak = Math.max(1, ...finished);
  const x = (i) => (n > 1 ? (i / (n - 1)) * (W - 2 * PAD) + PAD : W / 2);
  const y = (v) => H - PAD - (v / peak) * (H - 2 * PAD);
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img" });
  const points = finished.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
  chart.append(
    svg("line", { x1: PAD, x2: W - PAD, y1: H - PAD, y2: H - PAD, class: "baseline" }),
    svg("polygon", { points: `${x(0)},${H - PAD} ${points} ${x(n - 1)},${H - PAD}`, class: "area" }),
    svg("polyline", { points, class: "line" }),
  );
  if (n) chart.append(svg("circle", { cx: x(n - 1), cy: y(finished[n - 1]), r: 3, class: "last" }));
  finished.forEach((v, i) => {
    const hit = svg("rect", { x: x(i) - (W / n) / 2, y: 0, width: W / n, height: H, class: "hit" });
    const from = new Date((since + i * bucketS) * 1000).toLocaleTimeString();
    const title = svg("title");
    title.textContent = `${from}: ${v} finished${i === n - 1 ? " (so far)" : ""}`;
    hit.append(title);
    chart.append(hit);
  });
  const label = svg("title");
  label.textContent = `tasks finished per ${duration(bucketS)}, last ${duration(n * bucketS)}`;
  chart.prepend(label);
  box.replaceChildren(chart);
  const sum = finished.reduce((a, b) => a + b, 0);
  const minutes = `${Math.round((n * bucketS) / 60)} min`;
  text($("#throughput-total"), `${sum.toLocaleString()} in the last ${minutes}`);
  text($("#throughput-peak"), `peak ${Math.max(0, ...finished)} / ${bucketS === 60 ? "min" : duration(bucketS)}`);
  text($("#throughput-since"), `${minutes} ago`);
}

// The runtime's processes, for operators (a 403 or 404 hides the section).
export async function showProcesses() {
  const r = await api("/v1/actors");
  if (!r.ok) { $("#processes").hidden = true; return; }
  const { actors } = await r.json();
  const rows = [...actors].sort((a, b) => `${a.kind} ${a.role || ""} ${a.name}`.localeCompare(`${b.kind} ${b.role || ""} ${b.name}`));
  $("#processes tbody").replaceChildren(...rows.map((p) => {
    const state = String(p.state || "").toLowerCase();
    const row = el("tr", `state-${state}`);
    row.dataset.name = p.name;
    const restarts = el("td", `restarts${p.restarts ? " restarted" : ""}`, p.restarts ?? "");
    row.append(el("td", "name", p.name), el("td", null, p.kind), el("td", null, p.role ?? ""),
               el("td", null, p.replica ?? ""), el("td", "pid", p.pid ?? ""), el("td", "node", p.node ?? ""),
               el("td", null, el("span", `badge state state-${state}`, state || "?")), restarts);
    return row;
  }));
  text($("#processes-summary"), `${actors.length} · ${actors.filter((p) => String(p.state).toLowerCase() !== "alive").length} not alive`);
  $("#processes").hidden = false;
}

// Queues, workers, pools, engines and gates, for operators (a 403 hides the section).
export async function showOps() {
  const response = await api("/v1/overview");
  if (!response.ok) { $("#ops").hidden = true; return; }
  const o = await response.json();
  $("#ops").hidden = false;
  const tables = [];
  const table = (title, columns, rows) => {
    const t = el("table");
    const head = t.createTHead().insertRow();
    for (const c of [title, ...columns]) head.append(el("th", null, c));
    for (const r of rows) { const row = t.insertRow(); for (const v of r) row.append(el("td", null, v ?? "down")); }
    tables.push(t);
  };
  const tasks = o.tasks || {};
  const running = Object.values(o.workers).reduce((n, w) => n + ((w && w.active) || 0), 0);
  table("tasks", ["queued", "claimed", "workers", "running", "dead letters"],
        [["", tasks.depth, tasks.in_flight, Object.keys(o.workers).length, running, o.dead_letters]]);
  table("agent role", ["mailbox", "in flight", "replicas"], Object.keys({ ...o.mailboxes, ...o.pools }).sort()
        .map((r) => [r, (o.mailboxes[r] || {}).depth, (o.mailboxes[r] || {}).in_flight, (o.pools[r] || {}).replicas]));
  table("model", ["replicas", "requests in flight"], Object.entries(o.engines)
        .map(([m, loads]) => [m, loads.length, loads.join(" ")]));
  table("gate", ["held", "waiting", "closed for s"], Object.entries(o.gates || {})
        .map(([k, g]) => [k, g.held, g.waiting, g.blocked_for_s]));
  $("#ops-body").replaceChildren(...tables);
}
