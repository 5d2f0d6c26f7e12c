"""``default_args`` shared by the project's DAGs (light: imported at DAG-parse time, reads no file)."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from continuous_training.alert import OnCallNotifier


def default_args() -> dict[str, Any]:
    """Owner, retries and the on-call failure mail.

    ``CT_TASK_RETRIES`` (default 1) and ``CT_TASK_RETRY_DELAY_SECONDS`` (default 60) tune retries per
    deployment without editing DAG files.
    """
    return {
        "owner": "ml-platform",
        "retries": int(os.environ.get("CT_TASK_RETRIES", "1")),
        "retry_delay": timedelta(seconds=int(os.environ.get("CT_TASK_RETRY_DELAY_SECONDS", "60"))),
        "on_failure_callback": OnCallNotifier(),
    }
