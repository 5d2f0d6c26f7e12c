"""The registered champion the serving benchmark serves: the demo's, or a small one made the project's way.

In a full run the loop benchmark has run the demo in the bench's CT_HOME first, so the registry already
holds a ``champion``; it is used as is. Otherwise (``--quick``, ``--only serving``) a champion is made
through the production code path, as small as the policy allows: simulated days land, are staged,
validated by the GX suite and published; a training set is snapshotted, a challenger trained and logged
(skops, ``pyfunc_predict_fn="predict_proba"``), evaluated, gated, registered and given the alias.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

from bench.core import BenchContext
from bench.data import DAY, SEED

log = logging.getLogger(__name__)

#: Enough days for ``training.holdout_days`` (2) plus two training days; few rows keep it fast.
CHAMPION_DAYS = 4
CHAMPION_ROWS_PER_DAY = 1000
#: Lineage of the bench's own model (the DAG run id keys the reuse of MLflow runs).
BENCH_LINEAGE = {"dag_id": "bench", "dag_run_id": "bench-serving-champion"}


def _publish_days(days: list[str]) -> None:
    """Land, stage, validate and publish simulated days, as the ``ingest`` DAG does."""
    from continuous_training.data.ingest import stage_raw_partition
    from continuous_training.data.partitions import publish_validated
    from continuous_training.data.validate import validate_partition
    from continuous_training.lake import Lake
    from continuous_training.ops.simulate import SimulatorConfig, land_day

    lake = Lake.from_settings()
    config = SimulatorConfig(seed=SEED, rows_per_day=CHAMPION_ROWS_PER_DAY)
    for day in days:
        if day in lake.validated_days():
            continue
        land_day(lake, day, config)
        stage_raw_partition(lake, day)
        outcome = validate_partition(lake, day)
        if not outcome["success"]:
            raise RuntimeError(f"bench champion: simulated day {day} failed validation: {outcome['failed']}")
        publish_validated(lake, day, outcome)


def _make_champion(ctx: BenchContext, name: str) -> str:
    """Train, evaluate, gate, register and promote a champion; return its version."""
    from continuous_training.config import load_policy
    from continuous_training.lake import Lake
    from continuous_training.lineage import CHAMPION, git_commit
    from continuous_training.model import train
    from continuous_training.model.evaluate import evaluate_challenger, gate_verdict
    from continuous_training.model.registry import register_challenger
    from continuous_training.model.training_set import build_training_set
    from continuous_training.modelstore import client

    started = time.monotonic()
    days = [(DAY - timedelta(days=i)).isoformat() for i in reversed(range(CHAMPION_DAYS))]
    _publish_days(days)
    ctx.log(f"{len(days)} simulated days landed, validated, published in {time.monotonic() - started:.1f} s")
    lineage = {**BENCH_LINEAGE, "git_commit": git_commit()}
    training_set = build_training_set(Lake.from_settings(), days)
    trained = train.train_challenger(training_set, reason="bench", lineage=lineage)
    ctx.log(f"challenger trained and logged at {time.monotonic() - started:.1f} s")
    evaluation = evaluate_challenger(trained["run_id"])
    verdict = gate_verdict(
        evaluation["challenger"],
        evaluation.get("champion"),
        load_policy().gate,
        champion_error=evaluation.get("champion_error"),
    )
    if not verdict["passed"]:
        raise RuntimeError(f"bench champion: the gate blocked the challenger: {verdict['reasons']}")
    registered = register_challenger(trained["run_id"], verdict=verdict, lineage=lineage, name=name)
    # No endpoint runs yet, so deploy.promote_champion's wait-until-served does not apply: set the alias.
    client().set_registered_model_alias(name, CHAMPION, registered["version"])
    return str(registered["version"])


def ensure_champion(ctx: BenchContext) -> dict[str, Any]:
    """The bench registry's champion, made if there is none.

    Starts the bench stack's ``mlflow`` part if it is not running.

    Args:
        ctx: the bench context (``ctx.shared["demo_champion"]`` is set by the loop benchmark).

    Returns:
        ``{"model_name", "version", "tracking_uri", "made": bool, "seconds": float}``.

    Raises:
        RuntimeError: the made challenger failed validation or the gate.
    """
    from continuous_training.config import load_policy
    from continuous_training.lineage import CHAMPION
    from continuous_training.modelstore import alias_version, client
    from continuous_training.ops.stack import stack_up
    from continuous_training.settings import load_settings

    started = time.monotonic()
    settings = load_settings()
    stack_up(settings, parts=["mlflow"])
    ctx.log(f"bench stack's mlflow up after {time.monotonic() - started:.1f} s")
    name = load_policy().model.name
    version = alias_version(client(), name, CHAMPION)
    made = version is None
    if made:
        ctx.log(f"no {CHAMPION!r} alias on {name!r}: making a small champion the project's way")
        from threadpoolctl import threadpool_limits

        # Other work shares the 2 cores: OpenMP's spin-waiting threads made the fit 3x slower
        # (measured); one thread trains the same trees.
        with threadpool_limits(limits=1, user_api="openmp"):
            version = _make_champion(ctx, name)
    else:
        source = "the demo's" if ctx.shared.get("demo_champion") else "already registered"
        ctx.log(f"serving {name} v{version} ({source} champion)")
    seconds = round(time.monotonic() - started, 1)
    ctx.log(f"champion {name} v{version} ready in {seconds} s")
    return {
        "model_name": name,
        "version": str(version),
        "tracking_uri": settings.mlflow_tracking_uri,
        "made": made,
        "seconds": seconds,
    }
