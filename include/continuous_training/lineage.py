"""Names a model carries through its life: registry aliases, run and version tags, artifact paths.

Shared by training, the registry, deployment, the endpoint and the monitor, so each name is written
once. A model version is traceable to its training-set hash, the DAG run that made it, the code
version and the gate verdict (DESIGN's "contracts between stages").
"""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from continuous_training.settings import load_settings

if TYPE_CHECKING:
    from mlflow.entities import Run

log = logging.getLogger(__name__)

#: The alias the endpoint serves; a passing deploy moves it.
CHAMPION = "champion"
#: The alias of the newest registered version.
CHALLENGER = "challenger"

#: Name of the logged model inside the run (``runs:/<run_id>/model``).
MODEL_NAME_IN_RUN = "model"
#: Run artifact holding the drift reference sample (features + target of training rows).
REFERENCE_ARTIFACT = "reference/reference.parquet"
#: The model's scores of held-out rows (out of sample): the reference of prediction drift.
REFERENCE_SCORES_ARTIFACT = "reference/holdout_scores.parquet"
#: Run artifact of the evaluation report.
EVALUATION_REPORT_ARTIFACT = "evaluation/report.html"
#: Run artifact of the model's file manifest (JSON ``{relative path: sha256}``), written by training.
MODEL_MANIFEST_ARTIFACT = "provenance/model_manifest.json"

# Tags of the challenger's MLflow run (and, copied at registration, of its model version).
TAG_TRAINING_SET = "ct.training_set_sha256"
TAG_TRAINING_DAYS = "ct.training_days"
TAG_HOLDOUT_DAYS = "ct.holdout_days"
TAG_DAG_ID = "ct.dag_id"
TAG_DAG_RUN_ID = "ct.dag_run_id"
TAG_GIT_COMMIT = "ct.git_commit"
TAG_REASON = "ct.reason"
TAG_GATE_VERDICT = "ct.gate_verdict"
TAG_GATE_METRIC_VALUE = "ct.gate_metric_value"
TAG_EVALUATED_AGAINST = "ct.evaluated_against_champion"
# The model's files as training logged them (run tags, copied at registration to the version's tags):
# the manifest (canonical JSON ``{relative path: sha256}``) and the SHA-256 of that JSON (the digest).
TAG_MODEL_MANIFEST = "ct.model_manifest"
TAG_MODEL_MANIFEST_SHA256 = "ct.model_manifest_sha256"
# Tags of a model version set by registration: the signed provenance (canonical JSON of name, version,
# run, manifest digest, gate verdict, signing time) and its Ed25519 signature (url-safe base64). Only a
# version carrying both, valid under the pipeline's key, may serve as champion.
TAG_PROVENANCE = "ct.provenance"
TAG_PROVENANCE_SIGNATURE = "ct.provenance_signature"
# Tags of a model version set on its way to the champion alias: the approval decision (JSON: decision,
# who, when), the shadow verdict (JSON: passed, figures, limits) and the latest move of the alias to it
# (JSON: kind, from_version, at, actor, reason, confirmed), which a resumed move reads.
TAG_APPROVAL = "ct.approval"
TAG_SHADOW_VERDICT = "ct.shadow_verdict"
TAG_CHAMPION_MOVE = "ct.champion_move"
#: The watcher's verdict on a champion after its promotion (JSON: the move's ledger key and the verdict).
TAG_WATCH_VERDICT = "ct.watch_verdict"

#: The value recorded when a piece of lineage is not known (no git checkout, no DAG run).
UNKNOWN = "unknown"


def run_days(run: Run, tag: str) -> list[str]:
    """A comma-separated day list stored in a run tag (empty if the tag is absent)."""
    raw = run.data.tags.get(tag, "")
    return [d for d in raw.split(",") if d]


def git_commit() -> str:
    """The code version: ``CT_GIT_COMMIT`` if set, else ``git rev-parse HEAD`` of the repo, else "unknown"."""
    settings = load_settings()
    if settings.git_commit:
        return settings.git_commit
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=settings.repo_root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.info("No git commit available (%s): recording 'unknown'", exc)
        return UNKNOWN
    return out.stdout.strip() or UNKNOWN


def json_tag(tags: Mapping[str, str], key: str) -> dict[str, Any] | None:
    """The mapping a JSON tag holds (a verdict, a decision, a move): None when the tag is absent or
    empty, ``{"unreadable": <the first 200 characters>}`` when it is not a JSON object, so that a
    reader shows it instead of failing."""
    raw = tags.get(key)
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return {"unreadable": raw[:200]}
    return value if isinstance(value, dict) else {"unreadable": raw[:200]}
