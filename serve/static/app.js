// The status page: tasks of the caller's tenant, one task's timeline and live events, operations.
// Plain JavaScript over the HTTP API (no build step); the API key, if the server wants one, is kept
// in this browser's localStorage and sent as a bearer token.
"use strict";

const $ = (s) => document.querySelector(s);
const key = () => localStorage.getItem("raysquad-key") || "";
const headers = () => (key() ? { Authorization: `Bearer ${key()}` } : {});
let stream = null; // the AbortController of the open event stream

async function api(path, options = {}) {
  // A state-changing request says it is JSON even without a body: a server without API keys takes
  // no other, since a page of another site cannot send that content type without asking first.
  const json = options.method && options.method !== "GET" ? { "Content-Type": "application/json" } : {};
  const response = await fetch(path, { ...options, headers: { ...headers(), ...json, ...(options.headers || {}) } });
  if (response.status === 401) { $("#key-form").hidden = false; throw new Error("API key needed"); }
  return response;
}

function when(t) { return t ? new Date(t * 1000).toLocaleTimeString() : ""; }
function text(el, value) { el.textContent = value; return el; }
function cell(row, value, cls) { const td = row.insertCell(); text(td, value); if (cls) td.className = cls; return td; }

async function showTasks() {
  const response = await api("/v1/tasks?limit=50");
  if (!response.ok) return;
  const page = await response.json();
  const body = $("#tasks tbody");
  body.replaceChildren();
  for (const t of page.items) {
    const row = body.insertRow();
    row.dataset.id = t.id;
    const a = document.createElement("a");
    a.href = `#task/${t.id}`; a.textContent = t.id.slice(0, 12);
    row.insertCell().append(a);
    cell(row, t.workflow); cell(row, t.status, `status-${t.status}`); cell(row, t.priority);
    cell(row, t.runs); cell(row, when(t.created_at));
  }
  text($("#tasks-updated"), `updated ${new Date().toLocaleTimeString()}`);
}

async function showOps() {
  const response = await api("/v1/overview");
  if (!response.ok) { $("#ops").hidden = true; return; }
  const o = await response.json();
  $("#ops").hidden = false;
  const box = $("#ops-body");
  box.replaceChildren();
  const table = (title, columns, rows) => {
    const t = document.createElement("table");
    const head = t.createTHead().insertRow();
    for (const c of [title, ...columns]) text(head.appendChild(document.createElement("th")), c);
    for (const r of rows) { const row = t.insertRow(); for (const v of r) cell(row, v ?? "down"); }
    box.append(t);
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
}

function kindOf(key) {
  const head = key.includes(":") ? key.split(":")[0] : "";
  return ["agent", "llm", "tool", "signal", "publish"].includes(head) ? head : "step";
}

function drawTimeline(task, steps) {
  const box = $("#timeline");
  box.replaceChildren();
  const start = task.started_at || task.created_at;
  const end = Math.max(task.finished_at || Date.now() / 1000, ...steps.map((s) => s.at));
  const span = Math.max(end - start, 0.001);
  for (const s of steps) {
    const elapsed = s.elapsed_s || 0;
    const row = document.createElement("div");
    row.className = "row";
    const label = text(document.createElement("span"), `${s.key} · ${(elapsed * 1000).toFixed(0)} ms`);
    label.className = "label";
    const track = document.createElement("div");
    track.className = "track";
    const bar = document.createElement("div");
    bar.className = `bar kind-${kindOf(s.key)}`;
    bar.dataset.key = s.key;
    bar.title = `${s.key}: ${(elapsed * 1000).toFixed(1)} ms, recorded ${when(s.at)}`;
    const left = Math.max(0, (s.at - elapsed - start) / span) * 100;
    bar.style.marginLeft = `${Math.min(left, 99.5)}%`;
    bar.style.width = `${Math.max((elapsed / span) * 100, 0.5)}%`;
    track.append(bar);
    row.append(label, track);
    box.append(row);
  }
}

async function showTask(id) {
  if (stream) stream.abort();
  const response = await api(`/v1/tasks/${encodeURIComponent(id)}`);
  if (!response.ok) { text($("#task-title"), `task ${id}: ${response.status}`); return; }
  let task = await response.json();
  text($("#task-title"), `${task.workflow} ${task.id}`);
  const meta = () => text($("#task-meta"), `status ${task.status} · run ${task.runs} · created ${when(task.created_at)}`);
  meta();
  const result = () => text($("#result"), task.error ? `error: ${task.error}`
    : task.output !== null && task.output !== undefined ? JSON.stringify(task.output, null, 2) : "(not ended)");
  result();
  const steps = [];
  const list = $("#events");
  list.replaceChildren();
  drawTimeline(task, steps);
  stream = new AbortController();
  const refresh = async () => {
    const r = await api(`/v1/tasks/${encodeURIComponent(id)}`);
    if (r.ok) { task = await r.json(); meta(); result(); drawTimeline(task, steps); }
  };
  // Server-Sent Events over fetch (EventSource cannot send the API key): parse "data:" lines.
  try {
    const r = await api(`/v1/tasks/${encodeURIComponent(id)}/events`, { signal: stream.signal });
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const chunk = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const data = chunk.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5)).join("\n");
        if (!data) continue;
        const event = JSON.parse(data); // {seq, kind, at, ...the event's own fields}
        const { seq, kind, at, ...fields } = event;
        const li = document.createElement("li");
        li.className = `event-${kind}`;
        text(li, `${seq} ${when(at)} ${kind} ${JSON.stringify(fields)}`);
        list.append(li);
        if (event.kind === "step") steps.push(event);
        await refresh();
      }
    }
  } catch (e) { if (e.name !== "AbortError") console.warn(e); }
  await refresh();
}

async function act(verb) {
  const id = location.hash.slice("#task/".length);
  await api(`/v1/tasks/${encodeURIComponent(id)}/${verb}`, { method: "POST" });
  const r = await api(`/v1/tasks/${encodeURIComponent(id)}`);
  if (r.ok) { const t = await r.json(); text($("#task-meta"), `status ${t.status} · run ${t.runs} · created ${when(t.created_at)}`); }
  if (verb === "retry") showTask(id);
}

let timer = null;
function route() {
  const onTask = location.hash.startsWith("#task/");
  $("#tasks-view").hidden = onTask;
  $("#task-view").hidden = !onTask;
  clearInterval(timer);
  if (onTask) { showTask(location.hash.slice("#task/".length)); return; }
  if (stream) stream.abort();
  const tick = () => { showTasks().catch(() => {}); showOps().catch(() => {}); };
  tick();
  timer = setInterval(tick, 2000);
}

$("#key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  localStorage.setItem("raysquad-key", $("#key").value);
  $("#key-form").hidden = true;
  route();
});
$("#cancel").addEventListener("click", () => act("cancel"));
$("#retry").addEventListener("click", () => act("retry"));
window.addEventListener("hashchange", route);
route();
