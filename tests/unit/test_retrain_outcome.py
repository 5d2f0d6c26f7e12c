"""What a monitor-triggered train run came to, from its task states, and the mails that say so."""

from __future__ import annotations

import pytest

from continuous_training.adapter.steps import train_outcome
from continuous_training.alerts.mail import NEXT_STEP, drift_mail, retrain_outcome_mail
from continuous_training.monitoring.retrain import DECISIONS

TRAINED = {
    "build_training_set": "success",
    "should_train": "success",
    "train_challenger": "success",
    "evaluate": "success",
    "gate": "success",
}
EVALUATED = {"evaluate": {"run_id": "abc123"}}


@pytest.mark.parametrize(
    ("states", "pulled", "outcome", "summary"),
    [
        pytest.param(
            {
                **TRAINED,
                "register": "success",
                "shadow": "success",
                "approve": "success",
                "deploy": "success",
            },
            {**EVALUATED, "register": {"version": "4"}, "deploy": {"version": "4", "previous_version": "3"}},
            "new_champion",
            "new champion v4 (was v3)",
            id="new-champion",
        ),
        pytest.param(
            {**TRAINED, "register": "skipped", "notify_gate_blocked": "success", "deploy": "skipped"},
            EVALUATED,
            "gate_blocked",
            "the gate blocked the challenger",
            id="gate-blocked",
        ),
        pytest.param(
            {
                **TRAINED,
                "register": "success",
                "shadow": "success",
                "approve": "skipped",
                "deploy": "skipped",
            },
            {**EVALUATED, "register": {"version": "4"}},
            "blocked",
            "v4 passed the gate but was stopped before deploy",
            id="shadow-or-approval",
        ),
        pytest.param(
            {
                "build_training_set": "success",
                "should_train": "success",
                "train_challenger": "skipped",
                "deploy": "skipped",
            },
            {
                "should_train": {
                    "train": False,
                    "why": "the champion v3 was trained on this very training set",
                }
            },
            "not_trained",
            "not trained: the champion v3 was trained on this very training set",
            id="nothing-new",
        ),
        pytest.param(
            {"build_training_set": "skipped", "should_train": "skipped", "deploy": "skipped"},
            {},
            "not_trained",
            "not trained: no validated partition yet",
            id="no-partition",
        ),
        pytest.param(
            {**TRAINED, "register": "success", "shadow": "success", "approve": "success", "deploy": "failed"},
            {**EVALUATED, "register": {"version": "4"}},
            "failed",
            "failed at deploy: the serving champion stays",
            id="deploy-failed",
        ),
        pytest.param(
            {
                "build_training_set": "success",
                "should_train": "success",
                "train_challenger": "failed",
                "evaluate": "upstream_failed",
                "deploy": "upstream_failed",
            },
            {},
            "failed",
            "failed at train_challenger: the serving champion stays",
            id="training-failed",
        ),
    ],
)
def test_train_outcome(states: dict, pulled: dict, outcome: str, summary: str) -> None:
    result = train_outcome(states, pulled)
    assert result["outcome"] == outcome
    assert result["summary"] == summary
    mail = retrain_outcome_mail(
        outcome={**result, "train_run_id": "drift__m1"},
        reason="drift in age",
        monitor_run_id="m1",
        run_url="http://x/train/drift__m1",
        monitor_url="http://x/monitor/m1",
        page_url="http://x/ct/models",
    )
    assert mail.event_key == "retrain-outcome/drift__m1"
    assert mail.subject.startswith("Retraining after monitor run m1: ")
    assert summary.replace("'", "&#x27;") in mail.html
    if outcome == "failed":
        assert "Failed task(s)" in mail.html


def _drift() -> dict:
    return {
        "drifted_columns": ["age"],
        "scores": {"age": 0.4},
        "model_name": "m",
        "model_version": "3",
        "window_start": "a",
        "window_end": "b",
        "rows_current": 5000,
        "num_method": "wasserstein",
        "cat_method": "jensenshannon",
        "threshold": 0.1,
        "report_html": "/r/x/drift_report.html",
        "report_json": "/r/x/summary.json",
    }


@pytest.mark.parametrize("decision", [d for d in DECISIONS if d not in ("undecided", "no_drift")])
def test_the_drift_mail_says_what_happens_next(decision: str) -> None:
    record = {
        "decision": decision,
        "why": f"because of {decision}",
        "windows": {"drifted": 1, "considered": 3, "required": 2, "runs": []},
        "train_run_id": "drift__m1" if decision == "triggered" else None,
    }
    mail = drift_mail(
        drift=_drift(),
        decision=record,
        monitor_run_id="m1",
        run_url="http://x/run",
        page_url="http://x/drift/m1",
        train_run_url="http://x/train/drift__m1" if decision == "triggered" else None,
    )
    assert NEXT_STEP[decision] in mail.html
    assert f"because of {decision}" in mail.html
    assert "1 of the last 3 judged (retrain at 2)" in mail.html
    assert mail.details["decision"] == decision
    if decision == "triggered":
        assert mail.subject.endswith(": retraining")
        assert 'href="http://x/train/drift__m1"' in mail.html
        assert "outcome" in mail.html
    else:
        assert mail.subject.endswith(f": not retraining ({decision})")
        assert "nothing is retrained" in mail.html
