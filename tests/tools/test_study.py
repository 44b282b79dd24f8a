"""The longtail study: the seed's windows, one sliding pass, the command."""

from __future__ import annotations

import csv
import io
import json
import random
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import fedmsg.meta
import pytest

from listener.tools.study import (
    collect_events,
    rebase,
    recount_windows,
    sliding_windows,
    window_ends,
)
from tests.helpers.common import CORPUS, run_cli
from tests.helpers.datagrepper import FakeDatagrepper, max_per_second, spread
from tests.helpers.seed import seed_longtail

END = 1_700_000_000.0
DAY = 86400


@pytest.mark.parametrize(
    "end, range_s, n",
    [(END, DAY, 50), (END + 0.75, DAY, 50), (END, 3600, 7), (END, 100, 30), (1504643081.9, 60, 60)],
)
def test_window_ends_are_the_seeds(end: float, range_s: float, n: int) -> None:
    now, whole_range, N = end, range_s, n  # noqa: N806 - the seed's names
    seed = list(range(*map(int, (now - whole_range, now, whole_range / N))))
    assert window_ends(end, range_s, n) == seed


def test_window_ends_reject_a_zero_step() -> None:
    with pytest.raises(ValueError, match="step of 0"):
        window_ends(END, 10, 50)
    with pytest.raises(ValueError):
        window_ends(END, DAY, 0)


@pytest.fixture(scope="module")
def two_days(examples: list[Any]) -> list[dict[str, Any]]:
    """Real messages spread over the two days the 50 windows cover, plus copies
    sitting exactly on window edges (``end_k`` is in window k, ``end_k - range``
    is not)."""
    ends = window_ends(END, DAY, 50)
    msgs = spread([ex.body for ex in examples], ends[0] - DAY, ends[-1], seed=7)
    rng = random.Random(8)
    for i, ex in enumerate(rng.sample(examples, 40)):
        edge = dict(ex.body, msg_id=f"edge-{i}")
        edge["timestamp"] = float(ends[i % 50] - (DAY if i % 2 else 0))
        msgs.append(edge)
    msgs.sort(key=lambda m: m["timestamp"])
    # as read from the wire: tagger.py compares ``user is 'anonymous'``, which only
    # holds for the interned literal of the in-memory examples, never for JSON
    return json.loads(json.dumps(msgs))


def events_of(msgs: list[dict[str, Any]], extractor: Any) -> list[Any]:
    return collect_events(msgs, extractor.usernames, Counter())


def test_one_pass_equals_per_window_recount(two_days: list[Any], extractor: Any) -> None:
    events = events_of(two_days, extractor)
    ends = window_ends(END, DAY, 50)
    fast = sliding_windows(events, ends, DAY)
    slow = recount_windows(events, ends, DAY)
    assert fast == slow
    assert len(fast) == 50
    assert all(p.messages > 100 and p.stats.users > 10 for p in fast)
    # windows really move: the series is not constant
    assert len({p.stats.longtail for p in fast}) > 10


def test_edges_belong_to_the_window_they_end(extractor: Any, examples: list[Any]) -> None:
    body = next(ex.body for ex in examples if ex.expected_usernames)
    ends = window_ends(END, 100, 10)  # step 10 s
    on_end = dict(body, msg_id="a", timestamp=float(ends[3]))
    events = events_of([on_end], extractor)
    points = sliding_windows(events, ends, 100)
    inside = [p.end for p in points if p.messages]
    # in every window with end_k - 100 < ts <= end_k: ends[3] .. ends[3] + 90
    assert inside == [e for e in ends if e - 100 < ends[3] <= e]
    assert inside[0] == ends[3] and ends[3] + 100 not in inside


def test_matches_the_seeds_own_pipeline(two_days: list[Any], extractor: Any) -> None:
    """Per window: fedmsg.meta.msg2usernames on each message and the seed's
    analyze loop (a line-by-line port), against our one pass."""
    ends = window_ends(END, DAY, 50)
    points = sliding_windows(events_of(two_days, extractor), ends, DAY)
    for k in (0, 17, 49):
        end = ends[k]
        results: dict[str, float] = defaultdict(int)
        for message in two_days:
            if end - DAY < message["timestamp"] <= end:
                for user in fedmsg.meta.msg2usernames(message, **extractor.config):
                    results[user] += 1
        data = {u: float(v) for u, v in results.items()}
        assert points[k].stats.longtail == seed_longtail(data)
        assert points[k].stats.users == len(data)


