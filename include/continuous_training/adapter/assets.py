"""Airflow Assets shared by the DAGs (light: imported at DAG-parse time)."""

from __future__ import annotations

from airflow.sdk import Asset

#: A validated daily partition of the dataset was published; the event's ``extra`` carries
#: ``day``, ``sha256``, ``rows`` and ``path``. The ``train`` DAG is scheduled on it.
VALIDATED_DATA = Asset(name="validated_applications", group="continuous_training")

#: The train DAG's deploy moved ``champion`` to a new version (the deployment ledger holds the move).
#: The ``watch`` DAG is scheduled on it.
CHAMPION_PROMOTED = Asset(name="champion_promoted", group="continuous_training")
