"""Benchmark 1: our prediction endpoint against MLflow's scoring server, on the same champion.

Both servers serve the bench registry's ``champion`` with 2 workers on loopback: ours is the bench
stack's ``endpoint`` part (started as production starts it), the anchor is
``mlflow models serve -m models:/<name>@champion --env-manager local -w 2``, started as a user would
(the venv's ``bin`` first on PATH, OpenMP left at its default). The same wrk (Debian's package) with
the same Lua script posts the same bytes to each, 16 connections on 2 threads: a warm-up, then the
measured run, for a 1-row and a 100-row ``dataframe_records`` body of simulated served traffic, one
server at a time. A 100-row body posted to both gives the predictions compared. The in-process floor
is ``predict_proba`` of the same version, loaded with the project's loader, on frames built as the
endpoint builds them, in a child process with ``OMP_NUM_THREADS=1`` as the endpoint runs.

Shadow scoring at 100%: the same endpoint, 1-row body, first with no distinct challenger (the
``challenger`` alias on the champion's version, as after a deploy: nothing is shadow-scored), then with
the alias on a second version and ``release.shadow_share`` 1.0 (every request also scored by the
challenger, off the request path). The second version is the champion's own model registered again and
signed (scoring costs the same as a retrained one of the same size; the loop benchmark trains real
ones). The anchor of these figures is the endpoint without a challenger, measured just before.

``python -m bench.serving floor ...`` is that child (it prints one JSON line).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from bench.core import (
    REPO,
    BenchContext,
    Figure,
    at_least,
    at_most,
    child_env,
    free_port,
    measure_process,
    python_cmd,
    wait_until,
)

log = logging.getLogger(__name__)

BENCH = "serving"
BODY_ROWS = (1, 100)
CONNECTIONS = 16
THREADS = 2
WORKERS = 2
#: (warm-up seconds, measured seconds) per body and server.
FULL_SECONDS = (3, 20)
QUICK_SECONDS = (1, 3)
#: predict_proba calls timed per frame in the floor (median reported).
FULL_CALLS = 400
QUICK_CALLS = 60
#: Slow enough for the anchor's worst requests: wrk counts a reply later than this as a timeout error.
WRK_TIMEOUT = "10s"
LUA = REPO / "bench" / "wrk" / "post_json.lua"
#: ``mlflow models serve`` took 20-58 s to answer on a 2-core machine (measured).
MLFLOW_SERVE_TIMEOUT_S = 240.0
ENDPOINT_TIMEOUT_S = 120.0
#: Largest |our score - MLflow's score| accepted as "identical predictions".
MAX_DIFF = 1e-12
#: Goals of shadow scoring at 100%, against the same endpoint without a challenger.
SHADOW_MIN_THROUGHPUT_RATIO = 0.85
SHADOW_MAX_P99_RATIO = 1.2
#: How long the workers may take to load the challenger after its alias moved.
SHADOW_LOAD_TIMEOUT_S = 120.0


# ------------------------------------------------------------------------------------------ tools


def ensure_wrk(ctx: BenchContext) -> str:
    """The path of ``wrk``, installed from Debian's packages if missing.

    Raises:
        RuntimeError: wrk is missing and ``apt-get install -y wrk`` did not provide it.
    """
    found = shutil.which("wrk")
    if found:
        return found
    ctx.log("wrk not found: apt-get install -y wrk")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    attempts = [
        ["apt-get", "install", "-y", "wrk"],
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "wrk"],
    ]
    output = ""
    for args in attempts:
        try:
            done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600, check=False)
        except OSError as exc:
            output = f"{' '.join(args)}: {exc}"
            break
        output = done.stdout[-1500:] + done.stderr[-1500:]
        if shutil.which("wrk"):
            return str(shutil.which("wrk"))
    raise RuntimeError(
        "the serving benchmark needs wrk (Debian package `wrk`) and `apt-get install -y wrk` did not "
        f"install it; install it by hand (as root) and run again. Last output:\n{output}"
    )


def write_bodies(folder: Path) -> dict[int, Path]:
    """The request bodies: simulated served traffic as ``{"dataframe_records": [...]}``.

    Rows are what clients send (:func:`continuous_training.ops.simulate.client_requests`: the day's
    applications without the label, key and timestamp included), from the bench's fixed seed.

    Returns:
        ``{rows: path}`` for each size in :data:`BODY_ROWS`.
    """
    import orjson

    from bench.data import simulated_rows
    from continuous_training.config import load_contract
    from continuous_training.ops.simulate import to_json_rows

    folder.mkdir(parents=True, exist_ok=True)
    frame = simulated_rows(max(BODY_ROWS), drift=False).drop(columns=[load_contract().target])
    records = to_json_rows(frame)
    paths = {}
    for rows in BODY_ROWS:
        path = folder / f"body-{rows}-rows.json"
        path.write_bytes(orjson.dumps({"dataframe_records": records[:rows]}))
        paths[rows] = path
    return paths


def http(url: str, body: bytes | None = None, timeout: float = 30.0) -> tuple[int, bytes]:
    """GET (or POST ``body`` as JSON) ``url``; the status and body, also for 4xx/5xx answers.

    Raises:
        OSError: no answer (connection refused, timeout).
    """
    headers = {"Content-Type": "application/json"} if body is not None else {}
    request = urllib.request.Request(url, data=body, headers=headers, method="POST" if body else "GET")
    # The bench talks to loopback only: never through a proxy from the environment.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _answers(url: str) -> bool:
    try:
        return http(url, timeout=5.0)[0] == 200
    except OSError:
        return False


def run_wrk(wrk: str, url: str, body: Path, seconds: int) -> dict[str, Any]:
    """One wrk run against ``url`` posting ``body``: its JSON summary plus the raw output.

    Raises:
        RuntimeError: wrk failed or printed no summary.
    """
    args = [
        wrk,
        f"-t{THREADS}",
        f"-c{CONNECTIONS}",
        f"-d{seconds}s",
        f"--timeout={WRK_TIMEOUT}",
        "--latency",
        "-s",
        str(LUA),
        url,
    ]
    done = subprocess.run(
        args, env={**os.environ, "WRK_BODY": str(body)}, capture_output=True, text=True, timeout=seconds + 60
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(
            f"{' '.join(args)} exited with {done.returncode} and no summary; "
            f"stdout:\n{done.stdout[-1500:]}\nstderr:\n{done.stderr[-1500:]}"
        )
    summary = json.loads(lines[-1])
    seconds_run = summary["duration_us"] / 1e6
    summary["req_per_s"] = summary["requests"] / seconds_run if seconds_run else 0.0
    summary["errors_total"] = sum(summary["errors"].values())
    summary["raw"] = done.stdout
    return summary


def load_server(ctx: BenchContext, wrk: str, url: str, bodies: dict[int, Path], who: str) -> dict[int, dict]:
    """Warm up then measure ``url`` with each body, one after the other."""
    warm, measure = QUICK_SECONDS if ctx.quick else FULL_SECONDS
    results = {}
    for rows, body in bodies.items():
        warmed = run_wrk(wrk, url, body, warm)
        result = run_wrk(wrk, url, body, measure)
        result["rows_per_s"] = result["req_per_s"] * rows
        result["warmup"] = {k: warmed[k] for k in ("requests", "errors", "req_per_s")}
        results[rows] = result
        ctx.log(
            f"{who}, {rows}-row body: {result['req_per_s']:.0f} req/s, {result['rows_per_s']:.0f} rows/s, "
            f"p50 {result['latency_us']['p50'] / 1000:.1f} ms, p99 {result['latency_us']['p99'] / 1000:.1f} ms, "
            f"{result['errors_total']} errors"
        )
    return results


def positive_scores(answer: bytes, who: str) -> list[float]:
    """The positive-class scores of a ``/predict`` or ``/invocations`` answer.

    Ours: ``{"predictions": [p, ...]}``. MLflow's (``pyfunc_predict_fn="predict_proba"``):
    ``{"predictions": [[p0, p1], ...]}``.

    Raises:
        RuntimeError: the answer has another shape.
    """
    payload = json.loads(answer)
    predictions = payload.get("predictions") if isinstance(payload, dict) else None
    if not isinstance(predictions, list) or not predictions:
        raise RuntimeError(f"{who}: expected {{'predictions': [...]}}, got {answer[:300]!r}")
    if all(isinstance(p, list) and len(p) == 2 for p in predictions):
        return [float(p[1]) for p in predictions]
    if all(isinstance(p, int | float) for p in predictions):
        return [float(p) for p in predictions]
    raise RuntimeError(f"{who}: expected one score or one [p0, p1] pair per row, got {answer[:300]!r}")


# ---------------------------------------------------------------------------------------- servers


def start_mlflow_serve(model: dict[str, Any], port: int, log_path: Path) -> subprocess.Popen:
    """``mlflow models serve`` of the champion, as a user would start it, in its own process group."""
    bindir = Path(sys.executable).parent
    # As MLflow ships it: its sklearn loader needs this (our stack sets it false everywhere and reads the
    # skops file itself).
    env = child_env(MLFLOW_TRACKING_URI=model["tracking_uri"], MLFLOW_ALLOW_PICKLE_DESERIALIZATION="true")
    env["PATH"] = os.pathsep.join([str(bindir), env.get("PATH", "")])
    # As a user would run it: OpenMP at its default, whatever this shell had.
    for name in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY"):
        env.pop(name, None)
    args = [
        str(bindir / "mlflow"),
        "models",
        "serve",
        "-m",
        f"models:/{model['model_name']}@champion",
        "--env-manager",
        "local",
        "-w",
        str(WORKERS),
        "-p",
        str(port),
        "-h",
        "127.0.0.1",
    ]
    with open(log_path, "ab") as out:
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop_group(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM the process group of ``proc``, SIGKILL it if it lingers (idempotent)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    # Workers may outlive the leader: clear the group whatever the leader did.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def wait_mlflow_serve(proc: subprocess.Popen, url: str, log_path: Path) -> float:
    """Wait until the scoring server answers ``/ping``; the seconds this call waited.

    Raises:
        RuntimeError: the server exited or did not answer in time (its log tail included).
    """
    started = time.monotonic()

    def ready() -> bool:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"mlflow models serve exited with {proc.returncode}; log tail:\n{tail}")
        return _answers(f"{url}/ping")

    try:
        wait_until(ready, f"mlflow models serve on {url}", MLFLOW_SERVE_TIMEOUT_S)
    except RuntimeError as exc:
        tail = log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{exc}; log {log_path} tail:\n{tail}") from exc
    return time.monotonic() - started


def start_endpoint(model: dict[str, Any]) -> tuple[str, float]:
    """Start the bench stack's endpoint part; wait until every worker serves the champion's version.

    Returns:
        The endpoint's base URL and the seconds it took to serve.
    """
    from continuous_training.model.deploy import wait_served
    from continuous_training.ops.stack import stack_up
    from continuous_training.settings import load_settings

    started = time.monotonic()
    settings = load_settings()
    stack_up(settings, parts=["endpoint"])
    url = settings.endpoint_url.rstrip("/")
    # The deploy step's own check: every worker process answers with the version, for a few seconds.
    wait_served(model["model_name"], model["version"], url, ENDPOINT_TIMEOUT_S)
    return url, time.monotonic() - started


def stop_endpoint() -> None:
    """Stop the bench stack's endpoint part (MLflow keeps running for the other benchmarks)."""
    from continuous_training.ops.stack import stack_down

    stack_down(parts=["endpoint"])


