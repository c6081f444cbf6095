// volstream dashboard: one page, hash routes (#/<view>/<venue>/<currency>/<expiry>), data from
// the API's /api/dashboard JSON endpoints and its server-sent events (docs/dashboard.md).
"use strict";

const VIEWS = ["overview", "smile", "term", "surface", "diagnostics", "history"];
const POS_COLOURS = { inside: "#15803d", below_bid: "#b91c1c", above_ask: "#d97706", no_band: "#9ca3af", unspecified: "#9ca3af" };
const S = {
  token: sessionStorage.getItem("volstream-token"),
  config: null,
  overview: null,
  surface: null, // light surface of the route's (venue, currency), pushed live
  route: null,
  es: null,
  esKey: null,
  backoff: 500,
  detail: null, // {key, rev, data} for smile / diagnostics
  loading: new Set(),
  others: {}, // venue -> light surface, for the smile overlay
  history: { span: null, series: null, at: null },
  xAxis: "k",
};
const $ = (id) => document.getElementById(id);

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (S.token) headers.Authorization = "Bearer " + S.token;
  const resp = await fetch(path, Object.assign({}, options, { headers, cache: "no-store" }));
  let body = null;
  try { body = await resp.json(); } catch (e) { body = null; }
  if (!resp.ok) {
    const reason = (body && body.error) || resp.statusText;
    if (resp.status === 401) showLogin(reason);
    throw new ApiError(resp.status, reason);
  }
  return body;
}

// ---------------------------------------------------------------------------- formatting
const pct = (v, d = 2) => (v === null || v === undefined ? "–" : (v * 100).toFixed(d));
const fix = (v, d = 2) => (v === null || v === undefined ? "–" : Number(v).toFixed(d));
const usd = (v) => (v === null || v === undefined ? "–" : Math.round(v).toLocaleString("en-US"));
const venueName = (v) => (v === "all" ? "consolidated" : v);
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
// A table cell carrying the exact number (data-value) beside what it shows.
const cell = (field, v, text) => `<td data-field="${field}" data-value="${v === null || v === undefined ? "" : v}">${text}</td>`;
const volCell = (field, v) => cell(field, v, pct(v));
const days = (t) => (t === null ? "–" : (t * 365).toFixed(1));
// Publish minus venue event time; beyond an hour the two clocks differ (a simulator started at a
// pinned past time), which is not a latency.
const latencyOk = (ms) => ms !== null && ms >= 0 && ms < 3.6e6;
const latencyText = (ms) => (ms === null ? "–" : latencyOk(ms) ? fix(ms, 0) : "n/a: event clock ≠ wall clock");
const timeText = (ns) => (ns ? new Date(ns / 1e6).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z") : "–");

function banner(text, kind) {
  const b = $("banner");
  if (!text) { b.hidden = true; b.textContent = ""; return; }
  b.hidden = false;
  b.className = kind || "";
  b.textContent = text;
}

// ---------------------------------------------------------------------------- routing
function parseRoute() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent).filter((p) => p !== "");
  const view = parts[0] || "overview";
  return { view, venue: parts[1] || null, currency: parts[2] || null, expiry: parts[3] || null };
}

function routeHash(r) {
  const parts = [r.view];
  if (r.venue && r.currency) {
    parts.push(r.venue, r.currency);
    if (r.view === "smile" && r.expiry) parts.push(r.expiry);
  }
  return "#/" + parts.map(encodeURIComponent).join("/");
}

function go(changes) {
  const r = Object.assign({}, S.route, changes);
  location.hash = routeHash(r);
}

// The route's surface key, defaulted from the overview when the address names none.
function routeKey() {
  const r = S.route;
  if (r.venue && r.currency) return { venue: r.venue.toLowerCase(), currency: r.currency.toUpperCase() };
  const rows = (S.overview && S.overview.surfaces) || [];
  const pick = rows.find((x) => x.venue !== "all") || rows[0];
  return pick ? { venue: pick.venue, currency: pick.currency } : null;
}

// Why the address cannot be shown, or null.
function routeProblem() {
  const r = S.route;
  if (!VIEWS.includes(r.view)) return `Unknown view "${r.view}" (views: ${VIEWS.join(", ")}).`;
  if (r.view === "overview" || !S.overview) return null;
  const key = routeKey();
  if (!key) return "No surface has been received yet.";
  const rows = S.overview.surfaces;
  const venues = [...new Set(rows.map((x) => x.venue))];
  const currencies = [...new Set(rows.map((x) => x.currency))];
  if (!venues.includes(key.venue)) return `Unknown venue "${r.venue}": no surface from it (venues with surfaces: ${venues.join(", ")}).`;
  if (!currencies.includes(key.currency)) return `Unknown currency "${r.currency}": no surface in it (currencies: ${currencies.join(", ")}).`;
  if (!rows.some((x) => x.venue === key.venue && x.currency === key.currency)) {
    return `No ${key.venue}/${key.currency} surface (surfaces: ${rows.map((x) => x.venue + "/" + x.currency).join(", ")}).`;
  }
  if (r.view === "smile" && r.expiry && S.surface && sameKey(S.surface, key)) {
    const labels = S.surface.slices.map((s) => s.expiry);
    if (!labels.includes(r.expiry)) return `Unknown expiry "${r.expiry}" in the ${key.venue}/${key.currency} surface (expiries: ${labels.join(", ")}).`;
  }
  return null;
}

