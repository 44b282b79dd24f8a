"""The wall as a kiosk, in Debian's chromium (Playwright), against the real processes:
behind a real reverse proxy under a sub-path, reloaded by an upgrade, flashing at
most three times a second and not at all with reduced motion, readable (axe-core's
checks and every text's contrast on both themes), driven from the keyboard, and
telling the time in the zone of ``tz=``.

One stack per module (:class:`tests.helpers.wall.WallStack`): listener and web as
subprocesses on the session's real redis-server, fed all along by a looping replay
of the real messages shipped with fedmsg_meta_fedora_infrastructure.
"""

from __future__ import annotations

import datetime
import shutil
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.helpers.common import ROOT, TIMEOUT_FACTOR, wait_for
from tests.helpers.subpath_proxy import HAPROXY, SubpathProxy
from tests.helpers.wall import CHROMIUM, WallStack, chromium, get_json, new_page

pytestmark = pytest.mark.browser

T = TIMEOUT_FACTOR
AXE = ROOT / "tests" / "vendor" / "axe-core" / "axe.min.js"

if not Path(CHROMIUM).exists():  # pragma: no cover - make sysdeps installs it
    pytest.skip("Debian chromium not installed (make sysdeps)", allow_module_level=True)

#: Logs every Web Animation the page starts: ``__lampStarts`` the lamps' flashes
#: ``[category, ms]``, ``__animations`` every ``animate()`` call.
COUNT_ANIMATIONS = """
window.__lampStarts = [];
window.__animations = 0;
const animate = Element.prototype.animate;
Element.prototype.animate = function (keyframes, options) {
  window.__animations += 1;
  if (this.classList.contains("lamp")) {
    window.__lampStarts.push([this.parentElement.dataset.category, performance.now()]);
  }
  return animate.call(this, keyframes, options);
};
"""

#: Every visible text of the page with its colour and the backgrounds it may sit
#: on: the first opaque background of its ancestors, or, under a gradient (the
#: header, the body), every background colour of the theme.  Colours are read
#: back from a canvas (``color-mix()`` computes to ``color(srgb ...)``).
TEXT_COLOURS = """
() => {
  const ctx = document.createElement("canvas").getContext("2d", {willReadFrequently: true});
  const rgba = (c) => { ctx.clearRect(0, 0, 1, 1); ctx.fillStyle = c; ctx.fillRect(0, 0, 1, 1);
    return [...ctx.getImageData(0, 0, 1, 1).data]; };
  const root = getComputedStyle(document.documentElement);
  const theme = ["--bg", "--bg2", "--panel", "--panel2"]
    .map((v) => rgba(root.getPropertyValue(v).trim()));
  const out = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const seen = new Set();
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const e = n.parentElement;
    if (!n.textContent.trim() || seen.has(e)) continue;
    if (!e.checkVisibility({visibilityProperty: true})) continue;
    const box = e.getBoundingClientRect();
    if (!box.width || !box.height) continue;
    seen.add(e);
    let bgs = null;
    for (let a = e; a; a = a.parentElement) {
      const s = getComputedStyle(a);
      if (s.backgroundImage !== "none") { bgs = theme; break; }
      const c = rgba(s.backgroundColor);
      if (c[3] === 255) { bgs = [c]; break; }
    }
    const label = e.id ? "#" + e.id : e.tagName.toLowerCase() + "." + [...e.classList].join(".");
    const color = rgba(getComputedStyle(e).color);
    out.push({label, text: n.textContent.trim().slice(0, 40), color, bgs: bgs || theme});
  }
  return out;
}
"""


#: ``[[text rgba, panel rgba], ...]`` of the ticker's category text for the named
#: categories and 720 made-up ones (their golden-angle hues), on this theme.
CATEGORY_COLOURS = """
(() => {
  const ctx = document.createElement("canvas").getContext("2d", {willReadFrequently: true});
  const rgba = (c) => { ctx.clearRect(0, 0, 1, 1); ctx.fillStyle = c; ctx.fillRect(0, 0, 1, 1);
    return [...ctx.getImageData(0, 0, 1, 1).data]; };
  const cell = document.querySelector("#ticker .cat");
  const panel = rgba(getComputedStyle(document.querySelector(".panel-ticker")).backgroundColor);
  const names = ["buildsys", "copr", "bodhi", "fas", "github", "anitya", "mdapi"];
  for (let i = 0; i < 720; i++) names.push("service" + i);
  const out = [];
  for (const name of names) {
    cell.parentElement.style.setProperty("--c", wallboard.colorFor(name));
    out.push([rgba(getComputedStyle(cell).color), panel]);
  }
  return out;
})()
"""


