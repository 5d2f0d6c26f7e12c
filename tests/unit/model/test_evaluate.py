"""Unit tests of the gate (a table of cases), the holdout metrics and the evaluation report."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest

from continuous_training.config import GatePolicy
from continuous_training.metrics import classification_metrics
from continuous_training.model.evaluate import gate_verdict
from continuous_training.model.report import render_report

AUC = GatePolicy(metric="roc_auc", min_value=0.70, max_regression=0.005)
BRIER = GatePolicy(metric="brier", min_value=0.20, max_regression=0.01)


def m(**values: float) -> dict[str, float]:
    return {"roc_auc": 0.80, "average_precision": 0.5, "log_loss": 0.4, "brier": 0.15, **values}


@pytest.mark.parametrize(
    ("challenger", "champion", "gate", "force", "passed", "reason"),
    [
        pytest.param(m(roc_auc=0.82), m(roc_auc=0.80), AUC, False, True, "at least as good", id="better"),
        pytest.param(m(roc_auc=0.80), m(roc_auc=0.80), AUC, False, True, "at least as good", id="equal"),
        pytest.param(
            m(roc_auc=0.797),
            m(roc_auc=0.80),
            AUC,
            False,
            True,
            "within the tolerance 0.005",
            id="worse-within-tolerance",
        ),
        pytest.param(
            m(roc_auc=0.795),
            m(roc_auc=0.80),
            AUC,
            False,
            True,
            "within the tolerance 0.005",
            id="worse-exactly-at-tolerance",
        ),
        pytest.param(
            m(roc_auc=0.78),
            m(roc_auc=0.80),
            AUC,
            False,
            False,
            "roc_auc 0.780 is 0.020 worse than the champion's 0.800 (tolerance 0.005)",
            id="worse-beyond-tolerance",
        ),
        pytest.param(
            m(roc_auc=0.75), None, AUC, False, True, "no champion to compare with", id="first-model-ever"
        ),
        pytest.param(
            m(roc_auc=0.75), None, AUC, False, True, "reaches the floor 0.700", id="champion-artifact-missing"
        ),
        pytest.param(
            m(roc_auc=0.65),
            None,
            AUC,
            False,
            False,
            "roc_auc 0.650 is below the floor 0.700",
            id="below-floor-first-model",
        ),
        pytest.param(
            m(roc_auc=0.69),
            m(roc_auc=0.60),
            AUC,
            False,
            False,
            "below the floor 0.700",
            id="below-floor-though-better-than-champion",
        ),
        pytest.param(
            m(roc_auc=0.72),
            m(roc_auc=0.80),
            AUC,
            True,
            True,
            "forced: the no-regression rule was skipped",
            id="force-skips-regression",
        ),
        pytest.param(
            m(roc_auc=0.65),
            m(roc_auc=0.80),
            AUC,
            True,
            False,
            "below the floor 0.700",
            id="force-never-skips-floor",
        ),
        pytest.param(
            m(brier=0.12),
            m(brier=0.15),
            BRIER,
            False,
            True,
            "at least as good",
            id="lower-is-better-improves",
        ),
        pytest.param(
            m(brier=0.17),
            m(brier=0.15),
            BRIER,
            False,
            False,
            "0.020 worse than the champion's 0.150",
            id="lower-is-better-regresses",
        ),
        pytest.param(
            m(brier=0.25),
            None,
            BRIER,
            False,
            False,
            "brier 0.250 is above the ceiling 0.200",
            id="lower-is-better-above-ceiling",
        ),
        pytest.param(m(roc_auc=float("nan")), None, AUC, False, False, "not a number", id="nan-metric"),
    ],
)
def test_gate_verdict(challenger, champion, gate, force, passed, reason):
    verdict = gate_verdict(challenger, champion, gate, force=force)
    _check_verdict(verdict, challenger, champion, gate, passed, reason)


@pytest.mark.parametrize(
    ("force", "passed", "reason"),
    [
        pytest.param(False, False, "no-regression cannot be checked", id="blocks"),
        pytest.param(True, True, "only the floor applies", id="forced-floor-only"),
    ],
)
def test_gate_verdict_when_the_champion_artifact_is_missing(force, passed, reason):
    error = "RESOURCE_DOES_NOT_EXIST: model artifact not found"
    verdict = gate_verdict(m(roc_auc=0.9), None, AUC, force=force, champion_error=error)
    _check_verdict(verdict, m(roc_auc=0.9), None, AUC, passed, reason)
    assert any(error in r for r in verdict["reasons"])


def _check_verdict(verdict, challenger, champion, gate, passed, reason):
    assert verdict["passed"] is passed, verdict["reasons"]
    assert any(reason in r for r in verdict["reasons"]), verdict["reasons"]
    assert verdict["metric"] == gate.metric
    assert verdict["floor"] == gate.min_value
    assert verdict["challenger_value"] == pytest.approx(challenger[gate.metric], nan_ok=True)
    expected_champion = None if champion is None else champion[gate.metric]
    assert verdict["champion_value"] == expected_champion


def test_gate_refuses_an_unknown_metric():
    with pytest.raises(ValueError, match="accuracy"):
        gate_verdict(m(), None, GatePolicy(metric="accuracy"))


def test_metrics_on_known_scores():
    y = np.array([0, 0, 1, 1])
    perfect = classification_metrics(y, np.array([0.1, 0.2, 0.8, 0.9]))
    assert perfect["roc_auc"] == 1.0
    assert perfect["average_precision"] == 1.0
    assert perfect["brier"] == pytest.approx((0.01 + 0.04 + 0.04 + 0.01) / 4)
    assert perfect["log_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.8, 0.8, 0.9])))
    inverted = classification_metrics(y, np.array([0.9, 0.8, 0.2, 0.1]))
    assert inverted["roc_auc"] == 0.0
    with pytest.raises(ValueError, match="only class"):
        classification_metrics(np.array([1, 1]), np.array([0.3, 0.4]))


def test_report_is_self_contained_html_with_both_curves():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    challenger_scores = np.clip(y * 0.3 + rng.random(500) * 0.7, 0, 1)
    champion_scores = rng.random(500)
    page = render_report(
        run_id="abc123def456",
        model_name="loan_<default>",
        holdout_days=["2026-03-05", "2026-03-06"],
        y=y,
        challenger=(classification_metrics(y, challenger_scores), challenger_scores),
        champion=(classification_metrics(y, champion_scores), champion_scores),
        champion_version="3",
        champion_error=None,
    )
    assert "loan_&lt;default&gt;" in page
    assert "<default>" not in page
    assert "champion v3" in page
    assert "http" not in page.replace("http://www.w3.org/2000/svg", "")
    svg = ET.fromstring(page[page.index("<svg") : page.index("</svg>") + len("</svg>")])
    polylines = svg.findall("{http://www.w3.org/2000/svg}polyline")
    assert len(polylines) == 2
    assert all(len(p.get("points").split()) <= 200 for p in polylines)


def test_report_says_why_the_champion_is_missing():
    y = np.array([0, 1, 0, 1])
    scores = np.array([0.2, 0.7, 0.4, 0.6])
    page = render_report(
        run_id="r",
        model_name="m",
        holdout_days=["2026-03-05"],
        y=y,
        challenger=(classification_metrics(y, scores), scores),
        champion=None,
        champion_version="2",
        champion_error="OSError: artifact gone",
    )
    assert "v2 could not be scored: OSError: artifact gone" in page
    assert page.count("<polyline") == 1
