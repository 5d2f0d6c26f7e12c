"""A seeded loan-application source with a known truth: the project's own data for demos and tests.

It plays the systems around the pipeline:

* the **source system** that exports one labelled CSV per day into the landing folder
  (:func:`land_day`), optionally late (label delay) and optionally broken (bad batches);
* the **clients** that send the day's applications to the prediction endpoint (:func:`send_traffic`).

Every value is drawn from ``np.random.default_rng([seed, day.toordinal(), stream])``, so a day's data
depends only on the seed and the date: re-running a simulation reproduces the same bytes.

The generative story (see :func:`generate_day`): age drives employment, tenure and credit history;
employment and age drive income; income drives the loan amount, savings and debt; the credit score is
anti-correlated with late payments, inquiries and card utilisation, and sets the interest rate. The
label ``defaulted`` is drawn from a non-linear logistic function (thresholds on credit score, debt to
income and utilisation, a loan-to-income x employment interaction, a young-borrower effect).

Knobs, each off by default:

* covariate shift (``drift_from``, ``drift_strength``) on exactly :data:`DRIFT_COLUMNS`. Only those
  columns' distributions change; P(defaulted | features) does not, so the label rate moves only
  through the drifted features (that is what covariate shift means);
* concept drift (``concept_drift_from``): P(defaulted | features) changes, the features do not;
* label delay (``label_delay_days``): the labelled batch of day D lands when day D + delay is simulated;
* bad batches (``bad_days``): one of :data:`BAD_BATCH_KINDS` applied to a day's landing file.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from continuous_training.config import DatasetContract, load_contract
from continuous_training.frames import contract_dtypes
from continuous_training.lake import Lake

log = logging.getLogger(__name__)

#: The columns the covariate shift changes, and how (strength 1):
#: ``interest_rate`` mean +1.5 points (a rate rise), ``revolving_utilization`` spread x1.5 around the same
#: mean (a change of scale, not of mean), ``savings_balance`` mixture weights (the share of applicants
#: with almost no savings goes from 25% to 50%), ``application_channel`` shuffled probabilities with a
#: rare level (broker) gaining weight. Nothing else is derived from these columns.
DRIFT_COLUMNS: tuple[str, ...] = (
    "interest_rate",
    "revolving_utilization",
    "savings_balance",
    "application_channel",
)

BAD_BATCH_KINDS: tuple[str, ...] = (
    "missing_column",
    "wrong_type",
    "nulls",
    "out_of_range",
    "duplicates",
    "empty_file",
)

#: Volume relative to ``rows_per_day``, Monday first: busy start of the week, quiet weekends.
WEEKDAY_FACTORS: tuple[float, ...] = (1.10, 1.05, 1.00, 1.00, 0.90, 0.45, 0.30)

TARGET = "defaulted"

_HOME = ("RENT", "OWN", "MORTGAGE", "OTHER")
_PURPOSE = (
    "debt_consolidation",
    "credit_card",
    "home_improvement",
    "car",
    "medical",
    "small_business",
    "other",
)
_PURPOSE_P = (0.36, 0.20, 0.12, 0.13, 0.06, 0.05, 0.08)
_EMPLOYMENT = ("salaried", "self_employed", "contract", "unemployed", "retired")
_REGION = ("north", "south", "east", "west", "central")
_REGION_P = (0.22, 0.28, 0.18, 0.20, 0.12)
_CHANNEL = ("web", "mobile", "branch", "broker")
_CHANNEL_P = (0.45, 0.30, 0.18, 0.07)
_CHANNEL_P_DRIFTED = (0.22, 0.45, 0.08, 0.25)
_LEVELS = {
    "home_ownership": _HOME,
    "loan_purpose": _PURPOSE,
    "employment_type": _EMPLOYMENT,
    "region": _REGION,
    "application_channel": _CHANNEL,
}
_TERMS = (12, 24, 36, 48, 60, 72, 84)
_TERMS_P = (0.08, 0.14, 0.34, 0.12, 0.22, 0.06, 0.04)

# Covariate shift at strength 1 (see DRIFT_COLUMNS).
_RATE_SHIFT = 1.5
_UTIL_MEAN = 0.42
_UTIL_SCALE = 1.5
_LOW_SAVINGS_P = 0.25
_LOW_SAVINGS_P_DRIFTED = 0.50

#: The column names (in contract order) the simulator produces.
SIMULATED_COLUMNS: tuple[str, ...] = (
    "application_id",
    "applied_at",
    "age",
    "annual_income",
    "loan_amount",
    "loan_term_months",
    "interest_rate",
    "credit_score",
    "debt_to_income",
    "num_open_accounts",
    "num_credit_inquiries",
    "years_employed",
    "num_late_payments",
    "revolving_utilization",
    "savings_balance",
    "monthly_debt_payment",
    "credit_history_years",
    "home_ownership",
    "loan_purpose",
    "employment_type",
    "region",
    "application_channel",
    TARGET,
)


@dataclass(frozen=True)
class SimulatorConfig:
    """Knobs of the simulated source; every one is off by default.

    Attributes:
        seed: the seed; together with the day it fixes every value.
        rows_per_day: expected weekday volume; the weekly pattern of :data:`WEEKDAY_FACTORS` and
            Poisson noise are applied to it.
        drift_from: covariate shift of :data:`DRIFT_COLUMNS` on and after this day.
        drift_strength: 0 = no shift, 1 = the documented shift; values in between interpolate.
        bad_days: ``{"YYYY-MM-DD": kind}`` with kinds from :data:`BAD_BATCH_KINDS`, applied to that
            day's landing file (the data day, not the day it lands).
        label_delay_days: the labelled batch of day D lands when day D + delay is simulated.
        concept_drift_from: from this day on, P(defaulted | features) changes (features do not).
    """

    seed: int = 42
    rows_per_day: int = 1500
    drift_from: date | None = None
    drift_strength: float = 1.0
    bad_days: Mapping[str, str] = field(default_factory=dict)
    label_delay_days: int = 0
    concept_drift_from: date | None = None

    def __post_init__(self) -> None:
        if self.rows_per_day < 0:
            raise ValueError(f"SimulatorConfig.rows_per_day: expected a count >= 0, got {self.rows_per_day}")
        if self.drift_strength < 0:
            raise ValueError(f"SimulatorConfig.drift_strength: expected >= 0, got {self.drift_strength}")
        if self.label_delay_days < 0:
            raise ValueError(f"SimulatorConfig.label_delay_days: expected >= 0, got {self.label_delay_days}")
        for day, kind in self.bad_days.items():
            date.fromisoformat(str(day))  # raises ValueError naming the bad string
            if kind not in BAD_BATCH_KINDS:
                raise ValueError(
                    f"SimulatorConfig.bad_days[{day!r}]: kind {kind!r} is not one of {list(BAD_BATCH_KINDS)}"
                )


def _as_date(day: date | str) -> date:
    return day if isinstance(day, date) else date.fromisoformat(str(day))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _pick_index(u: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Inverse-CDF draw of level indices: the same uniforms map to levels under any probabilities, so
    changing the probabilities moves only the rows that must move. ``probs`` is one row of weights or
    one row per draw."""
    probs = np.broadcast_to(probs, (len(u), probs.shape[-1]))
    cdf = np.cumsum(probs / probs.sum(axis=1, keepdims=True), axis=1)
    return (u[:, None] > cdf).sum(axis=1).clip(0, probs.shape[-1] - 1)


