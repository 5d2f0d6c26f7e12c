"""The project's pages in the Airflow UI: a FastAPI app the plugin mounts under ``/ct``.

Pages (server-rendered HTML, Jinja2; charts drawn by Plotly, the library Evidently's reports use, its
script served from the installed package):

* ``/ct/`` Overview: the champion now, the endpoint's health and traffic, the last drift and gate
  verdicts, the next scheduled runs, the open quarantines;
* ``/ct/models`` every version with its gate verdict and lineage, the metric over versions, and the
  champion alias's history (who moved it, when, from which version, why);
* ``/ct/drift`` every monitor run's verdict and each column's score over time; ``/ct/drift/<run>``
  the run's columns sorted by score and its Evidently report (``/ct/drift/<run>/report``);
* ``/ct/evaluation/<run>`` a challenger's gate verdict and holdout metrics beside the champion's, and
  its evaluation report (``/ct/evaluation/<run>/report``, the run's MLflow artifact);
* ``/ct/quarantine`` every quarantined batch with its failed expectations, and its failing rows as
  CSV (``/ct/quarantine/<day>/<batch>/bad_rows.csv``).

Every route checks the caller with Airflow's own session and permissions (:mod:`.auth`). No answer
carries a stack trace or a server path: a failure is a fixed sentence with a reference id, the details
go to the API server's log.
"""

from __future__ import annotations

import logging
import uuid
from functools import cache
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from continuous_training import links
from continuous_training.ui import auth

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).with_name("templates")
#: The pages, in the order of the navigation bar: (path, title).
NAV = (("", "Overview"), ("models", "Models"), ("drift", "Drift"), ("quarantine", "Quarantine"))


@cache
def _templates() -> Any:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.filters["num"] = _num
    return env