def luminance(rgb: list[int]) -> float:
    """WCAG 2.x relative luminance of an sRGB colour (0..255 channels)."""

    def lin(c: int) -> float:
        x = c / 255
        return x / 12.92 if x <= 0.04045 else float(((x + 0.055) / 1.055) ** 2.4)

    r, g, b = (lin(c) for c in rgb[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a: list[int], b: list[int]) -> float:
    """WCAG 2.x contrast ratio, 1..21 (https://www.w3.org/TR/WCAG21/#dfn-contrast-ratio)."""
    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def stack(redis_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WallStack]:
    """Listener and web on a fresh prefix, a replay of real messages at 40/s all along."""
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    s = WallStack(redis_server.url, tmp_path_factory.mktemp("kiosk"))
    try:
        s.start_listener()
        s.start_web()
        s.replay_loop("replay", 40)
        wait_for(lambda: get_json(s.url + "healthz")[0] == 200, 60, 0.2, "listener heartbeat")

        def counted() -> bool:
            _, h = get_json(s.url + "healthz")
            return bool(h) and (h["bus"]["messages_total"] or 0) >= 200

        wait_for(counted, 60, 0.2, "200 messages counted")
        yield s
    except BaseException:
        print(s.logs())
        raise
    finally:
        s.stop_all()


def wait_live(page: Any, ticks: int = 2) -> None:
    """Until the page had its snapshot, ``ticks`` ticks, a blink, and says live."""
    page.wait_for_function(
        f"wallboard.state.events.snapshot >= 1 && wallboard.state.events.tick >= {ticks}"
        " && wallboard.state.events.blink >= 1"
        " && document.getElementById('status').dataset.state === 'live'",
        timeout=30_000 * T,
    )


# -- behind a proxy, under a sub-path --------------------------------------------------


@pytest.mark.skipif(not Path(HAPROXY).exists(), reason="haproxy not installed (make sysdeps)")
def test_page_works_under_a_subpath_behind_haproxy(
    stack: WallStack, browser: Any, tmp_path: Path
) -> None:
    """haproxy serves the web process under /wallboard/ and nothing outside it: the
    page's websocket and API calls go to /wallboard/ws and /wallboard/api/..."""
    with SubpathProxy(stack.port, "/wallboard", tmp_path) as proxy:
        root = f"http://127.0.0.1:{proxy.port}"
        assert get_json(root + "/ws")[0] == 404
        assert get_json(root + "/api/state")[0] == 404
        status, state = get_json(proxy.url + "api/state")
        assert status == 200 and state["type"] == "snapshot"
        with urllib.request.urlopen(root + "/wallboard", timeout=10) as r:  # 301 followed
            assert r.url == proxy.url and b'id="lights"' in r.read()
        page = new_page(browser)
        sockets: list[str] = []
        page.on("websocket", lambda ws: sockets.append(ws.url))
        try:
            page.goto(proxy.url)
            wait_live(page)
            assert sockets == [f"ws://127.0.0.1:{proxy.port}/wallboard/ws"]
            assert page.evaluate("wallboard.state.version") == state["version"]
            shown = page.evaluate("document.querySelectorAll('#lights .light').length")
            assert shown > 0
            # the radar and the diffs come from /wallboard/api/...
            page.evaluate("wallboard.show('radar')")
            page.wait_for_function("wallboard.state.radar !== null", timeout=15_000 * T)
            assert page.text_content("#radar-note") == ""
            assert page.evaluate("Object.keys(wallboard.state.radar.users).length") > 0
            page.evaluate("wallboard.show('diff')")
            page.wait_for_function("wallboard.state.diff.week !== undefined", timeout=15_000 * T)
            assert page.evaluate("wallboard.state.diff.week.error") is None
            assert page.evaluate("wallboard.state.diff.day.rows.length") > 0
        finally:
            page.context.close()


# -- reload on upgrade ---------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_open_wall_reloads_when_the_server_version_changes(
    stack: WallStack, browser: Any, tmp_path: Path
) -> None:
    """A web restart with the same page: the wall reconnects and stays; a restart
    with another page (one file changed): the wall loads it again by itself."""
    page = new_page(browser)
    loads: list[str] = []
    page.on("load", lambda p: loads.append(p.url))
    newer = tmp_path / "web"
    shutil.copytree(ROOT / "web", newer)
    with (newer / "style.css").open("a") as fh:
        fh.write("\n/* the next release */\n")
    try:
        page.goto(stack.url)
        wait_live(page, ticks=1)
        first = page.evaluate("wallboard.state.version")
        assert first == get_json(stack.url + "api/state")[1]["version"]
        page.evaluate("window.sameDocument = true")
        snapshots = page.evaluate("wallboard.state.events.snapshot")
        stack.stop("web")
        stack.start_web()
        page.wait_for_function(f"wallboard.state.events.snapshot > {snapshots}", timeout=60_000 * T)
        assert page.evaluate("window.sameDocument") is True
        assert page.evaluate("wallboard.state.version") == first and len(loads) == 1
        stack.stop("web")
        stack.start_web("--web-root", str(newer))
        second = get_json(stack.url + "api/state")[1]["version"]
        assert second != first and second.split("+")[0] == first.split("+")[0]
        page.wait_for_function(
            "window.sameDocument === undefined && window.wallboard"
            " && wallboard.state.events.snapshot >= 1",
            timeout=60_000 * T,
        )
        assert page.evaluate("wallboard.state.version") == second
        assert len(loads) == 2
        css = page.evaluate("fetch('style.css').then(r => r.text())")
        assert css.endswith("/* the next release */\n")
    finally:
        page.context.close()
        stack.stop("web")
        stack.start_web()