// The route's key when the API has that surface (the push is asked for no other).
function liveKey() {
  const k = routeKey();
  return k && S.overview && S.overview.surfaces.some((r) => sameKey(r, k)) ? k : null;
}

const sameKey = (a, b) => (!a && !b) || (!!a && !!b && a.venue === b.venue && a.currency === b.currency);

function onRoute() {
  S.route = parseRoute();
  document.querySelectorAll("#nav a").forEach((a) => a.classList.toggle("active", a.dataset.view === S.route.view));
  if (!S.started || !sameKey(liveKey(), S.esKey)) {
    S.started = true;
    S.surface = null;
    S.detail = null;
    S.others = {};
    S.history = { span: null, series: null, at: null };
    connect();
  }
  render();
}

// ---------------------------------------------------------------------------- live push
function setStatus(state, text) {
  const s = $("status");
  s.dataset.state = state;
  s.textContent = text;
}

async function connect() {
  if (S.es) { S.es.close(); S.es = null; }
  const key = liveKey();
  S.esKey = key;
  const params = new URLSearchParams();
  if (key) { params.set("venue", key.venue); params.set("currency", key.currency); }
  try {
    if (S.config && S.config.auth_required) {
      if (!S.token) { showLogin(); return; }
      const t = await api("/api/dashboard/ticket", { method: "POST" });
      params.set("ticket", t.ticket);
    }
  } catch (e) {
    if (e.status === 401) return; // showLogin() asked for a token; connect() follows it
    retry(e.message);
    return;
  }
  const es = new EventSource("/api/dashboard/events?" + params.toString());
  S.es = es;
  es.onopen = () => { S.backoff = 500; setStatus("live", "live"); if (S.lostAt) { banner(null); S.lostAt = null; } };
  es.addEventListener("overview", (ev) => {
    S.overview = JSON.parse(ev.data);
    if (!sameKey(liveKey(), S.esKey)) { onRoute(); return; }
    fillPickers();
    if (S.route.view === "overview") render(); else showProblem();
  });
  es.addEventListener("surface", (ev) => {
    const surface = JSON.parse(ev.data);
    if (!sameKey(surface, routeKey())) return;
    S.surface = surface;
    updateStatus();
    fillPickers();
    render();
  });
  es.onerror = () => { if (S.es === es) { es.close(); S.es = null; retry("connection to the API lost"); } };
}

function retry(reason) {
  setStatus("reconnecting", "reconnecting…");
  if (!S.lostAt) S.lostAt = Date.now();
  banner(`Live updates interrupted (${reason}); reconnecting by itself…`, "info");
  const wait = S.backoff;
  S.backoff = Math.min(S.backoff * 2, 5000);
  setTimeout(async () => {
    try { S.config = await api("/api/dashboard/config"); } catch (e) { retry(e.message); return; }
    if (S.config.auth_required && !S.token) { showLogin(); return; }
    connect();
  }, wait);
}

function updateStatus() {
  const s = S.surface;
  if (!s) return;
  const st = $("status");
  st.dataset.revision = s.revision;
  setStatus(S.es ? "live" : "reconnecting", `live · ${venueName(s.venue)}/${s.currency} rev ${s.revision}`);
  st.dataset.revision = s.revision;
}

function fillPickers() {
  const rows = (S.overview && S.overview.surfaces) || [];
  const key = routeKey();
  const venues = [...new Set(rows.map((x) => x.venue))];
  const currencies = [...new Set(rows.map((x) => x.currency))];
  setOptions($("pick-venue"), venues, key && key.venue, venueName);
  setOptions($("pick-currency"), currencies, key && key.currency, (x) => x);
  const labels = S.surface ? S.surface.slices.map((s) => s.expiry) : [];
  setOptions($("pick-expiry"), labels, currentExpiry(), (x) => x);
  $("pick-expiry-label").hidden = S.route.view !== "smile";
}

function setOptions(select, values, selected, label) {
  const html = values.map((v) => `<option value="${esc(v)}"${v === selected ? " selected" : ""}>${esc(label(v))}</option>`).join("");
  if (select.dataset.html !== html) { select.innerHTML = html; select.dataset.html = html; }
  if (selected && values.includes(selected)) select.value = selected;
}

function currentExpiry() {
  if (!S.surface || !S.surface.slices.length) return S.route.expiry;
  if (S.route.expiry) return S.route.expiry;
  // Default: the first expiry at least a week out (the front weeklies are noisy), else the last.
  const s = S.surface.slices.find((x) => x.t * 365 >= 7) || S.surface.slices[S.surface.slices.length - 1];
  return s.expiry;
}

// ---------------------------------------------------------------------------- rendering
let renderQueued = false;
function render() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => { renderQueued = false; renderNow(); });
}

function showProblem() {
  const problem = routeProblem();
  if (problem) { banner(problem); $("view").dataset.problem = "1"; $("view").innerHTML = ""; return true; }
  $("view").dataset.problem = "";
  if (!S.lostAt) banner(null);
  return false;
}

function renderNow() {
  fillPickers();
  if (showProblem()) return;
  const v = S.route.view;
  if (v === "overview") return renderOverview();
  if (!S.overview || !S.surface) { $("view").innerHTML = `<p class="note">waiting for the surface…</p>`; return; }
  ({ smile: renderSmile, term: renderTerm, surface: renderSurface, diagnostics: renderDiagnostics, history: renderHistory })[v]();
}

