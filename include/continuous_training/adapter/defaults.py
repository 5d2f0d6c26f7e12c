"""``default_args`` shared by the project's DAGs (light: imported at DAG-parse time, reads no file)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from continuous_training.alerts.notifier import OnCallNotifier
from continuous_training.settings import load_settings


def default_args() -> dict[str, Any]:
    """Owner, retries and the on-call failure mail.

    ``CT_TASK_RETRIES`` (default 1) and ``CT_TASK_RETRY_DELAY_SECONDS`` (default 60) tune retries per
    deployment without editing DAG files.
    """
    settings = load_settings()
    return {
        "owner": "ml-platform",
        "retries": settings.task_retries,
        "retry_delay": timedelta(seconds=settings.task_retry_delay_seconds),
        "on_failure_callback": OnCallNotifier(),
    }
