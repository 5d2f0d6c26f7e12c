"""The lock is at or above the first release that fixes each advisory we know of.

Sources: the PyPA advisory database (``vulns/<package>/PYSEC-*.yaml``, snapshot of 2026-07-23) and
the GitHub advisories it links. Each floor is the highest "fixed" version among the package's
advisories; raise it when a new advisory is published, and re-lock (``make lock``).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.version import Version

LOCK = Path(__file__).resolve().parents[2] / "requirements.lock"

FLOORS = {
    # CVE-2026-33264 (PYSEC-2026-2082) and CVE-2026-49487 (PYSEC-2026-2088): fixed in 3.3.0.
    # CVE-2026-48726 (GHSA-vr7m-c6v4-8cx8, PYSEC-2026-187): fixed in 3.2.2.
    "apache-airflow": "3.3.0",
    # CVE-2026-49298 (GHSA-5j6p-jrrm-6x94, PYSEC-2026-2358): fixed in 3.2.2.
    "apache-airflow-core": "3.2.2",
    # CVE-2026-41016: fixed in 3.0.0.
    "apache-airflow-providers-smtp": "3.0.0",
    # CVE-2026-4035 (GHSA-g35p-px32-whv6) and CVE-2026-4137 (GHSA-f2m9-wcf4-cwwx): fixed in 3.11.0.
    # CVE-2026-3198 (GHSA-r5m9-wm49-959f): fixed in 3.11.0rc0.
    # CVE-2026-2635 (GHSA-gq3w-7jj3-x7gr, the default admin password of basic auth): fixed in 3.8.0rc0.
    # CVE-2024-37052..37061 (pickle/cloudpickle model loading) have no fixed release: the stack sets
    # MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false and loads skops files with its own trusted types.
    "mlflow": "3.11.0",
    # No advisory is published for great-expectations or evidently: the floor is the release this
    # code is tested with (their 1.x / 0.7 APIs differ from older ones anyway).
    "great-expectations": "1.24.1",
    "evidently": "0.7.23",
    # CVE-2024-5206 (GHSA-jw8x-6495-233v, TfidfVectorizer stop_words_ leak): fixed in 1.5.0.
    "scikit-learn": "1.5.0",
    # CVE-2024-24762 (GHSA-qf9m-vfgh-m389, multipart ReDoS): fixed in 0.109.1.
    "fastapi": "0.109.1",
    # CVE-2026-54283 (GHSA-82w8-qh3p-5jfq): fixed in 1.3.1.
    "starlette": "1.3.1",
}


def _locked() -> dict[str, Version]:
    pins = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", LOCK.read_text(), flags=re.MULTILINE)
    return {name.lower().replace("_", "-"): Version(version) for name, version in pins}


@pytest.mark.parametrize(("package", "floor"), sorted(FLOORS.items()))
def test_locked_version_is_at_or_above_the_fix(package: str, floor: str) -> None:
    locked = _locked()
    assert package in locked, f"{package} is not pinned in {LOCK.name}"
    assert locked[package] >= Version(floor), f"{package}=={locked[package]} is below {floor} ({LOCK.name})"


def test_the_floor_check_can_fail() -> None:
    assert Version("3.10.9") < Version(FLOORS["mlflow"])
    assert Version("3.11.0rc0") < Version(FLOORS["mlflow"])
