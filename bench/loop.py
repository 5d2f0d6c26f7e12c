"""Benchmark 5: the loop in the embedded stack, from the first drifted batch landing to a new champion.

``make demo``'s own run (``continuous_training.ops.demo.run_demo``) on the bench's stack: history, a first
champion, a no-drift control, then the covariate shift. While its drift phase runs, clients send
drifted applications to the endpoint without pause (about 20 requests/s, a new connection each, so every
worker process is reached), and every answer's model version is recorded. The figures:

* seconds from the first drifted batch landing (the demo's state file records it) to the moment from
  which every answer comes from the new champion;
* failed requests (non-200 or no answer) among those sent through the swap.

The demo triggers the monitor right after the drifted batches are ingested, as an on-call engineer
would from the UI; on its own the monitor runs on its daily schedule, which adds up to a day.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Any

from bench.core import BenchContext, Figure, wait_until

REQUESTS_PER_SECOND = 20
ROWS_PER_REQUEST = 10


class Traffic:
    """Clients in a thread: POST drifted rows to ``/predict``, record (time, status, version) of each answer."""

    def __init__(self, endpoint_url: str, rows: list[dict[str, Any]]) -> None:
        self.url = endpoint_url.rstrip("/") + "/predict"
        self.rows = rows
        self.answers: list[tuple[float, int | None, str | None]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-traffic", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        import httpx

        period = 1.0 / REQUESTS_PER_SECOND
        i = 0
        # No keep-alive: uvicorn binds a connection to one worker, and every worker must be exercised.
        with httpx.Client(timeout=10.0, limits=httpx.Limits(max_keepalive_connections=0)) as http:
            next_at = time.monotonic()
            while not self._stop.is_set():
                start = (i * ROWS_PER_REQUEST) % max(1, len(self.rows) - ROWS_PER_REQUEST)
                body = {"rows": self.rows[start : start + ROWS_PER_REQUEST]}
                i += 1
                status, version = None, None
                try:
                    response = http.post(self.url, json=body)
                    status = response.status_code
                    if response.is_success:
                        version = str(response.json()["model_version"])
                    elif len(self.errors) < 5:
                        self.errors.append(f"HTTP {status}: {response.text[:200]}")
                except httpx.HTTPError as exc:
                    if len(self.errors) < 5:
                        self.errors.append(f"{type(exc).__name__}: {exc}")
                self.answers.append((time.time(), status, version))
                next_at += period
                self._stop.wait(max(0.0, next_at - time.monotonic()))

    def switched_at(self, new_version: str) -> float | None:
        """When answers started coming only from ``new_version`` (the first new answer after the last old one)."""
        last_other = max((t for t, _, v in self.answers if v is not None and v != new_version), default=None)
        news = [t for t, _, v in self.answers if v == new_version and (last_other is None or t > last_other)]
        return min(news) if news else None


def run(ctx: BenchContext) -> list[Figure]:
    from continuous_training.settings import load_settings

    return measure(ctx, load_settings())


def measure(ctx: BenchContext, settings, bench: str = "loop", where: str = "") -> list[Figure]:
    """The demo on the stack of ``settings`` with traffic through its drift phase; the stack is stopped after.

    Args:
        ctx: the bench context.
        settings: the stack (the process's environment must describe the same one: the demo reads it).
        bench, where: the figures' benchmark name and a suffix naming the deployment.
    """
    from continuous_training.ops.demo import DemoPlan, DemoState, run_demo
    from continuous_training.ops.simulate import SimulatorConfig, client_requests, to_json_rows
    from continuous_training.ops.stack import stack_down

    plan = DemoPlan()
    sim = SimulatorConfig(seed=plan.seed + 1, drift_from=plan.drift_from)
    rows = to_json_rows(client_requests(plan.drift_from, sim))
    state_path = settings.home / "demo" / "state.json"

    outcome: dict[str, Any] = {}

    def demo() -> None:
        try:
            outcome["summary"] = run_demo(settings, plan)
        except BaseException as exc:  # reported below
            outcome["error"] = exc

    started = time.monotonic()
    thread = threading.Thread(target=demo, name="bench-demo", daemon=True)
    thread.start()
    # Traffic starts with the drift phase (its window start is recorded as the phase begins).
    wait_until(
        lambda: DemoState(state_path).get("drift_window_start") or not thread.is_alive(),
        "the demo's drift phase",
        timeout=1200,
    )
    traffic = Traffic(settings.endpoint_url, rows)
    if thread.is_alive():
        traffic.start()
    thread.join(1800)
    time.sleep(3)  # a few answers after the swap
    traffic.stop()
    ctx.log(
        f"loop: demo took {time.monotonic() - started:.0f} s; {len(traffic.answers)} requests through the drift phase"
    )
    try:
        if "error" in outcome:
            raise RuntimeError(f"the demo failed: {outcome['error']}") from outcome["error"]
        summary = outcome["summary"]
        before, after = summary["champion_before"], summary["champion_after"]
        if not after or after == before:
            raise RuntimeError(f"no new champion after the drift (before v{before}, after v{after})")
        ctx.shared["demo_champion"] = after
        state = DemoState(state_path)
        landed = datetime.fromisoformat(state.get("drift_landed_at")).timestamp()
        switched = traffic.switched_at(after)
        failed = sum(1 for _, status, _ in traffic.answers if status != 200)
        seconds = None if switched is None else switched - landed
        detail = {
            "champion_before": before,
            "champion_after": after,
            "drift_landed_at": state.get("drift_landed_at"),
            "switched_at": datetime.fromtimestamp(switched, UTC).isoformat() if switched else None,
            "requests": len(traffic.answers),
            "errors": traffic.errors,
            "demo_elapsed_s": summary.get("elapsed_s"),
        }
        return [
            Figure(
                bench,
                "first drifted batch landing -> new champion serving" + where,
                "s",
                seconds,
                goal="< 300 s",
                met=None if seconds is None else seconds < 300,
                note=f"v{before} -> v{after}; the monitor is triggered as soon as the batches are ingested",
                detail=detail,
            ),
            Figure(
                bench,
                f"failed requests through the swap (of {len(traffic.answers)})" + where,
                "count",
                failed,
                goal="0",
                met=failed == 0,
                note="; ".join(traffic.errors[:2]),
            ),
        ]
    finally:
        # The other benchmarks want a quiet machine; the serving benchmark restarts MLflow on this home.
        stack_down(settings)
