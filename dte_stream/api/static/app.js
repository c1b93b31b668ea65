// dte-stream dashboard: twin list, live twin page, alerts with acknowledgement, what-if panel.
// Plain JavaScript, no build step; charts by the vendored uPlot. Talks only to /api/v1 of its
// own origin with the bearer token kept in this browser's localStorage.
"use strict";

const API = "/api/v1";
const NS = 1e9;
const main = document.getElementById("main");
const statusEl = document.getElementById("status");
let token = localStorage.getItem("dte-token") || "";
let cleanup = [];  // what to stop when leaving a page (timers, streams, charts)

document.getElementById("token").value = token;
document.getElementById("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  token = document.getElementById("token").value.trim();
  localStorage.setItem("dte-token", token);
  route();
});

function setStatus(text, kind) {
  statusEl.textContent = text;
  statusEl.className = kind || "";
}

async function api(path, options = {}) {
  const headers = Object.assign({ Authorization: `Bearer ${token}` }, options.headers || {});
  const response = await fetch(API + path, Object.assign({}, options, { headers }));
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail || detail; } catch (_) { /* not JSON */ }
    const error = new Error(`${response.status}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
    error.status = response.status;
    throw error;
  }
  return response.json();
}

// Server-Sent Events over fetch (EventSource cannot send the Authorization header).
function stream(path, onEvent) {
  const controller = new AbortController();
  (async () => {
    while (!controller.signal.aborted) {
      try {
        const response = await fetch(API + path, { headers: { Authorization: `Bearer ${token}` }, signal: controller.signal });
        if (!response.ok) throw new Error(`${response.status}`);
        setStatus("live", "live");
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true });
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, cut);
            buffer = buffer.slice(cut + 2);
            let event = "message", data = "";
            for (const line of block.split("\n")) {
              if (line.startsWith("event: ")) event = line.slice(7);
              else if (line.startsWith("data: ")) data += line.slice(6);
            }
            if (data) onEvent(event, JSON.parse(data));
          }
        }
      } catch (err) {
        if (controller.signal.aborted) return;
        setStatus(`reconnecting (${err.message})`, "error");
      }
      await new Promise((r) => setTimeout(r, 1000));
    }
  })();
  cleanup.push(() => controller.abort());
}

const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else if (k.startsWith("on")) node.addEventListener(k.slice(2), v); else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return node;
};
const fmt = (x, digits = 3) => (x == null || Number.isNaN(x) ? "–" : Number(x).toPrecision(digits));
const age = (s) => (s == null ? "never" : s < 120 ? `${s.toFixed(1)} s ago` : s < 7200 ? `${(s / 60).toFixed(1)} min ago` : `${(s / 3600).toFixed(1)} h ago`);
const when = (ns) => (ns == null ? "–" : new Date(ns / 1e6).toISOString().replace("T", " ").slice(0, 19));
const badge = (text) => el("span", { class: `badge ${text}` }, text);

function showError(err) {
  setStatus(err.status === 401 ? "enter a valid token" : err.status === 403 ? "token lacks the scope" : err.message, "error");
}

function route() {
  cleanup.forEach((f) => f());
  cleanup = [];
  main.replaceChildren();
  if (!token) { setStatus("enter an API token", "error"); return; }
  const match = location.hash.match(/^#\/twin\/(.+)$/);
  if (match) twinPage(decodeURIComponent(match[1])); else listPage();
}
window.addEventListener("hashchange", route);

// -- the list of twins and the firing alerts ---------------------------------------------------------

function alertRow(a, refresh) {
  const firing = !a.state || a.state === "firing";
  const ack = a.acked_by || !firing
    ? el("span", {}, "")
    : el("button", {
      class: "ack", "data-testid": "ack", onclick: async (e) => {
        e.target.disabled = true;
        try { await api(`/alerts/${a.alert_id.split("/").map(encodeURIComponent).join("/")}/ack`, { method: "POST" }); refresh(); }
        catch (err) { showError(err); e.target.disabled = false; }
      },
    }, "Acknowledge");
  return el("tr", { "data-alert": a.alert_id },
    el("td", {}, el("a", { href: `#/twin/${encodeURIComponent(a.twin_id)}` }, a.alert_id)),
    el("td", {}, badge(a.severity || "info"), " ", firing ? "" : badge(a.state)), el("td", {}, when(a.since_ns ?? a.starts_ns)),
    el("td", { class: "msg" }, a.message || ""), el("td", { class: "acked" }, a.acked_by ? `by ${a.acked_by}` : "no"), el("td", {}, ack));
}

