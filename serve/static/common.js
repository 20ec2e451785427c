// What every part of the status page shares: the API (with the API key this browser keeps), and
// small helpers to make elements and to say times and durations.

export const $ = (s) => document.querySelector(s);
export const STATUSES = ["queued", "running", "waiting", "succeeded", "failed", "cancelled"];
export const ENDED = new Set(["succeeded", "failed", "cancelled"]);

const key = () => localStorage.getItem("raysquad-key") || "";

export async function api(path, options = {}) {
  // A state-changing request says it is JSON even without a body: a server without API keys takes
  // no other, since a page of another site cannot send that content type without asking first.
  const json = options.method && options.method !== "GET" ? { "Content-Type": "application/json" } : {};
  const auth = key() ? { Authorization: `Bearer ${key()}` } : {};
  const response = await fetch(path, { ...options, headers: { ...auth, ...json, ...(options.headers || {}) } });
  if (response.status === 401) { $("#key-form").hidden = false; throw new Error("API key needed"); }
  return response;
}

export async function getJson(path) {
  const response = await api(path);
  return response.ok ? response.json() : null;
}

export const taskPath = (id) => `/v1/tasks/${encodeURIComponent(id)}`;

export function text(el, value) { el.textContent = value; return el; }

// An element: el("span", "status", "succeeded"), el("td", null, [child, "text"]).
export function el(tag, cls, content) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (content !== undefined && content !== null) {
    for (const c of Array.isArray(content) ? content : [content]) {
      node.append(c instanceof Node ? c : String(c));
    }
  }
  return node;
}

const SVG = "http://www.w3.org/2000/svg";
export function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

export function badge(status) { return el("span", `badge status-${status}`, status); }

// A time of day (with the date when it is not today); "" for none.
export function when(t) {
  if (!t) return "";
  const d = new Date(t * 1000);
  const today = d.toDateString() === new Date().toDateString();
  return today ? d.toLocaleTimeString() : `${d.toLocaleDateString()} ${d.toLocaleTimeString()}`;
}

export function fullDate(t) { return t ? new Date(t * 1000).toString() : ""; }

// A duration in seconds as people read it: 0.4 ms, 120 ms, 1.24 s, 3 min 5 s, 2 h 10 min.
export function duration(s) {
  if (s === null || s === undefined || !isFinite(s)) return "";
  if (s < 0.001) return `${(s * 1000).toFixed(1)} ms`;
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 10) return `${s.toFixed(2)} s`;
  if (s < 60) return `${s.toFixed(1)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}

// How long a task has run: started to finished, or to now ("so far") while it has not ended.
export function runTime(task) {
  if (!task.started_at) return { s: null, soFar: false };
  const end = task.finished_at || Date.now() / 1000;
  return { s: Math.max(0, end - task.started_at), soFar: !task.finished_at };
}

export function shorten(value, n) { return value.length > n ? `${value.slice(0, n - 1)}…` : value; }
