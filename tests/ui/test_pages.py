"""The project's pages over HTTP, as the API server with the plugin serves them after the demo.

Who may see them (Airflow's session and permissions), and that each shows the demo's real data: the
champion the demo deployed, the drift table led by a drifted column, the quarantined batch and its
rows, the Evidently report.
"""

from __future__ import annotations

import csv
import io

import pytest

from continuous_training.ops.simulate import DRIFT_COLUMNS

pytestmark = pytest.mark.ui

PAGES = ["/ct/", "/ct/models", "/ct/drift", "/ct/quarantine"]


@pytest.mark.parametrize("page", PAGES)
def test_anonymous_callers_are_refused_and_browsers_sent_to_the_login(ui_stack, page):
    with ui_stack.client(None) as client:
        api = client.get(page, headers={"Accept": "application/json"})
        assert api.status_code == 401, api.text
        assert api.json() == {"detail": "Not authenticated"}
        browser = client.get(page, headers={"Accept": "text/html"})
    assert browser.status_code == 303
    assert "/auth/login" in browser.headers["location"]
    assert "next=" in browser.headers["location"]


def test_an_invalid_token_is_forbidden(ui_stack):
    with ui_stack.client(None) as client:
        resp = client.get("/ct/", headers={"Authorization": "Bearer not.a.token"})
    assert resp.status_code == 403


@pytest.mark.parametrize("user", ["admin", "viewer"])
def test_the_overview_shows_the_champion_the_endpoint_and_the_verdicts(ui_stack, user):
    summary = ui_stack.summary()
    with ui_stack.client(user) as client:
        resp = client.get("/ct/")
    assert resp.status_code == 200, resp.text
    html = resp.text
    assert f"v{summary['champion_after']}</div>" in html
    assert "healthy" in html
    assert f"serves v{summary['endpoint_serves']}" in html
    assert "column(s) drifted" in html
    assert "Open quarantines" in html
    assert "2026-11-05" in html  # the demo's bad batch
    assert "cannot be read now" not in html, "a source of the overview failed"


def test_the_drift_page_lists_the_runs_and_the_run_page_leads_with_a_drifted_column(ui_stack):
    with ui_stack.client("viewer") as client:
        listing = client.get("/ct/drift")
        assert listing.status_code == 200
        assert "demo__monitor__drift" in listing.text
        assert "demo__monitor__control" in listing.text
        assert "/ct/static/plotly.min.js" in listing.text
        run = client.get("/ct/drift/demo__monitor__drift")
        assert run.status_code == 200
        first_row = run.text.split('id="drift-columns"', 1)[1].split("</tr>", 2)[1]
        assert any(f"<td>{column}</td>" in first_row for column in DRIFT_COLUMNS), first_row
        assert "drifted" in first_row
        report = client.get("/ct/drift/demo__monitor__drift/report")
        assert report.status_code == 200
        assert report.headers["content-type"].startswith("text/html")
        assert "Data Drift" in report.text  # Evidently's DataDriftPreset
        script = client.get("/ct/static/plotly.min.js")
        assert script.status_code == 200
        assert len(script.content) > 1_000_000


def test_the_quarantine_page_shows_the_failed_expectations_and_serves_the_bad_rows(ui_stack):
    with ui_stack.client("viewer") as client:
        page = client.get("/ct/quarantine")
        assert page.status_code == 200
        html = page.text
        assert "2026-11-05" in html
        assert "expect_column_values_to_be_between" in html
        link = html.split('href="/ct/quarantine/2026-11-05/', 1)[1].split('"', 1)[0]
        rows = client.get(f"/ct/quarantine/2026-11-05/{link}")
    assert rows.status_code == 200
    assert rows.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(rows.text)))
    assert table
    assert {"age", "credit_score"} <= set(table[0])


def test_unknown_things_are_a_plain_404_without_internals(ui_stack):
    with ui_stack.client("viewer") as client:
        for path in (
            "/ct/drift/no-such-run",
            "/ct/drift/..%2F..%2Fsecrets/report",
            "/ct/quarantine/2026-11-05/0/bad_rows.csv",
        ):
            resp = client.get(path)
            assert resp.status_code == 404, path
            assert "Traceback" not in resp.text
            assert str(ui_stack.home) not in resp.text


def test_every_mail_links_pages_that_open_and_no_file_on_the_server(ui_stack):
    """The demo's mails (the bad batch, the drift): their links open for on-call, logged in as viewer."""
    import re

    from continuous_training.ops.mailsink import read_mail

    mails = read_mail(ui_stack.settings.mail_dir)
    assert {m["Subject"].split(":")[0] for m in mails} >= {"[ct] Bad data"}
    assert any("Drift in" in m["Subject"] for m in mails)
    opened = []
    with ui_stack.client("viewer") as client:
        for message in mails:
            body = message.get_body(("html",)).get_content()
            assert "file://" not in body, message["Subject"]
            hrefs = re.findall(r'href="([^"]+)"', body)
            pages = [h for h in hrefs if h.startswith(f"{ui_stack.settings.public_url}/ct/")]
            assert pages, f"{message['Subject']}: no link to the project's pages in {hrefs}"
            for url in pages:
                resp = client.get(url.removeprefix(ui_stack.base).split("#", 1)[0])
                assert resp.status_code == 200, (message["Subject"], url, resp.status_code)
                opened.append(url)
    ui_stack.figures["mail_links_opened"] = len(opened)


def test_the_models_page_lists_the_versions_and_the_champions_history(ui_stack):
    summary = ui_stack.summary()
    champion = summary["champion_after"]
    with ui_stack.client("viewer") as client:
        page = client.get("/ct/models")
    assert page.status_code == 200, page.text
    html = page.text
    row = html.split(f'<tr id="v{champion}">', 1)[1].split("</tr>", 1)[0]
    assert "champion" in row
    assert "passed" in row
    assert "/ct/evaluation/" in row
    assert "<th>Live checks</th>" in html  # each version's approval, shadow and watch verdicts
    history = html.split('id="ledger"', 1)[1].split("</table>", 1)[0]
    # The demo deployed twice, each confirmed: the first champion, then the drift-triggered retraining.
    assert history.count('class="ledger-deploy"') == 2
    assert history.count(">confirmed<") == 2
    assert f"v{summary['champion_before']} → v{champion}" in history
    assert "drift__demo__monitor__drift" in history
    assert "Plotly.newPlot" in html


def test_the_evaluation_page_shows_the_verdict_and_the_report(ui_stack):
    with ui_stack.client("viewer") as client:
        models = client.get("/ct/models").text
        champion = ui_stack.summary()["champion_after"]
        row = models.split(f'<tr id="v{champion}">', 1)[1]
        run_id = row.split("/ct/evaluation/", 1)[1].split('"', 1)[0]
        page = client.get(f"/ct/evaluation/{run_id}")
        assert page.status_code == 200, page.text
        assert "passed" in page.text
        assert "roc_auc" in page.text
        report = client.get(f"/ct/evaluation/{run_id}/report")
        assert report.status_code == 200
        assert report.headers["content-type"].startswith("text/html")
        assert "<polyline" in report.text
        assert client.get("/ct/evaluation/" + "0" * 32).status_code == 404
        assert client.get("/ct/evaluation/not-a-run").status_code == 404
