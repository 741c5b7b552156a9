"""The console page: one HTML document with its CSS and a small script inline (no build
step, nothing fetched from a CDN). It reads and acts through relative paths — `jobs`,
`jobs/{id}`, `jobs/{id}/history`, `jobs/{id}/children`, `jobs/{id}/effects`,
`jobs/{id}/cancel`, `jobs/{id}/redrive`, `types/{type}/pause|resume`, `paused` — so the
same page works under `jobstate console` and under the status API's `/console`.
"""

from __future__ import annotations

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>jobstate console</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #1d2733; background: #f6f7f9; }
  header { background: #1d2733; color: #fff; padding: 8px 16px; display: flex; gap: 16px;
           align-items: center; flex-wrap: wrap; }
  header h1 { font-size: 16px; margin: 0 12px 0 0; }
  header label { display: flex; gap: 4px; align-items: center; }
  main { display: grid; grid-template-columns: minmax(420px, 1fr) minmax(420px, 1fr);
         gap: 16px; padding: 16px; }
  section { background: #fff; border: 1px solid #dde1e6; border-radius: 6px; padding: 12px;
            overflow: auto; }
  h2 { font-size: 15px; margin: 0 0 8px; }
  h3 { font-size: 13px; margin: 14px 0 6px; color: #4b5563; }
  table { border-collapse: collapse; width: 100%; }
  th, td { text-align: left; padding: 4px 6px; border-bottom: 1px solid #eef0f3;
           vertical-align: top; }
  td.detail { white-space: pre-wrap; overflow-wrap: anywhere; }
  tr.job { cursor: pointer; }
  tr.job td:first-child { word-break: break-all; max-width: 240px; }
  tr.job:hover, tr.job.selected { background: #eef4ff; }
  .bar { position: relative; height: 14px; min-width: 120px; background: #e5e7eb;
         border-radius: 3px; overflow: hidden; }
  .bar > span { position: absolute; left: 0; top: 0; bottom: 0; background: #3b82f6; }
  .bar > em { position: relative; font-size: 11px; font-style: normal; padding-left: 4px; }
  .st { font-weight: 600; font-size: 12px; padding: 1px 6px; border-radius: 3px; }
  .RUNNING, .PENDING { background: #dbeafe; color: #1e40af; }
  .WAITING { background: #ede9fe; color: #5b21b6; }
  .PAUSED { background: #fef3c7; color: #92400e; }
  .SUCCEEDED { background: #dcfce7; color: #166534; }
  .FAILED { background: #fee2e2; color: #991b1b; }
  .CANCELLED { background: #e5e7eb; color: #374151; }
  #grid { display: flex; flex-wrap: wrap; gap: 2px; }
  #grid div { width: 12px; height: 12px; border-radius: 2px; }
  #grid .RUNNING, #grid .PENDING { background: #3b82f6; }
  #grid .WAITING { background: #8b5cf6; }  #grid .PAUSED { background: #f59e0b; }
  #grid .SUCCEEDED { background: #22c55e; }  #grid .FAILED { background: #ef4444; }
  #grid .CANCELLED { background: #9ca3af; }
  .timeline { display: flex; align-items: flex-end; gap: 1px; height: 60px;
              border-bottom: 1px solid #d1d5db; overflow-x: auto; }
  .timeline div { width: 8px; min-height: 2px; background: #3b82f6; flex: none; }
  .timeline .waited, .timeline .spawned { background: #8b5cf6; }
  .timeline .retry_scheduled, .timeline .deferred { background: #f59e0b; }
  .timeline .failed { background: #ef4444; }  .timeline .succeeded { background: #22c55e; }
  .timeline .takeover { background: #111827; }
  .actions { display: flex; gap: 8px; flex-wrap: wrap; margin: 8px 0; }
  button { padding: 4px 10px; border: 1px solid #9ca3af; border-radius: 4px; background: #fff;
           cursor: pointer; }
  button.danger { border-color: #dc2626; color: #b91c1c; }
  #message { min-height: 18px; color: #b91c1c; }
  dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; margin: 0; }
  dt { color: #6b7280; }  dd { margin: 0; overflow-wrap: anywhere; }
  .muted { color: #6b7280; }
</style>
</head>
<body>
<header>
  <h1>jobstate console</h1>
  <label>type <input id="f-type" size="16" placeholder="any"></label>
  <label>status <select id="f-status">
    <option value="">any</option><option>PENDING</option><option>RUNNING</option>
    <option>WAITING</option><option>SUCCEEDED</option><option>FAILED</option>
    <option>CANCELLED</option></select></label>
  <span id="paused" class="muted"></span>
  <span id="updated" class="muted"></span>
</header>
<div id="message" role="status"></div>
<main>
  <section>
    <h2>Jobs</h2>
    <table><thead><tr><th>job</th><th>type</th><th>status</th><th>step</th>
      <th>progress</th><th>updated</th></tr></thead><tbody id="jobs"></tbody></table>
    <p id="no-jobs" class="muted" hidden>no jobs</p>
  </section>
  <section id="detail" hidden>
    <h2 id="d-title"></h2>
    <div class="actions">
      <button id="cancel-btn" class="danger">Cancel job</button>
      <button id="redrive-btn">Redrive…</button>
      <button id="pause-btn">Pause type</button>
      <button id="resume-btn">Resume type</button>
    </div>
    <dl id="d-fields"></dl>
    <h3>Step timeline <span class="muted">(bar height: duration)</span></h3>
    <div id="timeline" class="timeline"></div>
    <h3 id="children-title">Children</h3>
    <div id="grid"></div>
    <h3>Effects</h3>
    <table><thead><tr><th>key</th><th>state</th><th>step</th><th>runs</th>
      <th>last error</th></tr></thead><tbody id="effects"></tbody></table>
    <h3>History</h3>
    <table><thead><tr><th>when</th><th>step</th><th>event</th><th>took</th><th>by</th>
      <th>detail</th></tr></thead><tbody id="history"></tbody></table>
  </section>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let selected = null;
let busy = false;

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(k ?? ""));
  return e;
}
function when(ms) { return ms ? new Date(ms).toISOString().replace("T", " ").slice(0, 19) : ""; }
function say(text) { $("message").textContent = text || ""; }

async function call(method, path, body) {
  const r = await fetch(path, {method, headers: {"content-type": "application/json"},
                               body: body === undefined ? undefined : JSON.stringify(body)});
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(data.error || (method + " " + path + ": HTTP " + r.status));
  return data;
}

function bar(p) {
  const frac = p && p.total ? Math.max(0, Math.min(1, p.done / p.total)) : null;
  const b = el("div", {class: "bar", "data-done": String(p ? p.done : 0),
                       "data-total": String(p && p.total != null ? p.total : "")});
  const fill = el("span"); fill.style.width = (frac === null ? 0 : frac * 100) + "%";
  const text = p ? (p.total ? `${p.done} / ${p.total} ${p.unit || ""}` : `${p.done || 0}`) : "";
  b.append(fill, el("em", {}, text));
  return b;
}

async function refreshJobs() {
  const q = new URLSearchParams({limit: "50"});
  if ($("f-type").value.trim()) q.set("type", $("f-type").value.trim());
  if ($("f-status").value) q.set("status", $("f-status").value);
  const page = await call("GET", "jobs?" + q);
  const body = $("jobs"); body.replaceChildren();
  for (const j of page.jobs) {
    const status = j.display_status || j.status;
    const tr = el("tr", {class: "job" + (j.job_id === selected ? " selected" : ""),
                         "data-job-id": j.job_id, "data-status": status},
      el("td", {}, j.job_id), el("td", {}, j.job_type),
      el("td", {}, el("span", {class: "st " + status}, status)),
      el("td", {}, String(j.step)), el("td", {}, bar(j.rollup || j.progress)),
      el("td", {}, when(j.updated_at)));
    tr.addEventListener("click", () => { selected = j.job_id; refresh(); });
    body.append(tr);
  }
  $("no-jobs").hidden = page.jobs.length > 0;
}

function timeline(history) {
  const steps = history.filter((e) => e.duration_ms != null || e.event === "failed");
  const longest = Math.max(1, ...steps.map((e) => e.duration_ms || 0));
  const t = $("timeline"); t.replaceChildren();
  for (const e of steps) {
    const d = el("div", {class: e.event,
                         title: `step ${e.step} ${e.event} ${e.duration_ms ?? "?"} ms`});
    d.style.height = Math.max(2, 56 * (e.duration_ms || 0) / longest) + "px";
    t.append(d);
  }
}

async function refreshDetail() {
  if (!selected) { $("detail").hidden = true; return; }
  const id = encodeURIComponent(selected);
  const job = await call("GET", "jobs/" + id);
  const status = job.display_status || job.status;
  $("detail").hidden = false;
  $("detail").dataset.status = status;
  $("d-title").replaceChildren(job.job_id + " ",
                               el("span", {class: "st " + status, id: "d-status"}, status));
  const fields = [["type", job.job_type], ["step", job.step], ["paused by", job.paused_by],
                  ["error", job.error], ["attempt", job.attempt], ["retries", job.retries],
                  ["takeovers", job.takeovers], ["invocations", job.invocations],
                  ["created", when(job.created_at)], ["wait reason", job.wait_reason]];
  const dl = $("d-fields"); dl.replaceChildren();
  dl.append(el("dt", {}, "progress"), el("dd", {}, bar(job.rollup || job.progress)));
  for (const [k, v] of fields) if (v !== null && v !== undefined && v !== "")
    dl.append(el("dt", {}, k), el("dd", {}, String(v)));
  const [hist, kids, fx] = await Promise.all([
    call("GET", `jobs/${id}/history`),
    job.children_total ? call("GET", `jobs/${id}/children`) : Promise.resolve(null),
    call("GET", `jobs/${id}/effects`).catch(() => ({effects: []}))]);
  timeline(hist.history);
  const h = $("history"); h.replaceChildren();
  for (const e of hist.history.slice().reverse()) {
    h.append(el("tr", {"data-event": e.event}, el("td", {}, when(e.ended_at || e.started_at)),
      el("td", {}, String(e.step)),
      el("td", {}, e.event + (e.attempt ? ` (attempt ${e.attempt})` : "")),
      el("td", {}, e.duration_ms == null ? "" : e.duration_ms + " ms"),
      el("td", {}, e.who || ""), el("td", {class: "detail"}, e.detail || "")));
  }
  const g = $("grid"); g.replaceChildren();
  $("children-title").textContent = kids ? `Children (${kids.total})` : "Children (none)";
  for (const c of (kids ? kids.children : [])) {
    const cell = el("div", {class: c.display_status, title: `${c.job_id} ${c.display_status}`,
                            "data-child": c.job_id});
    cell.addEventListener("click", () => { selected = c.job_id; refresh(); });
    g.append(cell);
  }
  const f = $("effects"); f.replaceChildren();
  for (const e of fx.effects) f.append(el("tr", {}, el("td", {}, e.key), el("td", {}, e.state),
    el("td", {}, String(e.step)), el("td", {}, String(e.runs)), el("td", {}, e.last_error || "")));
}

async function refreshPaused() {
  try {
    const p = await call("GET", "paused");
    const names = p.paused.map((x) => x.job_type).join(", ");
    $("paused").textContent = names ? "paused: " + names : "";
  } catch (e) { $("paused").textContent = ""; }  // the status API does not list them
}

async function refresh() {
  if (busy) return;
  busy = true;
  try {
    await refreshJobs(); await refreshDetail();
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (e) { say(e.message); } finally { busy = false; }
}

async function act(question, method, path, body) {
  if (!window.confirm(question)) return;
  try { await call(method, path, body); say(""); } catch (e) { say(e.message); }
  refresh(); refreshPaused();
}

$("cancel-btn").addEventListener("click", () => {
  const reason = window.prompt(`Cancel job ${selected} and its unfinished children? Reason:`,
                               "cancelled from the console");
  if (reason === null) return;
  act(`Really cancel ${selected}?`, "POST", `jobs/${encodeURIComponent(selected)}/cancel`,
      {reason: reason || "cancelled from the console"});
});
$("redrive-btn").addEventListener("click", () => {
  const step = window.prompt(
    `Redrive ${selected} from which step? (empty: the step it failed at)`, "");
  if (step === null) return;
  const body = {reason: "redriven from the console"};
  if (step.trim()) body.from_step = Number(step);
  act(`Redrive ${selected}${step.trim() ? " from step " + step : ""}?`, "POST",
      `jobs/${encodeURIComponent(selected)}/redrive`, body);
});
for (const [btn, verb] of [["pause-btn", "pause"], ["resume-btn", "resume"]]) {
  $(btn).addEventListener("click", async () => {
    const job = await call("GET", "jobs/" + encodeURIComponent(selected));
    act(`${verb} every job of type ${job.job_type}?`, "POST",
        `types/${encodeURIComponent(job.job_type)}/${verb}`, {reason: verb + "d from the console"});
  });
}
$("f-type").addEventListener("change", refresh);
$("f-status").addEventListener("change", refresh);
refresh(); refreshPaused();
setInterval(refresh, 1000);
setInterval(refreshPaused, 10000);
</script>
</body>
</html>
"""
