"""The shadow and watch verdicts: what live rows say about a challenger and a new champion."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from continuous_training.config import ReleasePolicy
from continuous_training.model.release import shadow_verdict, watch_verdict

POLICY = ReleasePolicy(
    shadow_min_rows=200,
    shadow_max_wait_minutes=10,
    watch_minutes=10,
    watch_min_rows=100,
    watch_max_error_rate=0.01,
    watch_max_p99_ratio=3.0,
    watch_max_score_shift=0.2,
)


def _rows(
    scores: np.ndarray,
    *,
    challenger: np.ndarray | None = None,
    version: str | None = "2",
    challenger_error: str | None = None,
    latency_ms: float = 2.0,
    error: str | None = None,
) -> pd.DataFrame:
    n = len(scores)
    return pd.DataFrame(
        {
            "request_id": [f"r{i}" for i in range(n)],
            "score": scores,
            "challenger_version": pd.array([version] * n if challenger is not None else [None] * n, "string"),
            "challenger_score": challenger if challenger is not None else np.full(n, np.nan),
            "challenger_error": pd.array([challenger_error] * n, "string"),
            "latency_ms": np.full(n, latency_ms),
            "error": pd.array([error] * n, "string"),
        }
    )


rng = np.random.default_rng(7)
CHAMPION = rng.uniform(0, 1, 1000)


# ------------------------------------------------------------------------------------------ shadow


def test_the_shadow_verdict_waits_for_enough_rows() -> None:
    rows = _rows(CHAMPION[:150], challenger=CHAMPION[:150])
    assert shadow_verdict(rows, "2", POLICY, waited_s=60) is None


def test_a_challenger_that_agrees_passes() -> None:
    close = np.clip(CHAMPION + rng.normal(0, 0.01, len(CHAMPION)), 0, 1)
    verdict = shadow_verdict(_rows(CHAMPION, challenger=close), "2", POLICY, waited_s=60)
    assert verdict["passed"], verdict["reasons"]
    assert verdict["rows"] == 1000
    assert verdict["agreement"] > 0.95
    assert verdict["score_shift"] < 0.02
    assert verdict["error_rate"] == 0


def test_a_challenger_that_disagrees_is_blocked_with_its_figures() -> None:
    flipped = 1 - CHAMPION
    verdict = shadow_verdict(_rows(CHAMPION, challenger=flipped), "2", POLICY, waited_s=60)
    assert not verdict["passed"]
    assert verdict["agreement"] < 0.9
    assert any("decided" in reason for reason in verdict["reasons"])


def test_a_challenger_that_fails_is_blocked() -> None:
    rows = _rows(CHAMPION, challenger=np.full(len(CHAMPION), np.nan), challenger_error="ValueError: boom")
    verdict = shadow_verdict(rows, "2", POLICY, waited_s=60)
    assert not verdict["passed"]
    assert verdict["error_rate"] == 1.0
    assert any("failed on 100.00%" in reason for reason in verdict["reasons"])


def test_rows_of_another_challenger_do_not_count_and_the_wait_ends_blocked() -> None:
    rows = _rows(CHAMPION, challenger=CHAMPION, version="3")
    assert shadow_verdict(rows, "2", POLICY, waited_s=60) is None
    verdict = shadow_verdict(rows, "2", POLICY, waited_s=601)
    assert not verdict["passed"]
    assert verdict["rows"] == 0
    assert verdict["reasons"] == ["only 0 shadow-scored rows in 10 min (release.shadow_min_rows is 200)"]


# ------------------------------------------------------------------------------------------- watch


def _watch(new: pd.DataFrame, old: pd.DataFrame, elapsed_s: float = 60) -> dict | None:
    return watch_verdict(new, old, POLICY, version="2", previous_version="1", elapsed_s=elapsed_s)


def test_a_good_champion_is_left_alone_and_passes_when_the_window_ends() -> None:
    old = _rows(CHAMPION)
    new = _rows(np.clip(CHAMPION + rng.normal(0, 0.02, len(CHAMPION)), 0, 1), latency_ms=2.5)
    assert _watch(new, old) is None
    verdict = _watch(new, old, elapsed_s=601)
    assert verdict["passed"]
    assert verdict["judged"]
    assert verdict["figures"]["p99_ms"] == 2.5
    assert verdict["figures"]["previous_p99_ms"] == 2.0


def test_nan_scores_breach_at_once() -> None:
    verdict = _watch(_rows(np.full(300, np.nan)), _rows(CHAMPION))
    assert not verdict["passed"]
    assert verdict["figures"]["error_rate"] == 1.0
    assert "no finite score on 100.00% of 300 rows" in verdict["breaches"][0]


def test_failed_requests_count_as_errors() -> None:
    new = pd.concat([_rows(CHAMPION[:200]), _rows(np.full(10, np.nan), error="ValueError")])
    verdict = _watch(new, _rows(CHAMPION))
    assert not verdict["passed"]
    assert verdict["figures"]["error_rate"] == pytest.approx(10 / 210, abs=1e-4)


def test_inflated_latency_breaches() -> None:
    verdict = _watch(_rows(CHAMPION, latency_ms=20.0), _rows(CHAMPION, latency_ms=2.0))
    assert not verdict["passed"]
    assert "10.0x v1's" in verdict["breaches"][0]


def test_shifted_scores_breach() -> None:
    verdict = _watch(_rows(np.clip(CHAMPION + 0.4, 0, 1)), _rows(CHAMPION))
    assert not verdict["passed"]
    assert verdict["figures"]["score_shift"] > 0.2


def test_too_few_rows_are_not_judged() -> None:
    new = _rows(np.full(50, np.nan))
    assert _watch(new, _rows(CHAMPION)) is None
    verdict = _watch(new, _rows(CHAMPION), elapsed_s=601)
    assert verdict["passed"]
    assert not verdict["judged"]


def test_the_first_champion_is_judged_on_its_errors_only() -> None:
    verdict = watch_verdict(
        _rows(CHAMPION, latency_ms=50.0),
        _rows(np.empty(0)),
        POLICY,
        version="1",
        previous_version=None,
        elapsed_s=601,
    )
    assert verdict["passed"]
    assert verdict["figures"]["previous_rows"] == 0
    assert verdict["figures"]["score_shift"] is None