def _pick(u: np.ndarray, levels: tuple[str, ...], probs: np.ndarray) -> np.ndarray:
    return np.asarray(levels, dtype=object)[_pick_index(u, np.asarray(probs, dtype=float))]


def day_volume(day: date, config: SimulatorConfig) -> int:
    """Number of applications on ``day``: weekday pattern times Poisson noise, deterministic per seed.

    Args:
        day: the data day.
        config: the simulator's knobs (``seed``, ``rows_per_day``).

    Returns:
        The row count (at least 1 unless ``rows_per_day`` is 0).
    """
    expected = config.rows_per_day * WEEKDAY_FACTORS[day.weekday()]
    if expected <= 0:
        return 0
    rng = np.random.default_rng([config.seed, day.toordinal(), 0])
    return max(1, int(rng.poisson(expected)))


def _check_contract(contract: DatasetContract) -> None:
    names = contract.column_names
    missing = sorted(set(SIMULATED_COLUMNS) - set(names))
    extra = sorted(set(names) - set(SIMULATED_COLUMNS))
    if missing or extra:
        raise ValueError(
            f"dataset contract {contract.name!r}: the simulator generates the loan-application columns "
            f"{list(SIMULATED_COLUMNS)}; the contract lacks {missing} and has unknown {extra}"
        )
    for col in contract.columns:
        if col.name in _LEVELS:
            unknown = sorted(set(_LEVELS[col.name]) - {str(v) for v in col.values or ()})
            if unknown:
                raise ValueError(
                    f"dataset contract: column {col.name!r} does not allow {unknown}, which the simulator draws"
                )


