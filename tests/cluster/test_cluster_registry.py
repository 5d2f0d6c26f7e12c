"""MLflow on PostgreSQL under concurrent writers: 20 clients register versions of one model at once."""

from __future__ import annotations

import threading

import pytest

from continuous_training.credentials import MLFLOW_PIPELINE, mlflow_client_env

pytestmark = pytest.mark.cluster

CLIENTS = 20


def test_twenty_parallel_clients_get_unique_contiguous_ready_versions(cluster_stack, monkeypatch, tmp_path):
    import mlflow
    from mlflow import MlflowClient

    settings = cluster_stack.settings
    for key, value in mlflow_client_env(settings, MLFLOW_PIPELINE).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", settings.mlflow_tracking_uri)
    name = "ct_cluster_concurrency_probe"
    client = MlflowClient(settings.mlflow_tracking_uri)
    experiment = client.create_experiment("ct-cluster-concurrency-probe")
    run = client.create_run(experiment)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights.txt").write_text("a model's files, for the registry to point at\n")
    client.log_artifacts(run.info.run_id, str(tmp_path / "model"), artifact_path="model")
    client.set_terminated(run.info.run_id)
    client.create_registered_model(name)
    source = f"{run.info.artifact_uri}/model"

    barrier = threading.Barrier(CLIENTS)
    versions: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def register(i: int) -> None:
        mine = MlflowClient(settings.mlflow_tracking_uri)
        barrier.wait()
        try:
            version = mine.create_model_version(name, source, run_id=run.info.run_id, tags={"client": str(i)})
        except BaseException as exc:  # collected and reported below
            with lock:
                errors.append(exc)
            return
        with lock:
            versions.append(version.version)

    threads = [threading.Thread(target=register, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)

    assert not errors, errors[:3]
    numbers = sorted(int(v) for v in versions)
    assert numbers == list(range(1, CLIENTS + 1)), numbers
    found = mlflow.search_model_versions(filter_string=f"name='{name}'", max_results=100)
    assert sorted(int(v.version) for v in found) == numbers
    assert {v.status for v in found} == {"READY"}
    assert sorted(v.tags["client"] for v in found) == sorted(str(i) for i in range(CLIENTS))
