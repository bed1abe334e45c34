// cake-distill dashboard: the jobs list and a page per job, read from the REST API (/v1).
//
// Plain JavaScript, no build step, nothing loaded from elsewhere. Every request carries
// "Authorization: Bearer <key>" when a key is saved in this browser; that is why images,
// downloads and the event stream go through fetch() (an <img src>, <a href> or EventSource
// cannot send the header) and are turned into blob URLs.
"use strict";

const KEY_STORAGE = "cake.apiKey";
const LIST_POLL_MS = 1500;
const JOB_POLL_MS = 1000;
const RECONNECT_MS = 2000;
const LIST_LIMIT = 50;
const MAX_EVENTS_SHOWN = 1000;
const FINISHED = new Set(["succeeded", "failed", "canceled"]);
const STUDENT_FILES = ["student.pt", "student.onnx", "student.int8.onnx"];

// ---------------------------------------------------------------------------------------------
// small helpers
// ---------------------------------------------------------------------------------------------

/** Build an element: h("td", {class: "x", dataset: {id: 1}}, "text", child). No innerHTML, so
 * nothing the API returns is ever parsed as markup. */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "dataset") Object.assign(el.dataset, value);
    else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

const $ = (selector, root = document) => root.querySelector(selector);

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}

function percent(fraction) {
  return `${Math.floor(Math.max(0, Math.min(1, fraction)) * 100)}%`;
}

function formatBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`;
}

function formatTime(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  const sameDay = date.toDateString() === new Date().toDateString();
  return sameDay ? date.toLocaleTimeString() : date.toLocaleString();
}

function formatDuration(startIso, endIso) {
  if (!startIso) return "—";
  const seconds = Math.max(0, ((endIso ? new Date(endIso) : new Date()) - new Date(startIso)) / 1000);
  if (seconds < 60) return `${seconds.toFixed(0)} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${Math.floor(seconds % 60)} s`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

function progressBar(fraction, big = false) {
  const bar = h("div", { class: big ? "progress big" : "progress", role: "progressbar",
    "aria-valuemin": 0, "aria-valuemax": 100 });
  bar.append(h("div", { class: "fill" }));
  setProgress(bar, fraction);
  return bar;
}

function setProgress(bar, fraction) {
  const value = Math.round(Math.max(0, Math.min(1, fraction)) * 1000) / 10;
  bar.firstChild.style.width = `${value}%`;
  bar.setAttribute("aria-valuenow", String(value));
}

function statusBadge(status) {
  return h("span", { class: `badge status-${status}` }, status);
}

// ---------------------------------------------------------------------------------------------
// the API: Bearer key, problem+json errors
// ---------------------------------------------------------------------------------------------

function apiKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

function headers(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : { ...extra };
}

class ApiError extends Error {
  constructor(status, code, detail) {
    super(detail);
    this.status = status;
    this.code = code;
  }
}

/** An Error from a failed response: the problem document's `detail` when there is one. */
async function errorFrom(response) {
  let detail = `${response.status} ${response.statusText || "error"}`;
  let code = null;
  if ((response.headers.get("content-type") || "").includes("json")) {
    try {
      const problem = await response.json();
      detail = problem.detail || problem.title || detail;
      code = problem.code || null;
    } catch { /* not JSON after all: keep the status line */ }
  }
  const error = new ApiError(response.status, code, detail);
  if (response.status === 401) showAuthPrompt(error);
  return error;
}

async function api(path, { method = "GET", accept = "application/json", signal } = {}) {
  const response = await fetch(path, { method, headers: headers({ Accept: accept }), signal });
  if (!response.ok) throw await errorFrom(response);
  return response;
}

async function apiJson(path, options) {
  return (await api(path, options)).json();
}

// ---------------------------------------------------------------------------------------------
// notices: errors and the API key prompt
// ---------------------------------------------------------------------------------------------

function showError(error) {
  if (error?.name === "AbortError") return;
  if (error instanceof ApiError && error.status === 401) return; // the key prompt says it
  const box = $("#error");
  box.textContent = error instanceof ApiError ? error.message : `Cannot reach the service (${error})`;
  box.hidden = false;
}

function clearError() {
  $("#error").hidden = true;
}

function showAuthPrompt(error) {
  const prompt = $("#auth-prompt");
  $("#auth-detail").textContent = apiKey()
    ? `The saved key was refused: ${error.message}`
    : `Every request to this service needs a key: ${error.message}`;
  if (prompt.hidden) {
    prompt.hidden = false;
    $("#auth-key").focus();
  }
}

function saveKey(key) {
  key = key.trim();
  if (key) localStorage.setItem(KEY_STORAGE, key);
  else localStorage.removeItem(KEY_STORAGE);
  $("#api-key").value = key;
  $("#auth-key").value = "";
  $("#auth-prompt").hidden = true;
  render();
}

function setUpKeyForms() {
  $("#api-key").value = apiKey();
  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    saveKey($("#api-key").value);
  });
  $("#key-clear").addEventListener("click", () => saveKey(""));
  $("#auth-form").addEventListener("submit", (event) => {
    event.preventDefault();
    saveKey($("#auth-key").value);
  });
}

/** Run `step` now and every `ms` until the view goes away, `step` returns false, or the API
 * answers 401 (a new key re-renders the view, which starts a new loop) or 404. */
async function poll(ms, signal, step) {
  while (!signal.aborted) {
    try {
      if ((await step()) === false) return;
      clearError();
    } catch (error) {
      if (signal.aborted) return;
      showError(error);
      // asking again will not help: a key is needed (a new one re-renders) or it is gone
      if (error instanceof ApiError && (error.status === 401 || error.status === 404)) return;
    }
    await sleep(ms, signal);
  }
}

// ---------------------------------------------------------------------------------------------
// the jobs list (#/)
// ---------------------------------------------------------------------------------------------

function renderJobs(root, signal) {
  const body = h("tbody");
  const empty = h("p", { class: "muted empty", hidden: true },
    "No jobs yet. Create one with ", h("code", {}, "cake submit"), " or ",
    h("code", {}, "POST /v1/jobs"), ".");
  const more = h("p", { class: "muted", hidden: true }, `Showing the newest ${LIST_LIMIT} jobs.`);
  root.append(h("section", { class: "panel" },
    h("div", { class: "panel-head" }, h("h1", {}, "Jobs")),
    h("table", { class: "jobs", id: "jobs-table" },
      h("thead", {}, h("tr", {},
        ["Job", "Status", "Phase", "Progress", "Student", "Created", "Duration"].map(
          (title) => h("th", {}, title)))),
      body),
    empty, more));

  poll(LIST_POLL_MS, signal, async () => {
    const page = await apiJson(`/v1/jobs?limit=${LIST_LIMIT}`, { signal });
    body.replaceChildren(...page.data.map(jobRow));
    empty.hidden = page.data.length > 0;
    more.hidden = !page.has_more;
  });
}

function jobRow(job) {
  const student = job.spec?.student;
  const name = job.metadata?.name;
  return h("tr", { dataset: { jobId: job.id, status: job.status } },
    h("td", {}, h("a", { href: `#/jobs/${encodeURIComponent(job.id)}`, class: "mono" }, job.id),
      name ? h("div", { class: "muted small" }, name) : null),
    h("td", {}, statusBadge(job.status)),
    h("td", {}, job.phase),
    h("td", {}, h("div", { class: "progress-cell" }, progressBar(job.progress),
      h("span", { class: "pct", dataset: { progress: job.progress } }, percent(job.progress)))),
    h("td", {}, student ? `${student.arch} ×${student.width ?? "auto"}` : "—"),
    h("td", {}, formatTime(job.created_at)),
    h("td", {}, formatDuration(job.started_at, job.finished_at)));
}

// ---------------------------------------------------------------------------------------------
// one job (#/jobs/<id>)
// ---------------------------------------------------------------------------------------------