def _label_logit(f: dict[str, np.ndarray], concept_drift: bool) -> np.ndarray:
    """The true log-odds of default: thresholds, a hinge and an interaction, on purpose non-linear."""
    monthly_income = f["annual_income"] / 12.0
    loan_to_income = f["loan_amount"] / np.maximum(f["annual_income"], 1.0)
    precarious = np.isin(f["employment_type"], ("contract", "unemployed")).astype(float)
    logit = (
        -2.25
        + 0.012 * np.clip(660.0 - f["credit_score"], -80.0, 250.0)  # steep below ~660, flat above ~740
        + 0.9 * (f["credit_score"] < 580)
        + 0.30 * np.minimum(f["num_late_payments"], 6)
        + 3.0 * np.maximum(f["debt_to_income"] - 0.40, 0.0)
        + 2.2 * np.maximum(f["revolving_utilization"] - 0.65, 0.0)
        + 0.10 * (f["interest_rate"] - 11.0)
        + 2.2 * precarious * np.minimum(loan_to_income, 1.5)
        + 0.55 * (f["age"] < 25)
        - 0.22 * np.log1p(f["savings_balance"] / np.maximum(monthly_income, 1.0))
        + 0.08 * np.minimum(f["num_credit_inquiries"], 8)
        + 0.50 * (f["loan_purpose"] == "small_business")
        + 0.25 * (f["loan_purpose"] == "medical")
        + 0.30 * (f["application_channel"] == "broker")
        - 0.25 * np.isin(f["home_ownership"], ("OWN", "MORTGAGE"))
        + 0.008 * (f["loan_term_months"] - 36)
    )
    if concept_drift:
        # A regional downturn that hits the self-employed and small businesses; scores matter less.
        logit = (
            logit
            + 1.1 * (f["region"] == "south")
            + 0.9 * (f["employment_type"] == "self_employed")
            + 0.6 * (f["loan_purpose"] == "small_business")
            - 0.006 * np.clip(660.0 - f["credit_score"], -80.0, 250.0)
        )
    return logit


