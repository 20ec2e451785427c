// A task's page (`/#task/<id>`): what it was asked (its input), where it stands, its waterfall, its
// events, its result or error; Cancel, Retry, and Approve / Deny for a call that waits for a
// person. Everything is drawn first from the recorded history (GET /v1/tasks/<id>/history); a task
// that has not ended then follows its live stream from the last seq, so nothing comes twice.

import { $, ENDED, api, badge, duration, el, fullDate, getJson, runTime, taskPath, text, when } from "./common.js";
import { drawTimeline } from "./timeline.js";

let view = null; // the task on the page: {id, abort, task, events, lastSeq, requests, ...}

export function currentId() { return view ? view.id : null; }

export function leaveTask() {
  if (!view) return;
  view.abort.abort();
  clearInterval(view.clock);
  clearTimeout(view.refreshing);
  view = null;
}

export async function showTask(id) {
  leaveTask();
  const v = view = { id, abort: new AbortController(), task: null, events: [], lastSeq: 0,
                     requests: new Map(), clock: null, refreshing: null, drawing: false };
  text($("#task-title"), `task ${id}`);
  $("#task-meta").replaceChildren();
  $("#task-body").hidden = true;
  $("#events").replaceChildren();
  $("#timeline").replaceChildren();
  $("#approval").hidden = true;
  delete $("#approval").dataset.call;

  const r = await api(taskPath(id));
  if (v.abort.signal.aborted) return;
  if (!r.ok) {
    text($("#task-title"), r.status === 404 ? `no task ${id}` : `task ${id}: ${r.status} ${r.statusText}`);
    return;
  }
  v.task = await r.json();
  renderTask(v.task);
  $("#task-body").hidden = false;
  for (let after = 0; ;) { // the recorded history, a page at a time
    const page = await getJson(`${taskPath(id)}/history?after=${after}`);
    if (v.abort.signal.aborted) return;
    if (!page) break;
    add(v, page.items);
    if (page.next_after === null) break;
    after = page.next_after;
  }
  render(v);
  if (ENDED.has(v.task.status)) return; // all of it is drawn: no stream to open
  v.clock = setInterval(() => draw(v), 1000); // running bars grow
  await follow(v);
}

// Events after the last one drawn, in seq order; one already drawn is not drawn again.
function add(v, events) {
  const list = $("#events");
  for (const e of events) {
    if (e.seq <= v.lastSeq) continue;
    v.lastSeq = e.seq;
    v.events.push(e);
    if (e.kind === "approval.requested") v.requests.set(e.call_id, e);
    list.append(eventItem(e, v.task.created_at));
  }
}

function eventItem(e, origin) {
  const { seq, kind, at, ...fields } = e;
  const li = el("li", `event-${kind}`, [
    el("span", "seq", seq),
    el("span", "at", `+${duration(Math.max(0, at - origin)) || "0 ms"}`),
    el("span", "kind", kind),
    el("span", "fields", Object.keys(fields).length ? JSON.stringify(fields) : ""),
  ]);
  li.title = `${when(at)} · ${kind} ${JSON.stringify(fields, null, 1)}`;
  return li;
}

function render(v) { renderTask(v.task); draw(v); showApproval(v.task, v.requests); }

function draw(v) {
  if (v.task) drawTimeline($("#timeline"), v.task, v.events, Date.now() / 1000);
}

function fact(name, value, cls) {
  // "status succeeded": a space between the name and its value, for whoever reads the text.
  return el("span", `fact ${cls || ""}`, [el("span", "name", name), " ", value instanceof Node ? value : el("span", "value", value)]);
}