// Build the view's skeleton once per (view, key); later renders only fill it.
function skeleton(id, html) {
  const main = $("view");
  if (main.dataset.skeleton !== id) { main.innerHTML = html; main.dataset.skeleton = id; return true; }
  return false;
}

function plot(id, traces, layout) {
  const el = $(id);
  if (!el) return;
  if (!window.Plotly) { el.innerHTML = `<p class="note">charts unavailable: plotly.js was not served (is the plotly package installed?)</p>`; return; }
  const base = { margin: { l: 55, r: 15, t: 30, b: 45 }, font: { size: 11 }, legend: { orientation: "h", y: -0.2 }, paper_bgcolor: "#fff", plot_bgcolor: "#fff" };
  const merged = Object.assign(base, layout);
  // Titles on the left, the mode bar on the right: where the device has no hover (touch
  // screens, a headless Firefox) plotly shows the mode bar all the time, over a centred title.
  if (merged.title) merged.title = Object.assign({ xref: "container", x: 0.01, xanchor: "left" }, merged.title);
  // Box and lasso selection do nothing on these charts: fewer buttons, less to cover a title.
  Plotly.react(el, traces, merged, { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["select2d", "lasso2d"] });
}

// ---- overview
function renderOverview() {
  const o = S.overview;
  if (!o) { $("view").innerHTML = `<p class="note">waiting for the API…</p>`; return; }
  skeleton("overview", `
    <h2>Surfaces</h2>
    <div class="card"><table id="overview-table"></table>
    <p class="note" id="conn-note"></p></div>
    <div class="grid"><div class="card"><div id="ov-atm" class="chart"></div></div>
    <div class="card"><div id="ov-lat" class="chart"></div></div></div>`);
  const rows = o.surfaces.slice().sort((a, b) => a.currency.localeCompare(b.currency) || (a.venue === "all") - (b.venue === "all") || a.venue.localeCompare(b.venue));
  const head = `<tr><th>venue</th><th>currency</th><th>revision</th><th>expiries</th><th>age s</th><th>fresh</th><th>updates/min</th><th>latency ms</th><th>index</th><th>${o.surfaces[0] ? o.surfaces[0].tenor_days : 30}d ATM %</th><th>25Δ RR</th><th>25Δ BF</th><th>vol index 30d</th></tr>`;
  const body = rows.map((r) => {
    const m = r.metrics_30d;
    return `<tr class="clickable" data-venue="${esc(r.venue)}" data-currency="${esc(r.currency)}">
      <td>${esc(venueName(r.venue))}</td><td>${esc(r.currency)}</td>${cell("revision", r.revision, r.revision)}<td>${r.expiries}</td>
      <td>${fix(r.age_ms / 1000, 1)}</td><td class="${r.fresh ? "ok" : "bad"}">${r.fresh ? "fresh" : "stale"}</td>
      <td>${r.updates_per_min === null ? "–" : fix(r.updates_per_min, 0)}</td><td title="surface publish time − venue event time">${latencyText(r.latency_ms)}</td>
      <td>${usd(r.index_price)}</td>${volCell("atm30", m && m.atm)}${volCell("rr25_30", m && m.rr25)}${volCell("bf25_30", m && m.bf25)}${volCell("vol_index", r.vol_index_30d)}</tr>`;
  }).join("");
  $("overview-table").innerHTML = head + (body || `<tr><td colspan="13" class="note">no surface received yet</td></tr>`);
  $("overview-table").querySelectorAll("tr.clickable").forEach((tr) => tr.onclick = () => go({ view: "term", venue: tr.dataset.venue, currency: tr.dataset.currency, expiry: null }));
  $("conn-note").textContent = "Connection states: " + (o.connections ? JSON.stringify(o.connections) : o.connections_note) + ".";
  const label = (r) => `${venueName(r.venue)} ${r.currency}`;
  plot("ov-atm", [
    { type: "bar", name: "30d ATM", x: rows.map(label), y: rows.map((r) => r.metrics_30d && r.metrics_30d.atm * 100) },
    { type: "bar", name: "vol index 30d", x: rows.map(label), y: rows.map((r) => r.vol_index_30d === null ? null : r.vol_index_30d * 100) },
  ], { title: { text: "30-day ATM vol and vol index (%)" }, barmode: "group" });
  plot("ov-lat", [
    { type: "bar", name: "exchange → surface latency (ms)", x: rows.map(label), y: rows.map((r) => (latencyOk(r.latency_ms) ? r.latency_ms : null)) },
    { type: "bar", name: "age (ms)", x: rows.map(label), y: rows.map((r) => r.age_ms) },
  ], { title: { text: "Latency and age (ms)" }, barmode: "group" });
}

