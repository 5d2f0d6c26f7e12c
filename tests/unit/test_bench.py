"""The benchmark harness measures what it says (the benchmarks themselves run with `make bench`)."""

from __future__ import annotations

import sys

import pytest

from bench.__main__ import render_table
from bench.core import Figure, measure_process
from bench.loop import Traffic


def test_measure_process_reports_the_childs_own_peak_rss_and_wall_time() -> None:
    code = "import time, json; b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(0.3); print(json.dumps({'ok': 1}))"
    result = measure_process([sys.executable, "-c", code])
    assert result.json() == {"ok": 1}
    assert result.peak_rss_mb >= 300
    assert result.wall_s >= 0.3
    small = measure_process([sys.executable, "-c", "print('{}')"])
    assert small.peak_rss_mb < 250  # its own peak, not the largest of all children so far


def test_measure_process_names_a_failing_command() -> None:
    with pytest.raises(RuntimeError, match=r"exited with 3; stderr tail:\nboom"):
        measure_process([sys.executable, "-c", "import sys; sys.stderr.write('boom'); sys.exit(3)"])


def test_table_shows_ratio_goal_and_verdict() -> None:
    table = render_table(
        [
            Figure("serving", "req/s, 1-row body", "req/s", 1000.0, 200.0, ">= 4x anchor", True),
            Figure("drift", "peak RSS", "MB", 800.0, 1400.0, "<= 1/2 anchor", False, note="why it is missed"),
            Figure("loop", "failed requests", "count", 0, None, "0", True),
        ]
    )
    lines = table.splitlines()
    assert lines[0].split() == ["benchmark", "figure", "ours", "anchor", "ratio", "goal", "met"]
    assert "5.00x" in lines[2]
    assert lines[2].rstrip().endswith("yes")
    assert "0.57x" in lines[3]
    assert lines[3].rstrip().endswith("NO")
    assert "- drift / peak RSS: why it is missed" in table


def test_traffic_switch_time_is_the_first_new_answer_after_the_last_old_one() -> None:
    traffic = Traffic("http://127.0.0.1:9", rows=[])
    traffic.answers = [
        (1.0, 200, "1"),
        (2.0, 200, "2"),  # one worker already swapped...
        (3.0, 200, "1"),  # ...the other not yet
        (4.0, 503, None),
        (5.0, 200, "2"),
        (6.0, 200, "2"),
    ]
    assert traffic.switched_at("2") == 5.0
    assert traffic.switched_at("3") is None
