"""The prediction log: what the endpoint writes and the monitor reads."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from continuous_training.config import load_contract
from continuous_training.lake import Lake
from continuous_training.predlog import PredictionLog, prediction_schema, read_predictions

CONTRACT = load_contract()
KEY = CONTRACT.key


def _log_frame(synthetic_rows, n: int, seed: int, with_key: bool = True) -> pd.DataFrame:
    frame = synthetic_rows(n, seed)
    return frame if with_key else frame.drop(columns=[KEY])


def test_prediction_log_partitions_by_served_day_and_reads_windows(tmp_path: Path, synthetic_rows) -> None:
    lake = Lake(tmp_path / "lake")
    plog = PredictionLog(lake, flush_seconds=60, max_rows=1000, contract=CONTRACT)
    day1 = datetime(2026, 3, 1, 23, 59, 59, tzinfo=UTC)
    day2 = datetime(2026, 3, 2, 0, 0, 1, tzinfo=UTC)
    with_key = _log_frame(synthetic_rows, 3, seed=1)
    plog.append(with_key, [0.1, 0.2, 0.3], request_id="r1", model_name="m", model_version="1", served_at=day1)
    plog.append(
        _log_frame(synthetic_rows, 2, seed=2, with_key=False),
        np.array([0.4, 0.5]),
        request_id="r2",
        model_name="m",
        model_version="2",
        served_at=day2,
    )
    assert plog.buffered_rows == 5
    assert plog.flush() == 5
    assert plog.flush() == 0  # nothing written twice

    files = sorted(
        p.relative_to(lake.predictions()).as_posix() for p in lake.predictions().rglob("*") if p.is_file()
    )
    assert len(files) == 2
    assert re.fullmatch(rf"dt=2026-03-01/part-{os.getpid()}-[0-9a-f]{{8}}\.parquet", files[0])
    assert files[1].startswith("dt=2026-03-02/part-")

    both = read_predictions(lake, day1 - timedelta(hours=1), day2 + timedelta(hours=1), contract=CONTRACT)
    assert list(both.columns) == prediction_schema(CONTRACT).names
    assert both["row_id"].tolist() == [*with_key[KEY], "r2:0", "r2:1"]
    assert both["score"].tolist() == [0.1, 0.2, 0.3, 0.4, 0.5]
    assert str(both["served_at"].dt.tz) == "UTC"
    np.testing.assert_allclose(both["credit_score"].iloc[:3], with_key["credit_score"])
    assert both["home_ownership"].iloc[:3].tolist() == with_key["home_ownership"].tolist()

    # [start, end) on served_at, not just on the day folder.
    assert read_predictions(lake, day1, day2, contract=CONTRACT)["request_id"].unique().tolist() == ["r1"]
    assert read_predictions(lake, day2, day2 + timedelta(days=3), contract=CONTRACT)[
        "request_id"
    ].unique().tolist() == ["r2"]
    only_v2 = read_predictions(
        lake, day1 - timedelta(days=1), day2 + timedelta(days=1), model_version="2", contract=CONTRACT
    )
    assert only_v2["row_id"].tolist() == ["r2:0", "r2:1"]

    empty = read_predictions(lake, day2 + timedelta(days=5), day2 + timedelta(days=6), contract=CONTRACT)
    assert len(empty) == 0
    assert list(empty.columns) == list(both.columns)
    assert empty.dtypes.to_dict() == both.dtypes.to_dict()
    assert (
        len(
            read_predictions(
                lake,
                day1 - timedelta(hours=1),
                day2 + timedelta(hours=1),
                model_version="9",
                contract=CONTRACT,
            )
        )
        == 0
    )
    with pytest.raises(ValueError, match="must be before end"):
        read_predictions(lake, day2, day1, contract=CONTRACT)


def test_prediction_log_flushes_when_full_and_at_stop(tmp_path: Path, synthetic_rows, wait_for) -> None:
    lake = Lake(tmp_path / "lake")
    plog = PredictionLog(lake, flush_seconds=60, max_rows=10, contract=CONTRACT)
    plog.start()
    plog.append(
        _log_frame(synthetic_rows, 12, seed=3),
        np.linspace(0, 1, 12),
        request_id="full",
        model_name="m",
        model_version="1",
    )
    # flush_seconds is a minute: only the max_rows trigger can write this quickly.
    wait_for(
        lambda: plog.buffered_rows == 0 and any(lake.predictions().rglob("part-*.parquet")), 10, "the flush"
    )
    plog.append(
        _log_frame(synthetic_rows, 3, seed=4), [0.5] * 3, request_id="tail", model_name="m", model_version="1"
    )
    plog.stop()
    plog.stop()  # idempotent
    assert not list(lake.predictions().rglob(".*"))  # no temporary files left behind
    now = datetime.now(UTC)
    logged = read_predictions(lake, now - timedelta(minutes=5), now + timedelta(minutes=5), contract=CONTRACT)
    assert logged.groupby("request_id").size().to_dict() == {"full": 12, "tail": 3}


def test_prediction_log_refuses_mismatched_input(tmp_path: Path, synthetic_rows) -> None:
    plog = PredictionLog(Lake(tmp_path), contract=CONTRACT)
    with pytest.raises(ValueError, match="2 scores for 3 rows"):
        plog.append(
            _log_frame(synthetic_rows, 3, seed=1),
            [0.1, 0.2],
            request_id="x",
            model_name="m",
            model_version="1",
        )
    with pytest.raises(ValueError, match="region"):
        plog.append(
            _log_frame(synthetic_rows, 1, seed=1).drop(columns=["region"]),
            [0.1],
            request_id="x",
            model_name="m",
            model_version="1",
        )
    assert plog.buffered_rows == 0


def test_prediction_log_takes_columns_and_frames_alike(
    tmp_path: Path, synthetic_rows, feature_columns
) -> None:
    lake = Lake(tmp_path / "lake")
    plog = PredictionLog(lake, flush_seconds=60, max_rows=10_000, contract=CONTRACT)
    served = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
    keyed = synthetic_rows(3, seed=1)
    keyed.loc[1, KEY] = None
    columns = {**feature_columns(keyed), KEY: keyed[KEY].to_numpy(object)}
    plog.append(
        columns, [0.1, 0.2, 0.3], request_id="cols", model_name="m", model_version="1", served_at=served
    )
    unkeyed = synthetic_rows(2, seed=2).drop(columns=[KEY])
    unkeyed["home_ownership"] = pd.Series([3, None], dtype=object)  # numbers logged as categories
    plog.append(
        unkeyed, np.array([0.4, 0.5]), request_id="frame", model_name="m", model_version="2", served_at=served
    )
    assert plog.flush() == 5

    got = read_predictions(lake, datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC))
    assert got["row_id"].tolist() == [keyed.loc[0, KEY], "cols:1", keyed.loc[2, KEY], "frame:0", "frame:1"]
    assert got["request_id"].tolist() == ["cols"] * 3 + ["frame"] * 2
    assert got["model_version"].tolist() == ["1", "1", "1", "2", "2"]
    assert (got["served_at"] == pd.Timestamp(served)).all()
    assert got["score"].tolist() == [0.1, 0.2, 0.3, 0.4, 0.5]
    assert got["home_ownership"].tolist()[3:] == ["3", None]
    assert got["credit_score"].tolist()[:3] == keyed["credit_score"].tolist()


def test_prediction_log_refuses_columns_of_unequal_length(
    tmp_path: Path, synthetic_rows, feature_columns
) -> None:
    plog = PredictionLog(Lake(tmp_path), contract=CONTRACT)
    columns = feature_columns(synthetic_rows(3, seed=1))
    columns["age"] = columns["age"][:2]
    with pytest.raises(ValueError, match="unequal lengths"):
        plog.append(columns, [0.1, 0.2, 0.3], request_id="x", model_name="m", model_version="1")
    assert plog.buffered_rows == 0


def test_release_columns_round_trip_and_error_rows_are_left_out_by_default(
    tmp_path: Path, synthetic_rows
) -> None:
    lake = Lake(tmp_path / "lake")
    plog = PredictionLog(lake, flush_seconds=60, max_rows=1000, contract=CONTRACT)
    served = datetime(2026, 3, 1, 12, tzinfo=UTC)
    common = {"model_name": "m", "model_version": "1", "served_at": served}
    plog.append(
        _log_frame(synthetic_rows, 2, seed=1), [0.1, 0.2], request_id="plain", latency_ms=3.5, **common
    )
    plog.append(
        _log_frame(synthetic_rows, 3, seed=2),
        [0.3, 0.4, 0.5],
        request_id="shadow",
        latency_ms=4.0,
        challenger_version="2",
        challenger_scores=[0.6, np.nan, 0.8],
        challenger_error=[None, "ValueError: non-finite score", None],
        **common,
    )
    plog.append(
        _log_frame(synthetic_rows, 2, seed=3),
        [0.1, 0.9],
        request_id="challenger-failed",
        challenger_version="2",
        challenger_error="RuntimeError: the challenger's scorer raised",
        **common,
    )
    plog.append(
        _log_frame(synthetic_rows, 2, seed=4),
        np.full(2, np.nan),
        request_id="failed",
        latency_ms=1.0,
        error="ValueError",
        **common,
    )
    assert plog.flush() == 9
    window = (served - timedelta(hours=1), served + timedelta(hours=1))

    served_rows = read_predictions(lake, *window, contract=CONTRACT)
    assert served_rows["request_id"].unique().tolist() == ["plain", "shadow", "challenger-failed"]
    assert served_rows["error"].isna().all()
    by_request = served_rows.groupby("request_id", sort=False)
    assert by_request["latency_ms"].first().fillna(-1).to_dict() == {
        "plain": 3.5,
        "shadow": 4.0,
        "challenger-failed": -1,
    }
    assert served_rows["challenger_version"].tolist() == [None, None, "2", "2", "2", "2", "2"]
    # Null challenger scores read back as NaN in the float64 column.
    np.testing.assert_array_equal(
        served_rows["challenger_score"].to_numpy(), [np.nan, np.nan, 0.6, np.nan, 0.8, np.nan, np.nan]
    )
    assert served_rows["challenger_error"].tolist() == [
        None,
        None,
        None,
        "ValueError: non-finite score",
        None,
        "RuntimeError: the challenger's scorer raised",
        "RuntimeError: the challenger's scorer raised",
    ]

    everything = read_predictions(lake, *window, contract=CONTRACT, include_errors=True)
    assert len(everything) == 9
    failed = everything[everything["request_id"] == "failed"]
    assert (failed["error"] == "ValueError").all()
    assert failed["score"].isna().all()
    assert len(read_predictions(lake, *window, model_version="1", contract=CONTRACT)) == 7


def test_files_written_before_the_release_columns_read_back_with_them_null(
    tmp_path: Path, synthetic_rows
) -> None:
    import pyarrow.parquet as pq

    from continuous_training.predlog import ADDED_COLUMNS

    lake = Lake(tmp_path / "lake")
    plog = PredictionLog(lake, flush_seconds=60, max_rows=1000, contract=CONTRACT)
    served = datetime(2026, 3, 1, 12, tzinfo=UTC)
    plog.append(
        _log_frame(synthetic_rows, 3, seed=1),
        [0.1, 0.2, 0.3],
        request_id="old",
        model_name="m",
        model_version="1",
        served_at=served,
        latency_ms=2.0,
        challenger_version="2",
        challenger_scores=[0.4, 0.5, 0.6],
    )
    plog.flush()
    (written,) = lake.predictions("2026-03-01").glob("part-*.parquet")
    # The file as the first endpoint wrote it: none of the columns added since.
    table = pq.read_table(written).drop_columns(list(ADDED_COLUMNS))
    pq.write_table(table, written)

    got = read_predictions(lake, served - timedelta(hours=1), served + timedelta(hours=1), contract=CONTRACT)
    assert list(got.columns) == prediction_schema(CONTRACT).names
    assert len(got) == 3
    for name in ADDED_COLUMNS:
        assert got[name].isna().all(), name
    assert got["score"].tolist() == [0.1, 0.2, 0.3]
    assert got.dtypes["challenger_score"] == np.float64
    assert got.dtypes["latency_ms"] == np.float64
