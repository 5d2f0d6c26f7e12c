"""The endpoint's defences without a server: body parsing and its refusals, the limits, values outside
the contract (flagged or rejected), the prediction log's flag column, and the app's checks (content type,
body size, tokens, error bodies) through Starlette's TestClient with a stand-in model.

No refusal may carry what the client sent: every hostile value, column name and header below holds
:data:`CANARY`, and no answer may contain it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import orjson
import pyarrow.parquet as pq
import pytest
import yaml
from fastapi.testclient import TestClient
from starlette.requests import Request

from continuous_training.config import DatasetContract, load_contract
from continuous_training.credentials import endpoint_tokens
from continuous_training.lake import Lake
from continuous_training.predlog import (
    FLAG_COLUMN,
    PredictionLog,
    flagged_counts,
    prediction_schema,
    read_predictions,
)
from continuous_training.serving import app as app_module
from continuous_training.serving.holder import ModelHolder
from continuous_training.serving.request import (
    JSON_EXPECTED,
    RequestError,
    RequestParser,
    columns_from_body,
)
from continuous_training.settings import Settings, load_settings

CONTRACT = load_contract()
FEATURES = CONTRACT.feature_names
KEY = CONTRACT.key
CANARY = "ZQX-canary-7731"
REPO_CONFIG = Path(__file__).resolve().parents[3] / "include" / "config"


def valid_rows(synthetic_rows, n: int = 3, seed: int = 9) -> list[dict[str, Any]]:
    return synthetic_rows(n, seed).to_dict(orient="records")


def body(**payload: Any) -> bytes:
    return orjson.dumps(payload)


def refused(parser: RequestParser, raw: bytes) -> RequestError:
    with pytest.raises(RequestError) as caught:
        parser.parse(raw)
    error = caught.value
    text = orjson.dumps(error.body("rid")).decode()
    assert CANARY not in text, text
    assert error.expected, "every refusal names what was expected"
    return error


@pytest.fixture(scope="module")
def parser() -> RequestParser:
    return RequestParser(CONTRACT, max_rows=100, out_of_range="score")


@pytest.fixture(scope="module")
def rejecting() -> RequestParser:
    return RequestParser(CONTRACT, max_rows=100, out_of_range="reject")


# ------------------------------------------------------------------------------ 400: not UTF-8 JSON


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b'{"rows": [{"age": ' + CANARY.encode() + b"}]}", "is not valid JSON"),
        (b'{"rows": [{"age": NaN}]}', "is not valid JSON"),
        (b'{"rows": [{"age": Infinity}]}', "is not valid JSON"),
        (b'{"rows": [{"age": -Infinity}]}', "is not valid JSON"),
        (b'{"rows": [{"age": 1e400}]}', "too large for a 64-bit float"),
        (b'{"rows": [{"region": "' + CANARY.encode() + b'\xff\xfe"}]}', "is not valid UTF-8"),
        (b'{"rows": [{"region": "\xed\xa0\x80' + CANARY.encode() + b'"}]}', "is not valid UTF-8"),
        (b"\xef\xbb\xbf{}", "byte order mark"),
        (b"[" * 100_000 + b"]" * 100_000, "nests deeper than 1024 levels"),
        (b"", "is not valid JSON"),
    ],
    ids=[
        "garbage",
        "nan",
        "infinity",
        "minus-infinity",
        "huge",
        "latin1",
        "surrogate",
        "bom",
        "deep",
        "empty",
    ],
)
def test_a_body_that_is_not_utf8_json_is_400_without_the_parser_message(
    parser: RequestParser, raw: bytes, problem: str
) -> None:
    error = refused(parser, raw)
    assert error.status == 400
    assert problem in str(error)
    assert error.expected == JSON_EXPECTED
    assert (error.row, error.column) == (None, None)


# -------------------------------------------------------------------------------- 413: too many rows


@pytest.mark.parametrize("fmt", ["rows", "dataframe_records", "dataframe_split"])
def test_more_rows_than_the_limit_is_413_before_any_row_is_looked_at(parser: RequestParser, fmt: str) -> None:
    # 100,000 rows that are not even rows: the count is checked first, right after parsing.
    if fmt == "dataframe_split":
        raw = body(dataframe_split={"columns": [CANARY], "data": [[CANARY]] * 100_000})
    else:
        raw = body(**{fmt: [CANARY] * 100_000})
    error = refused(parser, raw)
    assert error.status == 413
    assert error.expected == "at most 100 rows"


def test_the_row_limit_is_inclusive(synthetic_rows) -> None:
    rows = valid_rows(synthetic_rows, 4)
    assert RequestParser(CONTRACT, max_rows=4).parse(body(rows=rows)).n_rows == 4
    assert refused(RequestParser(CONTRACT, max_rows=3), body(rows=rows)).status == 413
    with pytest.raises(RequestError) as caught:
        columns_from_body(body(rows=rows), CONTRACT, max_rows=3)
    assert caught.value.status == 413


# ------------------------------------------------------------------------ 422: structure and types


def _with(rows: list[dict[str, Any]], i: int, column: str, value: Any) -> list[dict[str, Any]]:
    rows[i][column] = value
    return rows


@pytest.mark.parametrize(
    ("case", "row", "column", "message"),
    [
        ((1, "annual_income", CANARY), 1, "annual_income", "expected a number, got a string"),
        ((2, "age", None), 2, "age", "expected a number, got null"),
        ((1, "age", True), 1, "age", "got a boolean"),
        ((0, "age", 30.5), 0, "age", "expected an integer, got a number with a fractional part"),
        ((2, "region", 3), 2, "region", "expected a string (known values: north"),
        ((0, "region", {CANARY: CANARY}), 0, "region", "got an object"),
        ((1, "loan_purpose", [CANARY]), 1, "loan_purpose", "got a list"),
    ],
    ids=["string-number", "null-number", "bool-number", "fractional", "number-category", "object", "list"],
)
def test_a_wrong_type_is_422_naming_row_column_and_type_never_the_value(
    parser: RequestParser, synthetic_rows, case: tuple, row: int, column: str, message: str
) -> None:
    error = refused(parser, body(rows=_with(valid_rows(synthetic_rows), *case)))
    assert error.status == 422
    assert (error.row, error.column) == (row, column)
    assert message in str(error)
    assert f"row {row}" in str(error)


@pytest.mark.parametrize(
    ("payload", "row", "column", "message"),
    [
        ({CANARY: []}, None, None, "exactly one of"),
        ({"rows": [], "dataframe_records": [], CANARY: 1}, None, None, "got an object with 2 of them"),
        ({"rows": {CANARY: 1}}, None, None, "list of row objects, got an object"),
        ({"rows": [CANARY]}, 0, None, "expected an object of column -> value, got a string"),
        ({"rows": []}, None, None, "has no rows"),
        ({"rows": [{CANARY: 1}]}, 0, "age", "missing feature column 'age'"),
        ({"dataframe_split": {"columns": [CANARY], "data": [[1]]}}, 0, "age", "missing feature"),
        (
            {"dataframe_split": {"columns": FEATURES, "data": [[CANARY, 2]]}},
            0,
            None,
            "got a list of 2 values",
        ),
        ({"dataframe_split": {"columns": FEATURES, "data": [CANARY]}}, 0, None, "got a string"),
        ({"dataframe_split": [CANARY]}, None, None, "'columns' and 'data', got a list"),
        ({"dataframe_split": {"columns": [1], "data": []}}, None, None, "list of column names"),
    ],
    ids=[
        "unknown-format",
        "two-formats",
        "rows-not-list",
        "row-not-object",
        "no-rows",
        "missing-column",
        "split-missing-column",
        "split-short-row",
        "split-row-not-list",
        "split-not-object",
        "split-bad-columns",
    ],
)
def test_a_wrong_structure_is_422_without_client_column_names(
    parser: RequestParser, payload: dict, row: int | None, column: str | None, message: str
) -> None:
    error = refused(parser, orjson.dumps(payload))
    assert error.status == 422
    assert (error.row, error.column) == (row, column)
    assert message in str(error)


def test_a_row_of_ten_thousand_unknown_columns_is_422_naming_a_contract_column(parser: RequestParser) -> None:
    error = refused(parser, body(rows=[{f"{CANARY}-{i}": i for i in range(10_000)}]))
    assert (error.status, error.row, error.column) == (422, 0, FEATURES[0])


def test_extra_columns_are_ignored_and_the_key_is_kept(parser: RequestParser, synthetic_rows) -> None:
    rows = valid_rows(synthetic_rows, 2)
    rows[0].update({f"{CANARY}-{i}": i for i in range(10_000)})
    rows[1].pop(KEY)
    parsed = parser.parse(body(rows=rows))
    assert list(parsed.columns) == [*FEATURES, KEY]
    assert parsed.columns[KEY].tolist() == [rows[0][KEY], None]
    assert all(parsed.columns[c].dtype == np.float64 for c in CONTRACT.numeric_features)
    assert parsed.flagged is None
    assert parsed.flagged_rows() == []
    assert parsed.flag_column() is None


def test_the_parser_gives_the_columns_columns_from_body_gives(parser: RequestParser, synthetic_rows) -> None:
    raw = body(dataframe_records=valid_rows(synthetic_rows, 5))
    parsed = parser.parse(raw)
    columns, n = columns_from_body(raw, CONTRACT)
    assert n == parsed.n_rows == 5
    assert list(columns) == list(parsed.columns)
    for name in columns:
        assert np.array_equal(columns[name], parsed.columns[name])


# ----------------------------------------------------------------------- values outside the contract


def _outside(synthetic_rows) -> list[dict[str, Any]]:
    rows = valid_rows(synthetic_rows, 5)
    rows[1]["age"] = 17  # below min 18
    rows[3]["annual_income"] = 2_000_000.5  # above max
    rows[3]["region"] = CANARY  # an unseen category
    rows[4]["age"] = 100  # exactly max: inside
    rows[4]["interest_rate"] = 0.0  # exactly min: inside
    return rows


def test_score_flags_rows_outside_the_contract_without_values(parser: RequestParser, synthetic_rows) -> None:
    parsed = parser.parse(body(rows=_outside(synthetic_rows)))
    assert parsed.n_rows == 5
    assert set(parsed.flagged) == {"age", "annual_income", "region"}
    assert parsed.flagged["age"].tolist() == [False, True, False, False, False]
    rows = parsed.flagged_rows()
    assert rows == [{"row": 1, "columns": ["age"]}, {"row": 3, "columns": ["annual_income", "region"]}]
    assert parsed.flag_column().tolist() == [None, "age", None, "annual_income,region", None]
    assert parsed.columns["region"][3] == CANARY  # scored as sent (the model treats it as unseen)


def test_reject_names_the_first_row_and_column_and_the_range(
    rejecting: RequestParser, synthetic_rows
) -> None:
    error = refused(rejecting, body(rows=_outside(synthetic_rows)))
    assert (error.status, error.row, error.column) == (422, 1, "age")
    assert error.expected == "a number between 18 and 100"
    assert "17" not in str(error)


def test_reject_names_the_allowed_categories(rejecting: RequestParser, synthetic_rows) -> None:
    rows = valid_rows(synthetic_rows, 3)
    rows[2]["home_ownership"] = CANARY
    error = refused(rejecting, body(rows=rows))
    assert (error.row, error.column) == (2, "home_ownership")
    assert error.expected == "one of RENT, OWN, MORTGAGE, OTHER"


def test_values_inside_the_contract_pass_reject(rejecting: RequestParser, synthetic_rows) -> None:
    assert rejecting.parse(body(rows=valid_rows(synthetic_rows, 50))).flagged is None


def _contract_with(**changes: dict[str, Any]) -> DatasetContract:
    columns = tuple(
        dataclasses.replace(c, **changes[c.name]) if c.name in changes else c for c in CONTRACT.columns
    )
    return dataclasses.replace(CONTRACT, columns=columns)


def test_null_in_a_nullable_column_is_missing_not_out_of_range(synthetic_rows) -> None:
    contract = _contract_with(age={"nullable": True}, region={"nullable": True})
    rows = valid_rows(synthetic_rows, 2)
    rows[0]["age"], rows[1]["region"] = None, None
    parsed = RequestParser(contract, out_of_range="reject").parse(body(rows=rows))
    assert np.isnan(parsed.columns["age"][0])
    assert parsed.columns["region"][1] is None
    assert parsed.flagged is None


def test_without_bounds_any_finite_number_is_inside_and_a_non_finite_one_outside(synthetic_rows) -> None:
    contract = _contract_with(savings_balance={"min": None, "max": None})
    parser = RequestParser(contract)
    rows = valid_rows(synthetic_rows, 2)
    rows[0]["savings_balance"] = -1e300
    parsed = parser.parse(body(rows=rows))
    assert parsed.flagged is None
    # orjson refuses NaN/Infinity literals and numbers beyond a double (400), so no request holds
    # one; the check guards the columns anyway.
    numeric = [c.name for c in contract.features if c.is_numeric]
    numbers = np.vstack([parsed.columns[name] for name in numeric])
    numbers[numeric.index("savings_balance"), 1] = np.inf
    text = {c.name: list(parsed.columns[c.name]) for c in contract.features if not c.is_numeric}
    flagged = parser._out_of_range(numbers, text, 2)
    assert list(flagged) == ["savings_balance"]
    assert flagged["savings_balance"].tolist() == [False, True]


def test_an_unknown_action_is_refused() -> None:
    with pytest.raises(ValueError, match="out_of_range"):
        RequestParser(CONTRACT, out_of_range="ignore")


# ---------------------------------------------------------------------- the prediction log's flags


def test_flags_reach_the_prediction_log_and_old_files_stay_readable(
    lake: Lake, parser: RequestParser, synthetic_rows
) -> None:
    served_at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    plog = PredictionLog(lake, contract=CONTRACT)
    flagged = parser.parse(body(rows=_outside(synthetic_rows)))
    clean = parser.parse(body(rows=valid_rows(synthetic_rows, 2)))
    for request_id, parsed in (("flagged", flagged), ("clean", clean)):
        plog.append(
            parsed.columns,
            np.full(parsed.n_rows, 0.5),
            request_id=request_id,
            model_name="m",
            model_version="1",
            served_at=served_at,
            out_of_range=parsed.flag_column(),
        )
    assert plog.flush() == 7
    # A file written before the column existed: the same rows, without it.
    other = Lake(lake.root.parent / "other-lake")
    before = PredictionLog(other, contract=CONTRACT)
    before.append(
        clean.columns,
        np.full(2, 0.5),
        request_id="clean",
        model_name="m",
        model_version="1",
        served_at=served_at,
    )
    before.flush()
    (written,) = other.predictions("2026-03-01").glob("part-*.parquet")
    table = pq.read_table(written)
    table = table.drop_columns([FLAG_COLUMN])
    assert table.schema.names == [n for n in prediction_schema(CONTRACT).names if n != FLAG_COLUMN]
    pq.write_table(table, lake.predictions("2026-03-01") / "part-0-old.parquet")

    got = read_predictions(
        lake, served_at - timedelta(hours=1), served_at + timedelta(hours=1), contract=CONTRACT
    )
    assert len(got) == 9
    by_request = got.groupby("request_id")[FLAG_COLUMN].apply(list).to_dict()
    assert by_request["flagged"] == [None, "age", None, "annual_income,region", None]
    assert by_request["clean"] == [None, None, None, None]  # two rows logged now, two from the old file
    assert flagged_counts(got) == {"rows": 2, "age": 1, "annual_income": 1, "region": 1}
    assert flagged_counts(got.drop(columns=[FLAG_COLUMN])) == {"rows": 0}


def test_a_flag_column_of_the_wrong_length_is_refused(
    lake: Lake, parser: RequestParser, synthetic_rows
) -> None:
    parsed = parser.parse(body(rows=valid_rows(synthetic_rows, 2)))
    with pytest.raises(ValueError, match="out-of-range flags"):
        PredictionLog(lake, contract=CONTRACT).append(
            parsed.columns,
            [0.1, 0.2],
            request_id="r",
            model_name="m",
            model_version="1",
            out_of_range=["age"],
        )


# ------------------------------------------------------------------------------- the app's defences


def _settings(tmp_path: Path, **serving: Any) -> Settings:
    """Settings of an app of its own: the shipped contract and a policy with these ``serving`` values."""
    config = tmp_path / "config"
    config.mkdir(parents=True)
    shutil.copy(REPO_CONFIG / "dataset.yaml", config / "dataset.yaml")
    policy = yaml.safe_load((REPO_CONFIG / "policy.yaml").read_text())
    policy["serving"] = {**policy.get("serving", {}), **serving}
    (config / "policy.yaml").write_text(yaml.safe_dump(policy))
    return load_settings(
        {
            "CT_HOME": str(tmp_path / "home"),
            "CT_LAKE": str(tmp_path / "lake"),
            "CT_CONFIG_DIR": str(config),
            # Nothing listens there: these tests never start the lifespan (no registry polling).
            "CT_MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
        }
    )


def _scores(columns: dict[str, np.ndarray], n_rows: int) -> np.ndarray:
    return np.full(n_rows, 0.25)


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[..., TestClient]:
    """``serve(**serving)``: a TestClient on an app whose holder serves a stand-in model (no lifespan)."""
    model = SimpleNamespace(name="m", version="7", scorer=_scores, scorer_kind="compiled")
    monkeypatch.setattr(ModelHolder, "current", property(lambda self: model))
    monkeypatch.setattr(ModelHolder, "check", lambda self, force=False: model)
    made: list[Settings] = []

    def make(**serving: Any) -> TestClient:
        settings = _settings(tmp_path / str(len(made)), **serving)
        made.append(settings)
        client = TestClient(app_module.create_app(settings), client=("192.0.2.7", 4321))
        client.settings = settings  # type: ignore[attr-defined]
        return client

    return make


def _no_echo(response: Any) -> dict[str, Any]:
    text = response.text
    assert CANARY not in text, text
    assert "Traceback" not in text, text
    assert 'File "' not in text, text
    assert response.headers["X-Request-ID"], "every answer carries a request id"
    payload = response.json()
    assert payload["request_id"] == response.headers["X-Request-ID"]
    return payload


def test_a_valid_request_is_scored_with_no_flags(serve, synthetic_rows) -> None:
    client = serve()
    response = client.post("/predict", json={"rows": valid_rows(synthetic_rows, 2)})
    assert response.status_code == 200, response.text
    payload = response.json()
    assert payload["predictions"] == [0.25, 0.25]
    assert payload["flagged"] == []
    assert response.headers.get("connection") != "close"


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        (None, 415),
        ("text/plain", 415),
        (f"text/{CANARY}", 415),
        ("application/x-www-form-urlencoded", 415),
        ("application/json; charset=latin-1", 415),
        (f"application/json; charset={CANARY}", 415),
        ("application/json", 200),
        ("application/json; charset=utf-8", 200),
        ("Application/JSON; charset=UTF-8", 200),
        ('application/json;charset="utf-8"', 200),
    ],
)
def test_only_json_in_utf8_is_accepted(serve, synthetic_rows, content_type: str | None, status: int) -> None:
    client = serve()
    headers = {} if content_type is None else {"Content-Type": content_type}
    response = client.post("/predict", content=body(rows=valid_rows(synthetic_rows, 1)), headers=headers)
    assert response.status_code == status, response.text
    if status == 415:
        error = _no_echo(response)
        assert "application/json" in error["expected"]
        assert response.headers["connection"] == "close"


def test_a_declared_length_over_the_limit_is_413_before_reading(serve) -> None:
    client = serve(max_body_bytes=1000)
    response = client.post(
        "/predict", content=b"{" + b" " * 2000 + b"}", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413
    error = _no_echo(response)
    assert error["expected"] == "a body of at most 1000 bytes"
    assert response.headers["connection"] == "close"


def _request(chunks: list[bytes], headers: dict[str, str]) -> tuple[Request, list[int]]:
    """A Starlette request whose body arrives in ``chunks`` (as uvicorn hands a chunked body over)."""
    received: list[int] = []

    async def receive() -> dict[str, Any]:
        i = len(received)
        received.append(i)
        if i >= len(chunks):
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": chunks[i], "more_body": i < len(chunks) - 1}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/predict",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    return Request(scope, receive), received


def _read(request: Request, limit: int) -> bytes:
    return asyncio.run(app_module._read_body(request, limit))


def test_a_streamed_body_is_read_only_up_to_the_limit() -> None:
    chunks = [b"x" * 1000] * 100  # 100 KB, chunked: no Content-Length
    request, received = _request(chunks, {"content-type": "application/json"})
    with pytest.raises(RequestError) as caught:
        _read(request, 4500)
    assert caught.value.status == 413
    assert len(received) == 5  # the fifth chunk passed the limit; nothing after it was read
    # An under-declared Content-Length does not get past the counter either.
    request, received = _request(chunks, {"content-length": "10"})
    with pytest.raises(RequestError):
        _read(request, 4500)
    assert len(received) == 5
    # Within the limit (inclusive), the body is whole.
    request, _ = _request([b"ab", b"cd", b""], {})
    assert _read(request, 4) == b"abcd"


def test_a_declared_length_over_the_limit_reads_nothing() -> None:
    request, received = _request([b"x" * 10], {"content-length": "4194305"})
    with pytest.raises(RequestError) as caught:
        _read(request, 4 * 1024 * 1024)
    assert caught.value.status == 413
    assert received == []
    request, received = _request([b"x"], {"content-length": "12abc"})
    with pytest.raises(RequestError) as caught:
        _read(request, 100)
    assert caught.value.status == 400
    assert received == []


def test_the_row_limit_of_the_policy_is_413(serve, synthetic_rows) -> None:
    client = serve(max_rows=2)
    response = client.post("/predict", json={"rows": valid_rows(synthetic_rows, 3)})
    assert response.status_code == 413
    assert _no_echo(response)["expected"] == "at most 2 rows"


def test_bad_json_is_400_and_a_wrong_type_422_without_the_value(serve, synthetic_rows) -> None:
    client = serve()
    response = client.post(
        "/predict",
        content=b'{"rows": [' + CANARY.encode() + b"]}",
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert _no_echo(response)["expected"] == JSON_EXPECTED
    rows = valid_rows(synthetic_rows, 2)
    rows[1]["credit_score"] = CANARY
    rows[0][CANARY] = CANARY
    response = client.post("/predict", json={"rows": rows}, headers={"X-Request-ID": "bad-type"})
    assert response.status_code == 422
    error = _no_echo(response)
    assert (error["request_id"], error["row"], error["column"], error["expected"]) == (
        "bad-type",
        1,
        "credit_score",
        "a number",
    )
    assert "got a string" in error["error"]
    assert response.headers.get("connection") != "close"  # the body was read: the connection stays


def test_a_malformed_request_id_is_refused_without_echoing_it(serve, synthetic_rows) -> None:
    client = serve()
    response = client.post(
        "/predict", json={"rows": valid_rows(synthetic_rows, 1)}, headers={"X-Request-ID": CANARY * 20}
    )
    assert response.status_code == 422
    error = _no_echo(response)
    assert "X-Request-ID" in error["error"]
    assert error["request_id"] != CANARY * 20


def test_out_of_range_rows_are_scored_flagged_and_logged(serve, synthetic_rows) -> None:
    client = serve()
    started = datetime.now(UTC)
    response = client.post(
        "/predict", json={"rows": _outside(synthetic_rows)}, headers={"X-Request-ID": "oor"}
    )
    assert response.status_code == 200, response.text
    payload = _no_echo(response)
    assert payload["predictions"] == [0.25] * 5
    assert payload["flagged"] == [
        {"row": 1, "columns": ["age"]},
        {"row": 3, "columns": ["annual_income", "region"]},
    ]
    client.app.state.predlog.flush()
    logged = read_predictions(
        Lake(client.settings.lake), started - timedelta(seconds=1), datetime.now(UTC) + timedelta(seconds=1)
    )
    assert logged[FLAG_COLUMN].tolist() == [None, "age", None, "annual_income,region", None]


def test_out_of_range_rows_are_rejected_when_the_policy_says_so(serve, synthetic_rows) -> None:
    client = serve(out_of_range="reject")
    response = client.post("/predict", json={"rows": _outside(synthetic_rows)})
    assert response.status_code == 422
    error = _no_echo(response)
    assert (error["row"], error["column"], error["expected"]) == (1, "age", "a number between 18 and 100")
    assert client.app.state.predlog.buffered_rows == 0


def test_a_failure_is_a_fixed_500_and_the_details_go_to_the_log(
    serve, synthetic_rows, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(columns: dict[str, np.ndarray], n_rows: int) -> np.ndarray:
        raise RuntimeError(f"scorer exploded near {CANARY}")

    client = serve()
    model = SimpleNamespace(name="m", version="7", scorer=broken, scorer_kind="compiled")
    monkeypatch.setattr(ModelHolder, "current", property(lambda self: model))
    response = client.post(
        "/predict", json={"rows": valid_rows(synthetic_rows, 1)}, headers={"X-Request-ID": "boom"}
    )
    assert response.status_code == 500
    error = _no_echo(response)
    assert error["request_id"] == "boom"
    assert "RuntimeError" not in response.text
    assert CANARY in caplog.text  # the server side has it all


def test_no_model_is_503_without_the_registry_error(
    serve, synthetic_rows, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = serve()
    monkeypatch.setattr(ModelHolder, "current", property(lambda self: None))
    monkeypatch.setattr(ModelHolder, "last_error", property(lambda self: f"registry said {CANARY}"))
    response = client.post("/predict", json={"rows": valid_rows(synthetic_rows, 1)})
    assert response.status_code == 503
    assert "retry later" in _no_echo(response)["error"]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", f"/{CANARY}", 404),
        ("POST", f"/predict/{CANARY}?{CANARY}=1", 404),
        ("GET", "/predict", 405),
        ("PUT", f"/health?{CANARY}", 405),
        ("DELETE", "/reload", 405),
    ],
)
def test_starlette_errors_carry_nothing_of_the_request(serve, method: str, path: str, status: int) -> None:
    client = serve()
    response = client.request(method, path, content=CANARY.encode(), headers={"X-Request-ID": "routing"})
    assert response.status_code == status
    error = _no_echo(response)
    assert error["request_id"] == "routing"
    assert "/predict" in error["expected"]
    if status == 405:
        assert response.headers["allow"]


def test_reload_needs_the_admin_token(serve) -> None:
    client = serve()
    token = endpoint_tokens(client.settings)["admin_token"]
    missing = client.post("/reload")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert "admin_token" in _no_echo(missing)["expected"]
    for wrong in (
        f"Bearer {CANARY}",
        f"Basic {token}",
        f"Bearer {token}x",
        "Bearer",
        f"Bearer \xe9{CANARY}".encode("latin-1"),
    ):
        response = client.post("/reload", headers={"Authorization": wrong})
        assert response.status_code == 401, wrong
        assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
        _no_echo(response)
    # From any address (the client here is 192.0.2.7): the token is the authentication.
    response = client.post("/reload", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    assert response.json()["model_name"]
    assert client.post("/reload", headers={"Authorization": f"bearer {token}"}).status_code == 200


def test_predict_needs_the_predict_token_only_when_the_policy_says_so(serve, synthetic_rows) -> None:
    rows = {"rows": valid_rows(synthetic_rows, 1)}
    open_client = serve()
    assert open_client.post("/predict", json=rows).status_code == 200

    client = serve(require_token=True)
    tokens = endpoint_tokens(client.settings)
    missing = client.post("/predict", json=rows)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert missing.headers["connection"] == "close"
    assert "predict_token" in _no_echo(missing)["expected"]
    for wrong in (tokens["admin_token"], CANARY):
        response = client.post("/predict", json=rows, headers={"Authorization": f"Bearer {wrong}"})
        assert response.status_code == 401
        _no_echo(response)
    # The token is checked before anything else of the request: no content type, still 401.
    assert client.post("/predict", content=b"x").status_code == 401
    ok = client.post("/predict", json=rows, headers={"Authorization": f"Bearer {tokens['predict_token']}"})
    assert ok.status_code == 200, ok.text
    assert client.get("/health").status_code == 200  # /health stays open


def test_tokens_and_policy_are_read_once(serve, synthetic_rows, monkeypatch: pytest.MonkeyPatch) -> None:
    client = serve(require_token=True)
    token = endpoint_tokens(client.settings)["predict_token"]

    def no_reads(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a request read a file")

    monkeypatch.setattr(app_module, "endpoint_tokens", no_reads)
    monkeypatch.setattr(app_module, "load_policy", no_reads)
    monkeypatch.setattr(Path, "read_text", no_reads)
    headers = {"Authorization": f"Bearer {token}"}
    assert (
        client.post("/predict", json={"rows": valid_rows(synthetic_rows, 1)}, headers=headers).status_code
        == 200
    )