function listPage() {
  main.append(document.getElementById("list-page").content.cloneNode(true));
  const form = main.querySelector(".filters");
  let offset = 0;
  const limit = 50;
  async function loadAlerts() {
    try {
      const data = await api("/alerts?state=firing&limit=50");
      main.querySelector(".alerts tbody").replaceChildren(...data.alerts.map((a) => alertRow(a, loadAlerts)));
    } catch (err) { showError(err); }
  }
  async function loadTwins() {
    const params = new URLSearchParams({ limit, offset });
    if (form.search.value) params.set("search", form.search.value);
    if (form.alert_state.value) params.set("alert_state", form.alert_state.value);
    if (form.fresh.value) { const [k, v] = form.fresh.value.split("="); params.set(k, v); }
    try {
      const page = await api(`/twins?${params}`);
      setStatus("connected", "live");
      main.querySelector(".total").textContent = `${page.total} in all`;
      main.querySelector(".page").textContent = page.total ? `${offset + 1}–${Math.min(offset + limit, page.total)}` : "none";
      main.querySelector(".twins tbody").replaceChildren(...page.twins.map((t) => el("tr", { "data-twin": t.twin_id },
        el("td", {}, el("a", { href: `#/twin/${encodeURIComponent(t.twin_id)}` }, t.twin_id)), el("td", {}, t.twin_type),
        el("td", {}, badge(t.alert_state)), el("td", { class: t.age_s > 60 ? "stale" : "" }, age(t.age_s)),
        el("td", {}, fmt(t.anomaly_score, 2)))));
      main.querySelector(".next").disabled = offset + limit >= page.total;
      main.querySelector(".prev").disabled = offset === 0;
    } catch (err) { showError(err); }
  }
  form.addEventListener("input", () => { offset = 0; loadTwins(); });
  form.addEventListener("submit", (e) => e.preventDefault());
  main.querySelector(".next").onclick = () => { offset += limit; loadTwins(); };
  main.querySelector(".prev").onclick = () => { offset = Math.max(0, offset - limit); loadTwins(); };
  loadTwins(); loadAlerts();
  const timer = setInterval(() => { loadTwins(); loadAlerts(); }, 2000);
  cleanup.push(() => clearInterval(timer));
}

// -- one twin: live charts, alerts, what-if ----------------------------------------------------------------

function chart(target, title, height = 220) {
  const box = el("div", { class: "chart", "data-channel": title }, el("h4", {}, title));
  target.append(box);
  const opts = {
    width: Math.max(480, box.clientWidth || 520), height,
    series: [
      {},
      { label: "reading", stroke: "#607d8b", paths: () => null, points: { show: true, size: 3, fill: "#607d8b" } },
      { label: "estimate", stroke: "#0b5cad", width: 2 },
      { label: "-2 std", stroke: "rgba(11,92,173,0.3)" },
      { label: "+2 std", stroke: "rgba(11,92,173,0.3)" },
      { label: "anomaly", stroke: "#c62828", paths: () => null, points: { show: true, size: 7, fill: "#c62828" } },
    ],
    bands: [{ series: [4, 3], fill: "rgba(11,92,173,0.12)" }],
    axes: [{}, { size: 60 }],
  };
  const data = [[], [], [], [], [], []];
  const plot = new uPlot(opts, data, box);
  cleanup.push(() => plot.destroy());
  return { plot, data, box, points: 0 };
}

function push(c, tNs, value, est, std, score) {
  const t = tNs / NS;
  const xs = c.data[0];
  if (xs.length && t <= xs[xs.length - 1]) return false;
  const band = std == null ? null : 2 * std;
  const row = [t, value, est, est == null || band == null ? null : est - band, est == null || band == null ? null : est + band,
    score != null && score >= 0.7 ? value : null];
  row.forEach((v, i) => c.data[i].push(v));
  if (xs.length > 2000) c.data.forEach((a) => a.shift());
  c.points += 1;
  c.box.dataset.points = String(c.points);
  return true;
}

