"""The prediction endpoint: FastAPI serving whatever model version the ``champion`` alias names.

Start it with ``uvicorn continuous_training.serving.app:create_app --factory --workers 2``. Each
worker process holds its own model (:class:`~continuous_training.serving.holder.ModelHolder`, which
polls the registry alias) and logs its predictions to the lake (:mod:`continuous_training.predlog`).

The endpoint stands on the ground floor only (settings, contract, lineage, the model store, the
prediction log): it imports no data, model or monitoring stage. Bodies are parsed with orjson into
typed columns, without a DataFrame (:mod:`~continuous_training.serving.request`). A HistGradientBoosting
champion is scored by a compiled scorer (:mod:`~continuous_training.serving.scorer`: the same trees
without scikit-learn's per-call validation and ColumnTransformer, checked bit-identical to
``predict_proba`` at load) on one OpenMP thread, on the event loop for bodies up to
:data:`INLINE_MAX_BODY_BYTES`. Other models, and larger bodies, are scored in a worker thread; the
process should run with ``OMP_NUM_THREADS=1`` (``ct stack up`` sets it): HistGradientBoosting's OpenMP
spin-waits otherwise collapse throughput. ``make bench`` measures all of this against
``mlflow models serve``.

Endpoints:
    ``POST /predict``: score rows (three body formats, see
    :func:`~continuous_training.serving.request.columns_from_body`).
    ``GET /health``: which model version this worker serves.
    ``POST /reload``: check the alias now (loopback clients only).
"""

from __future__ import annotations

import gc
import ipaddress
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from continuous_training.config import load_contract, load_policy
from continuous_training.lake import Lake
from continuous_training.lineage import CHAMPION
from continuous_training.predlog import PredictionLog
from continuous_training.serving.holder import STARTUP_WAIT_SECONDS, ModelHolder, ServedModel
from continuous_training.serving.request import RequestError, columns_from_body
from continuous_training.serving.scorer import COMPILED
from continuous_training.settings import Settings, load_settings

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
MAX_REQUEST_ID_LENGTH = 128
# Bodies up to this size are scored on the event loop when the compiled scorer serves (a 100-row
# body is ~55 KB and scores in ~3 ms): the hop to a worker thread and the GIL handoffs between many
# scoring threads cost more than they save and widen the latency tail (measured, see bench/serving.py).
# Larger bodies, and models scored by predict_proba (OpenMP), go to a worker thread.
INLINE_MAX_BODY_BYTES = 256 * 1024


