// A task's waterfall, drawn from its events: one bar per recorded step, from its start (its record
// time less how long it ran) for as long as it ran; an agent's calls (keyed under its step:
// `agent:r#1/llm#2`, `agent:r#1/tool:search#1`) indented under that step; a row with a dot for each
// thing that happened (an agent's turn, a handoff, a failure, an approval asked for, a message
// redelivered, a replica replaced, any other kind of event); on top, the task itself: queued,
// running and waiting, run by run.

import { duration, el } from "./common.js";

// Kinds drawn on the task's own row, not as rows of their own.
const ON_TASK_ROW = new Set(["submitted", "started", "succeeded", "step", "progress"]);

// A step's kind, from its key's last part: the colour of its bar.
export function kindOf(key) {
  const last = key.split("/").pop().replace(/#\d+$/, "");
  const head = last.includes(":") ? last.split(":")[0] : last;
  return ["agent", "llm", "tool", "signal", "publish", "approval", "sleep"].includes(head) ? head : "step";
}

const topKey = (key) => key.split("/")[0];

function fields(e) {
  const { seq, kind, at, ...rest } = e;
  return rest;
}

// What an event says on the timeline: {what (its class: mark-<what>), label, step (the step it
// belongs under, if any)}; null for what the task's row shows.
export function markOf(e) {
  switch (e.kind) {
    case "agent": {
      const turn = `turn ${e.turn}`;
      if (e.handoff) return { what: "handoff", label: `${turn}: hand off to ${e.handoff}`, step: e.step };
      if (e.answer) {
        const used = e.tools_used && e.tools_used.length ? ` (used ${e.tools_used.join(", ")})` : "";
        return { what: "answer", label: `${turn}: answer${used}`, step: e.step };
      }
      if (e.ok === false) return { what: "error", label: `${turn}: ${e.tool} failed: ${e.error}`, step: e.step };
      if (e.tool_calls) return { what: "calls", label: `${turn}: calls ${e.tool_calls.join(", ")}`, step: e.step };
      return { what: "turn", label: `${turn} ${JSON.stringify(fields(e))}`, step: e.step };
    }
    case "approval.requested":
      return { what: "approval", label: `approval? ${e.tool} ${JSON.stringify(e.arguments)}`, step: e.step };
    case "redelivered":
      return { what: "redelivered", step: e.step,
               label: `redelivered to ${e.role}${e.replica ? ` (was on ${e.replica})` : ""}${e.reason ? `: ${e.reason}` : ""}` };
    case "replica.replaced":
      return { what: "replaced", label: `${e.role}: replica ${e.old_replica} replaced by ${e.new_replica}` };
    case "step_retry":
      return { what: "retry", step: topKey(e.key || ""),
               label: `${(e.key || "").split("/").slice(-1)[0]} attempt ${e.attempt} failed (${e.error_type}: ${e.error}); again in ${e.delay_s} s` };
    case "failed": return { what: "failed", label: `failed: ${e.error || ""}` };
    case "cancelled": return { what: "cancelled", label: `cancelled${e.while ? ` while ${e.while}` : ""}` };
    case "cancel_requested": return { what: "cancelled", label: "cancel asked for" };
    case "requeued": return { what: "requeued", label: `queued again: ${e.reason || ""}` };
    case "retried": return { what: "requeued", label: `retried ${JSON.stringify(fields(e))}` };
    case "waiting":
      // An approval's wait is the approval's mark already.
      return (e.signal || "").startsWith("approval:") ? null : { what: "waiting", label: `waiting for signal ${e.signal}` };
    case "signal": return { what: "signal", label: `signal ${e.name}` };
    case "tokens": // a model's text as it streams: one row of them per step
      return { what: "other", label: `text: ${JSON.stringify(e.text)}`, step: e.step };
    default:
      return ON_TASK_ROW.has(e.kind) ? null : { what: "other", label: `${e.kind} ${JSON.stringify(fields(e))}`,
                                                step: typeof e.step === "string" ? e.step : undefined };
  }
}

// Round tick steps for a span of seconds: 1, 2 or 5 times a power of ten, about six of them.
function ticks(span) {
  const raw = span / 6;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  const out = [];
  for (let t = 0; t <= span + step * 1e-9; t += step) out.push(t);
  return out;
}

function tickLabel(t) {
  if (t === 0) return "0";
  if (t < 1) return `${+(t * 1000).toFixed(1)} ms`;
  if (t < 60) return `${+t.toFixed(2)} s`;
  if (t < 3600) return `${+(t / 60).toFixed(1)} min`;
  return `${+(t / 3600).toFixed(1)} h`;
}

// The task's states over time, from its events: [{state, from, to}].
function segments(task, events, origin, end) {
  const out = [];
  let state = "queued";
  let from = origin;
  const to = (next, at) => {
    if (next === state) return;
    if (state && at > from) out.push({ state, from, to: at });
    state = next;
    from = at;
  };
  for (const e of events) {
    if (e.kind === "started") to("running", e.at);
    else if (e.kind === "waiting") to("waiting", e.at);
    else if (e.kind === "requeued" || e.kind === "retried") to("queued", e.at);
    else if (["succeeded", "failed", "cancelled"].includes(e.kind)) to(null, e.at);
  }
  if (state) out.push({ state, from, to: end });
  return out;
}

// Draw the waterfall of ``task`` from its ``events`` (in seq order) into ``box``; ``now`` ends a
// task that has not.
export function drawTimeline(box, task, events, now) {
  const times = events.map((e) => e.at);
  const origin = Math.min(task.created_at, ...times);
  const end = Math.max(task.finished_at || now, ...times);
  const span = Math.max(end - origin, 0.001);
  const pct = (t) => Math.min(Math.max(0, ((t - origin) / span) * 100), 100);

  // Steps by their top-level key; a call or mark whose step has no record yet makes its group
  // (drawn as running).
  const groups = new Map();
  const group = (key) => {
    if (!groups.has(key)) groups.set(key, { key, step: null, start: Infinity, items: [] });
    return groups.get(key);
  };
  const loose = [];
  const others = new Map(); // kind and step -> the one row of the events of a kind not known here
  for (const e of events) {
    if (e.kind === "step") {
      const start = e.at - (e.elapsed_s || 0);
      const item = { at: start, step: e };
      if (e.key.includes("/")) {
        const g = group(topKey(e.key));
        g.items.push(item);
        g.start = Math.min(g.start, start);
      } else {
        const g = group(e.key);
        g.step = e;
        g.start = Math.min(g.start, start);
      }
      continue;
    }
    const mark = markOf(e);
    if (!mark) continue;
    const other = `${e.kind}|${mark.step || ""}`;
    if (mark.what === "other" && others.has(other)) { others.get(other).mark.events.push(e); continue; }
    const item = { at: e.at, mark: { ...mark, event: e, events: [e] } };
    if (mark.what === "other") others.set(other, item);
    if (mark.step) {
      const g = group(mark.step);
      g.items.push(item);
      g.start = Math.min(g.start, e.at);
    } else {
      loose.push(item);
    }
  }

  const rows = [];
  const track = (row) => row.lastChild;
  const row = (cls, label, title) => {
    const r = el("div", `row ${cls}`, [el("span", "label", label), el("div", "track")]);
    r.firstChild.title = title || label;
    rows.push(r);
    return r;
  };
  const bar = (r, cls, from, to, title) => {
    const b = el("div", `bar ${cls}`);
    b.style.left = `${pct(from)}%`;
    b.style.width = `${Math.max(pct(to) - pct(from), 0.25)}%`;
    b.title = title;
    track(r).append(b);
    const took = el("span", "took", duration(to - from));
    if (pct(to) > 82) took.style.right = `${100 - pct(from)}%`;
    else took.style.left = `${pct(to)}%`;
    track(r).append(took);
    return b;
  };
  const instant = (r, cls, at, title) => { // a record whose duration was not kept: where it was made
    const b = el("div", `bar instant ${cls}`);
    b.style.left = `${pct(at)}%`;
    b.title = title;
    track(r).append(b);
    return b;
  };
  const dot = (r, at, title) => {
    const d = el("div", "dot");
    d.style.left = `${pct(at)}%`;
    d.title = title;
    track(r).append(d);
  };

  // The task: queued, running, waiting; a tick per progress event.
  const total = (task.finished_at || now) - task.created_at;
  const taskRow = row("task", `task · ${duration(total)}${task.finished_at ? "" : " so far"}`);
  for (const s of segments(task, events, origin, end)) {
    const seg = el("div", `seg seg-${s.state}`);
    seg.style.left = `${pct(s.from)}%`;
    seg.style.width = `${Math.max(pct(s.to) - pct(s.from), 0.25)}%`;
    seg.title = `${s.state} ${duration(s.to - s.from)}`;
    track(taskRow).append(seg);
  }
  for (const e of events.filter((e) => e.kind === "progress")) {
    const tick = el("div", "tick");
    tick.style.left = `${pct(e.at)}%`;
    tick.title = `progress ${JSON.stringify(fields(e))}`;
    track(taskRow).append(tick);
  }

  const drawMark = (m, depth) => {
    const many = m.events.length > 1; // events of a kind not known here, one row for them all
    const label = many ? `${m.event.kind} ×${m.events.length}` : m.label;
    const r = row(`mark mark-${m.what}`, label, many ? label : `${m.label} (event ${m.event.seq})`);
    r.dataset.turn = m.event.turn ?? "";
    r.dataset.step = m.step || "";
    r.firstChild.style.paddingLeft = `${0.6 + depth * 1.1}rem`;
    for (const e of m.events) {
      dot(r, e.at, `${many ? markOf(e).label : label}, +${duration(e.at - origin)}`);
    }
  };
  const drawStep = (s, depth) => {
    const call = depth > 0;
    const r = row(call ? "step call" : "step", call ? s.key.split("/").slice(1).join("/") : s.key, s.key);
    r.firstChild.style.paddingLeft = `${0.6 + depth * 1.1}rem`;
    const cls = `kind-${kindOf(s.key)}`;
    const b = typeof s.elapsed_s === "number"
      ? bar(r, cls, s.at - s.elapsed_s, s.at, `${s.key}: ${duration(s.elapsed_s)}, from +${duration(s.at - s.elapsed_s - origin)}`)
      : instant(r, cls, s.at, `${s.key}: recorded at +${duration(s.at - origin)} (how long it ran is not kept)`);
    b.dataset.key = s.key;
  };

  const order = [...[...groups.values()].map((g) => ({ at: g.start, g })), ...loose]
    .sort((a, b) => a.at - b.at);
  for (const item of order) {
    if (item.mark) { drawMark(item.mark, 0); continue; }
    const g = item.g;
    if (g.step) {
      drawStep(g.step, 0);
    } else if (task.finished_at) { // its run ended without recording it
      row("step pending", `${g.key} (not recorded)`, g.key);
    } else { // it runs: from its first call or mark until now
      const r = row("step pending", `${g.key} (running)`, g.key);
      bar(r, `kind-${kindOf(g.key)} running`, g.start, end, `${g.key}: running`);
    }
    for (const i of g.items.sort((a, b) => a.at - b.at)) {
      if (i.step) drawStep(i.step, i.step.key.split("/").length - 1);
      else drawMark(i.mark, 1);
    }
  }

  // The time axis and its grid lines, over the tracks.
  const axis = el("div", "row axis", [el("span", "label", "from submit"), el("div", "track")]);
  const grid = el("div", "grid");
  for (const t of ticks(span)) {
    const left = `${pct(origin + t)}%`;
    const label = el("span", `tick-label${pct(origin + t) > 94 ? " end" : ""}`, tickLabel(t));
    label.style.left = left;
    axis.lastChild.append(label);
    const line = el("div", "grid-line");
    line.style.left = left;
    grid.append(line);
  }
  box.replaceChildren(axis, ...rows, grid);
}
