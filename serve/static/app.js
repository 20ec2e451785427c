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

// A step's kind, from its key; an agent's calls are keyed under its step (`agent:r#1/llm#2`,
// `agent:r#1/tool:search#1`): the call's own kind, drawn indented under its step.
function kindOf(key) {
  const last = key.split("/").pop().replace(/#\d+$/, "");
  const head = last.includes(":") ? last.split(":")[0] : last;
  return ["agent", "llm", "tool", "signal", "publish", "approval"].includes(head) ? head : "step";
}

// An agent's turn (an `agent` event) or a call waiting for a person, as the timeline says it.
function markOf(e) {
  if (e.kind === "approval.requested") return { what: "approval", label: `approval? ${e.tool} ${JSON.stringify(e.arguments)}` };
  if (e.handoff) return { what: "handoff", label: `turn ${e.turn}: hand off to ${e.handoff}` };
  if (e.answer) return { what: "answer", label: `turn ${e.turn}: answer${e.tools_used && e.tools_used.length ? ` (used ${e.tools_used.join(", ")})` : ""}` };
  if (e.ok === false) return { what: "error", label: `turn ${e.turn}: ${e.tool} failed: ${e.error}` };
  if (e.tool_calls) return { what: "calls", label: `turn ${e.turn}: calls ${e.tool_calls.join(", ")}` };
  return null;
}

function drawTimeline(task, steps, marks) {
  const box = $("#timeline");
  box.replaceChildren();
  const start = task.started_at || task.created_at;
  const times = [...steps.map((s) => s.at), ...marks.map((m) => m.at)];
  const end = Math.max(task.finished_at || Date.now() / 1000, ...times);
  const span = Math.max(end - start, 0.001);
  const at = (t) => `${Math.min(Math.max(0, (t - start) / span) * 100, 99.5)}%`;
  const items = [...steps.map((s) => ({ at: s.at, step: s })), ...marks.map((m) => ({ at: m.at, mark: m }))]
    .sort((a, b) => a.at - b.at);
  for (const item of items) {
    const row = document.createElement("div");
    const track = document.createElement("div");
    track.className = "track";
    let label;
    if (item.step) {
      const s = item.step;
      const elapsed = s.elapsed_s || 0;
      const call = s.key.includes("/");
      row.className = call ? "row call" : "row";
      label = call ? `${s.key.split("/").pop()}` : `${s.key} · ${(elapsed * 1000).toFixed(0)} ms`;
      const bar = document.createElement("div");
      bar.className = `bar kind-${kindOf(s.key)}`;
      bar.dataset.key = s.key;
      bar.title = `${s.key}: ${(elapsed * 1000).toFixed(1)} ms, recorded ${when(s.at)}`;
      bar.style.marginLeft = at(s.at - elapsed);
      bar.style.width = `${Math.max((elapsed / span) * 100, 0.5)}%`;
      track.append(bar);
    } else {
      const m = item.mark;
      row.className = `row mark mark-${m.what}`;
      row.dataset.turn = m.turn ?? "";
      row.dataset.step = m.step || "";
      label = m.label;
      const dot = document.createElement("div");
      dot.className = "dot";
      dot.style.marginLeft = at(m.at);
      dot.title = `${m.label} at ${when(m.at)}`;
      track.append(dot);
    }
    const caption = text(document.createElement("span"), label);
    caption.className = "label";
    caption.title = label;
    row.append(caption, track);
    box.append(row);
  }
}

// A task parked on `approval:<call_id>`: the call (from its approval.requested event), its
// arguments to edit, and Approve / Deny.
function showApproval(task, requests) {
  const panel = $("#approval");
  const waiting = task.status === "waiting" && (task.waiting_for || "").startsWith("approval:");
  const callId = waiting ? task.waiting_for.slice("approval:".length) : null;
  const request = callId ? requests.get(callId) : null;
  panel.hidden = !request;
  if (!request || panel.dataset.call === callId) return;
  panel.dataset.call = callId;
  text($("#approval-what"), `${request.tool} (call ${callId}, ${request.step}) waits for a person.`);
  $("#approval-arguments").value = JSON.stringify(request.arguments, null, 2);
  $("#approval-reason").value = "";
  text($("#approval-error"), "");
}

async function decide(decision) {
  const id = location.hash.slice("#task/".length);
  const panel = $("#approval");
  const body = { decision };
  if (decision === "approve") {
    let args;
    try { args = JSON.parse($("#approval-arguments").value); } catch (e) {
      text($("#approval-error"), `the arguments are not JSON: ${e.message}`); return;
    }
    body.arguments = args;
  }
  const reason = $("#approval-reason").value.trim();
  if (reason) body.reason = reason;
  const r = await api(`/v1/tasks/${encodeURIComponent(id)}/approvals/${encodeURIComponent(panel.dataset.call)}`,
                      { method: "POST", body: JSON.stringify(body) });
  if (!r.ok) {
    const detail = (await r.json().catch(() => ({}))).detail;
    text($("#approval-error"), `${r.status}: ${typeof detail === "string" ? detail : JSON.stringify(detail || r.statusText)}`);
    return;
  }
  panel.hidden = true;
  text($("#task-meta"), `${$("#task-meta").textContent} · ${decision === "approve" ? "approved" : "denied"}`);
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
  const marks = [];
  const requests = new Map(); // call id -> its approval.requested event
  const list = $("#events");
  list.replaceChildren();
  $("#approval").hidden = true;
  delete $("#approval").dataset.call;
  drawTimeline(task, steps, marks);
  stream = new AbortController();
  const refresh = async () => {
    const r = await api(`/v1/tasks/${encodeURIComponent(id)}`);
    if (r.ok) { task = await r.json(); meta(); result(); drawTimeline(task, steps, marks); showApproval(task, requests); }
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
        if (event.kind === "approval.requested") requests.set(event.call_id, event);
        const mark = event.kind === "agent" || event.kind === "approval.requested" ? markOf(event) : null;
        if (mark) marks.push({ ...event, ...mark });
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
$("#approve").addEventListener("click", () => decide("approve"));
$("#deny").addEventListener("click", () => decide("deny"));
window.addEventListener("hashchange", route);
route();