# ------------------------------------------------------------------------------------------ floor


def _median_ms(call: Any, calls: int) -> tuple[float, float]:
    """Median and p99 of ``calls`` timed calls, in ms (after 20 untimed ones)."""
    for _ in range(20):
        call()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    times.sort()
    return statistics.median(times) * 1000, times[int(0.99 * (len(times) - 1))] * 1000


def floor_worker(argv: list[str]) -> int:
    """The in-process floor child: load the version, time scoring per body; print one JSON line.

    Times ``predict_proba`` on the frame :func:`frame_from_body` builds (the brief's floor), and the
    endpoint's own path: :func:`columns_from_body` and the scorer :func:`compile_scorer` picks.
    """
    parser = argparse.ArgumentParser(prog="python -m bench.serving floor")
    parser.add_argument("--name", required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--calls", type=int, required=True)
    parser.add_argument("bodies", nargs="+", type=Path)
    args = parser.parse_args(argv)

    import numpy as np

    from continuous_training.config import load_contract
    from continuous_training.modelstore import load_model_version
    from continuous_training.serving.request import columns_from_body, frame_from_body
    from continuous_training.serving.scorer import compile_scorer

    contract = load_contract()
    features = contract.feature_names
    model = load_model_version(args.name, args.version)
    scorer, kind = compile_scorer(model, contract)
    out: dict[str, Any] = {"omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "scorer": kind}
    for path in args.bodies:
        body = path.read_bytes()
        X = frame_from_body(body, contract)[features]
        columns, n_rows = columns_from_body(body, contract)
        if not np.array_equal(model.predict_proba(X)[:, 1], scorer(columns, n_rows)):
            raise RuntimeError(f"{path}: the endpoint's scorer ({kind}) differs from predict_proba")
        predict, predict_p99 = _median_ms(lambda X=X: model.predict_proba(X), args.calls)
        scored, scored_p99 = _median_ms(lambda c=columns, n=n_rows: scorer(c, n), args.calls)
        frame_ms, _ = _median_ms(lambda b=body: frame_from_body(b, contract), args.calls)
        parse_ms, _ = _median_ms(lambda b=body: columns_from_body(b, contract), args.calls)
        out[str(n_rows)] = {
            "predict_proba_ms": predict,
            "predict_proba_p99_ms": predict_p99,
            "scorer_ms": scored,
            "scorer_p99_ms": scored_p99,
            "frame_from_body_ms": frame_ms,
            "columns_from_body_ms": parse_ms,
            "calls": args.calls,
        }
    print(json.dumps(out))
    return 0


def measure_floor(ctx: BenchContext, model: dict[str, Any], bodies: dict[int, Path]) -> dict[str, Any]:
    """Run the floor child (``OMP_NUM_THREADS=1``, as the endpoint runs) and return its report."""
    calls = QUICK_CALLS if ctx.quick else FULL_CALLS
    args = python_cmd(
        "bench.serving",
        "floor",
        "--name",
        model["model_name"],
        "--version",
        model["version"],
        "--calls",
        str(calls),
        *[str(bodies[rows]) for rows in BODY_ROWS],
    )
    result = measure_process(args, env=child_env(OMP_NUM_THREADS="1"), cwd=REPO, timeout=600)
    return result.json()


# ---------------------------------------------------------------------------------- shadow scoring


def _health_by_pid(url: str, seconds: float = 3.0) -> dict[int, dict[str, Any]]:
    """The latest ``/health`` of each worker seen in ``seconds`` (each call opens a new connection, so
    the kernel spreads them over the workers)."""
    seen: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            status, body = http(f"{url}/health", timeout=5.0)
            if status == 200:
                health = json.loads(body)
                seen[int(health["pid"])] = health
        if len(seen) >= WORKERS and time.monotonic() > deadline - seconds / 2:
            break
        time.sleep(0.05)
    return seen


def pin_challenger(model: dict[str, Any], version: str | None) -> str | None:
    """Point the ``challenger`` alias at ``version`` (None: remove it); the version it named before."""
    from continuous_training.lineage import CHALLENGER
    from continuous_training.modelstore import alias_version, client

    mlflow_client = client()
    previous = alias_version(mlflow_client, model["model_name"], CHALLENGER)
    if version is None:
        if previous is not None:
            mlflow_client.delete_registered_model_alias(model["model_name"], CHALLENGER)
    elif previous != version:
        mlflow_client.set_registered_model_alias(model["model_name"], CHALLENGER, version)
    return previous


def register_shadow_challenger(model: dict[str, Any]) -> str:
    """Register the champion's model again as a new version and sign it (with the champion's verdict)."""
    import mlflow

    from continuous_training.lineage import TAG_GATE_VERDICT
    from continuous_training.model.registry import sign_version
    from continuous_training.modelstore import client

    mlflow_client = client()
    champion = mlflow_client.get_model_version(model["model_name"], model["version"])
    # register_model resolves the logged model (``models:/m-<id>``) the champion was registered from.
    created = mlflow.register_model(
        champion.source, model["model_name"], tags={"ct.bench": "shadow challenger"}
    )
    version = str(created.version)
    wait_until(
        lambda: mlflow_client.get_model_version(model["model_name"], version).status == "READY",
        f"{model['model_name']} v{version} to be ready",
        60,
    )
    raw = (champion.tags or {}).get(TAG_GATE_VERDICT)
    verdict = json.loads(raw) if raw else {"passed": True, "metric": "roc_auc", "forced": False}
    sign_version(model["model_name"], version, verdict=verdict)
    return version


def wait_shadow(url: str, version: str | None, timeout: float) -> dict[int, dict[str, Any]]:
    """Wait until every worker holds ``version`` as challenger (None: shadow off in every worker).

    Raises:
        RuntimeError: not reached within ``timeout`` (the last answers included).
    """
    last: dict[int, dict[str, Any]] = {}

    def ready() -> bool:
        nonlocal last
        last = _health_by_pid(url)
        if len(last) < WORKERS:
            return False
        if version is None:
            return all(not h["shadow"]["active"] for h in last.values())
        return all(h["challenger_version"] == version and h["shadow"]["active"] for h in last.values())

    try:
        wait_until(ready, f"every worker's challenger to be {version}", timeout)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}; last /health answers: {last}") from exc
    return last


def full_shadow_config(ctx: BenchContext) -> Path | None:
    """A copy of the config folder with ``release.shadow_share: 1.0``, if the one in use has another
    share (None when it already is 1.0): the bench never edits the shipped config."""
    import yaml

    from continuous_training.config import load_policy
    from continuous_training.settings import load_settings

    if load_policy().release.shadow_share == 1.0:
        return None
    source = load_settings().config_dir
    folder = ctx.workdir / "serving" / "config"
    shutil.copytree(source, folder, dirs_exist_ok=True)
    policy = yaml.safe_load((folder / "policy.yaml").read_text())
    policy["release"] = {**(policy.get("release") or {}), "shadow_share": 1.0}
    (folder / "policy.yaml").write_text(yaml.safe_dump(policy, sort_keys=False))
    return folder


def _warm_and_measure(wrk: str, url: str, body: Path, warm: int, measure: int) -> dict[str, Any]:
    warmed = run_wrk(wrk, f"{url}/predict", body, warm)
    result = run_wrk(wrk, f"{url}/predict", body, measure)
    result["warmup"] = {k: warmed[k] for k in ("requests", "errors", "req_per_s")}
    return result


def measure_shadow(
    ctx: BenchContext, wrk: str, url: str, model: dict[str, Any], body: Path
) -> dict[str, Any]:
    """1-row load without a distinct challenger, then with one and shadow scoring at 100%."""
    warm, measure = QUICK_SECONDS if ctx.quick else FULL_SECONDS
    wait_shadow(url, None, SHADOW_LOAD_TIMEOUT_S)
    without = _warm_and_measure(wrk, url, body, warm, measure)
    before = _health_by_pid(url)
    version = register_shadow_challenger(model)
    started = time.monotonic()
    pin_challenger(model, version)
    try:
        wait_shadow(url, version, SHADOW_LOAD_TIMEOUT_S)
        load_s = time.monotonic() - started
        ctx.log(f"every worker shadow-scores with v{version} {load_s:.1f} s after the alias moved")
        with_shadow = _warm_and_measure(wrk, url, body, warm, measure)
        # The shadow thread lingers before each batch: give it time to log the last requests.
        time.sleep(1.0)
        after = _health_by_pid(url)
    finally:
        pin_challenger(model, model["version"])
    for who, result in (("no challenger", without), ("shadow 100%", with_shadow)):
        ctx.log(
            f"our endpoint, {who}, 1-row body: {result['req_per_s']:.0f} req/s, "
            f"p50 {_ms(result, 'p50'):.1f} ms, p99 {_ms(result, 'p99'):.1f} ms, {result['errors_total']} errors"
        )
    counters = {
        name: sum(h["shadow"][name] for h in after.values())
        - sum(h["shadow"][name] for pid, h in before.items() if pid in after)
        for name in ("scored_rows", "dropped_rows", "failed_rows")
    }
    ctx.log(f"shadow counters over the run (all workers): {counters}")
    return {
        "without": without,
        "with": with_shadow,
        "challenger_version": version,
        "load_s": round(load_s, 1),
        "counters": counters,
        "health": after,
    }


def shadow_figures(shadow: dict[str, Any]) -> list[Figure]:
    """Throughput and p99 with shadow scoring at 100% against the same endpoint without a challenger."""
    if "error" in shadow:
        return [Figure(BENCH, "shadow scoring at 100%: failed", "", None, note=shadow["error"][:300])]
    without, with_shadow = shadow["without"], shadow["with"]
    counters = shadow["counters"]
    detail = {
        "without": _wrk_detail(without),
        "with": _wrk_detail(with_shadow),
        **{k: shadow[k] for k in ("challenger_version", "load_s", "counters")},
    }
    return [
        Figure(
            BENCH,
            "shadow scoring at 100%, 1-row body",
            "req/s",
            with_shadow["req_per_s"],
            without["req_per_s"],
            f">= {SHADOW_MIN_THROUGHPUT_RATIO:g}x without",
            at_least(with_shadow["req_per_s"], SHADOW_MIN_THROUGHPUT_RATIO * without["req_per_s"]),
            note="anchor: the same endpoint without a distinct challenger, measured just before; "
            f"{counters['scored_rows']} rows shadow-scored, {counters['dropped_rows']} dropped, "
            f"{counters['failed_rows']} failed",
            detail=detail,
        ),
        Figure(
            BENCH,
            "shadow scoring at 100%, p99, 1-row body",
            "ms",
            _ms(with_shadow, "p99"),
            _ms(without, "p99"),
            f"<= {SHADOW_MAX_P99_RATIO:g}x without",
            at_most(_ms(with_shadow, "p99"), SHADOW_MAX_P99_RATIO * _ms(without, "p99")),
        ),
        Figure(
            BENCH,
            "shadow scoring at 100%, errors",
            "count",
            with_shadow["errors_total"],
            without["errors_total"],
            "0",
            with_shadow["errors_total"] == 0,
        ),
    ]


# -------------------------------------------------------------------------------------------- run


def _ms(result: dict[str, Any], which: str) -> float:
    return result["latency_us"][which] / 1000.0


def _wrk_detail(result: dict[str, Any]) -> dict[str, Any]:
    return {
        k: result[k]
        for k in ("requests", "duration_us", "errors", "latency_us", "req_per_s", "warmup", "raw")
    }


def figures_from(
    ours: dict[int, dict], anchor: dict[int, dict], diff: float, floor: dict[str, Any], setup: dict[str, Any]
) -> list[Figure]:
    """The serving figures from the wrk results, the prediction comparison and the floor."""
    one, hundred = ours[1], ours[100]
    a_one, a_hundred = anchor[1], anchor[100]
    detail = {
        "ours": {rows: _wrk_detail(r) for rows, r in ours.items()},
        "anchor": {rows: _wrk_detail(r) for rows, r in anchor.items()},
        "setup": setup,
    }
    figures = [
        Figure(
            BENCH,
            "1-row body",
            "req/s",
            one["req_per_s"],
            a_one["req_per_s"],
            ">= 4x anchor",
            at_least(one["req_per_s"], 4 * a_one["req_per_s"]),
            detail=detail,
        ),
        Figure(BENCH, "100-row body", "req/s", hundred["req_per_s"], a_hundred["req_per_s"]),
        Figure(
            BENCH,
            "100-row body",
            "rows/s",
            hundred["rows_per_s"],
            a_hundred["rows_per_s"],
            ">= 3x anchor",
            at_least(hundred["rows_per_s"], 3 * a_hundred["rows_per_s"]),
        ),
    ]
    for rows, ours_r, anchor_r in ((1, one, a_one), (100, hundred, a_hundred)):
        figures.append(Figure(BENCH, f"p50, {rows}-row body", "ms", _ms(ours_r, "p50"), _ms(anchor_r, "p50")))
        figures.append(
            Figure(
                BENCH,
                f"p99, {rows}-row body",
                "ms",
                _ms(ours_r, "p99"),
                _ms(anchor_r, "p99"),
                "<= 1/4 anchor",
                at_most(_ms(ours_r, "p99"), _ms(anchor_r, "p99") / 4),
            )
        )
    errors = sum(r["errors_total"] for r in ours.values())
    anchor_errors = sum(r["errors_total"] for r in anchor.values())
    figures.append(
        Figure(
            BENCH,
            "errors (non-2xx, socket, timeout)",
            "count",
            errors,
            anchor_errors,
            "0",
            errors == 0,
            detail={
                "ours": {r: v["errors"] for r, v in ours.items()},
                "anchor": {r: v["errors"] for r, v in anchor.items()},
            },
        )
    )
    figures.append(
        Figure(
            BENCH,
            "predictions max |ours - MLflow|, 100 rows",
            "abs",
            diff,
            goal="0",
            met=diff <= MAX_DIFF,
            note=f"positive-class scores of the same 100-row body; accepted up to {MAX_DIFF:g}",
        )
    )
    for rows in BODY_ROWS:
        item = floor[str(rows)]
        label = f"{rows} row{'s' if rows > 1 else ''}"
        figures.append(
            Figure(
                BENCH,
                f"in-process predict_proba, {label}",
                "ms",
                item["predict_proba_ms"],
                note=f"median of {item['calls']} calls in one process, OMP_NUM_THREADS=1"
                if rows == max(BODY_ROWS)
                else "",
                detail=item,
            )
        )
        figures.append(
            Figure(
                BENCH,
                f"in-process endpoint path, {label}",
                "ms",
                item["columns_from_body_ms"] + item["scorer_ms"],
                note=f"columns_from_body + the {floor['scorer']} scorer the endpoint uses "
                f"({item['columns_from_body_ms']:.2f} + {item['scorer_ms']:.2f} ms)",
            )
        )
    return figures


def run(ctx: BenchContext) -> list[Figure]:
    """Measure both servers and the in-process floor; see the module docstring.

    Raises:
        RuntimeError: wrk cannot be installed, a server does not start or answers wrongly.
    """
    from bench.model import ensure_champion

    wrk = ensure_wrk(ctx)
    folder = ctx.workdir / "serving"
    folder.mkdir(parents=True, exist_ok=True)
    model = ensure_champion(ctx)
    bodies = write_bodies(folder)
    setup: dict[str, Any] = {"model": model, "bodies": {r: p.stat().st_size for r, p in bodies.items()}}
    warm, measure = QUICK_SECONDS if ctx.quick else FULL_SECONDS
    setup.update(
        wrk=f"-t{THREADS} -c{CONNECTIONS} warm-up {warm} s, measured {measure} s, timeout {WRK_TIMEOUT}",
        workers=WORKERS,
    )
    hundred = bodies[max(BODY_ROWS)].read_bytes()
    # Nothing is shadow-scored while the main figures are taken: the challenger alias names the
    # champion (a loop run may have left another version there; it is put back at the end).
    left_challenger = pin_challenger(model, model["version"])
    # The endpoint reads CT_CONFIG_DIR when it starts: shadow scoring at 100% for the shadow figures.
    shadow_config = full_shadow_config(ctx)
    saved_config = os.environ.get("CT_CONFIG_DIR")
    if shadow_config is not None:
        ctx.log(f"release.shadow_share is not 1.0: the endpoint reads the config copy {shadow_config}")
        os.environ["CT_CONFIG_DIR"] = str(shadow_config)

    port = free_port()
    anchor_url = f"http://127.0.0.1:{port}"
    log_path = folder / "mlflow-models-serve.log"
    # Both servers boot at the same time (nothing is measured while either boots), then each is
    # loaded alone: the anchor first, stopped, then ours.
    ctx.log(f"starting mlflow models serve of {model['model_name']} v{model['version']} on {anchor_url}")
    launched = time.monotonic()
    proc = start_mlflow_serve(model, port, log_path)
    try:
        try:
            ctx.log("starting our endpoint (bench stack part `endpoint`) meanwhile")
            url, setup["endpoint_start_s"] = start_endpoint(model)
            setup["endpoint_health"] = json.loads(http(f"{url}/health")[1])
            status, answer = http(f"{url}/predict", hundred, timeout=60.0)
            if status != 200:
                raise RuntimeError(f"our endpoint /predict answered {status}: {answer[:500]!r}")
            our_scores = positive_scores(answer, "our endpoint")
            wait_mlflow_serve(proc, anchor_url, log_path)
            setup["anchor_start_s"] = round(time.monotonic() - launched, 1)
            ctx.log(f"mlflow models serve answers {setup['anchor_start_s']} s after its launch")
            status, answer = http(f"{anchor_url}/invocations", hundred, timeout=60.0)
            if status != 200:
                raise RuntimeError(f"mlflow models serve /invocations answered {status}: {answer[:500]!r}")
            anchor_scores = positive_scores(answer, "mlflow models serve")
            anchor = load_server(ctx, wrk, f"{anchor_url}/invocations", bodies, "mlflow models serve")
        finally:
            stop_group(proc)
        ours = load_server(ctx, wrk, f"{url}/predict", bodies, "our endpoint")
        try:
            shadow = measure_shadow(ctx, wrk, url, model, bodies[1])
        except Exception as exc:  # the other serving figures stand without these
            log.exception("shadow scoring benchmark failed")
            shadow = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        stop_endpoint()
        pin_challenger(model, left_challenger)
        if shadow_config is not None:
            if saved_config is None:
                os.environ.pop("CT_CONFIG_DIR", None)
            else:
                os.environ["CT_CONFIG_DIR"] = saved_config

    if len(our_scores) != len(anchor_scores):
        raise RuntimeError(f"{len(our_scores)} scores from our endpoint, {len(anchor_scores)} from MLflow's")
    diff = max(abs(a - b) for a, b in zip(our_scores, anchor_scores, strict=True))
    ctx.log(f"predictions: max |ours - MLflow| = {diff:g} over {len(our_scores)} rows")

    floor = measure_floor(ctx, model, bodies)
    ctx.log(
        "in-process predict_proba: "
        + ", ".join(f"{r} row(s) {floor[str(r)]['predict_proba_ms']:.2f} ms" for r in BODY_ROWS)
    )
    return figures_from(ours, anchor, diff, floor, setup) + shadow_figures(shadow)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "floor":
        logging.basicConfig(level=logging.WARNING)
        sys.exit(floor_worker(sys.argv[2:]))
    sys.exit("usage: python -m bench.serving floor --name N --version V --calls K BODY...")
