"""The prediction endpoint: FastAPI serving whatever model version the ``champion`` alias names.

Start it with ``uvicorn continuous_training.serving.app:create_app --factory --workers 2``. Each
worker process holds its own model (:class:`~continuous_training.serving.holder.ModelHolder`, which
polls the registry alias) and logs its predictions to the lake (:mod:`continuous_training.predlog`),
with each request's server-side latency (``latency_ms``: handler start to the champion's scores).

Shadow scoring (``release.shadow_share`` of ``policy.yaml``, 0 turns it off): while the ``challenger``
alias names another version than the champion, a second holder keeps it loaded and that share of the
``/predict`` requests is also scored with it, after the client got its answer, in batches on a thread
of its own (:mod:`~continuous_training.serving.shadow`); both scores go to the prediction log. The
challenger never changes an answer, and a request never waits for it.

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
    :meth:`~continuous_training.serving.request.RequestParser.parse`). Every answer of a model names
    it: the body's ``model_name`` and ``model_version`` and the headers ``X-Model-Name`` and
    ``X-Model-Version`` (the version that scored the request; on the 500 "prediction failed" answer,
    the version that failed to).
    ``GET /health``: which model version this worker serves, ``challenger_version`` (the challenger it
    holds for shadow scoring, or null) and ``shadow``: ``{share, active, scored_rows, dropped_rows,
    failed_rows, pending_rows, last_error}`` (this worker's counters; ``last_error`` is the
    challenger's load or refusal error, which leaves the champion unaffected). Open.
    ``POST /reload``: check the aliases now (``Authorization: Bearer <admin_token>``).

The endpoint defends itself (limits and checks of ``policy.yaml``'s ``serving:`` section, read once in
:func:`create_app`, with the tokens of :func:`continuous_training.credentials.endpoint_tokens`). A
``/predict`` request is checked in this order, each refusal a JSON body with ``request_id``, ``error``
and ``expected`` (plus ``row``/``column`` where one is at fault) and the ``X-Request-ID`` header:

1. ``X-Request-ID``, if sent: at most 128 printable ASCII characters (422).
2. The bearer token, when ``serving.require_token`` is on (401 with ``WWW-Authenticate: Bearer``).
3. ``Content-Type: application/json``, optionally ``; charset=utf-8`` (415; missing is 415 too).
4. The body size, before the body is read: a ``Content-Length`` above ``serving.max_body_bytes`` is
   answered 413 at once; a chunked (or under-declared) body is read from ``request.stream()`` with a
   counter and the reading stops at the limit (413). The worker never holds more than the limit plus
   one receive chunk (uvicorn hands over at most ~64 KB at a time), whatever is sent. A refusal made
   before the whole body was read closes the connection (``Connection: close``), so the rest is not
   read either; a client sending ``Expect: 100-continue`` never even sends a refused body.
5. The body itself (:class:`~continuous_training.serving.request.RequestParser`): 400 not UTF-8 JSON
   (NaN/Infinity literals, nesting beyond 1024 levels), 413 more than ``serving.max_rows`` rows (counted
   right after parsing), 422 wrong structure or types; values outside the contract are rejected (422)
   or scored and flagged (``"flagged"`` in the answer, ``out_of_range`` in the prediction log) as
   ``serving.out_of_range`` says.

No answer carries the client's input (values, unknown column names, headers) or an exception's text:
a failure is a fixed message with the request id, the details go to the log. Starlette's own 404/405
and FastAPI's validation errors are answered the same way. When the champion fails on a parsed body
(500), the request's rows are logged with a NaN score and ``error`` set to the exception class, so
error rates per version can be read from the prediction log.
"""

from __future__ import annotations

