"""Benchmark data from the project's simulator, with a fixed seed, so the injected truth is known."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path

import pandas as pd

from continuous_training.config import load_contract
from continuous_training.ops.simulate import DRIFT_COLUMNS, SimulatorConfig, generate_day

SEED = 20261125
#: The code the generated data depends on (the bench's cache is keyed by it).
SIMULATOR = Path(__file__).resolve().parents[1] / "include" / "continuous_training" / "ops" / "simulate.py"
#: A Wednesday (weekday factor 1.0), so ``rows_per_day`` is the expected volume.
DAY = date(2026, 11, 4)


def simulated_rows(rows: int, *, drift: bool, seed: int = SEED, day: date = DAY) -> pd.DataFrame:
    """Exactly ``rows`` simulated applications of one day, with or without the covariate shift.

    The simulator draws a Poisson volume around ``rows_per_day``; asking for 5% more and cutting
    gives the exact count. The drifted and undrifted frames of the same seed share every undrifted
    column value (the simulator draws the shift from the same uniforms).
    """
    config = SimulatorConfig(seed=seed, rows_per_day=int(rows * 1.05) + 100)
    if drift:
        config = replace(config, drift_from=day)
    frame = generate_day(day, config)
    if len(frame) < rows:
        raise RuntimeError(f"simulator gave {len(frame)} rows, fewer than the {rows} asked")
    return frame.iloc[:rows].reset_index(drop=True)


def drift_frames(folder: Path, current_rows: int, reference_rows: int) -> dict[str, Path]:
    """Write the reference, the drifted window and the control window as Parquet under ``folder``.

    The reference and the control are independent draws (other seeds, other day) of the undrifted
    source; the drifted window shifts exactly :data:`DRIFT_COLUMNS`.
    """
    folder.mkdir(parents=True, exist_ok=True)
    features = load_contract().feature_names
    paths = {}
    frames = {
        "reference": lambda: simulated_rows(
            reference_rows, drift=False, seed=SEED + 1, day=DAY - timedelta(7)
        ),
        "drifted": lambda: simulated_rows(current_rows, drift=True),
        "control": lambda: simulated_rows(current_rows, drift=False, seed=SEED + 2),
    }
    for name, make in frames.items():
        path = folder / f"{name}-{current_rows if name != 'reference' else reference_rows}.parquet"
        if not path.exists():
            frame = make()[features]
            # As the prediction log stores them: numbers as float64, categories as strings.
            numeric = load_contract().numeric_features
            frame[numeric] = frame[numeric].astype("float64")
            frame.to_parquet(path, index=False)
        paths[name] = path
    return paths


INJECTED = tuple(DRIFT_COLUMNS)