# -- flashes and reduced motion ----------------------------------------------------------------


def test_a_light_flashes_at_most_three_times_a_second(stack: WallStack, browser: Any) -> None:
    """A burst blinks every busy light ten times a second: each light starts a
    flash at most 3 times in any second (WCAG 2.3.1); the other blinks only count."""
    page = new_page(browser)
    page.add_init_script(COUNT_ANIMATIONS)
    try:
        page.goto(stack.url)
        wait_live(page, ticks=1)
        page.evaluate("wallboard.lights.forEach(l => { l.before = l.flashes; })")
        stack.replay_loop("burst", 400)
        try:
            # until one light blinked 40 times more (4 s of a blink every 0.1 s)
            page.wait_for_function(
                "[...wallboard.lights.values()].some(l => l.flashes >= 40 + (l.before || 0))",
                timeout=60_000 * T,
            )
        finally:
            stack.stop("burst")
        starts: list[tuple[str, float]] = page.evaluate("window.__lampStarts")
        blinked = page.evaluate(
            "Object.fromEntries([...wallboard.lights].map(([c, l]) => [c, l.flashes]))"
        )
        per_light: dict[str, list[float]] = {}
        for cat, ms in starts:
            per_light.setdefault(cat, []).append(ms)
        assert per_light, "no flash at all"
        for cat, times in per_light.items():
            for i in range(len(times) - 3):
                assert times[i + 3] - times[i] >= 1000, (cat, times[i : i + 4])
        # the busiest light blinked more often than it flashed
        busiest = max(per_light, key=lambda c: blinked[c])
        times = per_light[busiest]
        most = max(sum(1 for u in times if t <= u < t + 1000) for t in times)
        print(
            f"{busiest}: {blinked[busiest]} blinks, {len(times)} flashes,"
            f" at most {most} in one second"
        )
        assert blinked[busiest] > len(per_light[busiest]) >= 3, (
            blinked[busiest],
            len(per_light[busiest]),
        )
    finally:
        page.context.close()


