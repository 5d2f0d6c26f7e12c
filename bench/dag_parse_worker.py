"""Parse one DAG file in a fresh process (``python -m bench.dag_parse_worker FILE``), for ``bench.dag_parse``.

``airflow.sdk`` is imported first, every public name of it loaded (every DAG file needs it, and the
dag-processor that forks the parsing process has it loaded); then
the file is executed as the dag-processor executes it, timed, and the modules it pulled in are listed.
With ``--dag-processor``, Airflow's DAG-processing module is imported first as well: the modules the
real parsing process inherits. The last stdout line is JSON: ``{"file", "ms", "dags", "new_modules", "heavy"}``.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import sys
import time
from pathlib import Path

#: Libraries a DAG file must not import at module level (seconds of import each, in every parse).
HEAVY = (
    "pandas",
    "numpy",
    "sklearn",
    "scipy",
    "pyarrow",
    "mlflow",
    "evidently",
    "great_expectations",
    "fastapi",
    "plotly",
    "sqlalchemy_utils",
)


def main() -> None:
    path = Path(sys.argv[1]).resolve()
    if sys.argv[2:] == ["--dag-processor"]:
        # What the dag-processor's parsing process has loaded before it runs a file (it is forked from
        # the process that imported this module: Airflow's models, serialization and DagBag).
        import airflow.dag_processing.processor  # noqa: F401
    import airflow.sdk

    # airflow.sdk loads its names lazily; the dag-processor has them all loaded before it parses a file.
    for name in airflow.sdk.__all__:
        try:
            getattr(airflow.sdk, name)
        except AttributeError:  # airflow.sdk 1.3 lists "lineage" but exports no such name
            pass

    if sys.argv[2:] == ["--dag-processor"]:
        # The DAG-processor manager freezes its objects before forking (DagFileProcessorManager.before_run);
        # without it a full collection of Airflow's heap lands inside the parse.
        gc.freeze()
    before = set(sys.modules)
    started = time.perf_counter()
    spec = importlib.util.spec_from_file_location(f"bench_dag_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    elapsed = time.perf_counter() - started
    from airflow.sdk import DAG

    new = sorted(set(sys.modules) - before)
    heavy = sorted({m.split(".")[0] for m in new if m.split(".")[0] in HEAVY})
    dags = [v.dag_id for v in vars(module).values() if isinstance(v, DAG)]
    print(
        json.dumps(
            {"file": str(path), "ms": elapsed * 1000, "dags": dags, "new_modules": new, "heavy": heavy}
        )
    )


if __name__ == "__main__":
    main()