def generate_day(
    day: date | str, config: SimulatorConfig, contract: DatasetContract | None = None
) -> pd.DataFrame:
    """The day's clean, labelled applications, typed as :func:`frames.coerce_to_contract` types them.

    Args:
        day: the data day.
        config: the simulator's knobs; the covariate shift applies if ``day >= drift_from`` and the
            concept drift if ``day >= concept_drift_from``. Bad batches are *not* applied here.
        contract: the dataset contract (default: :func:`config.load_contract`); its ranges bound the
            numeric values and its column order is the frame's order.

    Returns:
        One row per application, sorted by ``applied_at``; ``application_id`` is
        ``A<YYYYMMDD>-<i:06d>``, unique across days.

    Raises:
        ValueError: the contract does not describe the simulated columns.
    """
    day = _as_date(day)
    contract = contract or load_contract()
    _check_contract(contract)
    n = day_volume(day, config)
    rng = np.random.default_rng([config.seed, day.toordinal(), 1])

    # Arrival times: a daytime peak and a thin night, sorted so ids follow time.
    hours = np.where(rng.random(n) < 0.85, rng.normal(13.5, 3.5, n), rng.uniform(0, 24, n)) % 24
    seconds = np.sort((hours * 3600).astype(np.int64).clip(0, 86399))
    start = pd.Timestamp(day.isoformat(), tz="UTC")
    applied_at = start + pd.to_timedelta(seconds, unit="s")

    age = np.clip(np.round(18 + rng.gamma(3.2, 7.5, n)), 18, 100)
    # Employment depends on age (retirement); unconditional shares ~ 60/14/13/5/8 %.
    old = _sigmoid((age - 64.0) / 2.5)
    emp_p = np.column_stack(
        [
            0.66 * (1 - old),
            0.15 * (1 - old) + 0.03 * old,
            0.14 * (1 - old),
            0.05 * (1 - old) + 0.02 * old,
            0.95 * old,
        ]
    )
    employment = _pick(rng.random(n), _EMPLOYMENT, emp_p)
    tenure_share = rng.beta(2.0, 2.6, n)
    years_employed = np.where(employment == "unemployed", rng.exponential(0.4, n), (age - 18) * tenure_share)
    years_employed = np.clip(np.round(years_employed, 1), 0.0, 60.0)
    credit_history = np.clip(
        np.round((age - 18) * rng.beta(5.0, 2.0, n) + rng.exponential(0.8, n), 1), 0.0, 80.0
    )

    career = -0.00045 * (age - 50.0) ** 2
    emp_effect = (
        pd.Series(employment)
        .map(
            {"salaried": 0.0, "self_employed": 0.10, "contract": -0.12, "unemployed": -1.05, "retired": -0.35}
        )
        .to_numpy(dtype=float)
    )
    income = np.exp(11.05 + career + emp_effect + rng.normal(0.0, 0.42, n))
    income = np.clip(np.round(income, -1), 0.0, 2_000_000.0)

    z_credit = rng.normal(0.0, 1.0, n)
    credit_score = np.round(
        672 + 58 * z_credit + 1.6 * np.minimum(credit_history, 30) - 16 + 6 * rng.normal(0, 1, n)
    )
    credit_score = np.clip(credit_score, 300, 850)
    cs = (credit_score - 680.0) / 60.0
    late = np.clip(rng.poisson(np.exp(-0.35 - 0.85 * cs)), 0, 60)
    inquiries = np.clip(rng.poisson(np.exp(0.45 - 0.30 * cs)), 0, 40)
    open_accounts = np.clip(rng.poisson(2.5 + 0.28 * credit_history + 0.4 * (income > 90_000)), 0, 60)
    # Centred on z_credit (mean 0), so _UTIL_MEAN is the population mean the scale change keeps.
    utilization = _UTIL_MEAN - 0.08 * z_credit + rng.normal(0.0, 0.13, n)

    home_logits = np.column_stack(
        [
            0.9 - 0.03 * (age - 40),  # RENT: the young
            -1.2 + 0.045 * (age - 40),  # OWN outright: the old
            0.4 + 0.9 * np.log(income / 60_000.0).clip(-2, 2),  # MORTGAGE: the well-paid
            np.full(n, -2.8),  # OTHER
        ]
    )
    home_p = np.exp(home_logits)
    home = _pick(rng.random(n), _HOME, home_p)
    region = _pick(rng.random(n), _REGION, np.asarray(_REGION_P))
    purpose = _pick(rng.random(n), _PURPOSE, np.asarray(_PURPOSE_P))
    term = np.asarray(_TERMS)[_pick_index(rng.random(n), np.asarray(_TERMS_P))]

    purpose_size = (
        pd.Series(purpose)
        .map(
            {
                "debt_consolidation": 1.0,
                "credit_card": 0.6,
                "home_improvement": 1.4,
                "car": 1.3,
                "medical": 0.5,
                "small_business": 1.8,
                "other": 0.7,
            }
        )
        .to_numpy(dtype=float)
    )
    loan_amount = income * 0.22 * purpose_size * rng.lognormal(0.0, 0.45, n)
    loan_amount = np.clip(np.round(loan_amount, -2), 500.0, 100_000.0)

    dti_existing = rng.lognormal(
        np.log(0.24) + 0.10 * late.clip(0, 4) + 0.04 * (open_accounts - 6).clip(-4, 8) / 4, 0.45, n
    )
    monthly_debt = np.clip(np.round(dti_existing * income / 12.0, 2), 0.0, 100_000.0)
    dti = np.clip(np.round(monthly_debt * 12.0 / np.maximum(income, 1.0), 4), 0.0, 3.0)

    # Rate set by score and term, plus noise. Only the covariate shift below moves it further.
    interest_rate = 8.1 + 2.1 * np.clip(-cs, -1.5, 4.0) + 0.03 * (term - 36) + rng.normal(0.0, 1.4, n)

    low_savings_u = rng.random(n)
    savings_low = rng.uniform(0.0, 1500.0, n)
    savings_high = income * 0.30 * rng.lognormal(0.0, 0.8, n)
    channel_u = rng.random(n)
    label_u = rng.random(n)
    # Unobserved factors (the applicant's story): caps how well any model can do.
    hidden = rng.normal(0.0, 0.55, n)

    # Covariate shift on DRIFT_COLUMNS only; drawn above from the same uniforms either way, so the
    # undrifted columns of a day are identical with and without drift.
    s = config.drift_strength if config.drift_from is not None and day >= config.drift_from else 0.0
    interest_rate = interest_rate + _RATE_SHIFT * s
    utilization = _UTIL_MEAN + (utilization - _UTIL_MEAN) * (1.0 + (_UTIL_SCALE - 1.0) * s)
    p_low = np.clip(_LOW_SAVINGS_P + (_LOW_SAVINGS_P_DRIFTED - _LOW_SAVINGS_P) * s, 0.0, 1.0)
    savings = np.where(low_savings_u < p_low, savings_low, savings_high)
    channel_p = np.clip(
        np.asarray(_CHANNEL_P) + (np.asarray(_CHANNEL_P_DRIFTED) - np.asarray(_CHANNEL_P)) * s, 1e-6, None
    )
    channel = _pick(channel_u, _CHANNEL, channel_p)

    interest_rate = np.clip(np.round(interest_rate, 2), 0.0, 40.0)
    utilization = np.clip(np.round(utilization, 3), 0.0, 1.5)
    savings = np.clip(np.round(savings, 2), 0.0, 5_000_000.0)

    frame: dict[str, Any] = {
        "application_id": [f"A{day:%Y%m%d}-{i:06d}" for i in range(n)],
        "applied_at": applied_at,
        "age": age,
        "annual_income": income,
        "loan_amount": loan_amount,
        "loan_term_months": term,
        "interest_rate": interest_rate,
        "credit_score": credit_score,
        "debt_to_income": dti,
        "num_open_accounts": open_accounts,
        "num_credit_inquiries": inquiries,
        "years_employed": years_employed,
        "num_late_payments": late,
        "revolving_utilization": utilization,
        "savings_balance": savings,
        "monthly_debt_payment": monthly_debt,
        "credit_history_years": credit_history,
        "home_ownership": home,
        "loan_purpose": purpose,
        "employment_type": employment,
        "region": region,
        "application_channel": channel,
    }
    concept = config.concept_drift_from is not None and day >= config.concept_drift_from
    logit = _label_logit(frame, concept) + hidden
    frame[TARGET] = (label_u < _sigmoid(logit)).astype(int)

    df = pd.DataFrame(frame)
    for col in contract.columns:
        if col.is_numeric and (col.min is not None or col.max is not None):
            df[col.name] = df[col.name].clip(lower=col.min, upper=col.max)
    return df[contract.column_names].astype(contract_dtypes(contract))