const METRIC_LABELS = {
  agreement_synthetic: "Agreement, held-out synthetic",
  fidelity_estimate: "Fidelity estimate (data-free)",
  agreement_eval: "Agreement, eval data",
  teacher_accuracy: "Teacher accuracy",
  student_accuracy: "Student accuracy",
  accuracy_ratio: "Student / teacher accuracy",
  teacher_parameters: "Teacher parameters",
  student_parameters: "Student parameters",
  num_samples: "Synthetic samples",
  synthesis_seconds: "Synthesis time",
  training_seconds: "Training time",
  total_seconds: "Total time",
  samples_per_second: "Samples per second",
};
const METRIC_ORDER = Object.keys(METRIC_LABELS);

function formatMetric(key, value) {
  if (typeof value !== "number") return typeof value === "string" ? value : JSON.stringify(value);
  if (/accuracy|agreement|fidelity_estimate$/.test(key)) return `${(value * 100).toFixed(1)}%`;
  if (/parameters|num_/.test(key)) return Math.round(value).toLocaleString("en-US");
  if (key.endsWith("_seconds")) return `${value.toFixed(1)} s`;
  if (Number.isInteger(value)) return value.toLocaleString("en-US");
  return value.toPrecision(4);
}

function renderJob(root, jobId, signal) {
  const els = {
    head: h("section", { class: "panel job-head", id: "job", dataset: { jobId } }),
    name: h("h1", { id: "job-name" }),
    status: h("span", { id: "job-status" }),
    phase: h("strong", { id: "job-phase" }),
    bar: progressBar(0, true),
    pct: h("span", { id: "job-progress", class: "pct big", dataset: { progress: 0 } }, "0%"),
    facts: h("dl", { class: "facts" }),
    error: h("div", { id: "job-error", class: "notice error inline", hidden: true }),
    cancel: h("button", { id: "job-cancel", class: "secondary", hidden: true }, "Cancel job"),
    metrics: h("table", { id: "metrics", class: "metrics" }),
    metricsNote: h("p", { class: "muted" }, "Metrics appear when the job has succeeded."),
    downloads: h("ul", { id: "downloads", class: "downloads" }),
    downloadsNote: h("p", { class: "muted" }, "Artifacts appear when the job has succeeded."),
    deployment: h("tbody"),
    deploymentNotes: h("div", { id: "deployment-notes", class: "deployment-notes" }),
    deploymentTable: h("div", { class: "table-scroll" }),
    deploymentMethod: h("p", { id: "deployment-method", class: "muted small" }),
    deploymentPanel: h("section", { class: "panel", id: "deployment-panel", hidden: true }),
    images: h("div", { id: "images", class: "images" }),
    imagesPanel: h("section", { class: "panel", hidden: true }),
    events: h("tbody"),
    eventsBox: h("div", { id: "events", class: "events" }),
  };
  els.bar.id = "job-progress-bar";
  els.cancel.addEventListener("click", async () => {
    els.cancel.disabled = true;
    try {
      await api(`/v1/jobs/${encodeURIComponent(jobId)}/cancel`, { method: "POST", signal });
    } catch (error) {
      showError(error);
      els.cancel.disabled = false;
    }
  });
  els.imagesPanel.append(h("h2", {}, "Images"), els.images);
  els.deploymentPanel.append(h("h2", {}, "Deployment"), els.deploymentNotes,
    els.deploymentTable, els.deploymentMethod);
  els.deploymentTable.append(h("table", { id: "deployment", class: "deployment" },
    h("thead", {}, h("tr", {}, DEPLOYMENT_COLUMNS.map(([title, numeric]) =>
      h("th", { class: numeric ? "num" : null }, title)))),
    els.deployment));
  els.eventsBox.append(h("table", { class: "event-log" }, els.events),
    h("p", { class: "muted empty-log" }, "No events yet."));
  els.head.append(
    h("div", { class: "title-row" },
      els.name, h("span", { class: "mono muted" }, jobId), els.status,
      h("span", { class: "spacer" }), els.cancel),
    h("div", { class: "progress-row" }, els.bar, els.pct),
    h("p", { class: "phase-line" }, "Phase: ", els.phase),
    els.error, els.facts);

  root.append(
    h("p", { class: "crumbs" }, h("a", { href: "#/" }, "← All jobs")),
    els.head,
    h("div", { class: "columns" },
      h("section", { class: "panel" }, h("h2", {}, "Metrics"), els.metrics, els.metricsNote),
      h("section", { class: "panel" }, h("h2", {}, "Downloads"), els.downloads,
        els.downloadsNote)),
    els.deploymentPanel,
    els.imagesPanel,
    h("section", { class: "panel" }, h("h2", {}, "Events"), els.eventsBox));

  let artifactsShown = false;
  let teacherName = null;
  const path = `/v1/jobs/${encodeURIComponent(jobId)}`;

  let job = null;

  poll(JOB_POLL_MS, signal, async () => {
    job = await apiJson(path, { signal });
    if (teacherName === null) {
      teacherName = "";
      apiJson(`/v1/teachers/${encodeURIComponent(job.teacher_id)}`, { signal })
        .then((teacher) => { teacherName = teacher.name || ""; showJob(els, job, teacherName); })
        .catch(() => {}); // the id alone is shown
    }
    showJob(els, job, teacherName);
    if (job.status === "succeeded" && !artifactsShown) {
      await showArtifacts(els, jobId, signal); // a failure here is retried on the next round
      artifactsShown = true;
    }
    return !FINISHED.has(job.status);
  });
  streamEvents(jobId, els, signal);
}