import gc
import hmac
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing, asynccontextmanager
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from continuous_training.config import load_contract, load_policy
from continuous_training.credentials import endpoint_tokens
from continuous_training.lake import Lake
from continuous_training.lineage import CHALLENGER, CHAMPION
from continuous_training.predlog import PredictionLog
from continuous_training.serving.holder import STARTUP_WAIT_SECONDS, ModelHolder, ServedModel
from continuous_training.serving.request import ParsedRequest, RequestError, RequestParser
from continuous_training.serving.scorer import COMPILED
from continuous_training.serving.shadow import MAX_PENDING_ROWS, ShadowScorer
from continuous_training.settings import Settings, load_settings

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
#: Headers of every /predict answer a model gave: the registered model and the version that scored it.
MODEL_NAME_HEADER = "X-Model-Name"
MODEL_VERSION_HEADER = "X-Model-Version"
MAX_REQUEST_ID_LENGTH = 128
# Bodies up to this size are scored on the event loop when the compiled scorer serves (a 100-row
# body is ~55 KB and scores in ~3 ms): the hop to a worker thread and the GIL handoffs between many
# scoring threads cost more than they save and widen the latency tail (measured, see bench/serving.py).
# Larger bodies, and models scored by predict_proba (OpenMP), go to a worker thread.
INLINE_MAX_BODY_BYTES = 256 * 1024
JSON_MEDIA_TYPE = "application/json"
#: What the 404 and 405 answers say exists.
ROUTES = "POST /predict, GET /health, POST /reload"


class OrjsonResponse(Response):
    """JSON via orjson, numpy arrays included (FastAPI deprecated its own ORJSONResponse)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


class NoModelError(RuntimeError):
    """No champion model is loaded yet (HTTP 503)."""


class ScoringFailed(RuntimeError):
    """The champion failed on a parsed request (HTTP 500); the cause is chained.

    Args:
        served: the model that failed.
    """

    def __init__(self, served: ServedModel) -> None:
        super().__init__(f"{served.name} version {served.version} failed to score the request")
        self.served = served


def _model_headers(request_id: str, served: ServedModel) -> dict[str, str]:
    return {
        REQUEST_ID_HEADER: request_id,
        MODEL_NAME_HEADER: served.name,
        MODEL_VERSION_HEADER: served.version,
    }


class Unauthorized(RequestError):
    """No or a wrong bearer token (HTTP 401, with a ``WWW-Authenticate: Bearer`` challenge)."""

    def __init__(self, message: str, *, expected: str, invalid: bool) -> None:
        super().__init__(message, expected=expected, status=401)
        self.challenge = 'Bearer error="invalid_token"' if invalid else "Bearer"


def _valid_request_id(given: str) -> bool:
    return len(given) <= MAX_REQUEST_ID_LENGTH and given.isascii() and given.isprintable()


def _request_id(headers: Mapping[str, str]) -> str:
    """The client's ``X-Request-ID``, or a new one; a malformed header is refused (never echoed)."""
    given = headers.get(REQUEST_ID_HEADER)
    if not given:
        return uuid.uuid4().hex
    if not _valid_request_id(given):
        raise RequestError(
            f"header {REQUEST_ID_HEADER}: expected at most {MAX_REQUEST_ID_LENGTH} printable ASCII characters",
            expected=f"at most {MAX_REQUEST_ID_LENGTH} printable ASCII characters",
        )
    return given


def _any_request_id(headers: Mapping[str, str]) -> str:
    """The client's ``X-Request-ID`` if well formed, else a new one (for answers that refuse anyway)."""
    given = headers.get(REQUEST_ID_HEADER)
    return given if given and _valid_request_id(given) else uuid.uuid4().hex


def _authorize(headers: Mapping[str, str], token: bytes, route: str, which: str) -> None:
    """Refuse (401) unless ``Authorization: Bearer <token>``; compared in constant time."""
    expected = f"Authorization: Bearer <{which}>"
    given = headers.get("authorization")
    if not given:
        raise Unauthorized(f"{route} needs a bearer token", expected=expected, invalid=False)
    scheme, _, credentials = given.partition(" ")
    # Starlette decodes header values as latin-1, so this round-trips any byte the client sent.
    if scheme.lower() != "bearer" or not hmac.compare_digest(credentials.strip().encode("latin-1"), token):
        raise Unauthorized(f"{route}: the bearer token is not valid", expected=expected, invalid=True)


def _check_content_type(value: str | None) -> None:
    """Refuse (415) anything but ``application/json``, with no charset or UTF-8's."""
    if value == JSON_MEDIA_TYPE:
        return
    got = "none"
    if value is not None:
        media, *params = value.split(";")
        got = "another media type"
        if media.strip().lower() == JSON_MEDIA_TYPE:
            charsets = [p.split("=", 1)[1] for p in params if p.strip().lower().startswith("charset=")]
            if all(c.strip().strip('"').lower() in ("utf-8", "utf8") for c in charsets):
                return
            got = "another charset"
    raise RequestError(
        f"Content-Type: expected {JSON_MEDIA_TYPE} (UTF-8), got {got}",
        expected=f"Content-Type: {JSON_MEDIA_TYPE} or {JSON_MEDIA_TYPE}; charset=utf-8",
        status=415,
    )


