// dftflow dashboard: fetches /api/<view> and renders it. Project data is only ever set as text
// (never as HTML), so a structure uid or a failure reason cannot inject markup.
"use strict";

const TOKEN = new URLSearchParams(location.search).get("token");
const POLL_MS = Math.max(500, parseInt(document.body.dataset.pollMs, 10) || 3000);
const STATES = ["WAITING", "READY", "RUNNING", "COMPLETED", "FAILED", "LOST"];

function withToken(url) {
  if (!TOKEN) return url;
  return url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(TOKEN);
}

function fileUrl(rel) {
  return withToken("/files/" + rel.split("/").map(encodeURIComponent).join("/"));
}

async function api(view, params) {
  const query = params ? "?" + new URLSearchParams(params).toString() : "";
  const response = await fetch(withToken("/api/" + view + query), {cache: "no-store"});
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined) continue;
    if (key === "class") node.className = value;
    else if (key === "style") node.style.cssText = value;  // CSSOM: allowed by the page's CSP, unlike style=""
    else node.setAttribute(key, value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function fmt(value) {
  if (value === null || value === undefined) return "";
  if (typeof value === "number") {
    if (Number.isInteger(value)) return value.toLocaleString("en-US");
    const a = Math.abs(value);
    return a !== 0 && (a < 1e-3 || a >= 1e6) ? value.toExponential(3) : value.toPrecision(4);
  }
  if (typeof value === "boolean") return value ? "yes" : "no";
  if (Array.isArray(value)) return value.join(" × ");
  return String(value);
}

function table(columns, rows, attrs) {
  // columns: [[key, label, numeric?]]; rows: objects or arrays of cell contents
  const head = el("tr", {}, columns.map(([key, label, num]) => el("th", {class: num ? "num" : null}, label)));
  const body = rows.map((row) => el("tr", {}, columns.map(([key, , num]) => {
    const value = typeof key === "function" ? key(row) : row[key];
    return el("td", {class: num ? "num" : null}, value instanceof Node ? value : fmt(value));
  })));
  return el("table", attrs || {}, el("thead", {}, head), el("tbody", {}, body));
}

function figures(paths) {
  return el("div", {class: "figures"}, paths.map((p) =>
    el("figure", {}, el("a", {href: fileUrl(p)}, el("img", {src: fileUrl(p), alt: p})),
       el("figcaption", {}, p))));
}

function replace(id, ...children) {
  const node = document.getElementById(id);
  node.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined));
  return node;
}

function failed(id, error) {
  replace(id, el("p", {class: "error"}, "could not load: " + error.message));
}

// -- header -------------------------------------------------------------------------------------
async function loadOverview() {
  const data = await api("overview");
  document.getElementById("project-name").textContent = data.name + (data.recipe ? " (" + data.recipe + ")" : "");
  document.getElementById("project-path").textContent = data.project;
  document.title = "dftflow · " + data.name;
}

// -- funnel -------------------------------------------------------------------------------------
async function loadFunnel() {
  const data = await api("funnel");
  if (!data.catalog) {
    replace("funnel-body", el("p", {class: "muted"}, "no catalog.sqlite in this project"));
    return;
  }
  const reasons = (r) => r.reasons.map(([why, n]) => why + " (" + n + ")").join("; ");
  replace("funnel-body",
    table([["step", "step"], ["entered", "entered", 1], ["passed", "passed", 1], ["failed", "failed", 1],
           ["undetermined", "undetermined", 1], [reasons, "top reasons"]], data.funnel, {id: "funnel-table"}),
    el("h3", {}, "Top rejection reasons"),
    data.top_reasons.length
      ? table([[(r) => r[0], "step: reason"], [(r) => r[1], "structures", 1]], data.top_reasons, {id: "funnel-reasons"})
      : el("p", {class: "muted", id: "funnel-reasons"}, "no structure was rejected"),
    el("h3", {}, "Figures"), figures(data.figures));
}

// -- candidates ---------------------------------------------------------------------------------
const search = {offset: 0, limit: 100, timer: null};