function showJob(els, job, teacherName) {
  els.head.dataset.status = job.status;
  els.name.textContent = job.metadata?.name || "Job";
  els.status.replaceChildren(statusBadge(job.status));
  if (job.cancel_requested && !FINISHED.has(job.status)) {
    els.status.append(" ", h("span", { class: "badge status-canceled" }, "cancel requested"));
  }
  els.phase.textContent = job.phase;
  setProgress(els.bar, job.progress);
  els.pct.textContent = percent(job.progress);
  els.pct.dataset.progress = String(job.progress);
  els.cancel.hidden = FINISHED.has(job.status) || job.cancel_requested;

  const spec = job.spec || {};
  const facts = [
    ["Teacher", teacherName
      ? [teacherName, h("span", { class: "mono muted small" }, ` ${job.teacher_id}`)]
      : h("span", { class: "mono" }, job.teacher_id)],
    ["Student", spec.student
      ? [`${spec.student.arch}, width ${spec.student.width ?? "chosen when the job runs"}`,
        spec.student.width_reason
          ? h("div", { class: "muted small" }, spec.student.width_reason) : null]
      : "—"],
    ["Preset", spec.preset || "—"],
    ["Synthesis", spec.synthesis
      ? `${spec.synthesis.num_samples.toLocaleString("en-US")} samples, ${spec.synthesis.steps} steps`
      : "—"],
    ["Training", spec.training ? `${spec.training.epochs} epochs` : "—"],
    ["Created", formatTime(job.created_at)],
    ["Started", formatTime(job.started_at)],
    ["Finished", formatTime(job.finished_at)],
    ["Duration", formatDuration(job.started_at, job.finished_at)],
  ];
  els.facts.replaceChildren(...facts.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));

  els.error.hidden = !job.error;
  if (job.error) els.error.textContent = `${job.error.code}: ${job.error.message}`;

  const entries = Object.entries(job.metrics || {}).sort(([a], [b]) => {
    const ia = METRIC_ORDER.indexOf(a), ib = METRIC_ORDER.indexOf(b);
    return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib) || a.localeCompare(b);
  });
  els.metrics.replaceChildren(...entries.map(([key, value]) =>
    h("tr", { dataset: { metric: key } },
      h("th", { title: key }, METRIC_LABELS[key] || key),
      h("td", {}, formatMetric(key, value)))));
  els.metricsNote.hidden = entries.length > 0;
}

/** A blob URL for an artifact, fetched with the key; revoked when the view goes away. */
async function artifactUrl(jobId, name, signal) {
  const response = await api(
    `/v1/jobs/${encodeURIComponent(jobId)}/artifacts/${encodeURIComponent(name)}`,
    { accept: "*/*", signal });
  const url = URL.createObjectURL(await response.blob());
  signal.addEventListener("abort", () => URL.revokeObjectURL(url), { once: true });
  return url;
}