export function renderTask(task) {
  text($("#task-title"), `${task.workflow} ${task.id}`);
  const { s, soFar } = runTime(task);
  const usage = Object.entries(task.usage || {})
    .map(([model, u]) => `${model} ${u.prompt_tokens + u.completion_tokens}`).join(", ");
  $("#task-meta").replaceChildren(...[
    fact("status", badge(task.status)),
    fact("run", task.runs),
    fact("created", when(task.created_at)),
    task.started_at && fact("started", when(task.started_at)),
    task.finished_at && fact("finished", when(task.finished_at)),
    s !== null && fact("duration", `${duration(s)}${soFar ? " so far" : ""}`),
    task.priority && fact("priority", task.priority),
    task.waiting_for && fact("waiting for", task.waiting_for),
    task.cancel_requested && !task.finished_at && fact("cancel", "asked for"),
    usage && fact("tokens", usage),
  ].filter(Boolean));
  $("#task-meta").title = `created ${fullDate(task.created_at)}`;
  $("#input").textContent = JSON.stringify(task.input, null, 2);
  const result = $("#result");
  result.className = task.error ? "failed" : task.status === "succeeded" ? "succeeded" : "";
  result.textContent = task.error ? `error: ${task.error}`
    : task.output !== null && task.output !== undefined ? JSON.stringify(task.output, null, 2)
    : ENDED.has(task.status) ? `(${task.status}, no output)` : "(not ended)";
  $("#cancel").disabled = ENDED.has(task.status);
  $("#retry").disabled = !["failed", "cancelled"].includes(task.status);
}

// Server-Sent Events over fetch (EventSource cannot send the API key), from after the last seq
// drawn, again after a stream that ran its length, until the task ends.
async function follow(v) {
  while (!v.abort.signal.aborted) {
    try {
      const r = await api(`${taskPath(v.id)}/events?after=${v.lastSeq}`, { signal: v.abort.signal });
      if (r.ok) await read(v, r.body.getReader());
    } catch (e) {
      if (e.name === "AbortError") return;
      console.warn(e);
    }
    if (v.abort.signal.aborted) return;
    await refresh(v);
    if (ENDED.has(v.task.status)) break;
    await new Promise((done) => setTimeout(done, 1000));
  }
  clearInterval(v.clock);
  draw(v);
}

async function read(v, reader) {
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
    let cut;
    const batch = [];
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const chunk = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = chunk.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5)).join("\n");
      if (data) batch.push(JSON.parse(data)); // {seq, kind, at, ...the event's own fields}
    }
    if (batch.length) { add(v, batch); draw(v); soon(v); }
  }
}

// The task again (its status, result, what it waits for), at most every 300 ms while events arrive.
function soon(v) {
  if (v.refreshing) return;
  v.refreshing = setTimeout(() => { v.refreshing = null; refresh(v); }, 300);
}

async function refresh(v) {
  const r = await api(taskPath(v.id));
  if (!r.ok || v.abort.signal.aborted || view !== v) return;
  v.task = await r.json();
  render(v);
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

export async function decide(decision) {
  if (!view) return;
  const v = view;
  const panel = $("#approval");
  const body = { decision };
  if (decision === "approve") {
    try { body.arguments = JSON.parse($("#approval-arguments").value); } catch (e) {
      text($("#approval-error"), `the arguments are not JSON: ${e.message}`);
      return;
    }
  }
  const reason = $("#approval-reason").value.trim();
  if (reason) body.reason = reason;
  const r = await api(`${taskPath(v.id)}/approvals/${encodeURIComponent(panel.dataset.call)}`,
                      { method: "POST", body: JSON.stringify(body) });
  if (!r.ok) {
    const error = (await r.json().catch(() => ({}))).error;
    text($("#approval-error"), `${r.status}: ${error ? error.message : r.statusText}`);
    return;
  }
  panel.hidden = true;
  v.task = await r.json();
  renderTask(v.task);
  $("#task-meta").append(fact("decision", decision === "approve" ? "approved" : "denied"));
}

export async function act(verb) {
  if (!view) return;
  const v = view;
  const r = await api(`${taskPath(v.id)}/${verb}`, { method: "POST" });
  if (verb === "retry" && r.ok) { showTask(v.id); return; }
  if (r.ok && view === v) { v.task = await r.json(); render(v); }
}