// ---- smile
function sviVol(raw, t, k) {
  const d = k - raw.m;
  const w = raw.a + raw.b * (raw.rho * d + Math.sqrt(d * d + raw.sigma * raw.sigma));
  return w > 0 && t > 0 ? Math.sqrt(w / t) : null;
}
function normCdf(x) { // Abramowitz-Stegun 7.1.26 via erf
  const z = Math.abs(x) / Math.SQRT2, t = 1 / (1 + 0.3275911 * z);
  const e = 1 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * Math.exp(-z * z);
  return x >= 0 ? 0.5 * (1 + e) : 0.5 * (1 - e);
}
// x coordinate of log-moneyness k on the chosen axis; delta is the forward call delta at the fit.
function xOf(k, sl) {
  if (S.xAxis === "strike") return sl.forward * Math.exp(k);
  if (S.xAxis === "delta") {
    const v = sviVol(sl.raw, sl.t, k);
    if (!v) return null;
    const sw = v * Math.sqrt(sl.t);
    return normCdf((-k + 0.5 * sw * sw) / sw);
  }
  return k;
}

function loadDetail(kind, url, rev) {
  const tag = kind + url;
  if (S.detail && S.detail.tag === tag && S.detail.rev === rev) return S.detail.data;
  if (!S.loading.has(tag)) {
    S.loading.add(tag);
    api(url).then((data) => { S.detail = { tag, rev, data }; render(); })
      .catch((e) => banner(e.message))
      .finally(() => S.loading.delete(tag));
  }
  return S.detail && S.detail.tag === tag ? S.detail.data : null;
}

function loadOthers() {
  // Light surfaces of the other venues of this currency, for the overlay (one fetch each in flight).
  const key = routeKey();
  for (const r of S.overview.surfaces) {
    if (r.currency !== key.currency || r.venue === key.venue) continue;
    const have = S.others[r.venue];
    const tag = "other" + r.venue + r.currency;
    if ((have && have.revision === r.revision) || S.loading.has(tag)) continue;
    S.loading.add(tag);
    api(`/api/dashboard/surface?venue=${encodeURIComponent(r.venue)}&currency=${encodeURIComponent(r.currency)}`)
      .then((s) => { if (s.currency === routeKey().currency) { S.others[r.venue] = s; render(); } })
      .catch(() => {})
      .finally(() => S.loading.delete(tag));
  }
}