def test_reduced_motion_moves_nothing(stack: WallStack, browser: Any) -> None:
    """With prefers-reduced-motion, no animation at all (flashes, ticker, charts);
    a light that blinked lately shows a still ring instead."""
    page = new_page(browser, reduced_motion="reduce")
    page.add_init_script(COUNT_ANIMATIONS)
    try:
        page.goto(stack.url)
        wait_live(page, ticks=2)
        page.wait_for_function("wallboard.state.events.blink >= 20", timeout=30_000 * T)
        page.wait_for_function(
            "document.querySelectorAll('#lights .light[data-busy]').length > 0",
            timeout=10_000 * T,
        )
        assert page.evaluate("matchMedia('(prefers-reduced-motion: reduce)').matches") is True
        assert page.evaluate("window.__animations") == 0
        assert page.evaluate("window.__lampStarts") == []
        assert page.evaluate("document.getAnimations().length") == 0
        assert page.evaluate("Chart.defaults.animation.duration") == 0
        ring = page.evaluate(
            "getComputedStyle(document.querySelector('#lights .light[data-busy]')).boxShadow"
        )
        assert "3px" in ring and "inset" in ring
        flashed = page.evaluate("[...wallboard.lights.values()].reduce((n, l) => n + l.flashes, 0)")
        assert flashed > 0
    finally:
        page.context.close()


# -- keyboard --------------------------------------------------------------------------------


def test_views_switch_from_the_keyboard(stack: WallStack, browser: Any) -> None:
    """The views are buttons: Tab reaches them, Enter and Space press them, and
    aria-pressed says which view is shown."""
    page = new_page(browser)
    pressed = (
        "[...document.querySelectorAll('.tab')]"
        ".map(t => [t.tagName, t.dataset.view, t.getAttribute('aria-pressed')])"
    )
    focused = "document.activeElement.dataset.view"
    try:
        page.goto(stack.url)
        wait_live(page, ticks=1)
        assert page.evaluate(pressed) == [
            ["BUTTON", "live", "true"],
            ["BUTTON", "longtail", "false"],
            ["BUTTON", "radar", "false"],
            ["BUTTON", "diff", "false"],
        ]
        page.keyboard.press("Tab")
        assert page.evaluate(focused) == "live"
        page.keyboard.press("Tab")
        assert page.evaluate(focused) == "longtail"
        page.keyboard.press("Enter")
        assert page.evaluate("wallboard.state.view") == "longtail"
        assert page.is_visible("#view-longtail") and not page.is_visible("#view-live")
        page.keyboard.press("Tab")
        page.keyboard.press("Tab")
        assert page.evaluate(focused) == "diff"
        page.keyboard.press("Space")
        assert page.evaluate("wallboard.state.view") == "diff"
        page.wait_for_function("wallboard.state.diff.day !== undefined", timeout=15_000 * T)
        assert [v for _, v, on in page.evaluate(pressed) if on == "true"] == ["diff"]
        page.keyboard.press("Shift+Tab")
        page.keyboard.press("Enter")
        assert page.evaluate("wallboard.state.view") == "radar"
        assert page.is_visible("#view-radar")
        assert [v for _, v, on in page.evaluate(pressed) if on == "true"] == ["radar"]
        outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
        assert outline == "solid"  # :focus-visible after a key press
    finally:
        page.context.close()


# -- time zones ------------------------------------------------------------------------------


def clock_in(page: Any, zone: str) -> tuple[str, set[str]]:
    """The clock's text, and what it may say in ``zone``: the page redraws it every
    second, so it may still show the minute of 2 s ago, or the next one."""
    before = time.time() - 2
    shown = page.text_content("#clock")
    after = time.time()
    return shown, {
        datetime.datetime.fromtimestamp(t, ZoneInfo(zone)).strftime("%H:%M")
        for t in (before, after)
    }


