// fedmsg wallboard: the bus-health panel of the live view (silence and burst
// alerts, integrity, bus -> screen delay) and the alert notes on the lights.
// Reads what app.js exposes (window.wallboard: its state, lights, and each event
// through onEvent); no framework.  docs/PROTOCOL.md: /api/alerts, /api/integrity.
"use strict";

(function () {
  const W = window.wallboard;
  if (!W || typeof W.onEvent !== "function") return;
  const DELAY_WINDOW_MS = 60000; // the delay tile covers the last minute
  const DELAY_SAMPLES_MAX = 6000; // at most ~100 shown messages a second
  const INTEGRITY_EVERY_MS = 5000;
  const ALERTS_MAX = 12;

  const $ = (id) => document.getElementById(id);
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function serverNow() {
    return Date.now() / 1000 + (Number.isFinite(W.state.offset) ? W.state.offset : 0);
  }
  function fmtSpan(s) {
    if (!Number.isFinite(s) || s < 0) return "–";
    if (s < 90) return Math.round(s) + " s";
    if (s < 5400) return Math.round(s / 60) + " min";
    if (s < 172800) return (s / 3600).toFixed(1).replace(/\.0$/, "") + " h";
    return Math.round(s / 86400) + " d";
  }
  function fmtRate(perH) {
    if (!Number.isFinite(perH)) return "–";
    if (perH >= 100) return Math.round(perH) + "/h";
    if (perH >= 1) return perH.toFixed(1).replace(/\.0$/, "") + "/h";
    return (perH * 24).toFixed(1).replace(/\.0$/, "") + "/day";
  }
  function fmtDelay(s) {
    if (!Number.isFinite(s)) return "–";
    return s < 10 ? s.toFixed(2) + " s" : fmtSpan(s);
  }

  // ---- alerts ----------------------------------------------------------------

  const A = { report: null };

  function alertText(a, now) {
    if (a.state === "silent") {
      const gap = a.last_seen ? now - a.last_seen : a.gap_s;
      return "quiet " + fmtSpan(gap) + " · usually " + fmtRate(a.usual_per_h);
    }
    const span = A.report && A.report.window_s ? fmtSpan(A.report.window_s) : "the window";
    return "bursting: " + a.recent + " in " + span + " · usually " + fmtRate(a.usual_per_h);
  }

  function modeNote(r) {
    if (!r) return "waiting for the listener";
    if (r.mode === "warming_up") return "learning the usual rates: nothing judged yet";
    if (r.mode === "bus_down") return "bus link down: silences not judged";
    if (r.mode === "unknown") return "the listener is not ticking: no verdict";
    return "nothing unusual (" + r.judged + " followed)";
  }

  function renderAlerts() {
    const r = A.report;
    const now = serverNow();
    const list = $("alerts");
    const alerts = (r && Array.isArray(r.alerts) ? r.alerts : []).slice(0, ALERTS_MAX);
    list.dataset.mode = r ? String(r.mode) : "none";
    const rows = alerts.map((a) => {
      const li = el("li", "alert");
      li.dataset.state = a.state;
      li.dataset.kind = a.kind;
      li.dataset.name = a.name;
      const name = a.kind === "topic" ? String(a.name).split(".").slice(-3).join(".") : String(a.name);
      li.append(el("span", "alert-name", name), el("span", "alert-text", alertText(a, now)));
      return li;
    });
    if (!rows.length) rows.push(el("li", "alert-none", modeNote(r)));
    list.replaceChildren(...rows);
    // the notes on the lights (categories only)
    const byCat = new Map();
    for (const a of alerts) if (a.kind === "category") byCat.set(a.name, a);
    for (const [cat, l] of W.lights) {
      const a = byCat.get(cat);
      let note = l.el.querySelector(".alert-note");
      if (!a) {
        if (l.el.dataset.alert) delete l.el.dataset.alert;
        if (note) note.remove();
        continue;
      }
      l.el.dataset.alert = a.state;
      if (!note) {
        note = el("div", "alert-note");
        (l.el.querySelector(".label") || l.el).append(note);
      }
      note.textContent = alertText(a, now);
    }
  }

  function onAlerts(report) {
    if (report && typeof report === "object") {
      A.report = report;
      renderAlerts();
    }
  }

  // ---- delay tile ------------------------------------------------------------

  // Measured here, when a blink is handled (its light flashes, its row enters the
  // ticker): the server's clock now (the browser's clock corrected by the offset
  // app.js keeps from the server's events) minus the message's own timestamp.
  const delays = []; // [received at (ms, browser clock), delay s]

  function onBlink(ev) {
    const at = Date.now();
    const now = serverNow();
    for (const m of ev.msgs || []) {
      if (Number.isFinite(m.ts)) delays.push([at, Math.max(0, now - m.ts)]);
    }
    if (delays.length > DELAY_SAMPLES_MAX) delays.splice(0, delays.length - DELAY_SAMPLES_MAX);
  }

  function quantile(sorted, p) {
    if (!sorted.length) return NaN;
    const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1));
    return sorted[i];
  }

  function renderDelay() {
    const cut = Date.now() - DELAY_WINDOW_MS;
    let drop = 0;
    while (drop < delays.length && delays[drop][0] < cut) drop++;
    if (drop) delays.splice(0, drop);
    const sorted = delays.map((d) => d[1]).sort((a, b) => a - b);
    const p50 = quantile(sorted, 0.5), p95 = quantile(sorted, 0.95);
    $("delay-p50").textContent = fmtDelay(p50);
    $("delay-p95").textContent = fmtDelay(p95);
    const tile = $("delay-tile");
    tile.dataset.samples = String(sorted.length);
    tile.dataset.p50 = Number.isFinite(p50) ? p50.toFixed(3) : "";
    tile.dataset.p95 = Number.isFinite(p95) ? p95.toFixed(3) : "";
  }

  // ---- integrity -------------------------------------------------------------

  function row(key, label, value, bad) {
    const d = el("div", "irow");
    d.dataset.key = key;
    if (bad) d.classList.add("bad");
    d.append(el("dt", "", label), el("dd", "", value));
    return d;
  }

  function renderIntegrity(x) {
    const box = $("integrity");
    $("confidence").textContent = x.confidence || "–";
    const links = x.bus && Array.isArray(x.bus.links) ? x.bus.links : [];
    const okLinks = links.filter((l) => l.state === "ok" || l.state === "quiet").length;
    const rej = Object.entries(x.rejected || {}).sort((a, b) => b[1] - a[1]);
    const rejTotal = rej.reduce((s, kv) => s + kv[1], 0);
    const rows = [
      row("bus", "bus", String((x.bus && x.bus.state) || "–") + (links.length ? " · " + okLinks + "/" + links.length + " links up" : ""), !x.ok),
      row("gaps", "gaps (HWM drops too)", String(x.gaps || 0), x.gaps > 0),
      row("dropped", "dropped", String(x.dropped || 0), x.dropped > 0),
      row("signatures", "signature failures", String(x.signature_failures || 0), x.signature_failures > 0),
      row("rejected", "rejected", rejTotal ? rejTotal + " · " + rej.slice(0, 3).map(([r, n]) => r + " " + n).join(", ") : "0", false),
      row("duplicates", "duplicates", String(x.duplicates || 0), false),
      row("backfill", "backfill", String((x.backfill && x.backfill.state) || "never"), x.backfill && !["done", "never", "running"].includes(x.backfill.state)),
      row("redis", "Redis", (x.redis && x.redis.ok ? "ok" : "down") + (x.redis && !x.redis.listener_ok ? " · listener: down" : ""), !(x.redis && x.redis.ok && x.redis.listener_ok)),
    ];
    for (const l of links) {
      if (l.gaps > 0 || (l.state !== "ok" && l.state !== "quiet")) {
        rows.push(row("link", String(l.endpoint), String(l.state) + " · " + (l.gaps || 0) + " gaps", true));
      }
    }
    box.replaceChildren(...rows);
    box.dataset.gaps = String(x.gaps || 0);
  }

  async function loadIntegrity() {
    try {
      const r = await fetch("api/integrity", { cache: "no-store" });
      if (r.ok) renderIntegrity(await r.json());
    } catch (e) { /* the status pill says the server is away */ }
  }

  async function loadAlerts() {
    try {
      // the screen's filter: a filtered wall lists its own categories' alerts
      const url = typeof W.withFilter === "function" ? W.withFilter("api/alerts") : "api/alerts";
      const r = await fetch(url, { cache: "no-store" });
      if (r.ok) onAlerts(await r.json());
    } catch (e) { /* the next tick brings them */ }
  }

  W.onEvent((ev) => {
    if (ev.type === "tick") onAlerts(ev.alerts);
    else if (ev.type === "blink") onBlink(ev);
  });
  W.ops = { delays, alerts: A };
  loadAlerts();
  loadIntegrity();
  setInterval(() => {
    if (document.visibilityState === "hidden") return;
    renderDelay();
    renderAlerts();
  }, 1000);
  setInterval(() => { if (document.visibilityState !== "hidden") loadIntegrity(); }, INTEGRITY_EVERY_MS);
})();