function renderSmile() {
  const key = routeKey();
  const expiry = currentExpiry();
  const id = `smile/${key.venue}/${key.currency}/${expiry}`;
  if (skeleton(id, `
    <div class="controls"><span>x axis:</span>
      <label><input type="radio" name="xaxis" value="k"> log-moneyness k</label>
      <label><input type="radio" name="xaxis" value="strike"> strike</label>
      <label><input type="radio" name="xaxis" value="delta"> forward call delta</label>
      <span id="smile-title" class="muted"></span></div>
    <div class="card"><div id="smile-chart" class="chart tall"></div></div>
    <div class="grid"><div class="card"><div id="resid-chart" class="chart"></div></div>
    <div class="card"><h3>Fit of this expiry</h3><table id="smile-table"></table><p class="note" id="smile-note"></p></div></div>`)) {
    document.querySelectorAll("input[name=xaxis]").forEach((el) => {
      el.checked = el.value === S.xAxis;
      el.onchange = () => { S.xAxis = el.value; renderNow(); };
    });
  }
  const rev = S.surface.revision;
  const sl = S.surface.slices.find((s) => s.expiry === expiry);
  if (!sl) return;
  $("view").dataset.revision = rev;
  $("smile-title").textContent = `${venueName(key.venue)} ${key.currency} ${expiry} · ${days(sl.t)} days · forward ${usd(sl.forward)} · rev ${rev}`;
  const m = sl.metrics, d = sl.diagnostics;
  $("smile-table").innerHTML = `<tr><th>expiry</th><th>ATM %</th><th>25Δ RR</th><th>25Δ BF</th><th>10Δ RR</th><th>10Δ BF</th><th>RMSE bp</th><th>used</th><th>dropped</th></tr>
    <tr data-expiry="${esc(expiry)}" data-revision="${rev}"><td>${esc(expiry)}</td>${volCell("atm", m.atm)}${volCell("rr25", m.rr25)}${volCell("bf25", m.bf25)}${volCell("rr10", m.rr10)}${volCell("bf10", m.bf10)}
    <td>${fix(d.rmse_bp, 1)}</td><td>${d.quotes_used}</td><td>${d.quotes_dropped}</td></tr>`;
  loadOthers();
  const detail = loadDetail("smile", `/api/dashboard/smile?venue=${key.venue}&currency=${key.currency}&expiry=${expiry}`, rev);
  const dsl = detail && detail.slice && detail.slice.expiry === expiry ? detail.slice : null;
  const quotes = dsl ? dsl.quotes : [];
  const ks = quotes.map((q) => q.k).filter((k) => k !== null);
  const kLo = ks.length ? Math.min(...ks) - 0.05 : -0.6, kHi = ks.length ? Math.max(...ks) + 0.05 : 0.6;
  const grid = Array.from({ length: 121 }, (_, i) => kLo + (kHi - kLo) * i / 120);
  const curve = (s, name, dash, colour) => ({
    type: "scatter", mode: "lines", name, line: { dash, color: colour, width: dash ? 1.5 : 2.5 },
    x: grid.map((k) => xOf(k, s)), y: grid.map((k) => { const v = sviVol(s.raw, s.t, k); return v === null ? null : v * 100; }),
  });
  const traces = [curve(sl, `${venueName(key.venue)} fit`, null, "#111827")];
  const colours = ["#2563eb", "#9333ea", "#0d9488", "#ea580c", "#db2777"];
  Object.keys(S.others).sort().forEach((venue, i) => {
    const other = S.others[venue].slices.find((s) => s.expiry === expiry);
    if (other) traces.push(curve(other, `${venueName(venue)} fit`, "dash", colours[i % colours.length]));
  });
  for (const used of [true, false]) {
    const qs = quotes.filter((q) => q.used === used && (q.bid_iv !== null || q.ask_iv !== null));
    const mid = (q) => (q.bid_iv !== null && q.ask_iv !== null ? (q.bid_iv + q.ask_iv) / 2 : (q.bid_iv ?? q.ask_iv));
    traces.push({
      type: "scatter", mode: "markers", name: used ? "quotes used (bid–ask)" : "quotes dropped (bid–ask)",
      x: qs.map((q) => xOf(q.k, sl)), y: qs.map((q) => mid(q) * 100),
      marker: { size: 4, color: used ? "#2563eb" : "#ef4444", symbol: used ? "line-ew" : "x-thin-open", line: { width: 1, color: used ? "#2563eb" : "#ef4444" } },
      error_y: { type: "data", symmetric: false, array: qs.map((q) => (q.ask_iv !== null ? (q.ask_iv - mid(q)) * 100 : 0)), arrayminus: qs.map((q) => (q.bid_iv !== null ? (mid(q) - q.bid_iv) * 100 : 0)), thickness: 2, width: 0, color: used ? "#60a5fa" : "#fca5a5" },
      text: qs.map((q) => `${q.symbol} (${q.venue})<br>bid ${pct(q.bid_iv)} ask ${pct(q.ask_iv)} fit ${pct(q.fit_iv)}<br>residual ${fix(q.residual_bp, 1)} bp · ${q.position.replace("_", " ")}` + (used ? "" : `<br>dropped: ${q.drop_reason.replace(/_/g, " ")}`)),
      hoverinfo: "text",
    });
  }
  const smileQuotes = detail && detail.smile ? detail.smile.quotes.filter((q) => q.venue_mark_iv !== null) : [];
  traces.push({
    type: "scatter", mode: "markers", name: "venue mark IV", marker: { size: 6, symbol: "diamond-open", color: "#f59e0b" },
    x: smileQuotes.map((q) => xOf(q.k, sl)), y: smileQuotes.map((q) => q.venue_mark_iv * 100),
    text: smileQuotes.map((q) => `${q.symbol}<br>venue mark ${pct(q.venue_mark_iv)}<br>our mark ${pct(q.mark_iv)}`), hoverinfo: "text",
  });
  const xTitle = { k: "log-moneyness ln(K/F)", strike: "strike (USD)", delta: "forward call delta N(d1) at the fitted vol" }[S.xAxis];
  plot("smile-chart", traces, { title: { text: `Smile ${expiry} (implied vol %)` }, xaxis: { title: { text: xTitle } }, yaxis: { title: { text: "vol %" } } });
  const used = quotes.filter((q) => q.used && q.residual_bp !== null);
  plot("resid-chart", [{ type: "bar", name: "residual fit − mid (bp)", x: used.map((q) => xOf(q.k, sl)), y: used.map((q) => q.residual_bp), hovertext: used.map((q) => `${q.symbol}: ${fix(q.residual_bp, 1)} bp, ${q.position.replace("_", " ")}`), hoverinfo: "text", marker: { color: used.map((q) => POS_COLOURS[q.position] || "#9ca3af") } }],
    { title: { text: "Residuals (bp of vol), coloured by band position" }, xaxis: { title: { text: xTitle } } });
  $("smile-note").textContent = key.venue === "all"
    ? "Consolidated surface: quotes of every venue; no venue mark IVs (those belong to each venue's smile)."
    : detail && !detail.smile ? "No IV smile received for this expiry yet: venue mark IVs unavailable." : smileQuotes.length ? "" : "This venue publishes no mark IVs for this expiry.";
}

// ---- term structure
function renderTerm() {
  const key = routeKey();
  skeleton(`term/${key.venue}/${key.currency}`, `
    <div class="grid"><div class="card"><div id="term-expiry" class="chart"></div></div>
    <div class="card"><div id="term-tenor" class="chart"></div></div></div>
    <div class="grid"><div class="card"><h3>By expiry</h3><table id="term-table"></table></div>
    <div class="card"><h3>By fixed tenor</h3><table id="tenor-table"></table></div></div>`);
  termInto(S.surface, "term-expiry", "term-tenor", "term-table", "tenor-table");
}

