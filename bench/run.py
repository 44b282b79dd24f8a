"""``make bench``: run every benchmark and write ``docs/BENCHMARKS.md``.

    python -m bench.run --write docs/BENCHMARKS.md        # compute, ingest, fanout, page (~18 min)
    python -m bench.run --only ingest,compute --reps 3    # some parts
    python -m bench.run --quick                           # tiny sizes (smoke test)
    python -m bench.run --only ingest --merge --write ... # re-run one part, keep the rest

Parts: ``compute`` (:mod:`bench.compute`), ``ingest`` (:mod:`bench.ingest`),
``fanout`` (:mod:`bench.fanout`), ``page`` (:mod:`bench.page`, the wall page's
memory over a long compressed run), and on request ``study`` (``bench/bench_study.py``,
the seed study: its section of the report belongs to its author and is kept as it
stands; ``python -m bench.bench_study --write docs/BENCHMARKS.md`` rewrites it).  Raw results go to
``bench/out/results.json``; the report is rendered by :mod:`bench.report`.  A
part that fails is reported as failed (with the error) and the others still run;
the exit code is then 1.  Benchmarks never run in ``make test``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench import report
from bench.procs import OUT, ROOT, RedisServer, redis_version

#: in running order: the short, noise-sensitive timings first
PARTS = ("compute", "ingest", "fanout", "page", "study")
#: run by default; ``study`` (``bench/bench_study.py``, ~5 min) only when asked: its
#: section in the report is its owner's and is kept as it stands
DEFAULT_PARTS = ("compute", "ingest", "fanout", "page")


#: Iterations of :func:`host_speed_ms`'s loop.
SPEED_LOOP = 2_000_000


def host_speed_ms(runs: int = 3) -> float:
    """The host's speed for one Python thread right now: the best of ``runs`` timings
    of a fixed pure-Python loop (``SPEED_LOOP`` integer additions), ms.  A shared
    virtual machine's speed changes by 2x within hours while its load average stays
    low; runs are compared with this beside them (lower is faster)."""
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        acc = 0
        for i in range(SPEED_LOOP):
            acc += i
        best = min(best, time.perf_counter() - t)
    return round(best * 1000, 1)


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import orjson
    import websockets
    import zmq

    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
        ).stdout.strip()
    except OSError:
        commit = "?"
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_gib": round(mem_kib / 1024 / 1024, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "redis": redis_version(),
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "orjson": orjson.__version__,
        "websockets": websockets.__version__,
        "commit": commit,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def run_part(name: str, quick: bool, reps: int, log: Any) -> dict[str, Any]:
    """Run one part; returns its raw results (plus load averages and duration)."""
    t0 = time.time()
    load0 = os.getloadavg()
    if name == "ingest":
        from bench import ingest

        prof = ingest.QUICK if quick else ingest.Profile(reps=reps)
        res: dict[str, Any] = ingest.run(prof, log=log)
    elif name == "compute":
        from bench import compute

        redis = RedisServer(OUT / "redis-compute")
        try:
            res = compute.run(redis.url, quick=quick)
        finally:
            redis.stop()
    elif name == "fanout":
        from bench import fanout

        res = fanout.run(quick=quick, reps=reps, log=log)
    elif name == "page":
        from bench import page

        res = page.run(minutes=0.3 if quick else 6.0, sample_s=10.0 if quick else 30.0, log=log)
        res["summary"] = page.summary(res)
    elif name == "study":
        import bench.bench_study as study

        r = study.run(seed_windows=2 if quick else 5, big_rate=None if quick else 20.0)
        res = {"raw": r, "markdown": study.markdown(r)}
    else:
        raise ValueError(f"unknown part {name!r}")
    res["load_before"] = [round(x, 2) for x in load0]
    res["load_after"] = [round(x, 2) for x in os.getloadavg()]
    res["seconds"] = round(time.time() - t0, 1)
    return res


def main(argv: list[str] | None = None) -> int:
    """Run the parts asked for; write the report when ``--write`` is given."""
    ap = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--write", type=Path, help="markdown report to (re)write")
    ap.add_argument(
        "--only",
        default=",".join(DEFAULT_PARTS),
        help=f"comma-separated parts of {', '.join(PARTS)} (default: {','.join(DEFAULT_PARTS)})",
    )
    ap.add_argument("--reps", type=int, default=3, help="repetitions (medians are taken)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks the harness only")
    ap.add_argument("--json", type=Path, default=OUT / "results.json", help="raw results")
    ap.add_argument(
        "--merge",
        action="store_true",
        help="keep the other parts' results from --json (re-run some parts only)",
    )
    args = ap.parse_args(argv)
    os.environ.setdefault("FEDMSG_CONFIG", str(ROOT / "fedmsg.d"))
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    for p in parts:
        if p not in PARTS:
            ap.error(f"unknown part {p!r}; parts: {', '.join(PARTS)}")
    OUT.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(msg, flush=True)

    command = "python -m bench.run " + " ".join(argv if argv is not None else sys.argv[1:])
    results: dict[str, Any] = {}
    if args.merge and args.json.exists():
        results = json.loads(args.json.read_text())
        results.setdefault("reruns", []).append(f"{command.strip()} ({parts})")
    results.update(
        {
            "command": results.get("command", command.strip()),
            "machine": machine(),
            "quick": args.quick,
            "reps": 1 if args.quick else args.reps,
        }
    )
    failed = False
    for name in parts:
        log(f"{name}: running (load {os.getloadavg()[0]:.2f})")
        speed0 = host_speed_ms()
        try:
            results[name] = run_part(name, args.quick, args.reps, log)
            results[name]["host_speed_ms"] = [speed0, host_speed_ms()]
            log(f"{name}: done in {results[name]['seconds']} s")
        except Exception as exc:  # report the failure, run the other parts
            failed = True
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            log(f"{name}: FAILED: {exc}")
            traceback.print_exc()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1, default=str))
    log(f"raw results: {args.json}")
    if args.write:
        report.write(args.write, results)
        log(f"report: {args.write}")
    else:
        print(report.render(results, existing=""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