def _feature_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c not in ("application_id", "applied_at", TARGET)]


def _numeric_feature_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in _feature_columns(df) if pd.api.types.is_numeric_dtype(df[c].dtype)]


def _some_rows(rng: np.random.Generator, n: int, share: float) -> np.ndarray:
    """Positions of about ``share`` of ``n`` rows, at least one when there are rows."""
    if n == 0:
        return np.array([], dtype=int)
    k = min(n, max(1, round(share * n)))
    return np.sort(rng.choice(n, size=k, replace=False))


def _as_text(values: pd.Series) -> pd.Series:
    """The CSV rendering of a typed column (what a source system would have written)."""
    return values.astype(object).map(lambda v: str(v), na_action="ignore").where(values.notna(), None)


def corrupt_batch(df: pd.DataFrame, kind: str, seed: int) -> pd.DataFrame:
    """Apply one bad-batch defect to a clean frame, as a broken export would.

    Args:
        df: a clean frame (e.g. from :func:`generate_day`); it is not modified.
        kind: one of :data:`BAD_BATCH_KINDS`:
            ``missing_column`` drops one feature column; ``wrong_type`` writes text such as "n/a" or
            "12k" into ~20% of one numeric column (the column becomes text); ``nulls`` blanks 5-10% of
            two required feature columns; ``out_of_range`` sets some ages to 150 and -3 and some credit
            scores to 1200; ``duplicates`` repeats ~5% of the rows (same ``application_id``);
            ``empty_file`` keeps the header and no rows.
        seed: seeds which columns and rows are hit.

    Returns:
        The corrupted copy.

    Raises:
        ValueError: ``kind`` is unknown, or the frame lacks the columns the defect needs.
    """
    if kind not in BAD_BATCH_KINDS:
        raise ValueError(f"bad-batch kind {kind!r} is not one of {list(BAD_BATCH_KINDS)}")
    rng = np.random.default_rng([seed, BAD_BATCH_KINDS.index(kind)])
    out = df.copy()
    n = len(out)
    if kind == "missing_column":
        column = str(rng.choice(_feature_columns(out)))
        log.info("bad batch: dropping column %r", column)
        return out.drop(columns=[column])
    if kind == "wrong_type":
        column = str(rng.choice(_numeric_feature_columns(out)))
        rows = _some_rows(rng, n, 0.2)
        text = _as_text(out[column])
        text.iloc[rows] = rng.choice(["n/a", "12k", "unknown", "N/A", "1,200", "?"], size=len(rows))
        out[column] = text
        log.info("bad batch: %d text value(s) in numeric column %r", len(rows), column)
        return out
    if kind == "nulls":
        columns = [str(c) for c in rng.choice(_feature_columns(out), size=2, replace=False)]
        for column in columns:
            rows = _some_rows(rng, n, float(rng.uniform(0.05, 0.10)))
            blank = None if out[column].dtype == object else pd.NA if out[column].dtype == "Int64" else np.nan
            out.iloc[rows, out.columns.get_loc(column)] = blank
        log.info("bad batch: nulls in columns %s", columns)
        return out
    if kind == "out_of_range":
        missing = [c for c in ("age", "credit_score") if c not in out.columns]
        if missing:
            raise ValueError(f"out_of_range needs the columns {missing}, which the frame lacks")
        if n:
            rows = rng.permutation(n)
            k = max(1, round(0.01 * n))
            out.iloc[rows[:k], out.columns.get_loc("age")] = 150
            out.iloc[rows[k : 2 * k] if n > k else rows[:1], out.columns.get_loc("age")] = -3
            out.iloc[rows[2 * k : 3 * k] if n > 2 * k else rows[-1:], out.columns.get_loc("credit_score")] = (
                1200
            )
        log.info("bad batch: out-of-range ages and credit scores")
        return out
    if kind == "duplicates":
        rows = _some_rows(rng, n, 0.05)
        out = pd.concat([out, out.iloc[rows]], ignore_index=True)
        if "applied_at" in out.columns:
            out = out.sort_values("applied_at", kind="mergesort", ignore_index=True)
        log.info("bad batch: %d duplicated row(s)", len(rows))
        return out
    log.info("bad batch: header only")
    return out.iloc[0:0].copy()