function termInto(s, chartExpiry, chartTenor, tableExpiry, tableTenor) {
  $("view").dataset.revision = s.revision;
  const lines = (xs, ms, xname) => ["atm", "rr25", "bf25", "rr10", "bf10"].map((f) => ({
    type: "scatter", mode: "lines+markers", name: { atm: "ATM", rr25: "25Δ RR", bf25: "25Δ BF", rr10: "10Δ RR", bf10: "10Δ BF" }[f],
    x: xs, y: ms.map((m) => (m[f] === null ? null : m[f] * 100)), yaxis: f === "atm" ? "y" : "y2",
  }));
  const twoAxes = (title, xname) => ({ title: { text: title }, margin: { l: 55, r: 60, t: 30, b: 45 }, xaxis: { title: { text: xname } }, yaxis: { title: { text: "ATM %" } }, yaxis2: { title: { text: "RR / BF vol pts" }, overlaying: "y", side: "right" } });
  plot(chartExpiry, lines(s.slices.map((x) => x.t * 365), s.slices.map((x) => x.metrics)), twoAxes("By expiry", "days to expiry"));
  const tenors = s.tenors.filter((t) => t.available);
  if (chartTenor) plot(chartTenor, lines(tenors.map((t) => t.days), tenors.map((t) => t.metrics)), twoAxes("By fixed tenor", "tenor (days)"));
  $(tableExpiry).innerHTML = `<tr><th>expiry</th><th>days</th><th>forward</th><th>ATM %</th><th>25Δ RR</th><th>25Δ BF</th><th>10Δ RR</th><th>10Δ BF</th></tr>` +
    s.slices.map((x) => `<tr data-expiry="${esc(x.expiry)}" data-revision="${s.revision}"><td>${esc(x.expiry)}</td><td>${days(x.t)}</td><td>${usd(x.forward)}</td>${volCell("atm", x.metrics.atm)}${volCell("rr25", x.metrics.rr25)}${volCell("bf25", x.metrics.bf25)}${volCell("rr10", x.metrics.rr10)}${volCell("bf10", x.metrics.bf10)}</tr>`).join("");
  $(tableTenor).innerHTML = `<tr><th>tenor</th><th>ATM %</th><th>25Δ RR</th><th>25Δ BF</th><th>10Δ RR</th><th>10Δ BF</th></tr>` +
    s.tenors.map((t) => t.available
      ? `<tr data-tenor="${t.days}"><td>${t.days}d</td>${volCell("atm", t.metrics.atm)}${volCell("rr25", t.metrics.rr25)}${volCell("bf25", t.metrics.bf25)}${volCell("rr10", t.metrics.rr10)}${volCell("bf10", t.metrics.bf10)}</tr>`
      : `<tr data-tenor="${t.days}"><td>${t.days}d</td><td colspan="5" class="muted">outside the fitted expiries (not extrapolated)</td></tr>`).join("");
}

// ---- surface
function renderSurface() {
  const key = routeKey();
  skeleton(`surface/${key.venue}/${key.currency}`, `
    <div class="card"><div id="heatmap" class="chart tall"></div></div>
    <div class="card"><h3>Delta risk nodes (vol %, <span id="node-convention"></span> delta)</h3><table id="node-table"></table></div>`);
  const s = S.surface;
  $("view").dataset.revision = s.revision;
  $("node-convention").textContent = s.delta_convention.replace(/_/g, " ");
  const tenors = s.tenors.filter((t) => t.available && t.nodes.length);
  const labels = tenors.length ? tenors[0].nodes.map((n) => n.label) : [];
  const z = tenors.map((t) => labels.map((l) => { const n = t.nodes.find((x) => x.label === l); return n && n.vol !== null ? n.vol * 100 : null; }));
  plot("heatmap", [{ type: "heatmap", x: labels, y: tenors.map((t) => `${t.days}d`), z, colorscale: "Viridis", colorbar: { title: { text: "vol %" } },
    hovertemplate: "%{y} %{x}: %{z:.2f}%<extra></extra>" }], { title: { text: `${venueName(s.venue)} ${s.currency} surface: tenor × delta` }, xaxis: { title: { text: "delta node" } }, yaxis: { title: { text: "tenor" } } });
  $("node-table").innerHTML = `<tr><th>tenor</th>${labels.map((l) => `<th>${esc(l)}</th>`).join("")}</tr>` +
    s.tenors.map((t) => t.available
      ? `<tr data-tenor="${t.days}"><td>${t.days}d</td>${labels.map((l) => { const n = t.nodes.find((x) => x.label === l); return n ? `<td data-label="${esc(l)}" data-value="${n.vol === null ? "" : n.vol}" title="strike ${usd(n.strike)}">${pct(n.vol)}</td>` : "<td>–</td>"; }).join("")}</tr>`
      : `<tr data-tenor="${t.days}"><td>${t.days}d</td><td colspan="${labels.length}" class="muted">outside the fitted expiries (not extrapolated)</td></tr>`).join("");
}