def _too_large(limit: int) -> RequestError:
    return RequestError(
        f"request body is larger than {limit} bytes", expected=f"a body of at most {limit} bytes", status=413
    )


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, if it has at most ``limit`` bytes; a larger one is refused without reading it all.

    A declared ``Content-Length`` above the limit is refused before anything is read; otherwise the
    stream is read with a counter and reading stops as soon as it passes the limit (chunked bodies,
    or bodies longer than declared).
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise RequestError(
                "Content-Length: expected a whole number of bytes",
                expected="a Content-Length of digits",
                status=400,
            ) from None
        if length > limit:
            raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async with aclosing(request.stream()) as stream:
        async for chunk in stream:
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _refusal(exc: RequestError, request_id: str, *, close: bool = False) -> Response:
    """The JSON answer to a refused request; ``close`` when the body was not read (or not all)."""
    headers = {REQUEST_ID_HEADER: request_id}
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = exc.challenge
    if close:
        headers["Connection"] = "close"
    return OrjsonResponse(exc.body(request_id), status_code=exc.status, headers=headers)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the prediction endpoint (the uvicorn ``--factory`` target).

    Reads the model name from ``policy.yaml`` (``CT_MODEL_NAME``), the contract from
    ``dataset.yaml``, the alias poll period (``settings.endpoint_poll_seconds``) and the
    prediction-log flush period (``settings.endpoint_flush_seconds``). Nothing starts until
    the app's lifespan does (uvicorn, or ``with TestClient(app)``).

    Also reads, once, the ``serving:`` policy (body and row limits, what to do with values outside the
    contract, whether ``/predict`` needs a token), ``release.shadow_share`` (a second holder follows
    the ``challenger`` alias when it is above 0) and the endpoint's tokens
    (:func:`~continuous_training.credentials.endpoint_tokens`, generated under
    ``settings.secrets_dir`` on first use): a request reads no file.

    Security: ``/reload`` needs ``Authorization: Bearer <admin_token>`` (401 otherwise), whatever the
    client's address: the token is the authentication. The former loopback-only rule is dropped, as it
    authenticates nothing (any proxy on the host makes every client loopback) and would lock out the
    operator of an endpoint run in a container. ``/predict`` needs ``Bearer <predict_token>`` when
    ``serving.require_token`` is on (off in the embedded stack, which listens on loopback only).
    ``/health`` is open. Tokens are compared with :func:`hmac.compare_digest`.

    Args:
        settings: where things live; default :func:`~continuous_training.settings.load_settings`.

    Returns:
        The FastAPI application.

    Raises:
        continuous_training.config.ConfigError: the contract or policy file is invalid.
        continuous_training.credentials.CredentialError: the tokens file is unreadable or a token weak.
    """
    settings = settings or load_settings()
    contract = load_contract(settings.config_dir)
    policy = load_policy(settings.config_dir)
    model_name = policy.model.name
    limits = policy.serving
    parser = RequestParser(contract, max_rows=limits.max_rows, out_of_range=limits.out_of_range)
    tokens = endpoint_tokens(settings)
    admin_token = tokens["admin_token"].encode()
    predict_token = tokens["predict_token"].encode() if limits.require_token else None
    max_body_bytes = limits.max_body_bytes
    holder = ModelHolder(
        settings.mlflow_tracking_uri, model_name, contract, settings.endpoint_poll_seconds, settings=settings
    )
    shadow_share = policy.release.shadow_share
    challenger = (
        ModelHolder(
            settings.mlflow_tracking_uri,
            model_name,
            contract,
            settings.endpoint_poll_seconds,
            settings=settings,
            alias=CHALLENGER,
            champion=holder,
        )
        if shadow_share > 0
        else None
    )
    predlog = PredictionLog(
        Lake(settings.lake), flush_seconds=settings.endpoint_flush_seconds, contract=contract
    )
    shadow = ShadowScorer(
        predlog,
        (lambda: challenger.current) if challenger is not None else None,
        shadow_share,
        features=contract.feature_names,
        # One request of the largest size allowed always fits, twice.
        max_pending_rows=max(MAX_PENDING_ROWS, 2 * (limits.max_rows or 0)),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        import mlflow

        # models:/ URIs resolve against the process-wide tracking URI; this process only serves.
        mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
        predlog.start()
        holder.start()
        answered = await run_in_threadpool(holder.wait_first_check, STARTUP_WAIT_SECONDS)
        if not answered:
            log.warning(
                "Registry %s did not answer within %.0f s; serving 503 until it does",
                settings.mlflow_tracking_uri,
                STARTUP_WAIT_SECONDS,
            )
        if challenger is not None:
            # After the champion's first check: a challenger alias naming the champion's version
            # reuses its loaded model. Its first load is waited for (when the registry answers) so
            # that it is frozen below with the champion's, and does not compete with the first requests.
            challenger.start()
            if answered:
                await run_in_threadpool(challenger.wait_first_check, STARTUP_WAIT_SECONDS)
        shadow.start()
        # mlflow, scikit-learn and the model leave ~240k long-lived objects; a full collection over
        # them stalled a worker ~75 ms (measured). Frozen, later collections skip them.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            holder.stop()
            if challenger is not None:
                challenger.stop()
            # The shadow thread scores what is pending into the log, then the log writes it all.
            await run_in_threadpool(shadow.stop)
            await run_in_threadpool(predlog.stop)

    app = FastAPI(
        title="continuous-training prediction endpoint",
        description=f"Serves the {CHAMPION!r} alias of the registered model {model_name!r}.",
        lifespan=lifespan,
        default_response_class=OrjsonResponse,
    )
    app.state.holder = holder
    app.state.challenger = challenger
    app.state.shadow = shadow
    app.state.predlog = predlog
    app.state.contract = contract
    app.state.parser = parser
    app.state.serving_policy = limits

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # Starlette's 404/405 (and any HTTPException): a fixed text, never the path or the detail.
        request_id = _any_request_id(request.headers)
        headers = {**(exc.headers or {}), REQUEST_ID_HEADER: request_id}
        if exc.status_code in (204, 304):
            return Response(status_code=exc.status_code, headers=headers)
        try:
            phrase = HTTPStatus(exc.status_code).phrase
        except ValueError:
            phrase = "HTTP error"
        expected = {404: f"one of {ROUTES}", 405: f"one of {ROUTES}"}.get(exc.status_code)
        content = {"request_id": request_id, "error": phrase, "expected": expected}
        return OrjsonResponse(content, status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        # FastAPI's default lists the offending input; the routes declare no parameters, but never echo.
        request_id = _any_request_id(request.headers)
        content = {"request_id": request_id, "error": "invalid request", "expected": f"one of {ROUTES}"}
        return OrjsonResponse(content, status_code=422, headers={REQUEST_ID_HEADER: request_id})

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> Response:
        # Anything a route did not handle: uvicorn logs the traceback, the client gets a fixed text.
        request_id = _any_request_id(request.headers)
        log.error("Request %s %s failed (request id %s)", request.method, request.url.path, request_id)
        content = {"request_id": request_id, "error": "internal error; the endpoint logged the details"}
        return OrjsonResponse(content, status_code=500, headers={REQUEST_ID_HEADER: request_id})

    def log_failure(
        parsed: ParsedRequest,
        served: ServedModel,
        request_id: str,
        served_at: datetime,
        started: float,
        exc: Exception,
    ) -> None:
        # The rows of a request the champion failed on, so that error rates per version can be read
        # from the log; read_predictions leaves them out by default.
        try:
            predlog.append(
                parsed.columns,
                np.full(parsed.n_rows, np.nan),
                request_id=request_id,
                model_name=served.name,
                model_version=served.version,
                served_at=served_at,
                out_of_range=parsed.flag_column(),
                latency_ms=(time.perf_counter() - started) * 1000.0,
                error=type(exc).__name__,
            )
        except Exception:
            log.exception("Could not log the failed request %s", request_id)

    def score(served: ServedModel, body: bytes, request_id: str, started: float) -> dict[str, Any]:
        # On the event loop or in a worker thread (see predict): parse, score, hand the rows to the
        # log (and, if sampled, to the shadow scorer, which returns at once).
        served_at = datetime.now(UTC)
        parsed = parser.parse(body)
        try:
            scores = np.asarray(served.scorer(parsed.columns, parsed.n_rows), dtype=np.float64)
            if scores.shape != (parsed.n_rows,):
                raise ValueError(f"the scorer returned shape {scores.shape} for {parsed.n_rows} rows")
        except Exception as exc:
            log_failure(parsed, served, request_id, served_at, started, exc)
            raise ScoringFailed(served) from exc
        latency_ms = (time.perf_counter() - started) * 1000.0
        flagged = parsed.flagged_rows()
        shadow.log(
            parsed.columns,
            parsed.n_rows,
            scores,
            request_id=request_id,
            served=served,
            served_at=served_at,
            latency_ms=latency_ms,
            flags=parsed.flag_column(flagged) if flagged else None,
        )
        return {
            "request_id": request_id,
            "model_name": served.name,
            "model_version": served.version,
            "predictions": scores,
            "flagged": flagged,
        }

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        """Score the rows of the body with the champion model."""
        started = time.perf_counter()
        request_id = ""
        body_read = False
        try:
            headers = request.headers
            request_id = _request_id(headers)
            if predict_token is not None:
                _authorize(headers, predict_token, "/predict", "predict_token")
            _check_content_type(headers.get("content-type"))
            body = await _read_body(request, max_body_bytes)
            body_read = True
            served = holder.current
            if served is None:
                raise NoModelError
            if served.scorer_kind == COMPILED and len(body) <= INLINE_MAX_BODY_BYTES:
                result = score(served, body, request_id, started)
            else:
                result = await run_in_threadpool(score, served, body, request_id, started)
        except RequestError as exc:
            # Only an invalid X-Request-ID header fails before the id exists.
            request_id = request_id or uuid.uuid4().hex
            # The endpoint runs without an access log: refused requests are logged here (the
            # message is the endpoint's own; it quotes nothing the client sent).
            log.warning("Refused request %s (%d): %s", request_id, exc.status, exc)
            return _refusal(exc, request_id, close=not body_read)
        except ClientDisconnect:
            # Nobody reads this answer; it ends the request cleanly.
            log.info("Request %s: the client disconnected before its body was read", request_id)
            return Response(status_code=400, headers={REQUEST_ID_HEADER: request_id, "Connection": "close"})
        except NoModelError:
            log.warning(
                "Refused request %s (503): no %r model of %r loaded (%s)",
                request_id,
                CHAMPION,
                model_name,
                holder.last_error,
            )
            content = {
                "request_id": request_id,
                "error": f"no {CHAMPION!r} model of {model_name!r} is loaded yet; retry later",
            }
            return OrjsonResponse(content, status_code=503, headers={REQUEST_ID_HEADER: request_id})
        except Exception as exc:
            log.exception("Prediction failed (request %s)", request_id)
            content = {
                "request_id": request_id,
                "error": "prediction failed; the endpoint logged the details under this request id",
            }
            headers = (
                _model_headers(request_id, exc.served)
                if isinstance(exc, ScoringFailed)
                else {REQUEST_ID_HEADER: request_id}
            )
            return OrjsonResponse(content, status_code=500, headers=headers)
        return OrjsonResponse(result, headers=_model_headers(request_id, served))

    def health_body() -> dict[str, Any]:
        body = holder.health()
        held = challenger.current if challenger is not None else None
        champion = holder.current
        body["challenger_version"] = held.version if held is not None else None
        body["shadow"] = {
            **shadow.stats(),
            "active": held is not None and champion is not None and held.version != champion.version,
            "last_error": challenger.last_error if challenger is not None else None,
        }
        return body

    @app.get("/health")
    async def health() -> Response:
        """Which model versions this worker holds, its pid, the shadow counters and the latest failures."""
        return OrjsonResponse(health_body())

    @app.post("/reload")
    async def reload(request: Request) -> Response:
        """Check the alias now and load its version if it changed; answers like /health.

        Needs ``Authorization: Bearer <admin_token>`` (401 otherwise), from any address.
        """
        request_id = _any_request_id(request.headers)
        try:
            _authorize(request.headers, admin_token, "/reload", "admin_token")
        except Unauthorized as exc:
            log.warning("Refused /reload %s (401): %s", request_id, exc)
            return _refusal(exc, request_id, close=True)
        await run_in_threadpool(holder.check, True)
        if challenger is not None:
            await run_in_threadpool(challenger.check, True)
        return OrjsonResponse(health_body(), headers={REQUEST_ID_HEADER: request_id})

    return app