async function showArtifacts(els, jobId, signal) {
  const list = await apiJson(`/v1/jobs/${encodeURIComponent(jobId)}/artifacts`, { signal });
  // the student first, in each of its forms, then the rest by name
  const rank = (name) => {
    const i = STUDENT_FILES.indexOf(name);
    return i < 0 ? STUDENT_FILES.length : i;
  };
  const artifacts = [...list.data].sort((a, b) =>
    rank(a.name) - rank(b.name) || a.name.localeCompare(b.name));

  els.downloads.replaceChildren(...artifacts.map((artifact) => {
    const button = h("button", { class: "download", dataset: { artifact: artifact.name } },
      `⤓ ${artifact.name}`);
    button.addEventListener("click", () => download(jobId, artifact.name, button, signal));
    return h("li", {}, button,
      h("span", { class: "muted" }, ` ${formatBytes(artifact.size_bytes)}`),
      h("code", { class: "sha small", title: `sha256 ${artifact.sha256}` },
        `sha256 ${artifact.sha256.slice(0, 16)}…`));
  }));
  els.downloadsNote.hidden = artifacts.length > 0;

  if (artifacts.some((a) => a.name === "manifest.json")) {
    const manifest = await (await api(
      `/v1/jobs/${encodeURIComponent(jobId)}/artifacts/manifest.json`, { signal })).json();
    showDeployment(els, manifest.deployment);
  }

  const images = artifacts.filter((a) => a.content_type.split(";")[0].trim() === "image/png")
    .sort((a, b) => (b.name === "samples.png") - (a.name === "samples.png"));
  els.imagesPanel.hidden = images.length === 0;
  els.images.replaceChildren();
  for (const artifact of images) {
    const img = h("img", { alt: artifact.name, dataset: { artifact: artifact.name } });
    els.images.append(h("figure", {}, img, h("figcaption", {}, artifact.name)));
    artifactUrl(jobId, artifact.name, signal).then((url) => { img.src = url; }, showError);
  }
}

// The deployment table of the job's manifest.json: [title, numeric?] per column.
const DEPLOYMENT_COLUMNS = [
  ["Artifact", false], ["Runtime", false], ["Size", true], ["Parameters", true],
  ["Latency, batch 1", true], ["Latency, batch 64", true], ["Agreement with teacher", true],
];

function formatMs(ms) {
  if (typeof ms !== "number" || !Number.isFinite(ms)) return "—";
  return `${ms < 10 ? ms.toFixed(2) : ms.toFixed(1)} ms`;
}

function formatShare(fraction) {
  return typeof fraction === "number" && Number.isFinite(fraction)
    ? `${(fraction * 100).toFixed(1)}%` : "—";
}

/** The deployment section of the manifest: a line each on ONNX and int8 (kept or not, and
 * why), the table (a row per form of the model), and how latency was measured. A manifest
 * without the section (a job from before ONNX export) leaves the panel hidden. */
