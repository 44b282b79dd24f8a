"""Page memory over a long run: the wall page in Debian's chromium, fed by the real
pipeline at a compressed pace, sampled for DOM nodes, event listeners and JS heap.

A kiosk leaves the page up for weeks.  Here a redis-server, ``python -m listener
listen`` and ``python -m listener web`` (both ``--step 0.1``: 10 ticks a second,
50x the default 5 s) and ``python -m listener replay --builtin-examples --loop
--new-ids`` (real messages, ``--rate`` msgs/s) feed one page (1920x1080, rotating
through every view every 5 s).  Every ``sample_s`` seconds, after a full garbage
collection (``HeapProfiler.collectGarbage``), Chrome DevTools Protocol
``Performance.getMetrics`` gives ``Nodes`` (live DOM nodes), ``JSEventListeners``
and ``JSHeapUsedSize`` (bytes); the page's own event counts say how many blinks and
ticks it handled.  The page keeps at most ``HISTORY_MAX`` (720) history points per
window, so its heap grows until then; after that it should stay flat.

    python -m bench.page --minutes 5            # prints the samples as JSON
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from bench.procs import OUT, RedisServer, free_port, spawn, stop_process, wait_until

CHROMIUM = "/usr/bin/chromium"
#: the page's cap on history points per window (web/app.js ``HISTORY_MAX``)
HISTORY_MAX = 720


def _metrics(page: Any, cdp: Any) -> dict[str, float]:
    cdp.send("HeapProfiler.collectGarbage")
    got = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
    events = page.evaluate("wallboard.state.events")
    return {
        "nodes": int(got["Nodes"]),
        "listeners": int(got["JSEventListeners"]),
        "heap_bytes": int(got["JSHeapUsedSize"]),
        "blinks": int(events["blink"]),
        "ticks": int(events["tick"]),
        "snapshots": int(events["snapshot"]),
    }


def run(
    minutes: float = 5.0, rate: float = 500.0, sample_s: float = 30.0, log: Any = print
) -> dict[str, Any]:
    """Run the page for ``minutes``; returns ``{"samples": [{"t_s", "nodes",
    "listeners", "heap_bytes", "blinks", "ticks", "snapshots"}, ...], "rate",
    "step_s", "minutes"}`` (``t_s``: seconds since the page loaded).

    Raises:
        bench.procs.BenchError: a process did not come up.
    """
    from playwright.sync_api import sync_playwright

    step = "0.1"
    redis = RedisServer(OUT / "redis-page")
    bus = f"tcp://127.0.0.1:{free_port()}"
    port = free_port()
    common = ["--redis-url", redis.url, "--key-prefix", "page"]
    procs = [
        spawn(
            ["-m", "listener", "listen", *common, "--endpoint", bus, "--step", step],
            "page-listener.log",
        ),
        spawn(
            ["-m", "listener", "web", *common, "--port", str(port), "--step", step], "page-web.log"
        ),
    ]
    samples: list[dict[str, Any]] = []
    try:
        import urllib.request

        def web_up() -> bool:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
            except urllib.error.HTTPError:
                return True  # 503: up, the listener not yet ticking
            except OSError:
                return False
            return True

        wait_until(web_up, 60, "the web process")
        procs.append(
            spawn(
                [
                    "-m",
                    "listener",
                    "replay",
                    "--builtin-examples",
                    "--endpoint",
                    bus,
                    "--rebase-time",
                    "--rate",
                    str(rate),
                    "--loop",
                    "--new-ids",
                    "--wait-timeout",
                    "30",
                ],
                "page-replay.log",
            )
        )
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            ctx = browser.new_context(viewport={"width": 1920, "height": 1080})
            page = ctx.new_page()
            page.goto(f"http://127.0.0.1:{port}/?rotate=5")
            page.wait_for_function("wallboard.state.events.snapshot >= 1", timeout=60_000)
            cdp = ctx.new_cdp_session(page)
            cdp.send("Performance.enable")
            t0 = time.monotonic()
            end = t0 + minutes * 60
            while True:
                now = time.monotonic()
                sample = {"t_s": round(now - t0, 1), **_metrics(page, cdp)}
                samples.append(sample)
                log(f"page: {json.dumps(sample)}")
                if now >= end:
                    break
                page.wait_for_timeout(min(sample_s, max(0.0, end - now)) * 1000)
            browser.close()
    finally:
        for p in reversed(procs):
            stop_process(p)
        redis.stop()
    return {"samples": samples, "rate": rate, "step_s": float(step), "minutes": minutes}


def summary(res: dict[str, Any]) -> dict[str, Any]:
    """Growth once the history is full, over the samples with at least
    ``HISTORY_MAX`` ticks (``{"from": None, "to": None}`` when fewer than 3).

    Returns ``{"from", "to"}`` (the first and last of those samples),
    ``heap_per_1000_ticks`` (bytes: the least-squares slope of the heap over ticks,
    since one sample moves by a few hundred KiB with what V8 has compiled or not yet
    freed), ``heap_spread`` (bytes, max - min), ``nodes_change``, ``listeners_change``.
    """
    s = res.get("samples") or []
    full = [x for x in s if x["ticks"] >= HISTORY_MAX]
    if len(full) < 3:
        return {"from": None, "to": None}
    xs = [float(x["ticks"]) for x in full]
    ys = [float(x["heap_bytes"]) for x in full]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs) or 1.0
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    a, b = full[0], full[-1]
    return {
        "from": a,
        "to": b,
        "heap_per_1000_ticks": round(slope * 1000),
        "heap_spread": round(max(ys) - min(ys)),
        "nodes_change": b["nodes"] - a["nodes"],
        "listeners_change": b["listeners"] - a["listeners"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--rate", type=float, default=500.0, help="replay msgs/s")
    ap.add_argument("--sample", type=float, default=30.0, help="seconds between samples")
    args = ap.parse_args(argv)
    res = run(args.minutes, args.rate, args.sample, log=lambda m: print(m, file=sys.stderr))
    print(json.dumps({**res, "summary": summary(res)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
