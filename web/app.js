/* fedmsg wallboard page.  No build step; Chart.js is vendored in vendor/.
 *
 * Data: one websocket (/ws, docs/PROTOCOL.md): a `snapshot` on connect, then
 * `blink` batches (lights, ticker), `tick`s (windows, longtail) and `status`
 * (health).  Radar and diff views poll /api/radar and /api/diff.  Every URL is
 * relative to the page's, so the wall works under a proxy's sub-path
 * (https://host/wallboard/ -> wss://host/wallboard/ws, .../wallboard/api/...).
 *
 * Rules kept here:
 *  - bus data is text: only textContent / canvas text, never innerHTML;
 *  - bounded memory: fixed ticker rows, capped history, capped lights;
 *  - a hidden tab renders nothing and queues no animation; when it becomes
 *    visible the latest state is drawn once, without replaying flashes;
 *  - reconnect with jittered exponential backoff; a silent socket is recycled;
 *  - a snapshot with another server `version` than the first one reloads the page
 *    (an upgrade reaches open walls), at most once a minute;
 *  - a light flashes at most 3 times a second (WCAG 2.3.1); with
 *    prefers-reduced-motion, nothing moves: a static ring marks a busy light.
 *
 * URL parameters: window=3600|86400|604800 (or 1h|24h|7d), theme=dark|light,
 * view=live|longtail|radar|diff, rotate=SECONDS, views=a,b (rotation order),
 * users=a,b and axes=N (radar), top=N (bars), lights=N, rows=N (ticker),
 * stale=SECONDS, tz=IANA name or utc (clock and times; the browser's own zone
 * when absent, and a visible note when the name is unknown).  Filters (datagrepper's names, each repeatable): category,
 * topic, user, not_category, not_topic, not_user: passed as they are to /ws and
 * every /api call; the server filters (docs/PROTOCOL.md, "Filters").
 */
"use strict";