function showDeployment(els, deployment) {
  if (!deployment || typeof deployment !== "object") {
    els.deploymentPanel.hidden = true;
    return;
  }
  const onnx = deployment.onnx || {};
  const int8 = deployment.int8 || {};
  const note = (id, label, entry) => h("p", { id, dataset: { kept: String(!!entry.kept) } },
    h("strong", {}, label), " ",
    h("span", { class: `badge ${entry.kept ? "status-succeeded" : "status-canceled"}` },
      entry.kept ? "kept" : "not kept"),
    entry.reason ? ` ${entry.reason}` : "");
  els.deploymentNotes.replaceChildren(
    note("deployment-onnx", `ONNX (opset ${onnx.opset ?? "?"}):`, onnx),
    note("deployment-int8", `int8 (${int8.format || "QDQ"}):`, int8));

  const rows = Array.isArray(deployment.table) ? deployment.table : [];
  els.deployment.replaceChildren(...rows.map((row) =>
    h("tr", { dataset: { artifact: row.artifact, role: row.role } },
      h("td", { class: "mono" }, row.artifact),
      h("td", {}, row.runtime),
      h("td", { class: "num" },
        typeof row.size_bytes === "number" ? formatBytes(row.size_bytes) : "—"),
      h("td", { class: "num" },
        typeof row.parameters === "number" ? Math.round(row.parameters).toLocaleString("en-US")
          : "—"),
      h("td", { class: "num" }, formatMs(row.latency_ms_batch_1)),
      h("td", { class: "num" }, formatMs(row.latency_ms_batch_64)),
      h("td", { class: "num" }, formatShare(row.agreement_teacher)))));

  // no rows: the deployment step itself failed, and the two lines above say why
  els.deploymentTable.hidden = rows.length === 0;
  els.deploymentMethod.hidden = rows.length === 0;
  const latency = deployment.latency || {};
  const repeats = rows.length ? Math.min(...rows.map((row) => row.repeats || 0)) : 0;
  els.deploymentMethod.textContent =
    `Latency: the ${latency.statistic || "median"} of at least ${repeats} timed calls per ` +
    `cell, on the ${latency.device || "cpu"} with ${latency.threads ?? "?"} thread(s). ` +
    "Agreement: the share of the job's check samples on which the top-1 class is the " +
    "teacher's.";
  els.deploymentPanel.hidden = false;
}

/** Fetch the artifact with the key, then save it through a temporary <a download>. */
async function download(jobId, name, button, signal) {
  button.disabled = true;
  try {
    const url = await artifactUrl(jobId, name, signal);
    const link = h("a", { href: url, download: name, hidden: true });
    document.body.append(link);
    link.click();
    link.remove();
  } catch (error) {
    showError(error);
  } finally {
    button.disabled = false;
  }
}

// ---------------------------------------------------------------------------------------------
// the job's events: Server-Sent Events read through fetch (for the Authorization header)
// ---------------------------------------------------------------------------------------------

async function streamEvents(jobId, els, signal) {
  let lastId = null;
  let shown = 0;
  const add = (event) => {
    lastId = event.id;
    const box = els.eventsBox;
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
    els.events.append(h("tr", { class: `level-${event.level}`, dataset: { type: event.type } },
      h("td", { class: "time" }, new Date(event.created_at).toLocaleTimeString()),
      h("td", {}, h("span", { class: "tag" }, event.type)),
      h("td", {}, event.message)));
    shown += 1;
    box.classList.add("has-events");
    if (shown > MAX_EVENTS_SHOWN) els.events.firstChild.remove();
    if (atBottom) box.scrollTop = box.scrollHeight;
  };

  while (!signal.aborted) {
    const after = lastId ? `?after=${encodeURIComponent(lastId)}` : "";
    try {
      const response = await api(`/v1/jobs/${encodeURIComponent(jobId)}/events${after}`,
        { accept: "text/event-stream", signal });
      if (await readSse(response, signal, add)) return; // the job ended: nothing more comes
    } catch (error) {
      if (signal.aborted) return;
      if (error instanceof ApiError && error.status < 500) return showError(error);
    }
    await sleep(RECONNECT_MS, signal); // dropped connection: resume after the last event
  }
}

/** Parse an SSE body, calling `onEvent` with each job event; true once the `end` event came. */
async function readSse(response, signal, onEvent) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  signal.addEventListener("abort", () => reader.cancel().catch(() => {}), { once: true });
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return false;
    buffer += value.replace(/\r\n?/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let type = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) type = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (type === "end") return true;
      if (data.length) onEvent(JSON.parse(data.join("\n")));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// routing
// ---------------------------------------------------------------------------------------------

let viewController = null;

function render() {
  viewController?.abort();
  viewController = new AbortController();
  clearError();
  const view = $("#view");
  view.replaceChildren();
  const match = (location.hash || "#/").match(/^#\/jobs\/([^/?#]+)/);
  if (match) {
    document.title = `${decodeURIComponent(match[1])} · cake-distill`;
    renderJob(view, decodeURIComponent(match[1]), viewController.signal);
  } else {
    document.title = "Jobs · cake-distill";
    renderJobs(view, viewController.signal);
  }
}

setUpKeyForms();
window.addEventListener("hashchange", render);
render();
