"""The Quarantine page's button: ingest a quarantined day again once a corrected export landed.

Runs last (it closes the demo's quarantine). Who may press it (the run is created with the caller's own
token: a viewer cannot), that it refuses while the landing folder still holds the bad file, and that,
after a corrected export landed, a click in the browser starts one ``ingest`` run that publishes the day.
"""

from __future__ import annotations

from datetime import date

import pytest
from browsing import shot
from services import wait_until

pytestmark = pytest.mark.ui

DAY = "2026-11-05"  # the demo's bad batch
ACTION = {"X-CT-Action": "replay"}


def test_replay_refuses_viewers_forged_requests_and_the_same_bad_file(ui_stack):
    with ui_stack.client("viewer") as viewer:
        assert viewer.post(f"/ct/quarantine/{DAY}/replay", headers=ACTION).status_code == 403
    with ui_stack.client("admin") as admin:
        assert admin.post(f"/ct/quarantine/{DAY}/replay").status_code == 403  # no header: not the page
        unchanged = admin.post(f"/ct/quarantine/{DAY}/replay", headers=ACTION)
        assert unchanged.status_code == 409
        assert "still holds the quarantined file" in unchanged.json()["detail"]
        assert admin.post("/ct/quarantine/2026-01-01/replay", headers=ACTION).status_code == 404


def test_a_corrected_export_is_ingested_from_the_button(page, ui_stack):
    from continuous_training.lake import Lake
    from continuous_training.ops.demo import DemoPlan
    from continuous_training.ops.simulate import SimulatorConfig, generate_day, landing_csv_bytes

    lake = Lake(ui_stack.settings.lake)
    plan = DemoPlan()
    assert plan.bad_day.isoformat() == DAY
    # The source's corrected export of that day: the demo's data, without the bad values.
    clean = generate_day(date.fromisoformat(DAY), SimulatorConfig(seed=plan.seed, drift_from=plan.drift_from))
    (lake.landing(DAY) / f"applications-{DAY}.csv").write_bytes(landing_csv_bytes(clean))

    page.goto(f"{ui_stack.base}/ct/quarantine")
    page.get_by_role("button", name=f"Ingest {DAY} again").click()
    started = page.locator(".replay-result a")
    started.wait_for()
    assert "ingest run started" in started.inner_text()
    run_id = started.inner_text().split(": ", 1)[1]
    shot(page, ui_stack, "quarantine-replayed")

    with ui_stack.client("admin") as admin:
        again = admin.post(f"/ct/quarantine/{DAY}/replay", headers=ACTION)
        assert again.status_code == 409  # the same landing files: the same run, not a second one
        assert again.json()["run_id"] == run_id
        run = wait_until(
            lambda: (
                (r := admin.get(f"/api/v2/dags/ingest/dagRuns/{run_id}").json())["state"]
                in ("success", "failed")
                and r
            ),
            600,
            f"ingest run {run_id}",
            interval=2,
        )
        assert run["state"] == "success"
        assert run["conf"] == {"day": DAY}
        states = admin.get(f"/api/v2/dags/ingest/dagRuns/{run_id}/taskInstances").json()["task_instances"]
    assert {t["task_id"]: t["state"] for t in states}["publish"] == "success"
    assert (lake.validated(DAY) / "data.parquet").exists()
    page.goto(f"{ui_stack.base}/ct/")
    assert "Every landed day was validated" in page.locator("#quarantines").inner_text()
