"""The Airflow UI in a real browser (Debian's Chromium, driven by Playwright; nothing is downloaded).

A user logs in, triggers each DAG from its form with the defaults (and sees the form refuse a wrong
value), opens the project's pages from the UI's navigation, and reads the drift report. A screenshot of
every page is kept in the stack's folder (``screenshots/``) for a person to look at.
"""

from __future__ import annotations

import time

import pytest
from browsing import shot

pytestmark = pytest.mark.ui


def _runs(stack, dag_id: str) -> set[str]:
    with stack.client("admin") as client:
        resp = client.get(f"/api/v2/dags/{dag_id}/dagRuns", params={"limit": 1000})
    resp.raise_for_status()
    return {run["dag_run_id"] for run in resp.json()["dag_runs"]}


def _open_trigger_form(page, stack, dag_id: str):
    page.goto(f"{stack.base}/dags/{dag_id}")
    page.get_by_role("button", name="Trigger").last.click()
    dialog = page.get_by_role("dialog")
    dialog.wait_for()
    return dialog


@pytest.mark.parametrize("dag_id", ["ingest", "train", "monitor"])
def test_each_trigger_form_submits_with_its_defaults(page, ui_stack, dag_id):
    before = _runs(ui_stack, dag_id)
    dialog = _open_trigger_form(page, ui_stack, dag_id)
    submit = dialog.get_by_role("button", name="Trigger")
    shot(page, ui_stack, f"trigger-{dag_id}")
    assert submit.is_enabled(), f"the {dag_id} form cannot be submitted with its defaults"
    submit.click()
    deadline = time.monotonic() + 60
    while not (new := _runs(ui_stack, dag_id) - before):
        assert time.monotonic() < deadline, f"no {dag_id} run appeared after submitting its form"
        time.sleep(1)
    assert len(new) == 1


def test_the_train_form_refuses_wrong_values(page, ui_stack):
    dialog = _open_trigger_form(page, ui_stack, "train")
    submit = dialog.get_by_role("button", name="Trigger")
    # Below the Param's minimum (2 days): the number field takes its minimum instead.
    window = dialog.locator("input[name=element_window_days]")
    window.fill("1")
    window.blur()
    assert window.input_value() == "2"
    # A required field emptied: the form says so and cannot be submitted.
    reason = dialog.locator("#element_reason")
    reason.fill("")
    reason.blur()
    shot(page, ui_stack, "trigger-train-invalid")
    assert submit.is_disabled(), "the train form was submittable without a reason"
    reason.fill("a reason")
    assert submit.is_enabled()


def test_the_pages_render_from_the_ui_navigation(page, ui_stack):
    summary = ui_stack.summary()
    page.goto(f"{ui_stack.base}/")
    page.get_by_role("link", name="Continuous training").first.click()
    frame = page.frame_locator("iframe").first
    frame.locator("#champion").wait_for()
    assert f"v{summary['champion_after']}" in frame.locator("#champion").inner_text()
    shot(page, ui_stack, "nav-overview")

    started = time.monotonic()
    page.goto(f"{ui_stack.base}/ct/")
    page.locator("#champion").wait_for()
    ui_stack.figures["overview_load_s"] = round(time.monotonic() - started, 2)
    shot(page, ui_stack, "overview")

    page.goto(f"{ui_stack.base}/ct/models")
    page.locator(".plotly-graph-div").first.wait_for()
    shot(page, ui_stack, "models")
    page.locator("#versions a", has_text="evaluation").first.click()
    page.locator("#verdict").wait_for()
    shot(page, ui_stack, "evaluation")

    page.goto(f"{ui_stack.base}/ct/drift")
    page.locator(".plotly-graph-div").first.wait_for()
    shot(page, ui_stack, "drift")
    page.get_by_role("link", name="demo__monitor__drift").first.click()
    page.locator("#drift-columns").wait_for()
    top = page.locator("#drift-columns tr").nth(1).inner_text()
    assert "drifted" in top
    shot(page, ui_stack, "drift-run")
    page.get_by_role("link", name="Open the Evidently report").click()
    page.wait_for_load_state("networkidle")
    assert "Data Drift" in page.content()
    shot(page, ui_stack, "drift-report")

    page.goto(f"{ui_stack.base}/ct/quarantine")
    page.get_by_text("expect_column_values_to_be_between").first.wait_for()
    shot(page, ui_stack, "quarantine")