def _iso_utc(values: pd.Series) -> pd.Series:
    text = values.dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    return text.astype(object).where(values.notna(), None)


def landing_csv_bytes(df: pd.DataFrame) -> bytes:
    """The bytes of a landing CSV for ``df``: a header, ISO 8601 UTC timestamps, ``\\n`` line ends.

    Same frame -> same bytes (floats are written in their shortest round-trip form).

    Args:
        df: the frame to export.

    Returns:
        UTF-8 encoded CSV.
    """
    out = df.copy()
    for column in out.columns:
        if isinstance(out[column].dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(
            out[column].dtype
        ):
            out[column] = _iso_utc(out[column])
    return out.to_csv(index=False, lineterminator="\n").encode("utf-8")


def _write_bytes_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _batch_seed(seed: int, day: date) -> int:
    return int(np.random.SeedSequence([seed, day.toordinal()]).generate_state(1)[0])


def land_day(lake: Lake, day: date | str, config: SimulatorConfig) -> list[Path]:
    """Export the labelled batch due on ``day`` into the landing folder, as the source system would.

    The batch of data day ``D = day - label_delay_days`` lands as ``lake.landing(D)/applications-D.csv``,
    with the bad-batch kind configured for ``D`` (if any) applied.

    Args:
        lake: the data lake.
        day: the simulated day (when the file lands).
        config: the simulator's knobs.

    Returns:
        The paths written or already present (identical bytes are not rewritten).
    """
    day = _as_date(day)
    data_day = day - timedelta(days=config.label_delay_days)
    df = generate_day(data_day, config)
    kind = {str(k): v for k, v in config.bad_days.items()}.get(data_day.isoformat())
    if kind:
        df = corrupt_batch(df, kind, _batch_seed(config.seed, data_day))
    data = landing_csv_bytes(df)
    path = lake.landing(data_day) / f"applications-{data_day.isoformat()}.csv"
    if path.exists() and path.read_bytes() == data:
        log.info("%s already landed with the same bytes", path)
        return [path]
    if path.exists():
        log.warning("%s exists with other content: the source re-exported day %s", path, data_day)
    _write_bytes_atomic(path, data)
    log.info(
        "landed %d row(s) for %s%s at %s", len(df), data_day, f" (bad batch: {kind})" if kind else "", path
    )
    return [path]


def client_requests(
    day: date | str, config: SimulatorConfig, contract: DatasetContract | None = None
) -> pd.DataFrame:
    """What clients send to the endpoint on ``day``: the day's applications without the label.

    Args:
        day: the data day.
        config: the simulator's knobs (covariate and concept drift apply as in :func:`generate_day`).
        contract: the dataset contract (default: :func:`config.load_contract`).

    Returns:
        The typed frame of :func:`generate_day` minus ``defaulted``; ``application_id`` serves as
        each request row's id.
    """
    return generate_day(day, config, contract).drop(columns=[TARGET])


def _json_values(values: pd.Series) -> list[Any]:
    if isinstance(values.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(values.dtype):
        return _iso_utc(values).tolist()
    if pd.api.types.is_integer_dtype(values.dtype):
        return [None if pd.isna(v) else int(v) for v in values.astype(object)]
    if pd.api.types.is_float_dtype(values.dtype):
        return [None if np.isnan(v) else float(v) for v in values.to_numpy(dtype=float)]
    return [None if v is None or (isinstance(v, float) and np.isnan(v)) else v for v in values.astype(object)]


def to_json_rows(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON-ready dicts: numbers as numbers, categories as strings, timestamps as ISO strings.

    Args:
        df: a typed frame.

    Returns:
        One dict per row, nulls as ``None``.
    """
    columns = {str(c): _json_values(df[c]) for c in df.columns}
    return [dict(zip(columns, row, strict=True)) for row in zip(*columns.values(), strict=True)]


def send_traffic(
    endpoint_url: str,
    rows: pd.DataFrame,
    batch_size: int = 50,
    timeout: float = 10.0,
    token: str | None = None,
) -> dict:
    """POST rows to ``{endpoint_url}/predict`` as ``{"rows": [...]}``, ``batch_size`` rows per request.

    One keep-alive connection; nothing is retried, so every failure shows up in the counts.

    Args:
        endpoint_url: base URL of the prediction endpoint.
        rows: the rows to send (e.g. :func:`client_requests`).
        batch_size: rows per request.
        timeout: seconds per request.
        token: the bearer token, for an endpoint with ``serving.require_token`` on (default: the
            ``predict_token`` of this deployment's secrets when the policy requires one).

    Returns:
        ``{"requests", "rows", "failed_requests", "failed_rows", "errors"}``; ``errors`` holds the
        first five failures as ``{"batch", "status", "error"}`` (status None when no response came).

    Raises:
        ValueError: ``batch_size`` is not positive.
    """
    import httpx

    if batch_size < 1:
        raise ValueError(f"send_traffic: batch_size must be >= 1, got {batch_size}")
    url = endpoint_url.rstrip("/") + "/predict"
    records = to_json_rows(rows)
    stats: dict[str, Any] = {"requests": 0, "rows": 0, "failed_requests": 0, "failed_rows": 0, "errors": []}
    if token is None:
        from continuous_training.config import load_policy
        from continuous_training.credentials import endpoint_tokens
        from continuous_training.settings import load_settings

        settings = load_settings()
        if load_policy(settings.config_dir).serving.require_token:
            token = endpoint_tokens(settings)["predict_token"]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(timeout=timeout, headers=headers) as client:
        for batch_no, start in enumerate(range(0, len(records), batch_size)):
            batch = records[start : start + batch_size]
            stats["requests"] += 1
            stats["rows"] += len(batch)
            status: int | None = None
            try:
                response = client.post(url, json={"rows": batch})
                status = response.status_code
                error = None if response.is_success else response.text[:300]
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            if error is not None:
                stats["failed_requests"] += 1
                stats["failed_rows"] += len(batch)
                if len(stats["errors"]) < 5:
                    stats["errors"].append({"batch": batch_no, "status": status, "error": error})
    if stats["failed_requests"]:
        log.warning(
            "%s: %d of %d request(s) failed; first: %s",
            url,
            stats["failed_requests"],
            stats["requests"],
            stats["errors"][0],
        )
    log.info("sent %d row(s) in %d request(s) to %s", stats["rows"], stats["requests"], url)
    return stats