// ---- diagnostics
function renderDiagnostics() {
  const key = routeKey();
  skeleton(`diagnostics/${key.venue}/${key.currency}`, `
    <div class="card"><div id="through-fit" class="chart tall"></div></div>
    <div class="card"><h3>Per slice</h3><table id="diag-table"></table><p class="note" id="diag-note"></p></div>
    <div class="card"><div id="rmse-chart" class="chart"></div></div>`);
  const s = S.surface;
  $("view").dataset.revision = s.revision;
  $("diag-table").innerHTML = `<tr><th>expiry</th><th>used</th><th>dropped</th><th>RMSE bp</th><th>max |res| bp</th><th>min g</th><th>butterfly</th><th>calendar</th><th>repair</th><th>fit ms</th><th>warm</th></tr>` +
    s.slices.map((x) => { const d = x.diagnostics; return `<tr data-expiry="${esc(x.expiry)}"><td>${esc(x.expiry)}</td><td>${d.quotes_used}</td><td>${d.quotes_dropped}</td>${cell("rmse_bp", d.rmse_bp, fix(d.rmse_bp, 1))}<td>${fix(d.max_abs_residual_bp, 1)}</td><td>${d.min_g === null ? "–" : d.min_g.toExponential(2)}</td>
      <td class="${d.butterfly_ok ? "ok" : "bad"}">${d.butterfly_ok ? "free" : "arbitrage"}</td><td class="${d.calendar_ok ? "ok" : "bad"}">${d.calendar_ok ? "free" : "arbitrage"}</td>
      <td title="${esc(d.repair_method)}">${d.repaired ? esc((d.repair_method || "repaired").split(/[;:]/)[0].slice(0, 24)) : "–"}</td><td>${fix(d.fit_time_ms, 1)}</td><td>${d.warm_start ? "yes" : "no"}</td></tr>`; }).join("");
  plot("rmse-chart", [{ type: "bar", name: "RMSE bp", x: s.slices.map((x) => x.expiry), y: s.slices.map((x) => x.diagnostics.rmse_bp) },
    { type: "scatter", mode: "lines+markers", name: "fit ms", x: s.slices.map((x) => x.expiry), y: s.slices.map((x) => x.diagnostics.fit_time_ms), yaxis: "y2" }],
  { title: { text: "Per-slice RMSE (bp) and fit time (ms)" }, margin: { l: 55, r: 60, t: 30, b: 45 }, xaxis: { type: "category" }, yaxis2: { overlaying: "y", side: "right", title: { text: "ms" } } });
  const full = loadDetail("diag", `/api/dashboard/surface?venue=${key.venue}&currency=${key.currency}&quotes=1`, s.revision);
  if (!full) return;
  const positions = ["inside", "below_bid", "above_ask", "no_band"];
  const traces = positions.map((p) => {
    const pts = [];
    for (const x of full.slices) for (const q of x.quotes) if (q.position === p || (p === "no_band" && !positions.includes(q.position))) pts.push([x, q]);
    return { type: "scatter", mode: "markers", name: p.replace("_", " "), x: pts.map(([, q]) => q.k), y: pts.map(([x]) => x.expiry),
      marker: { size: 8, symbol: pts.map(([, q]) => (q.used ? "square" : "square-open")), color: POS_COLOURS[p] },
      text: pts.map(([x, q]) => `${q.symbol} (${q.venue})<br>bid ${pct(q.bid_iv)} ask ${pct(q.ask_iv)} fit ${pct(q.fit_iv)}<br>${q.used ? "used" : "dropped: " + q.drop_reason.replace(/_/g, " ")}`), hoverinfo: "text" };
  });
  plot("through-fit", traces, { title: { text: `Through-fit matrix (rev ${full.revision}): where the fit sits in each quote's bid/ask band (hollow: dropped)` }, xaxis: { title: { text: "log-moneyness ln(K/F)" } }, yaxis: { type: "category", automargin: true, title: { text: "expiry" } }, margin: { l: 90, r: 15, t: 30, b: 45 } });
  const dropped = {};
  for (const x of full.slices) for (const q of x.quotes) if (!q.used) dropped[q.drop_reason] = (dropped[q.drop_reason] || 0) + 1;
  $("diag-note").textContent = "Quotes dropped by reason: " + (Object.keys(dropped).length ? Object.entries(dropped).map(([r, n]) => `${r.replace(/_/g, " ")} ${n}`).join(", ") : "none") + ".";
}

// ---- history
function renderHistory() {
  const key = routeKey();
  if (skeleton(`history/${key.venue}/${key.currency}`, `
    <div class="card"><div class="controls scrub"><span>surface at</span>
      <input id="scrubber" type="range" min="0" max="1" step="1" value="1">
      <span id="scrub-time" class="muted">–</span>
      <label>series over <select id="series-hours"><option value="1">1 h</option><option value="3" selected>3 h</option><option value="6">6 h</option><option value="24">24 h</option></select></label></div>
      <p class="note" id="history-note"></p></div>
    <div class="grid"><div class="card"><div id="series-chart" class="chart"></div></div>
    <div class="card"><div id="hist-expiry" class="chart"></div></div></div>
    <div class="grid"><div class="card"><h3>By expiry, at the chosen time</h3><table id="hist-table"></table></div>
    <div class="card"><h3>By fixed tenor, at the chosen time</h3><table id="hist-tenor"></table></div></div>`)) {
    $("scrubber").onchange = () => loadAt(Number($("scrubber").value) * 1e6);
    $("scrubber").oninput = () => { $("scrub-time").textContent = timeText(Number($("scrubber").value) * 1e6); };
    $("series-hours").onchange = () => loadSeries();
    loadSeries();
  }
  if (!S.history.series || Date.now() - S.history.loaded > 30000) loadSeries();
}

