"""The training set: day selection, the snapshot, the holdout split and the decision to train."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from continuous_training.config import TrainingPolicy
from continuous_training.lake import (
    DATA_FILE,
    MANIFEST_FILE,
    Lake,
    read_json,
    write_json_atomic,
    write_parquet_bytes_stable,
)
from continuous_training.model.training_set import (
    build_training_set,
    select_training_days,
    split_days,
    training_decision,
)
from continuous_training.ops.simulate import SimulatorConfig, generate_day

START = date(2026, 3, 1)


def publish_fixture_day(lake: Lake, day: str, rows: int = 40, seed: int = 1) -> dict:
    """A validated partition with the layout data.partitions.publish_validated writes (data + manifest)."""
    df = generate_day(day, SimulatorConfig(seed=seed, rows_per_day=rows))
    folder = lake.validated(day)
    sha = write_parquet_bytes_stable(df, folder / DATA_FILE)
    manifest = {"day": day, "rows": len(df), "sha256": sha}
    write_json_atomic(folder / MANIFEST_FILE, manifest)
    return manifest


@pytest.fixture
def lake(tmp_path) -> Lake:
    lake = Lake(tmp_path / "lake")
    for i in range(6):
        publish_fixture_day(lake, (START + timedelta(days=i)).isoformat())
    return lake


def day(i: int) -> str:
    return (START + timedelta(days=i)).isoformat()


# ------------------------------------------------------------------------------------ select / build


def test_select_takes_the_newest_days_oldest_first(lake):
    assert select_training_days(lake, 3) == [day(3), day(4), day(5)]
    assert select_training_days(lake, 100) == [day(i) for i in range(6)]


def test_select_as_of_ignores_later_days(lake):
    assert select_training_days(lake, 2, as_of=day(2)) == [day(1), day(2)]
    assert select_training_days(lake, 5, as_of="2026-01-01") == []


def test_select_on_an_empty_lake_is_empty(tmp_path):
    assert select_training_days(Lake(tmp_path / "nothing"), 5) == []


def test_select_rejects_bad_arguments(lake):
    with pytest.raises(ValueError, match="as_of"):
        select_training_days(lake, 3, as_of="yesterday")
    with pytest.raises(ValueError, match="window_days"):
        select_training_days(lake, 0)


def test_build_training_set_snapshot(lake):
    days = [day(1), day(2), day(3)]
    snapshot = build_training_set(lake, days)
    manifests = [read_json(lake.validated(d) / MANIFEST_FILE) for d in days]
    assert snapshot["days"] == days
    assert snapshot["rows"] == sum(m["rows"] for m in manifests)
    assert [p["sha256"] for p in snapshot["partitions"]] == [m["sha256"] for m in manifests]
    assert snapshot["partitions"][0]["path"] == str(lake.validated(day(1)) / DATA_FILE)
    assert snapshot["path"] == str(lake.training_set(snapshot["sha256"]))
    assert read_json(lake.training_set(snapshot["sha256"])) == snapshot


def test_build_training_set_is_stable_and_idempotent(lake):
    first = build_training_set(lake, [day(1), day(2), day(3)])
    path = lake.training_set(first["sha256"])
    written = path.stat().st_mtime_ns
    again = build_training_set(lake, [day(3), day(1), day(2), day(2)])
    assert again == first
    assert path.stat().st_mtime_ns == written  # same snapshot: the file is not rewritten
    assert list(path.parent.iterdir()) == [path]


def test_build_training_set_hash_names_the_data(lake, tmp_path):
    base = build_training_set(lake, [day(1), day(2)])
    assert build_training_set(lake, [day(1), day(3)])["sha256"] != base["sha256"]
    # Same days with other content (another lake, other seed) -> another hash.
    other = Lake(tmp_path / "other")
    for d in (day(1), day(2)):
        publish_fixture_day(other, d, seed=2)
    assert build_training_set(other, [day(1), day(2)])["sha256"] != base["sha256"]
    # Same content in another lake -> the same hash: it depends on the partitions, not the paths.
    twin = Lake(tmp_path / "twin")
    for d in (day(1), day(2)):
        publish_fixture_day(twin, d)
    assert build_training_set(twin, [day(1), day(2)])["sha256"] == base["sha256"]


def test_build_training_set_refuses_empty_and_missing_days(lake):
    with pytest.raises(ValueError, match="no days"):
        build_training_set(lake, [])
    with pytest.raises(ValueError, match="2027-01-01"):
        build_training_set(lake, [day(1), "2027-01-01"])


def test_split_days_holds_out_the_newest():
    assert split_days([day(2), day(0), day(1)], 1) == ([day(0), day(1)], [day(2)])
    with pytest.raises(ValueError, match=r"has 2 day\(s\); training.holdout_days=2 needs at least 3"):
        split_days([day(0), day(1)], 2)


# --------------------------------------------------------------------------------- training decision

POLICY = TrainingPolicy(min_partitions=5, refresh_after_new_partitions=3)
SIX_DAYS = {"sha256": "new" * 8, "days": [day(i) for i in range(6)]}


def champion(sha: str = "old" * 8, newest: str | None = day(3)) -> dict:
    days = [d for d in SIX_DAYS["days"] if newest and d <= newest]
    return {"version": "4", "run_id": "r", "training_set_sha256": sha, "days": days, "newest_day": newest}


@pytest.mark.parametrize(
    ("training_set", "champ", "reason", "force", "train", "why"),
    [
        pytest.param(
            SIX_DAYS,
            champion(sha=SIX_DAYS["sha256"]),
            "manual",
            True,
            True,
            "forced",
            id="force-beats-same-hash",
        ),
        pytest.param(
            SIX_DAYS, champion(sha=SIX_DAYS["sha256"]), "manual", False, False, "nothing new", id="same-hash"
        ),
        pytest.param(
            SIX_DAYS,
            champion(sha=SIX_DAYS["sha256"]),
            "drift in age",
            False,
            False,
            "nothing new",
            id="same-hash-even-on-drift",
        ),
        pytest.param(
            {"sha256": "x", "days": SIX_DAYS["days"][:4]},
            None,
            "new-data",
            False,
            False,
            "min_partitions",
            id="too-few-partitions",
        ),
        pytest.param(
            {"sha256": "x", "days": SIX_DAYS["days"][:4]},
            None,
            "manual",
            True,
            True,
            "forced",
            id="force-beats-too-few",
        ),
        pytest.param(SIX_DAYS, None, "new-data", False, True, "no champion", id="first-model"),
        pytest.param(SIX_DAYS, champion(newest=day(4)), "drift", False, True, "always", id="drift-reason"),
        pytest.param(
            SIX_DAYS,
            champion(newest=day(4)),
            "drift in credit_score",
            False,
            True,
            "always",
            id="drift-prefixed-reason",
        ),
        pytest.param(SIX_DAYS, champion(newest=day(4)), "manual", False, True, "always", id="manual-reason"),
        pytest.param(
            SIX_DAYS,
            champion(newest=day(4)),
            "retrain after the fix",
            False,
            True,
            "always",
            id="typed-reason",
        ),
        pytest.param(
            SIX_DAYS,
            champion(newest=day(2)),
            "new-data",
            False,
            True,
            "3 partition(s) newer",
            id="refresh-threshold-met",
        ),
        pytest.param(
            SIX_DAYS,
            champion(newest=day(3)),
            "new-data",
            False,
            False,
            "only 2 partition(s) newer",
            id="refresh-threshold-not-met",
        ),
        pytest.param(
            SIX_DAYS,
            champion(newest=None),
            "new-data",
            False,
            True,
            "does not record",
            id="champion-days-unknown",
        ),
    ],
)
def test_training_decision(training_set, champ, reason, force, train, why):
    decision = training_decision(training_set, champ, POLICY, reason, force)
    assert decision["train"] is train
    assert why in decision["why"]


# ------------------------------------------------------------------------------------ model inputs