class OrjsonResponse(Response):
    """JSON via orjson, numpy arrays included (FastAPI deprecated its own ORJSONResponse)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


class NoModelError(RuntimeError):
    """No champion model is loaded yet (HTTP 503)."""


def _request_id(request: Request) -> str:
    given = request.headers.get(REQUEST_ID_HEADER)
    if not given:
        return uuid.uuid4().hex
    if len(given) > MAX_REQUEST_ID_LENGTH or not given.isascii() or not given.isprintable():
        raise RequestError(
            f"header {REQUEST_ID_HEADER}: expected at most {MAX_REQUEST_ID_LENGTH} printable ASCII characters",
            expected=f"at most {MAX_REQUEST_ID_LENGTH} printable ASCII characters",
        )
    return given


def _is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the prediction endpoint (the uvicorn ``--factory`` target).

    Reads the model name from ``policy.yaml`` (``CT_MODEL_NAME``), the contract from
    ``dataset.yaml``, the alias poll period (``settings.endpoint_poll_seconds``) and the
    prediction-log flush period (``settings.endpoint_flush_seconds``). Nothing starts until
    the app's lifespan does (uvicorn, or ``with TestClient(app)``).

    Security: there is no authentication in the embedded mode, which binds to loopback only.
    ``/reload`` additionally refuses clients that are not on loopback (403).

    Args:
        settings: where things live; default :func:`~continuous_training.settings.load_settings`.

    Returns:
        The FastAPI application.

    Raises:
        continuous_training.config.ConfigError: the contract or policy file is invalid.
    """
    settings = settings or load_settings()
    contract = load_contract(settings.config_dir)
    model_name = load_policy(settings.config_dir).model.name
    holder = ModelHolder(settings.mlflow_tracking_uri, model_name, contract, settings.endpoint_poll_seconds)
    predlog = PredictionLog(
        Lake(settings.lake), flush_seconds=settings.endpoint_flush_seconds, contract=contract
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        import mlflow

        # models:/ URIs resolve against the process-wide tracking URI; this process only serves.
        mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
        predlog.start()
        holder.start()
        if not await run_in_threadpool(holder.wait_first_check, STARTUP_WAIT_SECONDS):
            log.warning(
                "Registry %s did not answer within %.0f s; serving 503 until it does",
                settings.mlflow_tracking_uri,
                STARTUP_WAIT_SECONDS,
            )
        # mlflow, scikit-learn and the model leave ~240k long-lived objects; a full collection over
        # them stalled a worker ~75 ms (measured). Frozen, later collections skip them.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            holder.stop()
            await run_in_threadpool(predlog.stop)

    app = FastAPI(
        title="continuous-training prediction endpoint",
        description=f"Serves the {CHAMPION!r} alias of the registered model {model_name!r}.",
        lifespan=lifespan,
        default_response_class=OrjsonResponse,
    )
    app.state.holder = holder
    app.state.predlog = predlog
    app.state.contract = contract

    def score(served: ServedModel, body: bytes, request_id: str) -> dict[str, Any]:
        # On the event loop or in a worker thread (see predict): parse, score, buffer the log rows.
        served_at = datetime.now(UTC)
        columns, n_rows = columns_from_body(body, contract)
        scores = served.scorer(columns, n_rows)
        predlog.append(
            columns,
            scores,
            request_id=request_id,
            model_name=served.name,
            model_version=served.version,
            served_at=served_at,
        )
        return {
            "request_id": request_id,
            "model_name": served.name,
            "model_version": served.version,
            "predictions": scores,
        }

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        """Score the rows of the body with the champion model."""
        request_id = ""
        try:
            request_id = _request_id(request)
            body = await request.body()
            served = holder.current
            if served is None:
                raise NoModelError
            if served.scorer_kind == COMPILED and len(body) <= INLINE_MAX_BODY_BYTES:
                result = score(served, body, request_id)
            else:
                result = await run_in_threadpool(score, served, body, request_id)
        except RequestError as exc:
            # Only an invalid X-Request-ID header fails before the id exists.
            request_id = request_id or uuid.uuid4().hex
            # The endpoint runs without an access log: refused requests are logged here.
            log.warning("Refused request %s (422): %s", request_id, exc)
            return OrjsonResponse(
                exc.body(request_id), status_code=422, headers={REQUEST_ID_HEADER: request_id}
            )
        except NoModelError:
            log.warning(
                "Refused request %s (503): no %r model of %r loaded", request_id, CHAMPION, model_name
            )
            content = {
                "request_id": request_id,
                "error": f"no {CHAMPION!r} model of {model_name!r} is loaded yet",
                "last_error": holder.last_error,
            }
            return OrjsonResponse(content, status_code=503, headers={REQUEST_ID_HEADER: request_id})
        except Exception as exc:
            log.exception("Prediction failed (request %s)", request_id)
            content = {"request_id": request_id, "error": f"prediction failed: {type(exc).__name__}: {exc}"}
            return OrjsonResponse(content, status_code=500, headers={REQUEST_ID_HEADER: request_id})
        return OrjsonResponse(result, headers={REQUEST_ID_HEADER: request_id})

    @app.get("/health")
    async def health() -> Response:
        """Which model version this worker serves, its pid and the latest failure."""
        return OrjsonResponse(holder.health())

    @app.post("/reload")
    async def reload(request: Request) -> Response:
        """Check the alias now and load its version if it changed; answers like /health.

        Loopback clients only, and no authentication: the embedded stack listens on loopback.
        """
        client = request.client.host if request.client else None
        if not _is_loopback(client):
            return OrjsonResponse(
                {"error": f"/reload is for loopback clients only, not {client}"}, status_code=403
            )
        await run_in_threadpool(holder.check, True)
        return OrjsonResponse(holder.health())

    return app
