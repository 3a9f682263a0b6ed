// Pillion dashboard: asks the dashboard server for a newer snapshot (a long poll), draws the
// tables and charts, and drives the dead-letter actions. No build step, no libraries.
"use strict";

const TOKEN_KEY = "pillion-dashboard-token";
const WINDOW_SECONDS = 600;
const state = {
  seq: 0,
  apps: new Map(), // key -> latest view
  history: new Map(), // key -> [[seq, time, sidecarCpu, sidecarRss, appCpu, appRss], ...]
  selected: null,
  readOnly: false,
  letters: null, // {pid, pubsub, topic}
  rendered: {}, // what each detail table last showed, to rebuild only on change
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "onclick") node.addEventListener("click", value);
    else if (name === "className") node.className = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child ?? "");
  return node;
}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers["dapr-api-token"] = token;
  if (options.method && options.method !== "GET") {
    headers["x-pillion-dashboard"] = "1";
    headers["content-type"] = "application/json";
  }
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    $("token-form").hidden = false;
    throw new Error("the dashboard needs its API token");
  }
  let body = null;
  try { body = await response.json(); } catch (error) { body = null; }
  if (!response.ok) {
    const message = body && body.message ? `${body.errorCode}: ${body.message}` : `HTTP ${response.status}`;
    const failure = new Error(message);
    failure.body = body;
    throw failure;
  }
  return body;
}

// --- formatting ----------------------------------------------------------------------------