async function loadCandidates() {
  const q = document.getElementById("candidate-query").value;
  const state = document.getElementById("candidate-state").value;
  const data = await api("candidates", {q: q, state: state, offset: search.offset, limit: search.limit});
  const select = document.getElementById("candidate-state");
  if (select.options.length === 1) {
    for (const [name, n] of Object.entries(data.states)) select.append(el("option", {value: name}, name + " (" + n + ")"));
  }
  const last = Math.min(data.offset + data.rows.length, data.matched);
  document.getElementById("candidate-count").textContent =
    (data.matched ? (data.offset + 1) + "–" + last : "0") + " of " + data.matched + " matching (" + data.total + " in the catalog)";
  replace("candidates-body", el("div", {class: "scroll"},
    table([["uid", "uid"], ["formula", "formula"], ["nsites", "sites", 1], ["state", "outcome"], ["reason", "reason"]],
          data.rows, {id: "candidates-table"})));
  search.matched = data.matched;
}

function setUpSearch() {
  const again = () => { search.offset = 0; clearTimeout(search.timer); search.timer = setTimeout(() => loadCandidates().catch((e) => failed("candidates-body", e)), 250); };
  document.getElementById("candidate-query").addEventListener("input", again);
  document.getElementById("candidate-state").addEventListener("change", again);
  document.getElementById("candidate-search").addEventListener("submit", (e) => { e.preventDefault(); again(); });
  document.getElementById("candidate-prev").addEventListener("click", () => {
    search.offset = Math.max(0, search.offset - search.limit); loadCandidates().catch((e) => failed("candidates-body", e));
  });
  document.getElementById("candidate-next").addEventListener("click", () => {
    if (search.offset + search.limit < (search.matched || 0)) search.offset += search.limit;
    loadCandidates().catch((e) => failed("candidates-body", e));
  });
}

// -- DFT jobs and failures (polled) -------------------------------------------------------------
function seconds(s) {
  if (s === null || s === undefined) return "";
  return s < 0.01 ? "< 0.01" : s.toFixed(s < 100 ? 2 : 0);
}

function when(t) {
  return t ? new Date(t * 1000).toLocaleTimeString("en-GB") : "";
}

const shown = {jobs: null, failures: null};  // what is on the page: unchanged parts are not redrawn (keeps scrolling)

function renderJobs(data) {
  document.getElementById("jobs-updated").textContent = when(data.at);
  const key = JSON.stringify([data.exists, data.counts, data.running, data.recent]);
  if (key !== shown.jobs) {
    shown.jobs = key;
    replace("jobs-body", jobsView(data));
  }
  const failuresKey = JSON.stringify([data.exists, data.failed_total, data.failure_reasons, data.failures]);
  if (failuresKey !== shown.failures) {
    shown.failures = failuresKey;
    replace("failures-body", failuresView(data));
  }
}

function jobsView(data) {
  const fireworks = data.engine === "fireworks";
  if (!data.exists) return [el("p", {class: "muted"}, fireworks
    ? "no fireworks of this project on its LaunchPad (" + data.launchpad + ") yet"
    : "no jobs.sqlite in this project yet (a build with a dft: stage makes it)")];
  const states = data.states || STATES;
  const total = data.total || 1;
  const bar = el("div", {class: "bar", title: "jobs by state"},
    states.filter((s) => data.counts[s]).map((s) =>
      el("span", {class: s, style: "width:" + (100 * data.counts[s] / total) + "%", title: s + ": " + data.counts[s]})));
  const counts = el("table", {id: "jobs-counts"},
    el("thead", {}, el("tr", {}, states.map((s) => el("th", {class: "num state-" + s}, s)), el("th", {class: "num"}, "total"))),
    el("tbody", {}, el("tr", {}, states.map((s) => el("td", {class: "num", id: "jobs-count-" + s}, fmt(data.counts[s]))),
                     el("td", {class: "num", id: "jobs-total"}, fmt(data.total)))));
  const engine = fireworks
    ? el("p", {class: "muted small", id: "jobs-engine"}, "FireWorks engine, LaunchPad " + data.launchpad +
         ", as last recovered by dftflow status / submit")
    : null;
  return [engine, counts, bar,
    el("h3", {}, "Running (" + data.running.length + ")"),
    data.running.length
      ? table([["uid", "structure"], ["job", "job"], ["worker", "worker"], ["host", "host"], ["attempts", "attempt", 1],
               [(r) => when(r.started), "started"], [(r) => when(r.heartbeat), "heartbeat"]], data.running, {id: "jobs-running"})
      : el("p", {class: "muted", id: "jobs-running"}, "nothing running"),
    el("h3", {}, "Latest finished"),
    table([["uid", "structure"], ["job", "job"], [(r) => el("span", {class: "state-" + r.state}, r.state), "state"],
           [(r) => when(r.finished), "finished"], [(r) => seconds(r.seconds), "seconds", 1]], data.recent, {id: "jobs-recent"})];
}