@pytest.mark.parametrize(
    "tz,zone,note",
    [
        ("utc", "UTC", "UTC"),
        ("Asia/Kolkata", "Asia/Kolkata", "Asia/Kolkata"),
        ("", "America/New_York", ""),
    ],
)
def test_tz_sets_the_clock_and_the_times(
    stack: WallStack, browser: Any, tz: str, zone: str, note: str
) -> None:
    """The browser is in New York: ``tz=`` puts the clock and the history's times in
    another zone (Intl), and the note under the clock names it."""
    page = new_page(browser, timezone_id="America/New_York")
    try:
        page.goto(stack.url + (f"?tz={tz}" if tz else ""))
        wait_live(page, ticks=3)
        shown, want = clock_in(page, zone)
        assert shown in want
        assert page.text_content("#clock-tz") == note
        page.evaluate("wallboard.show('longtail')")
        last = page.evaluate(
            "(() => { const pts = wallboard.state.history['3600'];"
            " return [Chart.getChart('history').data.labels.at(-1), pts.at(-1)[0],"
            " pts.at(-1)[0] - pts[0][0]]; })()"
        )
        label, end, span = last
        fmt = "%H:%M:%S" if span < 600 else "%H:%M"
        assert label == datetime.datetime.fromtimestamp(end, ZoneInfo(zone)).strftime(fmt)
    finally:
        page.context.close()


def test_unknown_tz_falls_back_visibly(stack: WallStack, browser: Any) -> None:
    """An unknown zone: the browser's own time (never a blank clock), and a note
    that says which ``tz=`` was not understood, as text."""
    page = new_page(browser, timezone_id="America/New_York")
    hostile = "<b>Mars/Olympus</b>"
    try:
        page.goto(stack.url + "?tz=" + urllib.request.quote(hostile))
        wait_live(page, ticks=1)
        shown, want = clock_in(page, "America/New_York")
        assert shown in want
        note = page.text_content("#clock-tz")
        assert note == f"unknown tz \u201c{hostile}\u201d: local time"
        assert page.evaluate("document.querySelectorAll('header b').length") == 0
        assert page.evaluate("document.getElementById('clock-tz').classList.contains('bad')")
        assert page.is_visible("#clock-tz")
        # the note fits the header: no scrollbar, all four view buttons shown
        size = "[document.documentElement.scrollWidth, document.documentElement.scrollHeight]"
        assert page.evaluate(size) == [1920, 1080]
        assert (
            page.evaluate("[...document.querySelectorAll('.tab')].filter(t => !t.hidden).length")
            == 4
        )
    finally:
        page.context.close()


# -- accessibility ---------------------------------------------------------------------------


@pytest.mark.timeout(180)
@pytest.mark.parametrize("theme", ["dark", "light"])
def test_axe_finds_no_contrast_or_serious_violation(
    stack: WallStack, browser: Any, theme: str
) -> None:
    """axe-core (vendored, tests/vendor) on every view: no colour-contrast violation
    and nothing serious or critical; and every visible text is at least 4.5:1 on
    every background it may sit on (axe leaves text over gradients undecided)."""
    page = new_page(browser)
    report: dict[str, list[str]] = {}
    try:
        # an unknown tz=: its note under the clock is checked too
        page.goto(stack.url + f"?theme={theme}&tz=Nowhere/Land")
        wait_live(page, ticks=2)
        page.add_script_tag(path=str(AXE))
        for view in ("live", "longtail", "radar", "diff"):
            page.evaluate(f"wallboard.show('{view}')")
            page.wait_for_timeout(1500)  # the radar and diffs are fetched
            result = page.evaluate(
                "axe.run(document, {resultTypes: ['violations']}).then(r => r.violations.map("
                "v => ({id: v.id, impact: v.impact, nodes: v.nodes.map(n => n.target.join(' '))})))"
            )
            for v in result:
                report.setdefault(f"{v['id']} ({v['impact']})", []).extend(
                    f"{view}: {n}" for n in v["nodes"]
                )
            low = []
            for t in page.evaluate(TEXT_COLOURS):
                worst = min(contrast(t["color"], bg) for bg in t["bgs"])
                if worst < 4.5:
                    low.append((t["label"], t["text"], round(worst, 2)))
            assert not low, (theme, view, low)
        # every category's colour, as the ticker writes it, on the ticker's panel
        worst = page.evaluate(CATEGORY_COLOURS)
        assert min(contrast(c, bg) for c, bg in worst) >= 4.5
        print(f"axe-core on the {theme} theme:", report or "no violation")
        assert not [k for k in report if k.startswith("color-contrast")], report
        assert not [k for k in report if "(serious)" in k or "(critical)" in k], report
    finally:
        page.context.close()