function duration(seconds) {
  seconds = Math.max(0, Math.floor(seconds));
  const d = Math.floor(seconds / 86400), h = Math.floor(seconds % 86400 / 3600);
  const m = Math.floor(seconds % 3600 / 60), s = seconds % 60;
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${s}s`;
  return `${s}s`;
}

const count = (value) => (value === null || value === undefined ? "–" : String(Math.round(value)));

function ports(app) {
  const parts = [`HTTP ${app.httpPort}`];
  if (app.metricsPort) parts.push(`metrics ${app.metricsPort}`);
  if (app.appPort) parts.push(`app ${app.appPort}`);
  return parts.join(", ");
}

function health(app) {
  return app.appHealth ? `${app.health} (app ${app.appHealth})` : app.health;
}

// --- the apps table ------------------------------------------------------------------------

function renderApps(now) {
  const body = $("apps").tBodies[0];
  const keys = [...state.apps.keys()];
  for (const row of [...body.rows]) if (!state.apps.has(row.dataset.key)) row.remove();
  keys.forEach((key, index) => {
    const app = state.apps.get(key);
    let row = body.querySelector(`tr[data-key="${key}"]`);
    if (!row) {
      const choose = el("button", { type: "button", className: "link", onclick: () => select(key) }, app.appId);
      row = el("tr", { "data-key": key }, el("th", { scope: "row" }, choose));
      for (let i = 0; i < 9; i++) row.append(el("td"));
      [...row.cells].slice(5).forEach((cell) => cell.classList.add("number"));
    }
    if (body.rows[index] !== row) body.insertBefore(row, body.rows[index] || null);
    const cells = row.cells;
    const values = [String(app.pid), ports(app), duration(now - app.started), health(app),
      count(app.requests), count(app.published), count(app.delivered), count(app.retried),
      count(app.deadLettered)];
    values.forEach((value, i) => { if (cells[i + 1].textContent !== value) cells[i + 1].textContent = value; });
    cells[4].className = app.health === "ready" ? "ok" : "failed";
    row.classList.toggle("selected", key === state.selected);
    row.querySelector("button").setAttribute("aria-pressed", String(key === state.selected));
  });
  $("no-apps").hidden = keys.length > 0;
}

function select(key) {
  state.selected = key;
  state.rendered = {};
  state.letters = null;
  $("dead-letters").hidden = true;
  render();
}

// --- one app's details ---------------------------------------------------------------------

function rebuild(id, rows, signature) {
  if (state.rendered[id] === signature) return;
  state.rendered[id] = signature;
  $(id).tBodies[0].replaceChildren(...rows);
}

function renderComponents(app) {
  const rows = app.components.map((c) => el("tr", {},
    el("td", {}, c.name), el("td", {}, c.type), el("td", {}, c.version),
    el("td", { className: c.status === "failed" ? "failed" : "ok" },
      c.status === "failed" ? `failed: ${c.reason}` : "loaded"),
    el("td", {}, (c.capabilities || []).join(", ") || "–")));
  rebuild("components", rows, JSON.stringify(app.components));
}

function rules(subscription) {
  return (subscription.rules || []).map((r) => (r.match ? `${r.match} → ${r.path}` : r.path)).join("; ") || "–";
}

function renderSubscriptions(app) {
  const list = app.subscriptions;
  const rows = list.map((s) => {
    const dead = s.deadLetterTopic
      ? el("button", { type: "button", className: "link",
          "aria-label": `Dead letters on ${s.deadLetterTopic}`,
          onclick: () => openLetters(app.pid, s.pubsubname, s.deadLetterTopic) }, s.deadLetterTopic)
      : "–";
    return el("tr", {}, el("td", {}, s.pubsubname), el("td", {}, s.topic), el("td", {}, rules(s)),
      el("td", {}, dead), el("td", {}, s.type), el("td", { className: "number" }, count(s.inFlight)));
  });
  rebuild("subscriptions", rows, JSON.stringify(list));
  $("no-subscriptions").hidden = list.length > 0;
}

// --- charts ----------------------------------------------------------------------------------

// The time shown: the history there is, from one minute up to WINDOW_SECONDS.
function span(series, now) {
  const first = Math.min(now, ...series.flatMap((s) => s.points.map((p) => p[0])));
  return Math.min(WINDOW_SECONDS, Math.max(60, now - first));
}

// The grid step: 1, 2, 2.5 or 5 times a power of ten, at least ``raw``.
function niceStep(raw) {
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 2.5, 5, 10].map((f) => f * magnitude).find((step) => step >= raw);
}

function drawChart(canvas, now, series, unit) {
  const ctx = canvas.getContext("2d");
  const { width, height } = canvas;
  const left = 44, bottom = 20, top = 8, right = 8;
  ctx.clearRect(0, 0, width, height);
  const values = series.flatMap((s) => s.points.map((p) => p[1])).filter((v) => v !== null);
  const max = 4 * niceStep((Math.max(1, ...values) * 1.1) / 4);
  const shown = span(series, now);
  const x = (t) => left + (width - left - right) * (1 - (now - t) / shown);
  const y = (v) => height - bottom - (height - bottom - top) * (v / max);
  ctx.font = "11px system-ui, sans-serif";
  ctx.strokeStyle = "#d0d7de";
  ctx.fillStyle = "#57606a";
  ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const v = (max * i) / 4;
    ctx.beginPath(); ctx.moveTo(left, y(v)); ctx.lineTo(width - right, y(v)); ctx.stroke();
    ctx.fillText(String(Number(v.toFixed(1))), 4, y(v) + 4);
  }
  const step = shown > 300 ? 120 : shown > 120 ? 60 : 15;
  for (let ago = 0; ago <= shown; ago += step) {
    const label = ago === 0 ? "now" : ago % 60 ? `-${ago}s` : `-${ago / 60}m`;
    ctx.fillText(label, x(now - ago) - (ago ? 12 : 22), height - 5);
  }
  for (const s of series) {
    ctx.strokeStyle = s.color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    let drawing = false;
    for (const [t, v] of s.points) {
      if (v === null || now - t > shown) { drawing = false; continue; }
      if (drawing) ctx.lineTo(x(t), y(v)); else ctx.moveTo(x(t), y(v));
      drawing = true;
    }
    ctx.stroke();
  }
  const latest = series.map((s) => {
    const last = [...s.points].reverse().find((p) => p[1] !== null);
    return `${s.name} ${last ? last[1].toFixed(1) : "–"} ${unit}`;
  });
  const minutes = Math.round(shown / 60);
  canvas.setAttribute("aria-label", `${canvas.dataset.title}, last ${minutes} minute(s); now ${latest.join(", ")}`);
  return latest.join(", ");
}

function renderCharts(app, now) {
  const points = state.history.get(app.key) || [];
  const style = getComputedStyle(document.documentElement);
  const sidecar = style.getPropertyValue("--sidecar").trim(), appColor = style.getPropertyValue("--app").trim();
  const pick = (i, scale) => points.map((p) => [p[1], p[i] === null ? null : p[i] * scale]);
  $("cpu-chart").dataset.title = "CPU in % of one core";
  $("memory-chart").dataset.title = "Resident memory in MiB";
  $("cpu-now").textContent = "now: " + drawChart($("cpu-chart"), now, [
    { name: "sidecar", color: sidecar, points: pick(2, 100) },
    { name: "app", color: appColor, points: pick(4, 100) },
  ], "%");
  $("memory-now").textContent = "now: " + drawChart($("memory-chart"), now, [
    { name: "sidecar", color: sidecar, points: pick(3, 1 / 1048576) },
    { name: "app", color: appColor, points: pick(5, 1 / 1048576) },
  ], "MiB");
}

// --- dead letters --------------------------------------------------------------------------

function lettersPath(suffix = "") {
  const { pid, pubsub, topic } = state.letters;
  return `/api/apps/${pid}/deadletters/${encodeURIComponent(pubsub)}/${encodeURIComponent(topic)}${suffix}`;
}

function openLetters(pid, pubsub, topic) {
  state.letters = { pid, pubsub, topic };
  $("dead-letters").hidden = false;
  $("dead-letters-heading").textContent = `Dead letters on ${topic} (${pubsub})`;
  $("letter").hidden = true;
  $("letters-result").textContent = "";
  loadLetters().then(() => $("refresh-letters").focus());
}

async function loadLetters() {
  if (!state.letters) return;
  const body = $("letters").tBodies[0];
  const note = $("dead-letters-note");
  note.textContent = state.readOnly ? "The dashboard is read-only: replay and purge are off." : "";
  try {
    const answer = await api(lettersPath());
    body.replaceChildren(...answer.messages.map((m) => el("tr", { "data-id": m.id },
      el("td", {}, m.id), el("td", {}, m.originalTopic || "–"), el("td", {}, m.reason || "–"),
      el("td", {}, m.time),
      el("td", {},
        el("div", { className: "actions" },
          el("button", { type: "button", "aria-label": `Show message ${m.id}`, onclick: () => showLetter(m.id) }, "Show"),
          el("button", { type: "button", className: "changing", "aria-label": `Replay message ${m.id}`,
            onclick: () => change("replay", { ids: [m.id] }, `Replay message ${m.id} to ${m.originalTopic}?`) }, "Replay"),
          el("button", { type: "button", className: "changing danger", "aria-label": `Purge message ${m.id}`,
            onclick: () => change("purge", { ids: [m.id] }, `Delete message ${m.id} for good?`) }, "Purge"))))));
    if (!answer.messages.length) note.textContent += " No messages on this topic.";
  } catch (error) {
    body.replaceChildren();
    note.textContent = `Cannot list the dead letters: ${error.message}`;
  }
  for (const button of document.querySelectorAll("#dead-letters button.changing")) button.disabled = state.readOnly;
}

async function showLetter(id) {
  try {
    const message = await api(lettersPath(`/messages/${encodeURIComponent(id)}`));
    $("letter-heading").textContent = `Message ${id}`;
    $("letter-body").textContent = JSON.stringify(message, null, 2);
    $("letter").hidden = false;
    $("letter-body").focus();
  } catch (error) {
    $("letters-result").textContent = error.message;
  }
}

function confirmed(text) {
  const dialog = $("confirm");
  $("confirm-text").textContent = text;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "cancel";
    dialog.showModal();
    $("confirm-cancel").focus();
  });
}

async function change(action, choice, question) {
  if (state.readOnly || !(await confirmed(question))) return;
  let said;
  try {
    const answer = await api(lettersPath(`/${action}`), { method: "POST", body: JSON.stringify(choice) });
    const verb = action === "replay" ? "Replayed" : "Purged";
    said = `${verb} ${answer.done.length} message(s)` +
      (answer.missing.length ? `; not found: ${answer.missing.join(", ")}` : "") + ".";
  } catch (error) {
    const done = error.body && error.body.done ? ` (${error.body.done.length} done before it)` : "";
    said = `${action} failed: ${error.message}${done}`;
  }
  $("letter").hidden = true;
  await loadLetters();
  // Announced once the list shows what it did.
  $("letters-result").textContent = said;
  $("refresh-letters").focus();
}

// --- the loop ------------------------------------------------------------------------------

function render() {
  const now = Date.now() / 1000;
  if (state.selected && !state.apps.has(state.selected)) state.selected = null;
  if (!state.selected && state.apps.size) state.selected = state.apps.keys().next().value;
  renderApps(now);
  const app = state.apps.get(state.selected);
  $("details").hidden = !app;
  if (!app) return;
  $("details-heading").textContent = `App ${app.appId} (pid ${app.pid})`;
  renderComponents(app);
  renderSubscriptions(app);
  renderCharts(app, now);
}

function take(snapshot) {
  state.readOnly = snapshot.readOnly;
  const present = new Set();
  for (const app of snapshot.apps) {
    present.add(app.key);
    state.apps.set(app.key, app);
    const history = state.history.get(app.key) || [];
    history.push(...app.samples);
    const oldest = snapshot.time - WINDOW_SECONDS - 5;
    while (history.length && history[0][1] < oldest) history.shift();
    state.history.set(app.key, history);
  }
  for (const key of [...state.apps.keys()]) {
    if (!present.has(key)) { state.apps.delete(key); state.history.delete(key); }
  }
  const sorted = [...state.apps.entries()].sort((a, b) => a[1].appId.localeCompare(b[1].appId) || a[1].pid - b[1].pid);
  state.apps = new Map(sorted);
  state.seq = snapshot.seq;
  const time = new Date(snapshot.time * 1000).toLocaleTimeString();
  $("status").textContent = `${state.apps.size} app(s) · updated ${time}` + (snapshot.readOnly ? " · read-only" : "");
  render();
}

async function loop() {
  for (;;) {
    try {
      take(await api(`/api/snapshot?since=${state.seq}&wait=1`));
    } catch (error) {
      $("status").textContent = `Cannot reach the dashboard: ${error.message}`;
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token-input").value);
  $("token-form").hidden = true;
});
$("refresh-letters").addEventListener("click", () => loadLetters());
$("replay-all").addEventListener("click", () =>
  change("replay", { all: true }, `Replay every message on ${state.letters.topic} to its original topic?`));
$("purge-all").addEventListener("click", () =>
  change("purge", { all: true }, `Delete every message on ${state.letters.topic} for good?`));
loop();
