"""The host name Airflow records for each process of the stack (``[core] hostname_callable``).

Every part of the cluster runs on one machine, so the fully qualified domain name would be the same for
both Celery workers and both schedulers. Each part of the stack is started with ``CT_PROCESS_NAME``
(``worker-1``, ``scheduler-2``, ...): task instances then show which worker ran them, and the health
check of each scheduler reads its own heartbeat. Outside the stack the FQDN is used, as by default.

Kept import-light: Airflow imports it in every component and task process.
"""

from __future__ import annotations

import os
import socket

#: The variable naming the stack part a process belongs to.
PROCESS_NAME_VAR = "CT_PROCESS_NAME"


def hostname() -> str:
    """``CT_PROCESS_NAME`` if set, else the machine's fully qualified domain name."""
    return os.environ.get(PROCESS_NAME_VAR) or socket.getfqdn()
