"""``listen --datagrepper URL``: a listener that starts after a gap fills it first."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from typing import Any

from tests.helpers.common import ROOT, free_port, run_cli, wait_for
from tests.helpers.datagrepper import FakeDatagrepper, spread
from tests.helpers.listener_proc import stop_listener


def test_listener_backfills_the_gap_at_start(redis_url: str, examples: list[Any]) -> None:
    now = time.time()
    # 200 real messages spread over the last 2 hours, as datagrepper serves them
    msgs = json.loads(
        json.dumps(spread([ex.body for ex in examples[:200]], now - 7200, now - 120, seed=3))
    )
    prefix = f"lb{uuid.uuid4().hex[:8]}"
    with FakeDatagrepper(msgs) as srv:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "listener",
                "listen",
                "--redis-url",
                redis_url,
                "--key-prefix",
                prefix,
                "--endpoint",
                f"tcp://127.0.0.1:{free_port()}",
                "--datagrepper",
                srv.url,
                "--step",
                "1",
            ],
            cwd=str(ROOT),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:

            def day_count() -> int:
                res = run_cli(
                    "snapshot",
                    "--window",
                    "86400",
                    "--json",
                    "--redis-url",
                    redis_url,
                    "--key-prefix",
                    prefix,
                )
                return int(json.loads(res.stdout)["messages"]) if res.returncode == 0 else -1

            wait_for(lambda: day_count() == 200, 60, interval=0.5, what="backfilled gap")
            # the 1 h window holds exactly the backfilled messages of the last hour
            hour = run_cli(
                "snapshot",
                "--window",
                "3600",
                "--json",
                "--redis-url",
                redis_url,
                "--key-prefix",
                prefix,
            )
            snap = json.loads(hour.stdout)
            # window edges are bucket-aligned: the 60 buckets ending with end's minute
            last_hour_start = (int(snap["end"]) // 60) * 60 - 3600 + 60
            expected = sum(1 for m in msgs if m["timestamp"] >= last_hour_start)
            assert snap["messages"] == expected
        finally:
            out = stop_listener(proc)  # SIGTERM; killed (and failing below) if it hangs
        assert proc.returncode == 0, out
        assert "backfill done" in out
