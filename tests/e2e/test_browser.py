"""The wall page in Debian's chromium (Playwright), against the real processes.

One stack per module: ``python -m listener listen`` and ``python -m listener web``
as subprocesses on the session's real redis-server (a key prefix of their own),
fed by ``python -m listener replay`` with the ~557 real messages shipped in
fedmsg_meta_fedora_infrastructure's tests, plus one FAS message whose username is
hostile HTML.  A page is open during the replay, so its lights see every blink.

Set ``WALLBOARD_SCREENSHOT_DIR`` to keep the screenshots (``make screenshot``
style: ``WALLBOARD_SCREENSHOT_DIR=docs``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.common import TIMEOUT_FACTOR, run_cli, wait_for
from tests.helpers.wall import CHROMIUM, WallStack, chromium, get_json, new_page

pytestmark = pytest.mark.browser

HOSTILE = "<img src=x onerror=alert(1)>"
#: a username that would show reversed ("kcab" as "back") behind a right-to-left override
BIDI_USER = "\u202ekcab"
T = TIMEOUT_FACTOR

if not Path(CHROMIUM).exists():  # pragma: no cover - make sysdeps installs it
    pytest.skip("Debian chromium not installed (make sysdeps)", allow_module_level=True)


class Wall(WallStack):
    """The running stack (:class:`tests.helpers.wall.WallStack`) and the arguments its
    listener was started with (to start it again the same way)."""

    def __init__(self, redis_url: str, tmp: Path) -> None:
        super().__init__(redis_url, tmp)
        self.listener_args: tuple[str, ...] = ()


def get_api(w: Wall, path: str) -> tuple[int, Any]:
    """``(status, JSON body)`` of a GET of ``path`` (``/api/...``) on the web process."""
    return get_json(w.url + path.lstrip("/"))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def wall(
    redis_server: Any,
    tmp_path_factory: pytest.TempPathFactory,
    browser: Any,
    examples: list[Any],
    extractor: Any,
) -> Iterator[tuple[Wall, Any]]:
    """The stack after a replay of real messages, and the page that watched it."""
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    tmp = tmp_path_factory.mktemp("wall")
    w = Wall(redis_server.url, tmp)
    # the hostile message: a real FAS example with its user edited
    ex = next(e for e in examples if e.name == "TestFASUserCreate")
    hostile = json.loads(json.dumps(ex.body))
    hostile["msg"]["user"] = hostile["msg"]["agent"] = HOSTILE
    hostile["msg_id"] = "hostile-" + uuid.uuid4().hex
    assert extractor.usernames(hostile) == {HOSTILE}
    bidi = json.loads(json.dumps(ex.body))
    bidi["msg"]["user"] = bidi["msg"]["agent"] = BIDI_USER
    bidi["msg_id"] = "bidi-" + uuid.uuid4().hex
    # the replay: every example, the one with a direction override, then the
    # hostile one (newest: in the ticker)
    with (tmp / "replay.jsonl").open("w") as fh:
        for e in examples:
            fh.write(json.dumps(e.body) + "\n")
        fh.write(json.dumps(bidi) + "\n")
        fh.write(json.dumps(hostile) + "\n")
    page = None
    try:
        # each replay binds the endpoint anew: reconnect quickly (libzmq backoff)
        (tmp / "wallboard.toml").write_text("reconnect_ivl_max_ms = 300\n")
        w.listener_args = (
            "listen",
            "--config",
            str(tmp / "wallboard.toml"),
            "--redis-url",
            w.redis_url,
            "--key-prefix",
            w.prefix,
            "--endpoint",
            w.bus,
            "--step",
            "1",
        )
        w.spawn("listener", *w.listener_args)
        w.start_web()
        wait_for(lambda: get_api(w, "/healthz")[0] == 200, 60, 0.2, "listener heartbeat")
        page = new_page(browser)
        page.on("dialog", lambda d: (setattr(page, "xss_dialog", d.message), d.dismiss()))
        page.goto(f"http://127.0.0.1:{w.port}/")
        page.wait_for_function("wallboard.state.events.snapshot >= 1", timeout=20_000 * T)
        proc = run_cli(
            "replay",
            str(tmp / "replay.jsonl"),
            "--endpoint",
            w.bus,
            "--rebase-time",
            "--rate",
            "500",
            "--wait-timeout",
            "30",
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        published = len(examples) + 2

        def counted() -> bool:
            status, h = get_api(w, "/healthz")
            return bool(h) and h["bus"]["messages_total"] == published

        wait_for(counted, 60, 0.2, f"{published} messages counted")
        yield w, page
    except BaseException:
        print(w.logs())
        raise
    finally:
        if page is not None:
            page.context.close()
        w.stop_all()


def settled(w: Wall, page: Any, window: int = 3600) -> dict[str, Any]:
    """The API snapshot once the page shows the same number of messages (both are
    read again on each try: late messages may still be arriving)."""
    found: dict[str, Any] = {}

    def same() -> bool:
        _, api = get_api(w, f"/api/snapshot?window={window}")
        shown = page.evaluate(f"(wallboard.state.windows['{window}'] || {{}}).messages")
        found["api"] = api
        return bool(api) and shown == api["messages"]

    wait_for(same, 30, 0.3, f"the page's {window} s window to match /api/snapshot")
    return found["api"]


def short_topic(topic: str) -> str:
    """The page's bar label: ``org.fedoraproject.prod.a.b`` -> ``a.b``; ``stg: a.b``."""
    parts = topic.split(".")
    if len(parts) > 3 and parts[2] in ("prod", "stg", "dev"):
        topic = ("" if parts[2] == "prod" else parts[2] + ": ") + ".".join(parts[3:])
    return topic if len(topic) <= 44 else topic[:43] + "\u2026"