function failuresView(data) {
  if (!data.exists) return [el("p", {class: "muted"}, "no DFT jobs")];
  const logs = (r) => el("span", {}, r.logs.map((p) => [el("a", {href: fileUrl(p), class: "log"}, p.split("/").pop()), " "]));
  return [
    el("p", {id: "failures-total"}, data.failed_total + " " + (data.failed_label || "failed or lost") +
      (data.failed_total > data.failures.length ? " (the latest " + data.failures.length + " listed)" : "")),
    data.failure_reasons.length
      ? table([[(r) => r[0], "reason"], [(r) => r[1], "jobs", 1]], data.failure_reasons, {id: "failure-reasons"}) : null,
    data.failures.length
      ? el("div", {class: "scroll"}, table([["uid", "structure"], ["job", "job"],
          [(r) => el("span", {class: "state-" + r.state}, r.state), "state"], ["attempts", "attempts", 1],
          ["reason", "reason"], [logs, "logs"]], data.failures, {id: "failures-table"}))
      : null];
}

async function pollJobs() {
  try {
    renderJobs(await api("jobs"));
  } catch (error) {
    document.getElementById("jobs-updated").textContent = "failed (" + error.message + "), retrying";
  } finally {
    setTimeout(pollJobs, POLL_MS);
  }
}

// -- datasets -----------------------------------------------------------------------------------
function kv(pairs) {
  return el("div", {class: "kv"}, pairs.map(([k, v]) => [el("span", {class: "muted"}, k), el("span", {}, fmt(v))]));
}

async function loadDatasets() {
  const data = await api("datasets");
  if (!data.length) {
    replace("datasets-body", el("p", {class: "muted"}, "no dataset in this project (a folder with manifest.sqlite)"));
    return;
  }
  replace("datasets-body", data.map((d) => el("div", {class: "dataset", "data-path": d.path},
    el("h3", {}, d.path),
    kv([["materials", d.materials], ["quarantined", d.quarantined],
        ["functionals", Object.entries(d.functionals).map(([k, n]) => k + " " + n).join(", ")],
        ["engines", Object.entries(d.engines).map(([k, n]) => k + " " + n).join(", ")],
        ["bytes on disk (stored)", d.bytes],
        ["grid points min / median / max", d.grid.n ? [d.grid.min, d.grid.median, d.grid.max].map(fmt).join(" / ") : "–"]]),
    d.grid.n ? table([[(r) => r[0], "grid shape"], [(r) => r[1], "materials", 1]], d.grid.shapes, {class: "grid-shapes"}) : null,
    el("div", {class: "scroll"}, table([["material_id", "material"], ["formula", "formula"], ["nsites", "sites", 1],
      ["grid", "grid"], ["functional", "functional"], ["engine", "engine"], ["nbytes", "bytes", 1]], d.rows, {class: "materials"})),
    el("h3", {}, "Quarantine (" + d.quarantined + ")"),
    d.quarantine.length
      ? table([["material_id", "material"], ["source", "source"], ["reason", "reason"]], d.quarantine, {class: "quarantine"})
      : el("p", {class: "muted"}, "nothing quarantined"))));
}

// -- training -----------------------------------------------------------------------------------
const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  node.append(...children);
  return node;
}

