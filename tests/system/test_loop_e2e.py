"""The whole loop with the real scheduler: ``ct demo`` on its own stack (``make test-e2e``, ~10 min).

It starts every part of the embedded stack (Airflow api-server, scheduler, dag-processor, triggerer;
MLflow; the endpoint; the SMTP sink) under the session's CT_HOME and ports, runs the demo's timeline
through Airflow's REST API, checks the outcome, runs the demo again (harmless) and stops the stack.
"""

from __future__ import annotations

import pytest

from continuous_training.ops.mailsink import read_mail
from continuous_training.ops.simulate import DRIFT_COLUMNS
from continuous_training.settings import load_settings

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack():
    from continuous_training.ops.stack import stack_down

    settings = load_settings()
    yield settings
    stack_down(settings)


def test_demo_loop_with_the_scheduler(stack):
    from continuous_training.ops.demo import run_demo
    from continuous_training.ops.stack import stack_status

    summary = run_demo(stack)

    assert summary["champion_before"] is not None
    assert int(summary["champion_after"]) > int(summary["champion_before"])
    assert summary["endpoint_serves"] == summary["champion_after"]
    assert summary["traffic"]["rows"] > 0
    assert summary["traffic"]["failed_requests"] == 0
    subjects = [m["Subject"] for m in read_mail(stack.mail_dir)]
    assert sum("Bad data" in s for s in subjects) == 1
    drift_mails = [s for s in subjects if "Drift in" in s]
    assert len(drift_mails) == 1
    # The three most drifted columns by name, the rest counted.
    assert sum(column in drift_mails[0] for column in DRIFT_COLUMNS) == 3
    assert f"and {len(DRIFT_COLUMNS) - 3} more" in drift_mails[0]
    assert drift_mails[0].endswith(": retraining")
    # The retraining it triggered closes it with one mail: the new champion.
    (closing,) = [
        s for s in subjects if s.startswith("[ct] Retraining after monitor run demo__monitor__drift")
    ]
    assert closing.endswith(f": new champion v{summary['champion_after']}")
    assert len(summary["drift_reports"]) == 2  # the control window and the drifted one

    import mlflow

    from continuous_training.model.registry import get_champion

    run = mlflow.MlflowClient(stack.mlflow_tracking_uri).get_run(get_champion()["run_id"])
    assert run.data.tags["ct.reason"].startswith("drift in ")
    assert run.data.tags["ct.drift_report"] in summary["drift_reports"]
    assert run.data.tags["ct.dag_run_id"] == "drift__demo__monitor__drift"

    again = run_demo(stack)
    assert again["champion_after"] == summary["champion_after"]
    assert len(read_mail(stack.mail_dir)) == len(subjects), "a second demo sends no mail"
    assert all(part["state"] == "running" and part["healthy"] for part in stack_status(stack).values())