def _when(value: Any) -> str:
    """A time as ``2026-11-12 04:23 UTC`` (ISO strings and datetimes alike); empty for None."""
    from datetime import UTC, datetime

    if value is None:
        return ""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _num(value: Any, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _settings() -> Any:
    from continuous_training.settings import load_settings

    return load_settings()


def _lake() -> Any:
    from continuous_training.lake import Lake

    return Lake(_settings().lake)


def page_html(template: str, title: str, here: str, **context: Any) -> str:
    """One page as HTML (``here``: its path, for the navigation); no request needed."""
    settings = _settings()
    return (
        _templates()
        .get_template(template)
        .render(
            title=title,
            nav=NAV,
            prefix=links.UI_PREFIX,
            here=here,
            # Links are opened by the viewer's browser: the address people use.
            airflow_url=settings.public_url,
            mlflow_url=settings.mlflow_tracking_uri,
            links=links,
            **context,
        )
    )


def render(request: Request, template: str, title: str, **context: Any) -> HTMLResponse:
    return HTMLResponse(page_html(template, title, request.url.path, **context))


def create_app() -> FastAPI:
    """The app the plugin registers (``fastapi_apps``); no I/O until a request comes."""
    app = FastAPI(title="Continuous training", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 401 and auth.wants_html(request):
            return auth.login_redirect(request)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def failure(request: Request, exc: Exception) -> Response:
        reference = uuid.uuid4().hex[:12]
        log.error("Page %s failed (reference %s)", request.url.path, reference, exc_info=exc)
        return JSONResponse(
            {
                "detail": f"The page could not be made; the API server's log has the details under {reference}."
            },
            status_code=500,
        )

    @app.get(
        "/",
        response_class=HTMLResponse,
        dependencies=[auth.can_read(d) for d in ("ingest", "train", "monitor")],
    )
    def overview(request: Request) -> HTMLResponse:
        from continuous_training.ui import views

        settings = _settings()
        return render(request, "overview.html", "Overview", page=views.overview(settings), settings=settings)

    @app.get("/models", response_class=HTMLResponse, dependencies=[auth.can_read("train")])
    def models(request: Request) -> HTMLResponse:
        from continuous_training.ui import charts, views

        found = views.models(_settings(), _lake())
        chart = charts.metric_over_versions(found["versions"], found["metric"])
        return render(request, "models.html", "Models", models=found, chart=chart)

    @app.get("/drift", response_class=HTMLResponse, dependencies=[auth.can_read("monitor")])
    def drift(request: Request) -> HTMLResponse:
        from continuous_training.ui import charts, views

        page = views.drift_page(_lake())
        return render(request, "drift.html", "Drift", **page, chart=charts.scores_over_time(page["runs"]))

    @app.get("/drift/{run_key}", response_class=HTMLResponse, dependencies=[auth.can_read("monitor")])
    def drift_run(request: Request, run_key: str) -> HTMLResponse:
        from continuous_training.ui import charts, views

        run = views.drift_run(_lake(), run_key)
        if run is None:
            raise HTTPException(404, f"No drift report of a monitor run {run_key!r}.")
        return render(
            request, "drift_run.html", f"Drift: {run['title']}", run=run, chart=charts.column_scores(run)
        )

    @app.get("/drift/{run_key}/report", dependencies=[auth.can_read("monitor")])
    def drift_report(run_key: str) -> FileResponse:
        from continuous_training.ui import views

        path = views.drift_report_file(_lake(), run_key)
        if path is None:
            raise HTTPException(404, f"No drift report of a monitor run {run_key!r}.")
        return FileResponse(path, media_type="text/html")

    @app.get("/quarantine", response_class=HTMLResponse, dependencies=[auth.can_read("ingest")])
    def quarantine(request: Request) -> HTMLResponse:
        from continuous_training.ui import views

        return render(request, "quarantine.html", "Quarantine", batches=views.quarantines(_lake()))

    @app.get("/quarantine/{day}/{sha}/bad_rows.csv", dependencies=[auth.can_read("ingest")])
    def bad_rows(day: str, sha: str) -> Response:
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq

        from continuous_training.ui import views

        path = views.bad_rows_file(_lake(), day, sha)
        if path is None:
            raise HTTPException(404, f"No quarantined batch {sha} of {day}.")
        import io

        out = io.BytesIO()
        pacsv.write_csv(pq.read_table(path), out)
        return Response(
            out.getvalue(),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="bad_rows-{day}-{sha}.csv"'},
        )

    @app.post("/quarantine/{day}/replay", dependencies=[auth.can_trigger("ingest")])
    def replay(request: Request, day: str) -> JSONResponse:
        """Trigger ``ingest`` for a quarantined day whose landing folder got a corrected export.

        The run is created through Airflow's REST API with the caller's own token, so Airflow checks
        and records who triggered it. A page's script must send ``X-CT-Action: replay`` (a header a
        cross-site form cannot send), since the cookie alone would otherwise do.
        """
        import httpx

        from continuous_training.ui import views

        if request.headers.get(auth.ACTION_HEADER) != "replay":
            raise HTTPException(
                403, f"Send the {auth.ACTION_HEADER}: replay header (the page's button does)."
            )
        check = views.replay_check(_lake(), day)
        if check is None:
            raise HTTPException(404, f"No quarantined batch of {day}.")
        if not check["changed"]:
            raise HTTPException(
                409,
                f"The landing folder of {day} still holds the quarantined file(s) {check['files'] or '(none)'}: "
                "land a corrected export first.",
            )
        settings = _settings()
        resp = httpx.post(
            f"{settings.airflow_url}/api/v2/dags/ingest/dagRuns",
            headers={"Authorization": f"Bearer {auth.caller_token(request)}"},
            json={"dag_run_id": check["run_id"], "logical_date": None, "conf": {"day": day}},
            timeout=30,
        )
        if resp.status_code not in (200, 409):
            log.error("Replay of %s: Airflow answered %s: %s", day, resp.status_code, resp.text[:500])
            raise HTTPException(502, f"Airflow refused the run (HTTP {resp.status_code}).")
        return JSONResponse(
            {
                "run_id": check["run_id"],
                "created": resp.status_code == 200,
                "url": links.airflow_run_url(settings.public_url, "ingest", check["run_id"]),
            },
            status_code=200 if resp.status_code == 200 else 409,
        )

    @app.get("/evaluation/{run_id}", response_class=HTMLResponse, dependencies=[auth.can_read("train")])
    def evaluation(request: Request, run_id: str) -> HTMLResponse:
        from continuous_training.ui import views

        found = views.evaluation(_settings(), run_id)
        if found is None:
            raise HTTPException(404, f"No training run {run_id!r} of this model.")
        return render(request, "evaluation.html", f"Evaluation of run {run_id[:8]}", run=found)

    @app.get("/evaluation/{run_id}/report", dependencies=[auth.can_read("train")])
    def evaluation_report(run_id: str) -> Response:
        from continuous_training.ui import views

        report = views.evaluation_report(run_id)
        if report is None:
            raise HTTPException(404, f"No evaluation report of run {run_id!r}.")
        return Response(report, media_type="text/html")

    @app.get("/static/plotly.min.js")
    def plotly_js() -> FileResponse:
        """Plotly's script from the installed package (nothing is fetched from the internet)."""
        import plotly

        path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
        return FileResponse(path, media_type="text/javascript", headers={"Cache-Control": "max-age=86400"})

    return app