function chart(points, title, cls) {
  const W = 460, H = 240, L = 56, R = 10, T = 22, B = 30;
  const node = svg("svg", {class: "chart", width: W, height: H, viewBox: "0 0 " + W + " " + H, "data-points": points.length});
  node.append(svg("text", {x: L, y: 14}, title));
  if (!points.length) { node.append(svg("text", {x: L, y: H / 2}, "no points yet")); return node; }
  const log = points.every((p) => p[1] > 0);
  const ys = points.map((p) => log ? Math.log10(p[1]) : p[1]);
  const xs = points.map((p) => p[0]);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs) || 1];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (y0 === y1) { y0 -= 0.5; y1 += 0.5; }
  const px = (x) => L + (W - L - R) * (x1 === x0 ? 0.5 : (x - x0) / (x1 - x0));
  const py = (y) => T + (H - T - B) * (1 - (y - y0) / (y1 - y0));
  const d = points.map((p, i) => (i ? "L" : "M") + px(p[0]).toFixed(1) + " " + py(ys[i]).toFixed(1)).join(" ");
  node.append(svg("path", {class: "axis", fill: "none", d: "M" + L + " " + T + " V" + (H - B) + " H" + (W - R)}),
              svg("path", {class: cls, fill: "none", d: d}));
  const label = (y) => fmt(log ? Math.pow(10, y) : y);
  node.append(svg("text", {x: 2, y: T + 8}, label(y1)), svg("text", {x: 2, y: H - B}, label(y0)),
              svg("text", {x: L, y: H - 8}, "step " + fmt(x0)), svg("text", {x: W - R - 70, y: H - 8}, "step " + fmt(x1)));
  if (points.length === 1) node.append(svg("circle", {cx: px(points[0][0]), cy: py(ys[0]), r: 3, class: cls}));
  return node;
}

async function loadTraining() {
  const data = await api("training");
  if (!data.length) {
    replace("training-body", el("p", {class: "muted"}, "no training run in this project (a folder with log.csv)"));
    return;
  }
  replace("training-body", data.map((run) => el("div", {class: "run", "data-path": run.path},
    el("h3", {}, run.path),
    kv([["steps", run.steps], ["last loss", run.last_loss],
        ["best validation ε_mae", run.best_val ? fmt(run.best_val[1]) + " at step " + fmt(run.best_val[0]) : "–"],
        ["checkpoints", run.checkpoints.join(", ")]]),
    el("div", {class: "charts"}, chart(run.loss, "training loss", "line-loss"),
                                  chart(run.val, "validation ε_mae", "line-val")),
    run.figures.length ? figures(run.figures) : null)));
}

// -- reports ------------------------------------------------------------------------------------
function summaryPairs(summary, prefix) {
  const out = [];
  for (const [k, v] of Object.entries(summary || {})) {
    if (v !== null && typeof v === "object" && !Array.isArray(v)) out.push(...summaryPairs(v, prefix + k + "."));
    else out.push([prefix + k, v]);
  }
  return out;
}

async function loadReports() {
  const data = await api("reports");
  if (!data.length) {
    replace("reports-body", el("p", {class: "muted"}, "no accel-eval or nscf-eval report in this project"));
    return;
  }
  replace("reports-body", data.map((r) => el("div", {class: "report", "data-kind": r.kind, "data-path": r.path},
    el("h3", {}, r.kind + ": " + r.path),
    r.error ? el("p", {class: "error"}, r.error) : [
      el("details", {}, el("summary", {}, "summary"), kv(summaryPairs(r.summary, "").slice(0, 200))),
      el("div", {class: "scroll"}, table(r.columns.map((c) => [c, c, false]), r.rows, {class: "report-table"})),
      figures(r.figures)])));
}

// -- start --------------------------------------------------------------------------------------
function start() {
  setUpSearch();
  const loads = [[loadOverview, "project-path"], [loadFunnel, "funnel-body"], [loadCandidates, "candidates-body"],
                 [loadDatasets, "datasets-body"], [loadTraining, "training-body"], [loadReports, "reports-body"]];
  for (const [load, id] of loads) load().catch((error) => failed(id, error));
  pollJobs();
}

start();