def test_duplicates_and_bad_messages_are_counted_and_skipped(
    extractor: Any, examples: list[Any]
) -> None:
    body = examples[0].body
    skipped: Counter[str] = Counter()
    events = collect_events(
        [dict(body, timestamp=END), dict(body, timestamp=END), dict(body, timestamp="x")],
        extractor.usernames,
        skipped,
    )
    assert len(events) == 1
    assert skipped == {"duplicate": 1, "bad_timestamp": 1}


def test_rebase_spreads_in_order() -> None:
    ev = [(5.0, ("a",)), (1.0, ("b",)), (3.0, ())]
    assert rebase(ev, 100.0, 130.0) == [(110.0, ("a",)), (120.0, ("b",)), (130.0, ())]


# -- the command ------------------------------------------------------------


def write_jsonl(path: Path, msgs: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(m) + "\n" for m in msgs))
    return path


def test_cli_json_from_a_file(tmp_path: Path, two_days: list[Any], extractor: Any) -> None:
    f = write_jsonl(tmp_path / "day.jsonl", two_days)
    res = run_cli("longtail", "--input", str(f), "--end", str(END), "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["range_s"] == DAY and out["windows"] == 50
    expected = sliding_windows(events_of(two_days, extractor), window_ends(END, DAY, 50), DAY)
    assert out["points"] == [p.as_dict() for p in expected]
    assert set(out["points"][0]) == {
        "end",
        "messages",
        "users",
        "longtail",
        "longtail_normalized",
        "gini",
        "head",
        "tail",
    }


def test_cli_from_datagrepper_equals_from_file(
    tmp_path: Path, two_days: list[Any], extractor: Any
) -> None:
    """Today's datagrepper serves ``users``: fedmsg.meta is not needed, same result."""
    served = [dict(m, users=sorted(extractor.usernames(m))) for m in two_days]
    f = write_jsonl(tmp_path / "day.jsonl", two_days)
    from_file = run_cli("longtail", "--input", str(f), "--end", str(END), "--csv")
    with FakeDatagrepper(served) as srv:
        res = run_cli(
            "longtail", "--datagrepper", srv.url, "--end", str(END), "--csv", "--workers", "2"
        )
        assert all("delta" not in r for r in srv.requests)
    assert res.returncode == 0, res.stderr
    assert res.stdout == from_file.stdout
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert len(rows) == 50 and int(rows[0]["end"]) == window_ends(END, DAY, 50)[0]


def test_cli_from_datagrepper_is_polite_and_loud(two_days: list[Any], extractor: Any) -> None:
    """Four workers stay within the default 2 requests a second, as the server
    counts them; a range short of its ``total`` ends with exit 3 (incomplete)."""
    served = [dict(m, users=sorted(extractor.usernames(m))) for m in two_days]
    with FakeDatagrepper(served) as srv:
        srv.faults = ["429", None, "503"]
        srv.retry_after = "1"
        ok = run_cli("longtail", "--datagrepper", srv.url, "--end", str(END), "--json")
        arrivals = list(srv.arrivals)
    assert ok.returncode == 0, ok.stderr
    assert len(arrivals) >= 18  # 16 slices of 4 workers, and 2 retries
    assert max_per_second(arrivals) <= 2
    assert sum(p["messages"] for p in json.loads(ok.stdout)["points"]) > 0
    with FakeDatagrepper(served) as srv:
        srv.hide = 1  # the newest message of each range never comes
        short = run_cli(
            "longtail", "--datagrepper", srv.url, "--end", str(END), "--json", "--rate", "50"
        )
    assert short.returncode == 3, short.stderr
    assert "incomplete" in short.stderr and "undercount" in short.stderr


def test_cli_table_and_svg(tmp_path: Path) -> None:
    svg = tmp_path / "study.svg"
    res = run_cli(
        "longtail",
        "--builtin-examples",
        "--input",
        str(CORPUS / "fedmsg_sample_datanommer_stream.jsonl"),
        "--rebase",
        "--end",
        str(END),
        "--windows",
        "10",
        "--svg",
        str(svg),
    )
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "longtail study: 10 windows of 86400 s"
    assert lines[1].split()[:4] == ["window", "end", "(UTC)", "messages"]
    assert len(lines) == 12
    text = svg.read_text()
    assert text.startswith("<?xml") and "<svg" in text
    assert "window end (UTC)" in text and "longtail (messages)" in text and "lol" not in text
    assert "kozea.github.io" not in text  # no external JavaScript


def test_cli_warns_when_no_message_is_in_the_windows() -> None:
    res = run_cli(
        "longtail",
        "--input",
        str(CORPUS / "fedmsg_sample_datanommer_response.json"),
        "--windows",
        "5",
        "--json",
    )
    assert res.returncode == 0, res.stderr
    assert "pass --end 1504643076" in res.stderr
    assert all(p["messages"] == 0 for p in json.loads(res.stdout)["points"])


def test_cli_bad_input(tmp_path: Path, examples: list[Any]) -> None:
    f = tmp_path / "mixed.jsonl"
    good = dict(examples[0].body, timestamp=END - 50000)  # in the last of 2 windows
    f.write_text(json.dumps(good) + "\nnot json\n[1, 2]\n" + json.dumps({"no": "ts"}) + "\n")
    res = run_cli("longtail", "--input", str(f), "--end", str(END), "--windows", "2", "--json")
    assert res.returncode == 0, res.stderr
    assert "bad_json 1" in res.stderr and "not_object 2" in res.stderr
    assert "bad_timestamp 1" in res.stderr
    assert json.loads(res.stdout)["points"][-1]["messages"] == 1
    missing = run_cli("longtail", "--input", str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    assert run_cli("longtail", "--input", str(f), "--windows", "0").returncode == 2
    assert run_cli("longtail").returncode == 2


def test_benchmark_section_leaves_other_sections_alone(tmp_path: Path) -> None:
    from bench.bench_study import HEADING, write_section

    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# Benchmarks\n\n## Pipeline\n\nother engineer's numbers\n")
    write_section(doc, f"{HEADING}\n\nfirst run\n")
    write_section(doc, f"{HEADING}\n\nsecond run\n")
    text = doc.read_text()
    assert text.count(HEADING) == 1 and "second run" in text and "first run" not in text
    assert text.startswith("# Benchmarks\n\n## Pipeline\n\nother engineer's numbers\n")
    doc.write_text(text + "\n## Later\n\nkept\n")
    write_section(doc, f"{HEADING}\n\nthird run\n")
    assert doc.read_text().endswith("third run\n\n## Later\n\nkept\n")


def test_a_file_with_no_message_is_an_input_error(tmp_path: Path) -> None:
    """An empty or all-garbage file printed 50 empty windows and exited 0."""
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text('garbage\n{"x": 1}\n')
    res = run_cli("longtail", "--input", str(empty), "--csv")
    assert res.returncode == 2 and f"no messages in {empty}" in res.stderr, res.stderr
    res = run_cli("longtail", "--input", str(garbage), "--csv")
    assert res.returncode == 2 and "(2 lines skipped)" in res.stderr, res.stderr
    assert res.stdout == "" and "Traceback" not in res.stderr


def test_an_svg_path_that_cannot_be_written_fails_before_the_study(tmp_path: Path) -> None:
    res = run_cli("longtail", "--builtin-examples", "--svg", str(tmp_path / "no" / "x.svg"))
    assert res.returncode == 2
    assert f"no such directory {tmp_path / 'no'}" in res.stderr
    assert "messages (" not in res.stderr  # the study did not run
    res = run_cli("longtail", "--builtin-examples", "--svg", str(tmp_path))
    assert res.returncode == 2 and "is a directory" in res.stderr