async function loadSeries() {
  const key = routeKey();
  S.history.loaded = Date.now();
  try {
    const hours = $("series-hours") ? $("series-hours").value : "3";
    const data = await api(`/api/dashboard/series?venue=${key.venue}&currency=${key.currency}&hours=${hours}&points=60`);
    if (!sameKey(data, routeKey())) return;
    S.history.series = data;
    const sc = $("scrubber");
    if (!sc) return;
    // The scrubber reaches as far back as the series: the archive's part when there is one.
    const startNs = data.archive_start_ns || data.history_start_ns || data.now_ns;
    const start = Math.floor(startNs / 1e6);
    const first = sc.max === "1";
    sc.min = String(start);
    sc.max = String(Math.floor(data.now_ns / 1e6));
    if (first) { sc.value = sc.max; loadAt(Number(sc.value) * 1e6); }
    const archived = data.points.filter((p) => p.source === "archive").length;
    $("history-note").textContent = !data.points.length
      ? "No history for this surface yet."
      : (archived ? `History from the archive (${timeText(data.archive_start_ns)} on, ${archived} points) and the SURFACE stream` : "History from the SURFACE stream")
        + (data.history_start_ns ? ` (${timeText(data.history_start_ns)} to now)` : "")
        + `; ${data.points.length} points of the ${data.tenor_days}-day tenor.`;
    const view = $("view");
    view.dataset.seriesArchived = String(archived);
    // A break in the line (a null) where two points are over two steps apart: a span neither
    // the archive nor the stream holds is not drawn as a straight line.
    const pts = [];
    for (const p of data.points.filter((q) => q.metrics)) {
      const prev = pts[pts.length - 1];
      if (prev && data.step_ns && p.time_ns - prev.time_ns > 2 * data.step_ns) pts.push({ time_ns: (prev.time_ns + p.time_ns) / 2, metrics: { atm: null, rr25: null, bf25: null } });
      pts.push(p);
    }
    const t = pts.map((p) => new Date(p.time_ns / 1e6));
    plot("series-chart", [
      { type: "scatter", mode: "lines+markers", name: `${data.tenor_days}d ATM`, x: t, y: pts.map((p) => pctOrNull(p.metrics.atm)) },
      { type: "scatter", mode: "lines+markers", name: "25Δ RR", x: t, y: pts.map((p) => pctOrNull(p.metrics.rr25)), yaxis: "y2" },
      { type: "scatter", mode: "lines+markers", name: "25Δ BF", x: t, y: pts.map((p) => pctOrNull(p.metrics.bf25)), yaxis: "y2" },
    ], { title: { text: `${data.tenor_days}-day ATM, RR and BF over time` }, margin: { l: 55, r: 60, t: 30, b: 45 }, shapes: scrubLine(), yaxis: { title: { text: "ATM %" } }, yaxis2: { overlaying: "y", side: "right", title: { text: "vol pts" } } });
  } catch (e) {
    banner(`history: ${e.message}`);
  }
}

function pctOrNull(v) { return v === null || v === undefined ? null : v * 100; }

// A vertical line on the series chart at the scrubber's time.
function scrubLine() {
  const at = S.history.atNs;
  return at ? [{ type: "line", xref: "x", yref: "paper", x0: new Date(at / 1e6), x1: new Date(at / 1e6), y0: 0, y1: 1, line: { color: "#6b7280", dash: "dot" } }] : [];
}

async function loadAt(timeNs) {
  S.history.atNs = timeNs;
  const chart = $("series-chart");
  if (window.Plotly && chart && chart.data) Plotly.relayout(chart, { shapes: scrubLine() });
  const key = routeKey();
  $("scrub-time").textContent = timeText(timeNs);
  try {
    const s = await api(`/api/dashboard/history?venue=${key.venue}&currency=${key.currency}&time=${Math.round(timeNs)}`);
    S.history.at = s;
    const view = $("view");
    view.dataset.historyRevision = s.revision;
    view.dataset.historyTime = String(Math.round(timeNs));
    $("history-note").textContent = s.from_archive
      ? `Surface at ${timeText(timeNs)}: revision ${s.revision}, from the archive (past the SURFACE stream's retention; no quotes).`
      : `Surface at ${timeText(timeNs)}: revision ${s.revision}, stored ${timeText(s.stored_time_ns)} (stream sequence ${s.sequence}).`;
    const rev = view.dataset.revision;
    termInto(s, "hist-expiry", null, "hist-table", "hist-tenor");
    view.dataset.revision = rev || "";
  } catch (e) {
    $("history-note").textContent = e.message;
  }
}

// ---------------------------------------------------------------------------- login, boot
function showLogin(reason) {
  $("login").hidden = false;
  $("view").hidden = true;
  $("login-error").textContent = reason || "";
  setStatus("connecting", "token needed");
}

$("login").onsubmit = (ev) => {
  ev.preventDefault();
  S.token = $("token").value.trim();
  $("token").value = "";
  sessionStorage.setItem("volstream-token", S.token);
  $("login").hidden = true;
  $("view").hidden = false;
  connect();
};

$("pick-venue").onchange = (ev) => go({ venue: ev.target.value, currency: routeKey() ? routeKey().currency : null, expiry: null, view: S.route.view === "overview" ? "term" : S.route.view });
$("pick-currency").onchange = (ev) => go({ currency: ev.target.value, venue: routeKey() ? routeKey().venue : null, expiry: null, view: S.route.view === "overview" ? "term" : S.route.view });
$("pick-expiry").onchange = (ev) => go({ expiry: ev.target.value });
document.querySelectorAll("#nav a").forEach((a) => a.onclick = (ev) => {
  ev.preventDefault();
  const key = routeKey();
  go({ view: a.dataset.view, venue: key && key.venue, currency: key && key.currency, expiry: a.dataset.view === "smile" ? S.route.expiry : null });
});
window.addEventListener("hashchange", onRoute);

(async function boot() {
  S.route = parseRoute();
  try { S.config = await api("/api/dashboard/config"); } catch (e) { retry(e.message); return; }
  onRoute();
})();