(function () {
  const VIEWS = ["live", "longtail", "radar", "diff"];
  const HISTORY_MAX = 720;
  const FLASH_KEYS_MAX = 512;
  const LIGHTS_KEPT_MAX = 256;
  const RECONNECT_BASE_MS = 500;
  const RECONNECT_MAX_MS = 30000;
  const SILENT_SOCKET_MS = 20000;
  const FETCH_EVERY_MS = 60000;
  const RATE_TAU_S = 20;
  const FLASH_MIN_MS = 340; // 3 flash starts at most in any second
  const CALM_RING_MS = 1500; // reduced motion: a light's ring after its last blink
  const RELOAD_MIN_MS = 60000; // version reloads of one tab at most this often

  // ---- parameters ---------------------------------------------------------

  const q = new URLSearchParams(location.search);
  function intParam(name, def, lo, hi) {
    const v = parseInt(q.get(name) || "", 10);
    return Number.isFinite(v) && v >= lo && v <= hi ? v : def;
  }
  const WINDOW_ALIASES = { "1h": 3600, "24h": 86400, "1d": 86400, "7d": 604800, "1w": 604800 };
  const P = {
    window: String(WINDOW_ALIASES[q.get("window")] || intParam("window", 3600, 1, 1e8)),
    theme: q.get("theme") === "light" ? "light" : "dark",
    view: VIEWS.includes(q.get("view")) ? q.get("view") : null,
    rotate: intParam("rotate", 0, 5, 86400),
    views: (q.get("views") || "").split(",").filter((v) => VIEWS.includes(v)),
    users: (q.get("users") || "").split(",").map((s) => s.trim()).filter(Boolean).slice(0, 12),
    top: intParam("top", 14, 3, 40),
    lights: intParam("lights", 24, 4, 80),
    rows: intParam("rows", 8, 3, 30),
    stale: intParam("stale", 120, 5, 86400),
    axes: intParam("axes", 16, 3, 64),
    tz: (q.get("tz") || "").trim().slice(0, 64),
  };
  document.documentElement.dataset.theme = P.theme;

  // ---- filter -------------------------------------------------------------

  // The screen's filter goes to the server unchanged (it validates and applies
  // it); the page only shows it and says which figures could not follow it.
  const FILTER_PARAMS = ["category", "topic", "user", "package", "not_category", "not_topic", "not_user"];
  const FILTER = new URLSearchParams();
  for (const name of FILTER_PARAMS) for (const v of q.getAll(name)) if (v) FILTER.append(name, v.slice(0, 300));
  const FILTER_QS = FILTER.toString();
  function withFilter(url) {
    return FILTER_QS ? url + (url.includes("?") ? "&" : "?") + FILTER_QS : url;
  }
  // what each `unfiltered` name means on the wall
  const UNFOLLOWED = {
    messages: "message counts", categories: "message counts", topics: "topics",
    users: "users & longtail", rate_per_min: "rate", history: "earlier history",
  };

  // ---- helpers ------------------------------------------------------------

  const $ = (id) => document.getElementById(id);
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function cssVar(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }
  function remPx() {
    return parseFloat(getComputedStyle(document.documentElement).fontSize) || 16;
  }
  function fmtInt(n) {
    if (n === null || n === undefined || !Number.isFinite(n)) return "–";
    if (Math.abs(n) >= 1e6) return (n / 1e6).toFixed(1) + "M";
    if (Math.abs(n) >= 1e4) return (n / 1e3).toFixed(1) + "k";
    return Math.round(n).toLocaleString("en-US");
  }
  function fmtNum(x, digits) {
    if (x === null || x === undefined || !Number.isFinite(x)) return "–";
    return x.toFixed(digits);
  }
  function fmtAge(s) {
    if (s === null || s === undefined || !Number.isFinite(s)) return "–";
    s = Math.max(0, s);
    if (s < 60) return Math.floor(s) + " s";
    if (s < 3600) return Math.floor(s / 60) + " min";
    if (s < 86400 * 2) return Math.floor(s / 3600) + " h";
    return Math.floor(s / 86400) + " d";
  }
  function fmtWindow(w) {
    w = Number(w);
    if (w % 86400 === 0 && w >= 86400) return w / 86400 === 1 ? "24 h" : w / 86400 + " d";
    if (w % 3600 === 0) return w / 3600 + " h";
    if (w % 60 === 0) return w / 60 + " min";
    return w + " s";
  }
  function windowPhrase(w) {
    w = Number(w);
    if (w === 3600) return "last hour";
    if (w === 86400) return "last 24 hours";
    if (w === 604800) return "last 7 days";
    return "last " + fmtWindow(w);
  }
  /** "org.fedoraproject.prod.buildsys.tag" -> "buildsys.tag" (env kept unless prod). */
  function shortTopic(topic) {
    const parts = String(topic).split(".");
    let out = topic;
    if (parts.length > 3 && ["prod", "stg", "dev"].includes(parts[2])) {
      out = (parts[2] === "prod" ? "" : parts[2] + ": ") + parts.slice(3).join(".");
    }
    return out.length > 44 ? out.slice(0, 43) + "\u2026" : out;
  }
  /** The listener's rule (listener/core/envelope.py category_of, docs/AMQP.md). */
  function categoryOf(topic) {
    const parts = String(topic).split(".");
    if (String(topic).includes("VirtualTopic")) return parts[2] || "Unclassified";
    for (let i = 1; i < Math.min(4, parts.length - 1); i++) {
      if (["prod", "stg", "stage", "dev"].includes(parts[i])) return parts[i + 1] || "Unclassified";
    }
    return "Unclassified";
  }

  // Colours: hand-picked for the busiest Fedora services, golden-angle hues otherwise
  // (lightness 72 %: as text on the dark panels, every hue is above 4.5:1).
  const PALETTE = {
    buildsys: "#51a2da", copr: "#f0a03c", bodhi: "#79c267", pagure: "#e9678f",
    git: "#b48cf2", github: "#c9d1d9", mailman: "#4fd1c5", bugzilla: "#f26b5b",
    fas: "#f5d547", wiki: "#8fb3ff", koschei: "#ff9f7a", compose: "#38bdf8",
    pungi: "#38bdf8", anitya: "#a3e635", ci: "#fb923c", mdapi: "#c084fc",
    trac: "#f472b6", fmn: "#94a3b8", meetbot: "#fbbf24", planet: "#34d399",
    hotness: "#f87171", askbot: "#60a5fa", badges: "#facc15", kerneltest: "#2dd4bf",
    fedimg: "#818cf8", autocloud: "#22d3ee", mbs: "#e879f9", faf: "#fda4af",
    nuancier: "#fcd34d", summershum: "#86efac", irc: "#a5b4fc", jenkins: "#fdba74",
    pdc: "#5eead4", taskotron: "#f9a8d4", zanata: "#bef264", fedbadges: "#facc15",
  };
  function hash(s) {
    let h = 2166136261;
    for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 16777619);
    return h >>> 0;
  }
  function colorFor(category) {
    if (PALETTE[category]) return PALETTE[category];
    const hue = (hash(String(category)) * 137.508) % 360;
    return `hsl(${hue.toFixed(0)}, 70%, 72%)`;
  }
  const USER_COLORS = ["#51a2da", "#f0a03c", "#79c267", "#e9678f", "#b48cf2", "#4fd1c5",
    "#f5d547", "#f26b5b", "#8fb3ff", "#a3e635", "#fb923c", "#c084fc"];
  function withAlpha(color, a) {
    if (color.startsWith("#")) {
      const n = parseInt(color.slice(1), 16);
      return `rgba(${(n >> 16) & 255}, ${(n >> 8) & 255}, ${n & 255}, ${a})`;
    }
    return color.replace("hsl(", "hsla(").replace(")", `, ${a})`);
  }

  // Times: Intl in the zone of tz= ("utc" is UTC), else the browser's own.  An
  // unknown zone falls back to the browser's, and the note under the clock says so.
  const TZ = (() => {
    if (!P.tz) return { zone: undefined, label: "", bad: "" };
    const zone = P.tz.toLowerCase() === "utc" ? "UTC" : P.tz;
    try {
      new Intl.DateTimeFormat("en-GB", { timeZone: zone });
      return { zone, label: zone, bad: "" };
    } catch (e) {
      return { zone: undefined, label: "", bad: P.tz };
    }
  })();
  function timeFormat(seconds) {
    const o = { timeZone: TZ.zone, hour: "2-digit", minute: "2-digit", hourCycle: "h23" };
    if (seconds) o.second = "2-digit";
    return new Intl.DateTimeFormat("en-GB", o);
  }
  const TIME_HM = timeFormat(false), TIME_HMS = timeFormat(true);

  const reducedMotion = window.matchMedia ? window.matchMedia("(prefers-reduced-motion: reduce)") : null;
  const calm = () => !!(reducedMotion && reducedMotion.matches);

  // ---- state --------------------------------------------------------------

  const S = {
    connected: false,
    reconnectAt: null,
    closedBy: "", // why the server closed the last websocket, when it said ("redis down")
    windows: {},
    history: {},
    recent: [],
    rate: null,
    lastMessageAt: null,
    health: null,
    offset: 0,
    flashes: {},
    bars: [],
    radar: null,
    diff: {},
    fetchedAt: {},
    radarNote: "",
    view: null,
    version: null, // the server's, from the first snapshot: another one reloads the page
    reloading: null, // the other version seen, while the reload waits
    events: { snapshot: 0, blink: 0, tick: 0, status: 0 },
    filter: null, // the server's `filter` object of a filtered screen
    unfiltered: [], // the snapshot event's figures that cannot follow the filter
    partialBlinks: 0, // blinks whose omitted messages could not be matched
    filterError: "", // the server refused the URL's filter (its 400 message)
  };
  const nowS = () => Date.now() / 1000 + S.offset;
  const visible = () => !document.hidden;
  function win() {
    if (S.windows[P.window]) return P.window;
    const keys = Object.keys(S.windows);
    return keys.length ? keys.sort((a, b) => a - b)[0] : P.window;
  }

  // ---- charts ---------------------------------------------------------------

  const charts = {};
  const valueLabels = {
    id: "valueLabels",
    afterDatasetsDraw(chart) {
      const ds = chart.data.datasets[0];
      if (!ds) return;
      const meta = chart.getDatasetMeta(0);
      const ctx = chart.ctx;
      ctx.save();
      ctx.fillStyle = cssVar("--text");
      ctx.font = `700 ${Math.round(remPx() * 1.0)}px ${Chart.defaults.font.family}`;
      ctx.textBaseline = "middle";
      meta.data.forEach((bar, i) => {
        const v = ds.data[i];
        if (v === undefined || v === null) return;
        ctx.fillText(fmtInt(v), bar.x + remPx() * 0.5, bar.y);
      });
      ctx.restore();
    },
  };

  function chartDefaults() {
    if (!window.Chart) return;
    Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
    Chart.defaults.font.size = Math.round(remPx() * 0.95);
    Chart.defaults.color = cssVar("--muted");
    Chart.defaults.borderColor = cssVar("--line");
    Chart.defaults.animation.duration = calm() ? 0 : 500;
    Chart.defaults.maintainAspectRatio = false;
    Chart.defaults.plugins.legend.display = false;
    Chart.defaults.plugins.tooltip.enabled = false;
  }

  function makeCharts() {
    if (!window.Chart) return;
    chartDefaults();
    const r = remPx();
    charts.bars = new Chart($("bars"), {
      type: "bar",
      data: { labels: [], datasets: [{ data: [], backgroundColor: [], borderRadius: 6, barPercentage: 0.82, categoryPercentage: 0.92 }] },
      options: {
        indexAxis: "y",
        layout: { padding: { right: r * 4.5 } },
        scales: {
          x: { beginAtZero: true, grid: { color: withAlpha("#8a9ab5", 0.12) }, ticks: { precision: 0 } },
          y: { grid: { display: false }, ticks: { color: cssVar("--text"), font: { size: Math.round(r * 1.0), weight: "600" }, autoSkip: false } },
        },
      },
      plugins: [valueLabels],
    });
    charts.history = new Chart($("history"), {
      type: "line",
      data: { labels: [], datasets: [
        { label: "longtail (messages)", data: [], borderColor: cssVar("--accent"), backgroundColor: withAlpha("#51a2da", 0.15), fill: true, pointRadius: 0, borderWidth: 3, tension: 0.25, yAxisID: "y" },
        { label: "gini", data: [], borderColor: "#f0a03c", pointRadius: 0, borderWidth: 2, borderDash: [6, 5], tension: 0.25, yAxisID: "y1" },
      ] },
      options: {
        animation: false,
        plugins: { legend: { display: true, labels: { color: cssVar("--text"), boxWidth: r * 1.2 } } },
        scales: {
          x: { ticks: { maxTicksLimit: 8, maxRotation: 0 }, grid: { display: false } },
          y: { position: "left", title: { display: true, text: "longtail" } },
          y1: { position: "right", min: 0, max: 1, grid: { display: false }, title: { display: true, text: "gini" } },
        },
      },
    });
    // Every user of the window by rank (snapshot "ranks", sampled by the listener)
    // against the seed's straight line from (0, head) to (n, tail): the longtail
    // is the mean gap between the two.
    charts.dist = new Chart($("dist"), {
      type: "line",
      data: { datasets: [
        { label: "messages per user, by rank", data: [], borderColor: cssVar("--accent"), backgroundColor: withAlpha("#51a2da", 0.28), fill: "origin", stepped: "before", pointRadius: 0, borderWidth: 3, order: 2 },
        { label: "the seed's head-to-tail line", data: [], borderColor: "#f0a03c", borderWidth: 3, borderDash: [10, 6], pointRadius: 0, order: 1 },
      ] },
      options: {
        animation: false,
        parsing: false,
        plugins: { legend: { display: true, labels: { color: cssVar("--text"), boxWidth: r * 1.2 } } },
        scales: {
          x: { type: "linear", min: 0, grid: { display: false }, title: { display: true, text: "users, by rank" }, ticks: { precision: 0, maxTicksLimit: 6, maxRotation: 0 } },
          y: { beginAtZero: true, title: { display: true, text: "messages" }, ticks: { precision: 0 } },
        },
      },
    });
    charts.radar = new Chart($("radar"), {
      type: "radar",
      data: { labels: [], datasets: [] },
      options: {
        plugins: { legend: { display: false } },
        scales: {
          r: {
            beginAtZero: true,
            angleLines: { color: cssVar("--line") },
            grid: { color: cssVar("--line") },
            pointLabels: { color: cssVar("--text"), font: { size: Math.round(r * 0.95), weight: "600" } },
            ticks: { backdropColor: "transparent", color: cssVar("--muted"), maxTicksLimit: 5, callback: pct },
          },
        },
      },
    });
  }

  /** A share (0..1) as a percent with the digits its size needs: small shares
   *  rounded to whole percents repeated ("4%, 4%, 3%, 3%"). */
  function pct(v) {
    const p = Math.round(v * 10000) / 100; // 0.05 * 100 is 5.000000000000001
    if (p >= 10 || Number.isInteger(p)) return Math.round(p) + "%";
    return (p >= 1 ? p.toFixed(1) : p.toFixed(2)) + "%";
  }

  function updateChart(chart, active) {
    if (!chart) return;
    chart.update(active && visible() ? undefined : "none");
  }

  // ---- lights ---------------------------------------------------------------

  const lights = new Map(); // category -> {el, lamp, name, count, rate, pending}
  let lightKeys = "";

  function lightFor(cat) {
    let l = lights.get(cat);
    if (l) return l;
    const e = el("div", "light");
    const color = colorFor(cat);
    e.style.setProperty("--c", color);
    e.dataset.category = cat;
    e.dataset.flashes = "0";
    const lamp = el("div", "lamp");
    const name = el("div", "name", cat);
    const count = el("div", "count", "");
    const label = el("div", "label");
    label.append(name, count);
    e.append(lamp, label);
    l = { el: e, lamp, name, count, color, rate: 0, pending: 0, anim: null, glow: null, flashes: 0, flashedAt: -Infinity };
    const snap = S.windows["3600"];
    if (snap && snap.categories && snap.categories[cat]) l.rate = snap.categories[cat] / 60;
    lights.set(cat, l);
    return l;
  }

  function chooseLights() {
    const snap = S.windows[win()] || {};
    const counts = Object.assign({}, snap.categories || {});
    for (const [cat, l] of lights) if (!(cat in counts) && l.rate > 0.05) counts[cat] = 0;
    const ranked = Object.keys(counts).sort((a, b) => counts[b] - counts[a] || (a < b ? -1 : 1));
    return ranked.slice(0, P.lights).sort();
  }

  function layoutLights(n) {
    const box = $("lights");
    const W = box.clientWidth || 600, H = box.clientHeight || 400;
    let best = 1, bestScore = -1;
    for (let c = 1; c <= Math.max(1, n); c++) {
      const rows = Math.ceil(n / c);
      const score = Math.min(W / c, (H / rows) * 2.6); // tiles about 2.6:1
      if (score > bestScore) { bestScore = score; best = c; }
    }
    box.style.setProperty("--cols", String(best));
  }

  function renderLights() {
    const keep = chooseLights();
    const key = keep.join("\u0000");
    if (key !== lightKeys) {
      lightKeys = key;
      const box = $("lights");
      box.replaceChildren(...keep.map((c) => lightFor(c).el));
      // Lights off the board keep their rate (they may come back), within a bound.
      if (lights.size > LIGHTS_KEPT_MAX) {
        const spare = [...lights.entries()].filter(([c]) => !keep.includes(c));
        spare.sort((a, b) => a[1].rate - b[1].rate);
        for (const [c] of spare.slice(0, lights.size - LIGHTS_KEPT_MAX)) lights.delete(c);
      }
      layoutLights(keep.length);
    }
    const snap = S.windows[win()] || {};
    const cats = snap.categories || {};
    for (const [cat, l] of lights) {
      if (l.el.isConnected) l.count.textContent = fmtInt(snap.categories === null ? null : cats[cat] || 0) + " in " + fmtWindow(win());
    }
    levelLights();
  }

  function levelLights() {
    let max = 10;
    for (const l of lights.values()) max = Math.max(max, l.rate);
    const scale = Math.log1p(max);
    for (const l of lights.values()) {
      const level = l.rate > 0 ? Math.min(1, Math.log1p(l.rate) / scale) : 0;
      l.el.style.setProperty("--level", level.toFixed(3));
    }
  }

  /** Reduced motion: a light's static ring goes off CALM_RING_MS after its last blink. */
  function calmRings() {
    const now = performance.now();
    for (const l of lights.values()) {
      if ("busy" in l.el.dataset && (!calm() || now - l.flashedAt > CALM_RING_MS)) delete l.el.dataset.busy;
    }
  }

  function decayRates() {
    const a = 1 - Math.exp(-1 / RATE_TAU_S);
    for (const l of lights.values()) {
      l.rate += a * (l.pending * 60 - l.rate);
      l.pending = 0;
    }
  }

  function flash(l, n) {
    l.flashes += 1;
    l.el.dataset.flashes = String(l.flashes);
    if (!visible() || !l.el.isConnected) return; // a hidden tab queues nothing
    const now = performance.now();
    if (calm()) {
      l.flashedAt = now;
      l.el.dataset.busy = "";
      return;
    }
    // a blink within FLASH_MIN_MS of the last flash's start is counted, not drawn
    if (now - l.flashedAt < FLASH_MIN_MS) return;
    l.flashedAt = now;
    if (l.anim) l.anim.cancel();
    if (l.glow) l.glow.cancel();
    const k = Math.min(1, 0.55 + Math.log10(1 + n) / 2);
    l.anim = l.lamp.animate(
      [{ transform: `scale(${1 + 0.25 * k})`, filter: `brightness(${1.6 + k})`, opacity: 1 },
        { transform: "scale(1)", filter: "brightness(1)" }],
      { duration: 700, easing: "cubic-bezier(.2,.8,.3,1)" });
    l.glow = l.el.animate(
      [{ boxShadow: `inset 0 0 0 2px ${l.color}, 0 0 1.4rem ${withAlpha(l.color, 0.45)}`, backgroundColor: withAlpha(l.color, 0.12) }, // the count's text stays >= 4.5:1
        { boxShadow: `inset 0 0 0 1px ${withAlpha(l.color, 0)}, 0 0 0 transparent`, backgroundColor: withAlpha(l.color, 0) }],
      { duration: 900, easing: "ease-out" });
  }

  // ---- ticker ---------------------------------------------------------------

  const tickerRows = [];
  function buildTicker() {
    const ol = $("ticker");
    ol.style.setProperty("--rows", String(P.rows));
    for (let i = 0; i < P.rows; i++) {
      const li = el("li");
      const parts = { li, dot: el("span", "dot"), cat: el("span", "cat"), sum: el("span", "sum"), users: el("span", "users"), age: el("span", "age") };
      li.append(parts.dot, parts.cat, parts.sum, parts.users, parts.age);
      ol.append(li);
      tickerRows.push(parts);
    }
  }
  function pushRecent(msgs) {
    for (const m of msgs) if (m && typeof m === "object") S.recent.push(m);
    if (S.recent.length > P.rows) S.recent.splice(0, S.recent.length - P.rows);
  }
  let tickerTop = null;
  function renderTicker(animate = true) {
    const newest = S.recent.slice().reverse();
    tickerRows.forEach((r, i) => {
      const m = newest[i];
      if (!m) {
        r.li.style.setProperty("--c", "transparent");
        r.cat.textContent = r.sum.textContent = r.users.textContent = r.age.textContent = "";
        r.li.removeAttribute("data-msg-id");
        return;
      }
      const cat = String(m.category || categoryOf(m.topic || ""));
      r.li.style.setProperty("--c", colorFor(cat));
      r.cat.textContent = cat;
      r.sum.textContent = String(m.summary || m.topic || "");
      r.users.textContent = Array.isArray(m.users) ? m.users.map(String).join(", ") : "";
      r.age.textContent = fmtAge(nowS() - Number(m.ts));
      r.li.dataset.msgId = String(m.msg_id || "");
    });
    const top = newest[0] && newest[0].msg_id;
    if (animate && top && top !== tickerTop && visible() && S.view === "live" && !calm()) {
      // a ring round the row, not a tint under its text (the text keeps its contrast)
      tickerRows[0].li.animate([{ boxShadow: `inset 0 0 0 0.15rem ${withAlpha("#51a2da", 0.9)}` }, { boxShadow: "inset 0 0 0 0.15rem rgba(0,0,0,0)" }], { duration: 800 });
    }
    tickerTop = top;
  }
  function renderAges() {
    const newest = S.recent.slice().reverse();
    tickerRows.forEach((r, i) => {
      if (newest[i]) r.age.textContent = fmtAge(nowS() - Number(newest[i].ts));
    });
  }

  // ---- bars and longtail ------------------------------------------------------

  function topTopics(snap, n) {
    const items = Object.entries((snap && snap.topics) || {});
    items.sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
    return items.slice(0, n);
  }

  function renderBars() {
    const snap = S.windows[win()];
    S.bars = topTopics(snap, P.top);
    $("bars-sub").textContent = windowPhrase(win()) + (snap ? ` · ${fmtInt(snap.messages)} messages` : "");
    const c = charts.bars;
    if (!c) return;
    c.data.labels = S.bars.map(([t]) => shortTopic(t));
    c.data.datasets[0].data = S.bars.map(([, n]) => n);
    c.data.datasets[0].backgroundColor = S.bars.map(([t]) => withAlpha(colorFor(categoryOf(t)), 0.85));
    updateChart(c, S.view === "live");
  }

  const strip = {};
  function buildStrip() {
    const box = $("ltstrip");
    for (const w of ["3600", "86400", "604800", "headtail"]) {
      const d = el("div", "lt-mini" + (w === "headtail" ? " headtail" : ""));
      const k = el("div", "k"), v = el("div", "v"), s = el("div", "s");
      d.append(k, v, s);
      box.append(d);
      strip[w] = { d, k, v, s };
    }
  }
  function whoText(pair) {
    return pair ? `${pair[0]} (${fmtInt(pair[1])})` : "–";
  }
  function renderStrip() {
    const keys = Object.keys(S.windows).sort((a, b) => a - b).slice(0, 3);
    const slots = ["3600", "86400", "604800"];
    slots.forEach((slot, i) => {
      const w = keys[i];
      const s = strip[slot];
      const snap = w && S.windows[w];
      s.d.hidden = !snap;
      if (!snap) return;
      s.k.textContent = "longtail · " + fmtWindow(w) + (snap.warming_up ? " · warming up" : "");
      s.v.textContent = fmtNum(snap.longtail, 2);
      s.v.dataset.window = w;
      s.s.textContent = `gini ${fmtNum(snap.gini, 2)} · ${fmtInt(snap.users)} users · ${fmtInt(snap.messages)} msgs`;
    });
    const snap = S.windows[win()];
    const ht = strip.headtail;
    ht.k.textContent = "head and tail · " + fmtWindow(win());
    ht.v.replaceChildren();
    ht.s.replaceChildren();
    if (snap) {
      ht.v.append(el("span", "who", whoText(snap.head)));
      ht.s.append(document.createTextNode("tail "), el("span", "who", whoText(snap.tail)));
    }
  }

  const cards = {};
  function buildCards() {
    const box = $("lt-cards");
    for (const w of ["3600", "86400", "604800"]) {
      const d = el("div", "panel lt-card");
      const k = el("div", "k");
      const val = el("div");
      const v = el("span", "lt-value");
      const unit = el("span", "unit", "messages");
      val.append(v, unit);
      const row = el("div", "row");
      const head = el("div", "ht"), tail = el("div", "ht");
      d.append(k, val, row, head, tail);
      box.append(d);
      cards[w] = { d, k, v, row, head, tail };
    }
  }
  function statPair(label, value) {
    const s = el("span");
    s.append(document.createTextNode(label + " "), el("b", "", value));
    return s;
  }
  function renderCards() {
    const keys = Object.keys(S.windows).sort((a, b) => a - b).slice(0, 3);
    ["3600", "86400", "604800"].forEach((slot, i) => {
      const w = keys[i];
      const c = cards[slot];
      const snap = w && S.windows[w];
      c.d.hidden = !snap;
      if (!snap) return;
      c.d.classList.toggle("selected", w === win());
      c.k.replaceChildren(document.createTextNode("longtail · " + windowPhrase(w)));
      if (snap.warming_up) c.k.append(el("span", "badge", "warming up"));
      c.v.textContent = fmtNum(snap.longtail, 2);
      c.v.dataset.window = w;
      c.row.replaceChildren(
        statPair("normalized", fmtNum(snap.longtail_normalized, 3)),
        statPair("gini", fmtNum(snap.gini, 3)),
        statPair("users", fmtInt(snap.users)),
        statPair("messages", fmtInt(snap.messages)));
      c.head.replaceChildren(document.createTextNode("head "), el("span", "who", whoText(snap.head)));
      c.tail.replaceChildren(document.createTextNode("tail "), el("span", "who", whoText(snap.tail)));
    });
  }

  function hhmm(t, seconds = false) {
    return (seconds ? TIME_HMS : TIME_HM).format(new Date(t * 1000));
  }
  function renderHistory() {
    $("history-sub").textContent = fmtWindow(win()) + " window";
    const c = charts.history;
    if (!c) return;
    const pts = S.history[win()] || [];
    const span = pts.length ? pts[pts.length - 1][0] - pts[0][0] : 0;
    c.data.labels = pts.map((p) => hhmm(p[0], span < 600));
    c.data.datasets[0].data = pts.map((p) => p[1]);
    c.data.datasets[1].data = pts.map((p) => p[3]);
    updateChart(c, false);
  }
  function renderDist() {
    const c = charts.dist;
    if (!c) return;
    const snap = S.windows[win()];
    const n = snap ? snap.users : 0;
    // rank r's user covers x in [r-1, r]: the curve starts at the head's count
    // at x = 0 and ends at the tail's at x = n, as the seed's line does
    const ranks = (snap && snap.ranks) || [];
    const curve = ranks.map(([rank, msgs]) => ({ x: rank, y: msgs }));
    if (curve.length) curve.unshift({ x: 0, y: curve[0].y });
    c.data.datasets[0].data = curve;
    const head = snap && snap.head ? snap.head[1] : 0;
    const tail = snap && snap.tail ? snap.tail[1] : 0;
    c.data.datasets[1].data = n ? [{ x: 0, y: head }, { x: n, y: tail }] : [];
    c.options.scales.x.max = n || 1;
    $("dist-sub").textContent = snap && snap.ranks === null ? "users cannot follow this filter"
      : n ? `all ${fmtInt(n)} users by messages, and the seed's straight line` : "no users in this window";
    updateChart(c, S.view === "longtail");
  }

  // ---- radar and diff (HTTP) -----------------------------------------------------

  async function getJSON(url) {
    const r = await fetch(url, { cache: "no-store" }); // url relative to the page
    const body = await r.json();
    if (!r.ok) throw new Error(body && body.error ? body.error : "HTTP " + r.status);
    return body;
  }

  async function loadRadar() {
    const params = new URLSearchParams({ window: win() });
    if (P.users.length) params.set("users", P.users.join(","));
    try {
      S.radar = await getJSON(withFilter("api/radar?" + params));
      S.fetchedAt.radar = Date.now();
      $("radar-note").textContent = "";
    } catch (e) {
      $("radar-note").textContent = "radar unavailable: " + e.message;
    }
    renderRadar();
  }

  function renderRadar() {
    const data = S.radar;
    $("radar-sub").textContent = "share of each category's messages · " + windowPhrase(win());
    const list = $("radar-users");
    if (!data) { list.replaceChildren(); return; }
    const users = Object.entries(data.users || {});
    const ncat = (data.categories || []).length;
    // a radar needs three axes: with fewer categories (or nobody) it would be a
    // line or a bare scale, so the chart is hidden and the note says why
    const counted = users.some(([, shares]) => (shares || []).some((v) => Number(v) > 0));
    const note = data.users === null ? "the radar cannot follow this filter"
      : !users.length ? "no users in this window"
      : ncat < 3 ? `only ${ncat} ${ncat === 1 ? "category" : "categories"} in this window: a radar needs 3`
      : !counted ? `no messages from ${users.length === 1 ? users[0][0] : "these users"} in this window`
      : "";
    // the note shows the fetch's error too (loadRadar): only this note is replaced
    if (note || $("radar-note").textContent === S.radarNote) $("radar-note").textContent = note;
    S.radarNote = note;
    list.replaceChildren(...users.map(([name, shares], i) => {
      const li = el("li");
      const sw = el("span", "swatch");
      sw.style.background = USER_COLORS[i % USER_COLORS.length];
      const snap = S.windows[win()] || {};
      const row = (snap.top_users || []).find(([u]) => u === name);
      li.append(sw, el("span", "who", name), el("span", "n", row ? fmtInt(row[1]) + " msgs" : ""));
      return li;
    }));
    const c = charts.radar;
    if (!c) return;
    c.canvas.parentElement.hidden = !!note;
    if (note) { c.data.labels = []; c.data.datasets = []; updateChart(c, false); return; }
    const axes = radarAxes(data);
    S.radarAxes = axes;
    c.data.labels = axes.map((i) => String(data.categories[i]));
    c.data.datasets = users.map(([name, shares], i) => {
      const col = USER_COLORS[i % USER_COLORS.length];
      return { label: name, data: axes.map((a) => Number(shares[a])), borderColor: col, backgroundColor: withAlpha(col, 0.16), borderWidth: 3, pointRadius: 3, pointBackgroundColor: col };
    });
    updateChart(c, S.view === "radar");
  }

  /** Indices of the categories drawn as axes: those where a shown user has a
   *  share, in the API's order (busiest first), at most P.axes; padded with the
   *  next categories to 3 (a radar needs three axes). */
  function radarAxes(data) {
    const cats = data.categories || [];
    const rows = Object.values(data.users || {});
    const used = [];
    for (let i = 0; i < cats.length && used.length < P.axes; i++) {
      if (rows.some((r) => Number(r[i]) > 0)) used.push(i);
    }
    for (let i = 0; i < cats.length && used.length < Math.min(3, cats.length); i++) {
      if (!used.includes(i)) used.push(i);
    }
    return used.sort((a, b) => a - b);
  }

  async function loadDiff() {
    for (const period of ["day", "week"]) {
      try {
        S.diff[period] = await getJSON(withFilter("api/diff?period=" + period));
        S.fetchedAt.diff = Date.now();
      } catch (e) {
        S.diff[period] = { error: e.message, rows: [] };
      }
      renderDiff(period);
    }
  }

  function diffRows(rows, sign, n) {
    return rows
      .filter((r) => Math.sign(Number(r.delta)) === sign)
      .sort((a, b) => sign * (b.delta - a.delta) || (a.topic < b.topic ? -1 : 1))
      .slice(0, n);
  }
  function renderDiff(period) {
    const data = S.diff[period];
    const rows = (data && data.rows) || [];
    const n = 8;
    if (data && data.rows === null) data.error = "cannot follow this filter";
    for (const [sign, suffix] of [[1, "up"], [-1, "down"]]) {
      const tbody = $(`diff-${period}-${suffix}`).tBodies[0];
      const chosen = diffRows(rows, sign, n);
      if (!chosen.length) {
        const tr = el("tr");
        const td = el("td", "empty", data && data.error ? data.error : sign > 0 ? "no topic rose" : "no topic fell");
        td.colSpan = 4;
        tr.append(td);
        tbody.replaceChildren(tr);
        continue;
      }
      tbody.replaceChildren(...chosen.map((r) => {
        const tr = el("tr");
        tr.dataset.topic = String(r.topic);
        const change = el("td", sign > 0 ? "up" : "down");
        change.append(el("span", "mark", sign > 0 ? "\u25B2" : "\u25BC"));
        const pct = r.pct === null || r.pct === undefined ? "new" : (r.pct > 0 ? "+" : "") + Math.round(r.pct) + "%";
        change.append(document.createTextNode(`${r.delta > 0 ? "+" : ""}${fmtInt(r.delta)} (${pct})`));
        tr.append(el("td", "", shortTopic(r.topic)), el("td", "", fmtInt(r.current)), el("td", "", fmtInt(r.previous)), change);
        return tr;
      }));
    }
  }

  // ---- status -------------------------------------------------------------

  /** What is down, as the badge says it ("redis down", "listener down", "bus
   *  down"), or "" when nothing is: from the health of the latest `status`.  Redis
   *  first: without it the web process cannot see the listener's heartbeat. */
  function down() {
    const h = S.health;
    if (!h) return "";
    if (h.redis && h.redis.ok === false) return "redis down";
    if (h.listener && h.listener.ok === false) return "listener down";
    if (h.bus && h.bus.state === "dead") return "bus down";
    return "";
  }

  function renderStatus() {
    const pill = $("status");
    const what = down();
    let state, text;
    const age = S.lastMessageAt ? nowS() - S.lastMessageAt : null;
    if (S.filterError) {
      state = "down";
      text = "bad filter";
    } else if (!S.connected) {
      state = S.reconnectAt ? "reconnecting" : "connecting";
      const wait = S.reconnectAt ? Math.max(0, Math.ceil((S.reconnectAt - Date.now()) / 1000)) : 0;
      const why = S.closedBy || "reconnecting";
      text = S.reconnectAt ? (wait > 0 ? `${why} · ${wait} s` : why) : "connecting";
    } else if (what) {
      state = "down";
      text = what;
    } else if (age === null || age > P.stale) {
      state = "stale";
      text = "stale";
    } else {
      state = "live";
      text = "live";
    }
    if (pill.dataset.state !== state) pill.dataset.state = state;
    $("status-text").textContent = text;
    $("age").textContent = age === null ? "never" : fmtAge(age);
    // a stopped listener's last rate is not the bus's now (a dead bus's rate, from a
    // listener that runs, is)
    const unknown = S.connected && (what === "redis down" || what === "listener down");
    $("rate").textContent = S.rate === null || unknown ? "–" : fmtInt(S.rate);
    $("window-label").textContent = fmtWindow(win());
    $("clock").textContent = hhmm(Date.now() / 1000);
  }

  // ---- events -------------------------------------------------------------

  function addHistoryPoint(w, snap, end) {
    const pts = S.history[w] || (S.history[w] = []);
    pts.push([end, snap.longtail, snap.longtail_normalized, snap.gini, snap.messages, snap.users]);
    if (pts.length > HISTORY_MAX) pts.splice(0, pts.length - HISTORY_MAX);
  }

  function onSnapshot(ev) {
    S.windows = ev.windows || {};
    S.history = {};
    for (const [w, pts] of Object.entries(ev.history || {})) S.history[w] = pts.slice(-HISTORY_MAX);
    S.recent = [];
    pushRecent(ev.recent || []);
    S.rate = ev.rate_per_min ?? null;
    S.lastMessageAt = ev.last_message_at ?? null;
    S.health = ev.health || null;
    if (Number.isFinite(ev.time)) S.offset = ev.time - Date.now() / 1000;
    checkVersion(ev.version);
    S.filter = ev.filter || null;
    S.unfiltered = Array.isArray(ev.unfiltered) ? ev.unfiltered : [];
    renderAll(false);
  }

  /** The first snapshot's `version` is the page's; another one (the server was
   *  upgraded while the wall stayed open) loads the page again, at most once per
   *  RELOAD_MIN_MS per tab: two web processes of two versions behind one address
   *  would otherwise reload a wall on each reconnect. */
  function checkVersion(version) {
    if (typeof version !== "string" || !version) return;
    if (S.version === null) { S.version = version; return; }
    if (version === S.version || S.reloading) return;
    S.reloading = version;
    let last = 0;
    try { last = Number(sessionStorage.getItem("wallboard-reloaded-at")) || 0; } catch (e) { /* storage off */ }
    const wait = Math.max(0, last + RELOAD_MIN_MS - Date.now());
    setTimeout(() => {
      try { sessionStorage.setItem("wallboard-reloaded-at", String(Date.now())); } catch (e) { /* storage off */ }
      location.reload();
    }, wait);
  }

  function onBlink(ev) {
    const counts = ev.counts || {};
    if (ev.partial) S.partialBlinks += 1;
    for (const [cat, n] of Object.entries(counts)) {
      if (!(cat in S.flashes) && Object.keys(S.flashes).length >= FLASH_KEYS_MAX) continue;
      S.flashes[cat] = (S.flashes[cat] || 0) + Number(n);
    }
    pushRecent(Array.isArray(ev.msgs) ? ev.msgs : []);
    let newest = null;
    for (const m of ev.msgs || []) if (Number.isFinite(m.ts)) newest = Math.max(newest || 0, m.ts);
    if (newest && (!S.lastMessageAt || newest > S.lastMessageAt)) S.lastMessageAt = newest;
    let added = false;
    for (const [cat, n] of Object.entries(counts)) {
      if (!lights.has(cat)) added = true;
      const l = lightFor(cat);
      l.pending += Number(n) || 0;
    }
    if (added) renderLights();
    for (const [cat, n] of Object.entries(counts)) {
      const l = lights.get(cat);
      if (l) flash(l, Number(n) || 1);
    }
    if (visible()) renderTicker();
  }

  function onTick(ev) {
    S.windows = ev.windows || S.windows;
    for (const [w, snap] of Object.entries(ev.windows || {})) addHistoryPoint(w, snap, ev.end);
    S.rate = ev.rate_per_min ?? S.rate;
    if (ev.last_message_at) S.lastMessageAt = Math.max(S.lastMessageAt || 0, ev.last_message_at);
    if (visible()) renderAll(true);
  }

  function onStatus(ev) {
    S.health = ev.health || S.health;
    if (S.health && Number.isFinite(S.health.time)) S.offset = S.health.time - Date.now() / 1000;
    // a filtered screen's last message is its own (blinks), not the bus's
    const last = !S.filter && S.health && S.health.bus && S.health.bus.last_message_at;
    if (last && (!S.lastMessageAt || last > S.lastMessageAt)) S.lastMessageAt = last;
  }

  const eventHooks = []; // other scripts of the page (ops.js), via wallboard.onEvent

  function handle(ev) {
    if (!ev || typeof ev !== "object") return;
    if (ev.type in S.events) S.events[ev.type] += 1;
    if (ev.type === "snapshot") onSnapshot(ev);
    else if (ev.type === "blink") onBlink(ev);
    else if (ev.type === "tick") onTick(ev);
    else if (ev.type === "status") onStatus(ev);
    for (const f of eventHooks) f(ev);
  }

  function renderAll(animate) {
    renderLights();
    if (!animate) for (const l of lights.values()) if (l.anim) l.anim.cancel();
    renderTicker(animate);
    renderBars();
    renderStrip();
    renderCards();
    renderHistory();
    renderDist();
    if (S.radar && S.view === "radar") renderRadar();
    renderFilter();
    renderStatus();
  }

  /** The filter box: the screen's filter as text, and what cannot follow it
   *  (the window's `unfiltered` figures and the event's), never a number. */
  function renderFilter() {
    const box = $("filter");
    box.hidden = !FILTER_QS;
    if (!FILTER_QS) return;
    const given = S.filter || {};
    const parts = Object.keys(given).length ? Object.entries(given).map(([k, vs]) => k.replace("_", " ") + ": " + vs.join(", "))
      : [...FILTER.entries()].map(([k, v]) => k.replace("_", " ") + ": " + v);
    $("filter-text").textContent = parts.join(" · ");
    if (S.filterError) {
      $("filter-note").textContent = "refused: " + S.filterError;
      return;
    }
    const snap = S.windows[win()] || {};
    const names = [...(snap.unfiltered || []), ...S.unfiltered];
    const words = [...new Set(names.map((n) => UNFOLLOWED[n] || (USER_FIELDS.includes(n) ? UNFOLLOWED.users : "")).filter(Boolean))];
    let note = words.length ? "not under this filter: " + words.join(" · ") : "";
    if (S.partialBlinks) note += (note ? " · " : "") + "bursts: lights count the messages shown";
    $("filter-note").textContent = note;
  }
  const USER_FIELDS = ["users", "top_users", "longtail", "longtail_normalized", "gini", "head", "tail", "ranks"];

  // ---- websocket ------------------------------------------------------------

  let ws = null;
  let attempt = 0;
  let lastFrame = 0;
  let reconnectTimer = null;

  function connect() {
    reconnectTimer = null;
    // beside the page (/wallboard/ -> /wallboard/ws), with the page's filter
    const url = new URL(withFilter("ws"), location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    let sock;
    try {
      sock = new WebSocket(url.href);
    } catch (e) {
      scheduleReconnect();
      return;
    }
    ws = sock;
    sock.onopen = () => {
      if (sock !== ws) return;
      // the backoff is reset by the first event, not here: a server that accepts
      // and closes at once (1013, Redis down) was retried every 0.5-1 s for ever
      S.connected = true;
      S.reconnectAt = null;
      lastFrame = Date.now();
      renderStatus();
    };
    sock.onmessage = (e) => {
      if (sock !== ws) return;
      lastFrame = Date.now();
      let ev;
      try { ev = JSON.parse(e.data); } catch (err) { return; }
      attempt = 0;
      S.closedBy = "";
      handle(ev);
    };
    sock.onclose = (e) => {
      if (sock !== ws) return;
      ws = null;
      S.connected = false;
      // 1013 "Redis unavailable": the web process is up, its Redis is not
      S.closedBy = e && e.code === 1013 && /redis/i.test(e.reason || "") ? "redis down" : "";
      scheduleReconnect();
    };
    sock.onerror = () => {};
  }

  function scheduleReconnect() {
    if (reconnectTimer) return;
    const cap = Math.min(RECONNECT_MAX_MS, RECONNECT_BASE_MS * 2 ** Math.min(attempt, 10));
    const delay = cap / 2 + Math.random() * (cap / 2); // jitter: [cap/2, cap)
    attempt += 1;
    S.reconnectAt = Date.now() + delay;
    reconnectTimer = setTimeout(connect, delay);
    renderStatus();
  }

  // ---- views and rotation -----------------------------------------------------

  const rotation = P.views.length ? P.views : VIEWS;
  let rotateStart = Date.now();

  function showView(name) {
    S.view = name;
    for (const v of document.querySelectorAll(".view")) v.classList.toggle("active", v.dataset.view === name);
    for (const t of document.querySelectorAll(".tab")) {
      t.classList.toggle("active", t.dataset.view === name);
      t.setAttribute("aria-pressed", String(t.dataset.view === name));
      t.hidden = P.rotate ? !rotation.includes(t.dataset.view) : t.dataset.view !== name && !!P.view;
    }
    document.body.dataset.view = name;
    if (name === "live") { layoutLights($("lights").childElementCount); renderBars(); }
    if (name === "longtail") { renderCards(); renderHistory(); renderDist(); }
    if (name === "radar" && (!S.fetchedAt.radar || Date.now() - S.fetchedAt.radar > FETCH_EVERY_MS)) loadRadar();
    if (name === "diff" && (!S.fetchedAt.diff || Date.now() - S.fetchedAt.diff > FETCH_EVERY_MS)) loadDiff();
    for (const c of Object.values(charts)) c.resize();
  }

  function rotateTick() {
    if (!P.rotate) return;
    const elapsed = (Date.now() - rotateStart) / 1000;
    $("rotate-fill").style.width = Math.min(100, (elapsed / P.rotate) * 100).toFixed(1) + "%";
    if (elapsed >= P.rotate) {
      rotateStart = Date.now();
      const i = rotation.indexOf(S.view);
      showView(rotation[(i + 1) % rotation.length]);
    }
  }

  // ---- start ----------------------------------------------------------------

  function everySecond() {
    decayRates();
    calmRings();
    if (visible()) {
      levelLights();
      renderAges();
      renderStatus();
    }
    if (S.connected && ws && Date.now() - lastFrame > SILENT_SOCKET_MS) {
      // No status event for too long: the socket is dead even if TCP says not.
      ws.close();
    }
    if (visible() && S.view === "radar" && Date.now() - (S.fetchedAt.radar || 0) > FETCH_EVERY_MS) loadRadar();
    if (visible() && S.view === "diff" && Date.now() - (S.fetchedAt.diff || 0) > FETCH_EVERY_MS) loadDiff();
  }

  function start() {
    buildTicker();
    buildStrip();
    buildCards();
    makeCharts();
    showView(P.view || rotation[0]);
    renderAll(false);
    // the view buttons (Enter and Space click a focused button); the rotation restarts
    for (const t of document.querySelectorAll(".tab")) {
      t.addEventListener("click", () => { rotateStart = Date.now(); showView(t.dataset.view); });
    }
    if (TZ.bad) $("clock-tz").textContent = `unknown tz \u201c${TZ.bad}\u201d: local time`;
    else $("clock-tz").textContent = TZ.label;
    $("clock-tz").classList.toggle("bad", !!TZ.bad);
    document.addEventListener("visibilitychange", () => {
      if (visible()) {
        for (const l of lights.values()) { if (l.anim) l.anim.cancel(); if (l.glow) l.glow.cancel(); }
        renderAll(false);
      }
    });
    let resizeTimer = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => {
        chartDefaults();
        if (charts.bars) charts.bars.options.layout.padding = { right: remPx() * 4.5 };
        for (const c of Object.values(charts)) c.resize();
        layoutLights($("lights").childElementCount);
      }, 200);
    });
    setInterval(everySecond, 1000);
    setInterval(rotateTick, 250);
    if (FILTER_QS) checkFilter();
    else connect();
  }

  /** A filtered screen asks the API once whether the server takes its filter: a
   *  refused one (400) would fail every websocket without saying why. */
  async function checkFilter() {
    try {
      const r = await fetch(withFilter("api/state"), { cache: "no-store" });
      if (r.status === 400) {
        const body = await r.json().catch(() => ({}));
        S.filterError = String((body && body.error) || "HTTP 400").slice(0, 300);
        renderFilter();
        renderStatus();
        return;
      }
    } catch (e) {
      // the server is not reachable: the websocket's backoff takes it from here
    }
    connect();
  }

  window.wallboard = {
    state: S,
    params: P,
    charts,
    lights,
    bars: () => S.bars.map(([t, n]) => [t, n]),
    show: showView,
    colorFor,
    tz: TZ,
    onEvent: (f) => { eventHooks.push(f); },
    withFilter, // an api/... URL with the page's filter (web/ops.js)
  };

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