async function twinPage(id) {
  main.append(document.getElementById("twin-page").content.cloneNode(true));
  main.querySelector(".title").textContent = id;
  const charts = {};
  let record;
  try {
    record = await api(`/twins/${encodeURIComponent(id)}`);
  } catch (err) { showError(err); main.querySelector(".meta").textContent = err.message; return; }
  const now = Date.now() * 1e6;
  const anchor = record.last_seen_ns || now;
  let history = { channels: {} };
  try {
    history = await api(`/twins/${encodeURIComponent(id)}/history?since=${anchor - 15 * 60 * NS}&until=${anchor + NS}&points=300`);
  } catch (err) { /* no local store: live only */ }
  for (const name of Object.keys(record.channels)) {
    charts[name] = chart(main.querySelector(".charts"), name);
    const h = history.channels[name];
    if (h) h.time_ns.forEach((t, i) => push(charts[name], t, h.value[i], h.estimate[i], h.std[i], h.anomaly_score[i]));
    charts[name].plot.setData(charts[name].data);
  }
  function show(rec) {
    record = rec;
    main.querySelector(".meta").replaceChildren(`type ${rec.twin_type} · `, badge(rec.alert_state),
      ` · last reading ${age(rec.age_s)} · labels ${JSON.stringify(rec.labels)}`);
    main.querySelector(".channels tbody").replaceChildren(...Object.entries(rec.channels).map(([name, c]) => el("tr", { "data-channel": name },
      el("td", {}, `${name}${c.unit ? ` (${c.unit})` : ""}`), el("td", { class: "value" }, fmt(c.value, 5)),
      el("td", {}, `${fmt(c.estimate, 5)} ± ${fmt(c.std, 2)}`), el("td", { class: c.age_s > 60 ? "stale" : "" }, age(c.age_s)),
      el("td", {}, (c.flags || []).join(", ")), el("td", {}, fmt(c.anomaly_score, 2)))));
    const refresh = async () => show(await api(`/twins/${encodeURIComponent(id)}`));
    main.querySelector(".twin-alerts tbody").replaceChildren(...(rec.alerts.length ? rec.alerts.map((a) => alertRow(Object.assign({ twin_id: rec.twin_id }, a), refresh))
      : [el("tr", {}, el("td", {}, "no alerts"))]));
    for (const [name, c] of Object.entries(rec.channels)) {
      if (!charts[name]) charts[name] = chart(main.querySelector(".charts"), name);
      if (c.time_ns != null && push(charts[name], c.time_ns, c.value, c.estimate, c.std, c.anomaly_score)) charts[name].plot.setData(charts[name].data);
    }
  }
  show(record);
  stream(`/twins/${encodeURIComponent(id)}/events`, (event, data) => { if (event === "twin") show(data); });
  whatIfPanel(id, () => record);
}

function whatIfPanel(id, current) {
  const form = main.querySelector(".whatif-form");
  const rec = current();
  const controls = [...new Set(rec.models.flatMap((m) => m.controls))];
  const observed = Object.keys(rec.channels).filter((c) => !controls.includes(c));
  const scenario = form.querySelector(".scenario");
  for (const c of controls) scenario.append(el("label", {}, `${c} input `, el("input", { name: `control:${c}`, type: "number", step: "any", placeholder: "as now" })));
  const pick = (name, label) => el("label", {}, `${label} `, el("select", { name }, el("option", { value: "" }, "none"), ...observed.map((c) => el("option", {}, c))));
  scenario.append(pick("hold_channel", "hold channel"), el("label", {}, "at ", el("input", { name: "hold_value", type: "number", step: "any" })),
    pick("silent_channel", "sensor stops"));
  let plots = [];
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const body = { horizon: +form.horizon.value, step: +form.step.value, samples: +form.samples.value, scenario: { controls: {}, hold: {}, silent: {} } };
    for (const c of controls) { const v = form[`control:${c}`].value; if (v !== "") body.scenario.controls[c] = [[0, +v]]; }
    if (form.hold_channel.value && form.hold_value.value !== "") body.scenario.hold[form.hold_channel.value] = +form.hold_value.value;
    if (form.silent_channel.value) body.scenario.silent[form.silent_channel.value] = 0;
    const status = main.querySelector(".whatif-status");
    status.textContent = "simulating…";
    try {
      const out = await api(`/twins/${encodeURIComponent(id)}/simulate`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
      status.textContent = `${out.samples} trajectories from ${when(out.start_ns)}, ${out.times_s.length} steps of ${out.step_s} s`;
      main.querySelector(".odds tbody").replaceChildren(...out.rules.map((r) => el("tr", {},
        el("td", {}, r.rule), el("td", {}, r.channel), el("td", {}, `${(100 * r.probability).toFixed(1)} %`),
        el("td", {}, r.median_s == null ? "–" : `${r.median_s.toFixed(0)} s`), el("td", {}, r.p90_s == null ? "–" : `${r.p90_s.toFixed(0)} s`))));
      plots.forEach((p) => p.destroy());
      plots = [];
      const box = main.querySelector(".whatif-charts");
      box.replaceChildren();
      const xs = out.times_s.map((t) => out.start_ns / NS + t);
      for (const [name, s] of Object.entries(out.channels)) {
        const holder = el("div", { class: "chart", "data-whatif": name }, el("h4", {}, `${name}: mean and 5–95 % band`));
        box.append(holder);
        plots.push(new uPlot({
          width: 520, height: 200,
          series: [{}, { label: "mean", stroke: "#6a1b9a", width: 2 }, { label: "5 %", stroke: "rgba(106,27,154,0.3)" }, { label: "95 %", stroke: "rgba(106,27,154,0.3)" }],
          bands: [{ series: [3, 2], fill: "rgba(106,27,154,0.12)" }], axes: [{}, { size: 60 }],
        }, [xs, s.mean, s.low, s.high], holder));
      }
      cleanup.push(() => plots.forEach((p) => p.destroy()));
    } catch (err) { status.textContent = err.message; }
  });
}

route();