def radar_axes(api: dict[str, Any], most: int = 16) -> list[int]:
    """The categories the page draws: where a shown user has a share, busiest
    first, at most ``most``, padded to 3 (the page's ``radarAxes``)."""
    rows = list(api["users"].values())
    used = [i for i in range(len(api["categories"])) if any(r[i] > 0 for r in rows)][:most]
    for i in range(len(api["categories"])):
        if len(used) >= min(3, len(api["categories"])):
            break
        if i not in used:
            used.append(i)
    return sorted(used)


def fresh_jsonl(examples: list[Any], path: Path, n: int) -> Path:
    """``n`` real example messages with new msg_ids (so they count as new)."""
    tag = uuid.uuid4().hex[:8]
    with path.open("w") as fh:
        for i, ex in enumerate(examples[:n]):
            fh.write(json.dumps(dict(ex.body, msg_id=f"{ex.body['msg_id']}-{tag}-{i}")) + "\n")
    return path


def keep(path: Path, name: str) -> None:
    target = os.environ.get("WALLBOARD_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / name)


# -- tests ---------------------------------------------------------------------------


def test_lights_blink_for_the_replayed_categories(wall: tuple[Wall, Any]) -> None:
    w, page = wall
    api = settled(w, page)
    flashes = page.evaluate("Object.assign({}, wallboard.state.flashes)")
    # every message of the replay flashed its category's light, exactly once
    assert flashes == api["categories"]
    shown = page.evaluate(
        "[...document.querySelectorAll('#lights .light')]"
        ".map(e => [e.dataset.category, +e.dataset.flashes])"
    )
    top = sorted(api["categories"], key=lambda c: (-api["categories"][c], c))[:24]
    assert sorted(c for c, _ in shown) == sorted(top)
    assert all(n > 0 for _, n in shown)
    # the ticker shows the newest messages as text
    rows = page.evaluate("[...document.querySelectorAll('#ticker li')].map(li => li.dataset.msgId)")
    recent = [m["msg_id"] for m in get_api(w, "/api/state")[1]["recent"]][::-1]
    assert rows == recent[: len(rows)] and len(rows) == 8


def test_bars_show_the_snapshot_counts(wall: tuple[Wall, Any]) -> None:
    w, page = wall
    api = settled(w, page)
    want = sorted(api["topics"].items(), key=lambda kv: (-kv[1], kv[0]))[:14]
    assert [tuple(x) for x in page.evaluate("wallboard.bars()")] == want
    data = page.evaluate("Chart.getChart('bars').data.datasets[0].data")
    assert data == [n for _, n in want]
    labels = page.evaluate("Chart.getChart('bars').data.labels")
    assert labels == [short_topic(t) for t, _ in want]


def test_longtail_matches_snapshot(wall: tuple[Wall, Any]) -> None:
    w, page = wall
    api = settled(w, page)
    state = page.evaluate("wallboard.state.windows['3600']")
    assert state["longtail"] == pytest.approx(api["longtail"], rel=1e-12)
    assert state["head"] == api["head"] and state["tail"] == api["tail"]
    strip = page.text_content(".lt-mini .v[data-window='3600']")
    assert strip == f"{api['longtail']:.2f}"
    page.evaluate("wallboard.show('longtail')")
    card = page.text_content(".lt-card .lt-value[data-window='3600']")
    assert card == f"{api['longtail']:.2f}"
    assert api["head"][0] in page.text_content("#lt-cards")
    hist = page.evaluate("Chart.getChart('history').data.datasets[0].data")
    assert hist and hist[-1] == pytest.approx(api["longtail"], rel=1e-12)
    # head to tail: every user by rank, and the seed's line across all n of them
    n = api["users"]
    curve = page.evaluate("Chart.getChart('dist').data.datasets[0].data")
    assert curve[0] == {"x": 0, "y": api["head"][1]}
    assert [[p["x"], p["y"]] for p in curve[1:]] == api["ranks"]
    assert curve[-1] == {"x": n, "y": api["tail"][1]}
    line = page.evaluate("Chart.getChart('dist').data.datasets[1].data")
    assert line == [{"x": 0, "y": api["head"][1]}, {"x": n, "y": api["tail"][1]}]
    assert page.evaluate("Chart.getChart('dist').scales.x.max") == n
    assert 1 < n < 10_000  # fmtInt: "1,234" below 10k
    sub = page.text_content("#dist-sub")
    assert sub == f"all {n:,} users by messages, and the seed's straight line"
    page.evaluate("wallboard.show('live')")


def test_hostile_username_is_text(wall: tuple[Wall, Any]) -> None:
    w, page = wall
    settled(w, page)
    # the hostile user is in the window's users; find it in the page as text
    page.evaluate("wallboard.show('longtail')")
    page.evaluate("wallboard.show('live')")
    _, state = get_api(w, "/api/state")
    assert HOSTILE in state["recent"][-1]["users"]
    fresh = new_page(page.context.browser)
    fresh.on("dialog", lambda d: (setattr(fresh, "xss_dialog", d.message), d.dismiss()))
    fresh.goto(f"http://127.0.0.1:{w.port}/?rows=30")
    fresh.wait_for_function("wallboard.state.events.snapshot >= 1")
    fresh.wait_for_function(
        f"document.body.textContent.includes({json.dumps(HOSTILE)})", timeout=10_000 * T
    )
    for p in (page, fresh):
        assert p.evaluate("document.querySelectorAll('img').length") == 1  # the logo only
        assert p.evaluate("document.querySelectorAll('img[src=\"x\"]').length") == 0
        assert not hasattr(p, "xss_dialog")
    users_cells = fresh.evaluate(
        "[...document.querySelectorAll('#ticker .users')].map(e => e.textContent)"
    )
    assert any(HOSTILE in u for u in users_cells)
    fresh.context.close()


def test_direction_overrides_cannot_reorder_the_page(wall: tuple[Wall, Any]) -> None:
    """The API, the ticker and the page's text carry no bidirectional control, and
    the page lays bus text out in isolated boxes."""
    w, page = wall
    settled(w, page)
    _, state = get_api(w, "/api/state")
    _, snap = get_api(w, "/api/snapshot?window=3600")
    for obj in (state, snap):
        assert "\u202e" not in json.dumps(obj, ensure_ascii=False)
    assert any("kcab" in m["users"] for m in state["recent"])
    fresh = new_page(page.context.browser)
    fresh.goto(f"http://127.0.0.1:{w.port}/?rows=30")
    fresh.wait_for_function("wallboard.state.events.snapshot >= 1")
    fresh.wait_for_function(
        "[...document.querySelectorAll('#ticker .users')]"
        ".some(e => e.textContent.includes('kcab'))",
        timeout=10_000 * T,
    )
    assert not fresh.evaluate("document.body.textContent.includes('\\u202e')")
    bidi = fresh.evaluate(
        "['.sum', '.users', '.cat'].map(s => getComputedStyle("
        "document.querySelector('#ticker ' + s)).unicodeBidi)"
    )
    assert bidi == ["isolate", "isolate", "isolate"]
    fresh.context.close()


def test_radar_view_equals_api(wall: tuple[Wall, Any], browser: Any) -> None:
    w, _ = wall
    _, api = get_api(w, "/api/radar?window=3600")
    assert api["users"], api
    page = new_page(browser)
    try:
        page.goto(f"http://127.0.0.1:{w.port}/?view=radar")
        page.wait_for_function("wallboard.state.radar !== null", timeout=15_000 * T)
        chart = page.evaluate(
            "(() => { const c = Chart.getChart('radar'); return {labels: c.data.labels,"
            " sets: c.data.datasets.map(d => [d.label, d.data])}; })()"
        )
        axes = radar_axes(api)
        assert chart["labels"] == [api["categories"][i] for i in axes]
        assert chart["sets"] == [[u, [s[i] for i in axes]] for u, s in api["users"].items()]
        assert len(axes) >= 3
        names = page.evaluate(
            "[...document.querySelectorAll('#radar-users .who')].map(e => e.textContent)"
        )
        assert names == list(api["users"])
        # chosen users from the URL
        pick = list(api["users"])[-2:]
        page.goto(f"http://127.0.0.1:{w.port}/?view=radar&users={','.join(pick)}")
        page.wait_for_function("wallboard.state.radar !== null", timeout=15_000 * T)
        _, want = get_api(w, f"/api/radar?window=3600&users={','.join(pick)}")
        got = page.evaluate("Chart.getChart('radar').data.datasets.map(d => [d.label, d.data])")
        axes = radar_axes(want)
        assert got == [[u, [s[i] for i in axes]] for u, s in want["users"].items()]
        assert len(got) == 2
    finally:
        page.context.close()


def test_diff_view_equals_api(wall: tuple[Wall, Any], browser: Any) -> None:
    w, _ = wall
    page = new_page(browser)
    try:
        page.goto(f"http://127.0.0.1:{w.port}/?view=diff")
        page.wait_for_function("wallboard.state.diff.week !== undefined", timeout=15_000 * T)
        for period in ("day", "week"):
            _, api = get_api(w, f"/api/diff?period={period}")
            risers = sorted(
                (r for r in api["rows"] if r["delta"] > 0), key=lambda r: (-r["delta"], r["topic"])
            )[:8]
            rows = page.evaluate(
                f"[...document.querySelectorAll('#diff-{period}-up tbody tr')].map(tr =>"
                " [tr.dataset.topic, ...[...tr.cells].map(td => td.textContent)])"
            )
            assert [r[0] for r in rows] == [r["topic"] for r in risers]
            for got, want in zip(rows, risers, strict=True):
                assert got[2] == f"{want['current']:,}" and got[3] == f"{want['previous']:,}"
                assert got[4].startswith("\u25b2+")
            fallers = page.text_content(f"#diff-{period}-down tbody")
            if not any(r["delta"] < 0 for r in api["rows"]):
                assert fallers == "no topic fell"
    finally:
        page.context.close()


def test_fits_1080p_and_4k_without_scrollbars(wall: tuple[Wall, Any], browser: Any) -> None:
    w, _ = wall
    for width, height in ((1920, 1080), (3840, 2160)):
        page = new_page(browser, width, height)
        try:
            page.goto(f"http://127.0.0.1:{w.port}/?theme=dark")
            page.wait_for_function("wallboard.state.events.snapshot >= 1")
            for view in ("live", "longtail", "radar", "diff"):
                page.evaluate(f"wallboard.show('{view}')")
                page.wait_for_timeout(200)
                size = page.evaluate(
                    "[document.documentElement.scrollWidth, document.documentElement.scrollHeight]"
                )
                assert size == [width, height], (view, size)
        finally:
            page.context.close()


def test_hidden_tab_queues_no_animation(
    wall: tuple[Wall, Any], browser: Any, examples: list[Any], tmp_path: Path
) -> None:
    """While hidden, blinks only count; on becoming visible nothing is replayed."""
    w, _ = wall
    page = new_page(browser)
    try:
        page.goto(f"http://127.0.0.1:{w.port}/")
        page.wait_for_function("wallboard.state.events.snapshot >= 1")
        page.evaluate(
            "Object.defineProperty(document, 'hidden', {configurable: true, get: () => true});"
            "document.dispatchEvent(new Event('visibilitychange'))"
        )
        before = page.evaluate("wallboard.state.events.blink")
        proc = run_cli(
            "replay",
            str(fresh_jsonl(examples, tmp_path / "fresh.jsonl", 200)),
            "--endpoint",
            w.bus,
            "--rebase-time",
            "--rate",
            "400",
            "--wait-timeout",
            "30",
            timeout=120,
        )
        assert proc.returncode == 0
        page.wait_for_function(f"wallboard.state.events.blink > {before}", timeout=15_000 * T)
        wait_for(lambda: _quiet(page), 20, 0.1, "blinks to stop")
        assert page.evaluate("wallboard.state.events.blink") > before
        assert page.evaluate("document.getAnimations().length") == 0
        page.evaluate(
            "Object.defineProperty(document, 'hidden', {configurable: true, get: () => false});"
            "document.dispatchEvent(new Event('visibilitychange'))"
        )
        running = "document.getAnimations().filter(a => a.playState === 'running').length"
        assert page.evaluate(running) == 0
    finally:
        page.context.close()


def _quiet(page: Any, quiet_s: float = 1.0) -> bool:
    """True once no blink arrived for ``quiet_s`` seconds."""
    n = page.evaluate("wallboard.state.events.blink")
    time.sleep(quiet_s)
    return bool(page.evaluate("wallboard.state.events.blink") == n)


def test_rotation_between_views(wall: tuple[Wall, Any], browser: Any) -> None:
    w, _ = wall
    page = new_page(browser)
    try:
        page.goto(f"http://127.0.0.1:{w.port}/?rotate=5&views=live,longtail")
        assert page.evaluate("wallboard.state.view") == "live"
        page.wait_for_function("wallboard.state.view === 'longtail'", timeout=10_000 * T)
        assert page.is_visible("#view-longtail") and not page.is_visible("#view-live")
        tabs = page.evaluate(
            "[...document.querySelectorAll('.tab')].filter(t => !t.hidden).map(t => t.dataset.view)"
        )
        assert tabs == ["live", "longtail"]
    finally:
        page.context.close()


def test_screenshot(
    wall: tuple[Wall, Any], browser: Any, examples: list[Any], tmp_path: Path
) -> None:
    """A 1920x1080 screenshot of each view while real messages keep arriving."""
    w, _ = wall
    page = new_page(browser)
    replay = w.spawn(
        "replay-loop",
        "replay",
        str(fresh_jsonl(examples, tmp_path / "fresh.jsonl", 600)),
        "--endpoint",
        w.bus,
        "--rebase-time",
        "--rate",
        "25",
        "--loop",
        "--count",
        "3000",
        "--wait-timeout",
        "30",
    )
    try:
        for view, name in (
            ("live", "screenshot.png"),
            ("longtail", "screenshot-longtail.png"),
            ("radar", "screenshot-radar.png"),
            ("diff", "screenshot-diff.png"),
        ):
            page.goto(f"http://127.0.0.1:{w.port}/?view={view}")
            page.wait_for_function("wallboard.state.events.blink >= 3", timeout=30_000 * T)
            page.wait_for_timeout(1500)
            path = tmp_path / name
            page.screenshot(path=str(path))
            png = path.read_bytes()
            assert png[:8] == b"\x89PNG\r\n\x1a\n"
            assert int.from_bytes(png[16:20], "big") == 1920
            assert int.from_bytes(png[20:24], "big") == 1080
            keep(path, name)
        assert page.get_attribute("#status", "data-state") == "live"
    finally:
        page.context.close()
        replay.terminate()
        replay.wait(15)
        w.procs.pop("replay-loop", None)


def page_memory(page: Any, cdp: Any) -> dict[str, float]:
    """Live DOM nodes, event listeners and used JS heap (bytes) after a full GC
    (Chrome DevTools Protocol ``Performance.getMetrics``), and the page's event counts."""
    cdp.send("HeapProfiler.collectGarbage")
    got = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
    events = page.evaluate("wallboard.state.events")
    return {
        "nodes": got["Nodes"],
        "listeners": got["JSEventListeners"],
        "heap": got["JSHeapUsedSize"],
        "blinks": events["blink"],
        "ticks": events["tick"],
    }


@pytest.mark.timeout(300)  # about 90 s of compressed wall time, sampled
def test_page_memory_stays_bounded(wall: tuple[Wall, Any], browser: Any) -> None:
    """A kiosk runs for weeks: hundreds of blinks and ticks, every view shown again
    and again and the radar and diff fetched again, leave the DOM and the event
    listeners where they were and the JS heap within the growth of its capped
    history (HISTORY_MAX points per window, under 1 MiB).  docs/BENCHMARKS.md
    ("Page memory") runs the same for thousands of ticks."""
    w, _ = wall
    page = new_page(browser)
    w.replay_loop("replay-soak", 200)

    def show_every_view() -> None:
        for view in ("radar", "diff", "longtail", "live"):
            page.evaluate(f"wallboard.show('{view}')")
            page.wait_for_timeout(2000)

    try:
        page.goto(f"http://127.0.0.1:{w.port}/")
        cdp = page.context.new_cdp_session(page)
        cdp.send("Performance.enable")
        # 60 blinks (6 s at 0.1 s): the replay went round its ~560 messages twice,
        # so the radar and diff, fetched when first shown, have every user and topic
        page.wait_for_function("wallboard.state.events.blink >= 60", timeout=60_000 * T)
        show_every_view()
        fetched = page.evaluate("[wallboard.state.fetchedAt.radar, wallboard.state.fetchedAt.diff]")
        assert all(fetched), fetched
        first = page_memory(page, cdp)
        for _ in range(8):  # 64 s: the radar and diff are fetched again (every 60 s)
            show_every_view()
        last = page_memory(page, cdp)
        again = page.evaluate("[wallboard.state.fetchedAt.radar, wallboard.state.fetchedAt.diff]")
        assert again[0] > fetched[0] and again[1] > fetched[1], (fetched, again)
        assert last["blinks"] - first["blinks"] >= 150, (first, last)
        assert last["ticks"] - first["ticks"] >= 15, (first, last)
        assert last["listeners"] == first["listeners"], (first, last)
        assert last["nodes"] <= first["nodes"] + 100, (first, last)
        assert last["heap"] - first["heap"] < 2 * 2**20, (first, last)
    finally:
        page.context.close()
        w.stop("replay-soak")


def test_recovers_after_web_restart(wall: tuple[Wall, Any]) -> None:
    w, page = wall
    api = settled(w, page)
    # the replays are over: "bus down" once the listener's link is dead
    badge = "document.getElementById('status-text').textContent"
    assert page.evaluate(badge) in ("live", "stale", "bus down")
    snapshots = page.evaluate("wallboard.state.events.snapshot")
    w.stop("web")
    page.wait_for_function(
        "document.getElementById('status').dataset.state === 'reconnecting'", timeout=15_000 * T
    )
    w.start_web()
    page.wait_for_function(f"wallboard.state.events.snapshot > {snapshots}", timeout=60_000 * T)
    page.wait_for_function(f"['live', 'stale', 'bus down'].includes({badge})", timeout=10_000 * T)
    again = settled(w, page)
    assert again["messages"] >= api["messages"]
    assert page.evaluate("wallboard.state.connected") is True


@pytest.mark.timeout(180)  # stops and restarts Redis, listener and bus
def test_badge_names_what_is_down(wall: tuple[Wall, Any], redis_server: Any, browser: Any) -> None:
    """Redis stopped: "redis down" (not "listener down": the listener is alive and
    retrying); the listener stopped: "listener down"; either way the rate is "–",
    not the last one reported; back to live once both are back; the publisher gone:
    "bus down" (the listener's link dead, as /healthz says)."""
    w, page = wall
    badge = "document.getElementById('status-text').textContent"
    live = "document.getElementById('status').dataset.state === 'live'"
    w.replay_loop("replay-badge", 50)
    try:
        page.wait_for_function(live, timeout=30_000 * T)
        redis_server.stop()
        try:
            page.wait_for_function(f"{badge} === 'redis down'", timeout=30_000 * T)
            assert page.get_attribute("#status", "data-state") == "down"
            assert page.text_content("#rate") == "\u2013"
            # a page opened now: the server closes each websocket (1013, Redis
            # unavailable); it said "reconnecting · 1 s" and retried twice a second
            fresh = new_page(browser)
            sockets: list[Any] = []
            fresh.on("websocket", lambda ws: sockets.append(ws))
            try:
                fresh.goto(f"http://127.0.0.1:{w.port}/")
                fresh.wait_for_function(f"{badge}.startsWith('redis down')", timeout=15_000 * T)
                fresh.wait_for_timeout(8000)
                assert fresh.evaluate(badge).startswith("redis down")
                assert len(sockets) <= 6, len(sockets)  # 0.5, 1, 2, 4 s... backoff
            finally:
                fresh.context.close()
        finally:
            redis_server.start()
        page.wait_for_function(live, timeout=60_000 * T)
        w.stop("listener")
        try:
            # heartbeat older than max(3 * step_s, 15) s
            page.wait_for_function(f"{badge} === 'listener down'", timeout=45_000 * T)
            assert page.text_content("#rate") == "\u2013"
            status, api = get_api(w, "/api/state")
            assert status == 200 and api["source"] == "redis", api
            assert api["rate_per_min"] is None, api
        finally:
            w.spawn("listener", *w.listener_args)
        page.wait_for_function(live, timeout=60_000 * T)
        assert page.text_content("#rate") != "\u2013"
    finally:
        w.stop("replay-badge")
    page.wait_for_function(f"{badge} === 'bus down'", timeout=30_000 * T)
    assert get_api(w, "/healthz")[1]["bus"]["state"] == "dead"


def test_radar_with_fewer_than_three_categories_says_so(
    redis_server: Any, browser: Any, examples: list[Any], tmp_path: Path
) -> None:
    """A radar needs three axes: nobody in the window, or one category, drew a bare
    scale or a single line; the chart is hidden and the note says why."""
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    w = Wall(redis_server.url, tmp_path)
    w.spawn(
        "listener",
        "listen",
        "--redis-url",
        w.redis_url,
        "--key-prefix",
        w.prefix,
        "--endpoint",
        w.bus,
        "--step",
        "1",
    )
    w.start_web()
    page = new_page(browser)
    note = "document.getElementById('radar-note').textContent"
    box = "document.getElementById('radar').parentElement.hidden"
    try:
        page.goto(f"http://127.0.0.1:{w.port}/?view=radar")
        page.wait_for_function(f"{note} === 'no users in this window'", timeout=30_000 * T)
        assert page.evaluate(box) is True

        def replay(categories: set[str], name: str) -> None:
            chosen = [
                e
                for c in sorted(categories)
                for e in [
                    x
                    for x in examples
                    if x.expected_usernames and x.body["topic"].split(".")[3] == c
                ][:3]
            ]
            path = tmp_path / name
            tag = uuid.uuid4().hex[:8]
            path.write_text(
                "".join(
                    json.dumps(dict(e.body, msg_id=f"{e.body['msg_id']}-{tag}")) + "\n"
                    for e in chosen
                )
            )
            r = run_cli(
                "replay",
                str(path),
                "--endpoint",
                w.bus,
                "--rebase-time",
                "--rate",
                "200",
                "--wait-timeout",
                "30",
                timeout=120,
            )
            assert r.returncode == 0, r.stderr

        replay({"bodhi"}, "one.jsonl")
        wait_for(
            lambda: (get_api(w, "/api/radar?window=3600")[1] or {}).get("categories") == ["bodhi"],
            30,
            0.3,
            "one category counted",
        )
        page.reload()
        page.wait_for_function(f"{note}.startsWith('only 1 category')", timeout=30_000 * T)
        assert page.evaluate(box) is True
        replay({"buildsys", "git"}, "more.jsonl")
        wait_for(
            lambda: len((get_api(w, "/api/radar?window=3600")[1] or {}).get("categories", [])) >= 3,
            30,
            0.3,
            "three categories",
        )
        page.reload()
        page.wait_for_function(f"{box} === false", timeout=30_000 * T)
        assert page.evaluate(note) == ""
        labels = page.evaluate("Chart.getChart('radar').data.labels")
        assert len(labels) >= 3 and "bodhi" in labels, labels
        # users named in the URL with no message in the window: not a bare scale
        page.goto(f"http://127.0.0.1:{w.port}/?view=radar&users=nobodyhere")
        page.wait_for_function(
            f"{note} === 'no messages from nobodyhere in this window'", timeout=30_000 * T
        )
        assert page.evaluate(box) is True
    finally:
        page.context.close()
        w.stop_all()


def test_filtered_screen_shows_only_its_categories(
    wall: tuple[Wall, Any], browser: Any, examples: list[Any], tmp_path: Path
) -> None:
    """``?category=a&category=b``: the server sends the screen only its messages; the
    lights, ticker, bars and longtail equal the filtered ``/api/snapshot``."""
    w, _ = wall
    _, api = get_api(w, "/api/snapshot?window=3600")
    chosen = sorted(c for c in ("bodhi", "pagure", "compose") if c in api["categories"])[:2]
    assert len(chosen) == 2, api["categories"]
    query = "&".join(f"category={c}" for c in chosen)
    page = new_page(browser)
    try:
        page.goto(f"http://127.0.0.1:{w.port}/?{query}")
        page.wait_for_function("wallboard.state.events.snapshot >= 1", timeout=20_000 * T)
        fresh = fresh_jsonl(examples, tmp_path / "fresh.jsonl", 200)
        proc = run_cli(
            "replay",
            str(fresh),
            "--endpoint",
            w.bus,
            "--rebase-time",
            "--rate",
            "400",
            "--wait-timeout",
            "30",
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        found: dict[str, Any] = {}

        def same() -> bool:
            _, got = get_api(w, f"/api/snapshot?window=3600&{query}")
            found["api"] = got
            shown = page.evaluate("(wallboard.state.windows['3600'] || {}).messages")
            return bool(got) and shown == got["messages"]

        wait_for(same, 30, 0.3, "the filtered page to match the filtered /api/snapshot")
        want = found["api"]
        assert set(want["categories"]) == set(chosen) and want["unfiltered"] == ["last_message_at"]
        state = page.evaluate("wallboard.state.windows['3600']")
        for key in ("categories", "topics_total", "top_users", "head", "tail", "ranks", "users"):
            assert state[key] == want[key], key
        ranked = sorted(want["topics"].items(), key=lambda kv: (-kv[1], kv[0]))
        assert list(state["topics"].items()) == ranked[:50]  # the events' top_topics
        assert state["longtail"] == pytest.approx(want["longtail"], rel=1e-12)
        assert page.text_content(".lt-mini .v[data-window='3600']") == f"{want['longtail']:.2f}"
        # lights: only the filter's categories, each with the filtered count
        lights = page.evaluate(
            "[...document.querySelectorAll('#lights .light')]"
            ".map(e => [e.dataset.category, e.querySelector('.count').textContent])"
        )
        assert lights == [[c, f"{want['categories'][c]:,} in 1 h"] for c in chosen]
        # every blink the screen got was its own: one flash per fresh message of its categories
        flashes = page.evaluate("Object.assign({}, wallboard.state.flashes)")
        sent = [json.loads(line) for line in fresh.read_text().splitlines()]
        mine = [b["topic"].split(".")[3] for b in sent]
        assert flashes == {c: mine.count(c) for c in chosen}
        # the ticker: the newest of its messages only
        rows = page.evaluate(
            "[...document.querySelectorAll('#ticker li')].filter(li => li.dataset.msgId)"
            ".map(li => li.querySelector('.cat').textContent)"
        )
        assert rows and set(rows) <= set(chosen)
        bars = [tuple(x) for x in page.evaluate("wallboard.bars()")]
        assert bars == ranked[:14]
        assert page.text_content("#filter-text") == "category: " + ", ".join(chosen)
        assert page.text_content("#filter-note") == "not under this filter: earlier history · rate"
        # the views over HTTP: /api/diff and /api/radar get the filter too
        page.evaluate("wallboard.show('diff')")
        rows = (
            "[...document.querySelectorAll('.diff tbody tr[data-topic]')].map(r => r.dataset.topic)"
        )
        page.wait_for_function(f"{rows}.length > 0", timeout=20_000 * T)
        assert all(t.split(".")[3] in chosen for t in page.evaluate(rows))
        page.evaluate("wallboard.show('radar')")
        page.wait_for_function(
            "document.getElementById('radar-note').textContent"
            ".startsWith('only 2 categories in this window')",
            timeout=20_000 * T,
        )
        page.evaluate("wallboard.show('live')")
        size = "[document.documentElement.scrollWidth, document.documentElement.scrollHeight]"
        assert page.evaluate(size) == [1920, 1080]  # the filter box fits the header
        header = page.evaluate(
            "[...document.querySelectorAll('.top > *')].filter(e => !e.hidden)"
            ".map(e => e.getBoundingClientRect().height)"
        )
        assert max(header) < page.evaluate("document.querySelector('.top').clientHeight")
        shot = tmp_path / "screenshot-filtered.png"
        page.screenshot(path=str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        keep(shot, "screenshot-filtered.png")
        # a user rule: the longtail cannot follow; the page says so and shows no number
        page.goto(f"http://127.0.0.1:{w.port}/?not_user=bodhi&category={chosen[0]}")
        page.wait_for_function("wallboard.state.events.snapshot >= 1", timeout=20_000 * T)
        assert page.text_content(".lt-mini .v[data-window='3600']") == "–"
        assert "users & longtail" in page.text_content("#filter-note")
        _, api = get_api(w, f"/api/snapshot?window=3600&not_user=bodhi&category={chosen[0]}")
        assert api["longtail"] is None and "longtail" in api["unfiltered"]
        assert page.evaluate("wallboard.state.windows['3600'].messages") == api["messages"]
        # a hostile filter: refused by the server (400), shown as text, no websocket
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(f"http://127.0.0.1:{w.port}/?user={urllib.parse.quote(HOSTILE)}")
        page.wait_for_function(
            "document.getElementById('filter-note').textContent.startsWith('refused: user:')",
            timeout=20_000 * T,
        )
        assert page.text_content("#filter-text") == "user: " + HOSTILE
        assert page.text_content("#status-text") == "bad filter"
        assert page.evaluate("document.querySelectorAll('#filter img').length") == 0
        assert page.evaluate("wallboard.state.events.snapshot") == 0 and dialogs == []
    finally:
        page.context.close()
