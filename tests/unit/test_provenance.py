"""The trust checks without a server: the digest of a model's files, the signed provenance, the format
rules of the one loader, and what the endpoint does with a refused version (keeps serving, mails once).

The hostile models here are real: the pickle one writes a marker file when it is unpickled (the tests
show it does), and every refusal is checked to leave no marker behind.
"""

from __future__ import annotations

import json
import pickle
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from continuous_training import modelstore, provenance
from continuous_training.config import load_contract
from continuous_training.lake import Lake
from continuous_training.lineage import (
    TAG_MODEL_MANIFEST_SHA256,
    TAG_PROVENANCE,
    TAG_PROVENANCE_SIGNATURE,
)
from continuous_training.model.train import build_pipeline
from continuous_training.provenance import ModelRefusedError
from continuous_training.settings import load_settings

CONTRACT = load_contract()
NAME = "trust_test"
RUN_ID = "0123456789abcdef0123456789abcdef"
PASSED = {"passed": True, "metric": "roc_auc", "challenger_value": 0.81, "forced": False}


def _frame(rows: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            c.name: rng.uniform(c.min, c.max, rows)
            if c.is_numeric
            else rng.choice(np.array(c.values, dtype=object), rows)
            for c in CONTRACT.features
        }
    )


class Unpickled:
    """Writes ``marker`` when unpickled: what a hostile pickle model does, harmlessly."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('deserialized')",))


def _custom_scale(x: Any) -> Any:
    return x


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's pipeline, fitted on a few rows and saved as MLflow saves it (skops)."""
    import mlflow.sklearn

    frame = _frame(80)
    pipeline = build_pipeline(CONTRACT, {"max_iter": 3}).fit(frame, np.arange(80) % 2)
    path = tmp_path_factory.mktemp("model") / "model"
    mlflow.sklearn.save_model(
        pipeline,
        str(path),
        skops_trusted_types=list(modelstore.SKOPS_TRUSTED_TYPES),
        pip_requirements=["scikit-learn"],
    )
    return path


@pytest.fixture
def model_dir(saved_model: Path, tmp_path: Path) -> Path:
    """A copy of the saved model the test may alter."""
    return Path(shutil.copytree(saved_model, tmp_path / "model"))


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "marker-deserialized"


def _edit_mlmodel(root: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    spec = yaml.safe_load((root / "MLmodel").read_text())
    edit(spec)
    (root / "MLmodel").write_text(yaml.safe_dump(spec))


def _make_pickle_model(root: Path, marker: Path, fmt: str = "pickle", name: str = "model.pkl") -> None:
    (root / "model.skops").unlink()
    (root / name).write_bytes(pickle.dumps(Unpickled(marker)))

    def edit(spec: dict[str, Any]) -> None:
        spec["flavors"]["sklearn"].update(serialization_format=fmt, pickled_model=name)
        spec["flavors"]["python_function"]["model_path"] = name

    _edit_mlmodel(root, edit)


# ---------------------------------------------------------------------------------------- the digest


def test_file_manifest_hashes_every_file_by_relative_path(model_dir: Path) -> None:
    (model_dir / "sub").mkdir()
    (model_dir / "sub" / "extra.txt").write_text("x")
    manifest = provenance.file_manifest(model_dir, "m")
    assert "MLmodel" in manifest
    assert "model.skops" in manifest
    assert manifest["sub/extra.txt"] == provenance.sha256_bytes(b"x")
    assert list(manifest) == sorted(manifest)
    assert provenance.manifest_sha256(manifest) == provenance.sha256_bytes(
        provenance.canonical_json(manifest).encode()
    )


def test_file_manifest_refuses_a_symlink(model_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").write_text("secret")
    (model_dir / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ModelRefusedError, match="link is a symbolic link"):
        provenance.file_manifest(model_dir, "m")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("alter", r"file model.skops has sha256 [0-9a-f]{64}, expected [0-9a-f]{64}"),
        ("extra", r"file extra.py is not in the manifest"),
        ("missing", r"file conda.yaml is missing"),
    ],
)
def test_the_loader_refuses_files_that_are_not_the_manifests(
    model_dir: Path, change: str, message: str
) -> None:
    manifest = provenance.file_manifest(model_dir, "m")
    if change == "alter":
        data = bytearray((model_dir / "model.skops").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (model_dir / "model.skops").write_bytes(bytes(data))
    elif change == "extra":
        (model_dir / "extra.py").write_text("import os")
    else:
        (model_dir / "conda.yaml").unlink()
    with pytest.raises(ModelRefusedError, match=message) as caught:
        modelstore.load_model_dir(model_dir, manifest, f"model {NAME} version 3")
    assert str(caught.value).startswith(f"model {NAME} version 3: refused: ")


@pytest.mark.parametrize(
    "manifest",
    [{}, {"../MLmodel": "0" * 64}, {"/etc/passwd": "0" * 64}, {"MLmodel": "not-a-hash"}, ["MLmodel"]],
    ids=["empty", "escapes", "absolute", "bad-hash", "not-an-object"],
)
def test_a_malformed_manifest_is_refused(model_dir: Path, manifest: Any) -> None:
    with pytest.raises(ModelRefusedError, match="manifest"):
        modelstore.load_model_dir(model_dir, manifest, "m")


def test_the_project_model_loads_through_the_one_loader(model_dir: Path) -> None:
    manifest = provenance.file_manifest(model_dir, "m")
    model = modelstore.load_model_dir(model_dir, manifest, "m")
    scores = model.predict_proba(_frame(5, seed=1))[:, 1]
    assert ((scores >= 0) & (scores <= 1)).all()
    assert modelstore.load_model(model_dir).predict_proba(_frame(5, seed=1)).shape == (5, 2)
    with pytest.raises(ValueError, match="expected a local folder"):
        modelstore.load_model("models:/anything/1")


# ---------------------------------------------------------------------------------------- the format


def test_the_hostile_pickle_really_writes_its_marker(marker: Path) -> None:
    # The refusals below mean something only if unpickling this payload does run code.
    pickle.loads(pickle.dumps(Unpickled(marker)))  # noqa: S301 - that is the point
    assert marker.read_text() == "deserialized"


def _pickle(root: Path, marker: Path) -> None:
    _make_pickle_model(root, marker)


def _cloudpickle(root: Path, marker: Path) -> None:
    _make_pickle_model(root, marker, fmt="cloudpickle")


def _skops_named_pkl(root: Path, marker: Path) -> None:
    _make_pickle_model(root, marker, fmt="skops")


def _pickle_named_skops(root: Path, marker: Path) -> None:
    (root / "model.skops").write_bytes(pickle.dumps(Unpickled(marker)))
    _edit_mlmodel(root, lambda spec: spec["flavors"]["sklearn"].update(serialization_format="pickle"))


def _other_flavor(root: Path, marker: Path) -> None:
    _edit_mlmodel(root, lambda spec: spec["flavors"].update(keras={"data": "model.skops"}))


def _loader_module(root: Path, marker: Path) -> None:
    _edit_mlmodel(root, lambda spec: spec["flavors"]["python_function"].update(loader_module="evil.loader"))


def _code_paths(root: Path, marker: Path) -> None:
    (root / "code").mkdir()
    (root / "code" / "sitecustomize.py").write_text(f"open({str(marker)!r}, 'w').write('imported')")
    _edit_mlmodel(root, lambda spec: spec["flavors"]["sklearn"].update(code="code"))


def _no_sklearn_flavor(root: Path, marker: Path) -> None:
    _edit_mlmodel(root, lambda spec: spec["flavors"].pop("sklearn"))


def _escaping_path(root: Path, marker: Path) -> None:
    _edit_mlmodel(root, lambda spec: spec["flavors"]["sklearn"].update(pickled_model="../model.skops"))


def _no_mlmodel(root: Path, marker: Path) -> None:
    (root / "MLmodel").unlink()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_pickle, "serialization_format is 'pickle'; expected 'skops'"),
        (_cloudpickle, "serialization_format is 'cloudpickle'; expected 'skops'"),
        (_skops_named_pkl, "pickled_model is 'model.pkl'; expected a .skops file"),
        (_pickle_named_skops, "serialization_format is 'pickle'"),
        (_other_flavor, r"flavor\(s\) \['keras'\]"),
        (_loader_module, "loader_module is 'evil.loader'; expected 'mlflow.sklearn'"),
        (_code_paths, "ships code paths 'code'"),
        (_no_sklearn_flavor, "no sklearn flavor"),
        (_escaping_path, "pickled_model is '../model.skops'"),
        (_no_mlmodel, "no MLmodel file"),
    ],
    ids=lambda v: v.__name__.strip("_") if callable(v) else None,
)
def test_only_skops_sklearn_models_load(
    model_dir: Path, marker: Path, make: Callable[[Path, Path], None], message: str
) -> None:
    make(model_dir, marker)
    # The digest is right (hashed after the change): only the format rules stand in the way.
    manifest = provenance.file_manifest(model_dir, "m")
    with pytest.raises(ModelRefusedError, match=message):
        modelstore.load_model_dir(model_dir, manifest, f"model {NAME} version 4")
    assert not marker.exists()


def test_a_skops_file_with_types_we_do_not_trust_is_refused(tmp_path: Path) -> None:
    import mlflow.sklearn
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    X = np.random.default_rng(0).normal(size=(40, 3))
    pipeline = make_pipeline(FunctionTransformer(_custom_scale), LogisticRegression()).fit(
        X, np.arange(40) % 2
    )
    path = tmp_path / "custom"
    # The model itself declares its function trusted; the loader trusts only the project's list.
    mlflow.sklearn.save_model(
        pipeline,
        str(path),
        skops_trusted_types=[f"{__name__}._custom_scale"],
        pip_requirements=["scikit-learn"],
    )
    assert f"{__name__}._custom_scale" in (path / "MLmodel").read_text()
    with pytest.raises(
        ModelRefusedError, match=r"model.skops holds types outside the project's trusted list"
    ):
        modelstore.load_model_dir(path, provenance.file_manifest(path, "m"), "m")


# ------------------------------------------------------------------------------------- provenance


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def manifest(saved_model: Path) -> dict[str, str]:
    return provenance.file_manifest(saved_model, "m")


def _signed(
    key: Ed25519PrivateKey, manifest: dict[str, str], version: str = "3", **verdict: Any
) -> dict[str, str]:
    return provenance.version_tags(
        name=NAME, version=version, run_id=RUN_ID, manifest=manifest, verdict={**PASSED, **verdict}, key=key
    )


def _verify(tags: dict[str, str], key: Ed25519PrivateKey, version: str = "3") -> dict[str, Any]:
    return provenance.verify_provenance(tags, key.public_key(), name=NAME, version=version, run_id=RUN_ID)


def test_signed_provenance_verifies_and_says_what_was_signed(key, manifest) -> None:
    tags = _signed(key, manifest)
    payload = _verify(tags, key)
    assert json.loads(tags[TAG_PROVENANCE]) == payload
    assert tags[TAG_PROVENANCE] == provenance.canonical_json(payload)  # sorted keys, no spaces
    assert payload["model_name"] == NAME
    assert payload["model_version"] == "3"
    assert payload["run_id"] == RUN_ID
    assert (
        payload["manifest_sha256"] == provenance.manifest_sha256(manifest) == tags[TAG_MODEL_MANIFEST_SHA256]
    )
    assert payload["verdict"] == {"passed": True, "metric": "roc_auc", "value": 0.81, "forced": False}
    assert payload["key_id"] == provenance.key_id(key.public_key())
    assert payload["signed_at"]
    assert provenance.manifest_from_tags(tags, "m", payload["manifest_sha256"]) == manifest


def _tamper_payload(tags: dict[str, str]) -> None:
    payload = json.loads(tags[TAG_PROVENANCE])
    payload["verdict"]["value"] = 0.99
    tags[TAG_PROVENANCE] = provenance.canonical_json(payload)


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (_tamper_payload, "does not verify ct.provenance with the pipeline's key"),
        (lambda tags: tags.pop(TAG_PROVENANCE), "no ct.provenance tag"),
        (lambda tags: tags.pop(TAG_PROVENANCE_SIGNATURE), "no ct.provenance_signature tag"),
        (lambda tags: tags.clear(), "no ct.provenance / ct.provenance_signature tag"),
        (lambda tags: tags.update({TAG_PROVENANCE_SIGNATURE: "!!!"}), "not url-safe base64"),
    ],
    ids=["tampered-payload", "missing-payload", "missing-signature", "unsigned", "garbage-signature"],
)
def test_tampered_or_missing_provenance_is_refused(key, manifest, tamper, message) -> None:
    tags = _signed(key, manifest)
    tamper(tags)
    with pytest.raises(ModelRefusedError, match=message) as caught:
        _verify(tags, key)
    assert str(caught.value).startswith(f"model {NAME} version 3: refused:")


def test_a_signature_of_another_key_is_refused_naming_both_keys(key, manifest) -> None:
    other = Ed25519PrivateKey.generate()
    tags = _signed(other, manifest)
    with pytest.raises(ModelRefusedError, match="does not verify") as caught:
        _verify(tags, key)
    assert provenance.key_id(key.public_key()) in str(caught.value)
    assert provenance.key_id(other.public_key()) in str(caught.value)


def test_tags_copied_to_another_version_are_refused(key, manifest) -> None:
    with pytest.raises(ModelRefusedError, match="names model_version '3', this version has '7'"):
        _verify(_signed(key, manifest, version="3"), key, version="7")
    with pytest.raises(ModelRefusedError, match="names run_id"):
        provenance.verify_provenance(
            _signed(key, manifest), key.public_key(), name=NAME, version="3", run_id="another-run"
        )


def test_a_signed_failed_verdict_may_not_serve(key, manifest) -> None:
    with pytest.raises(ModelRefusedError, match="gate verdict that did not pass"):
        _verify(_signed(key, manifest, passed=False), key)


def test_a_manifest_swapped_under_the_signature_is_refused(key, manifest) -> None:
    tags = _signed(key, manifest)
    forged = {**manifest, "model.skops": "0" * 64}
    tags.update(provenance.manifest_tags(forged))  # consistent with itself, not with the signature
    payload = _verify(tags, key)
    with pytest.raises(ModelRefusedError, match="the signed provenance says"):
        provenance.manifest_from_tags(tags, "m", payload["manifest_sha256"])
    tags[TAG_MODEL_MANIFEST_SHA256] = provenance.manifest_sha256(manifest)
    with pytest.raises(ModelRefusedError, match="tag ct.model_manifest_sha256 says"):
        provenance.manifest_from_tags(tags, "m")


def test_signing_the_same_claims_again_keeps_the_tags(key, manifest) -> None:
    tags = _signed(key, manifest)
    claims = provenance.provenance_claims(
        name=NAME,
        version="3",
        run_id=RUN_ID,
        manifest_sha256=provenance.manifest_sha256(manifest),
        verdict=PASSED,
        public_key=key.public_key(),
    )
    assert provenance.carries_provenance(tags, key.public_key(), claims)
    assert not provenance.carries_provenance(tags, key.public_key(), {**claims, "model_version": "4"})
    assert not provenance.carries_provenance({}, key.public_key(), claims)
    # Ed25519 is deterministic: the same payload, the same signature.
    signed_at = datetime.fromisoformat(json.loads(tags[TAG_PROVENANCE])["signed_at"])
    again = provenance.sign_provenance(claims, key, signed_at=signed_at)
    assert again == {k: tags[k] for k in (TAG_PROVENANCE, TAG_PROVENANCE_SIGNATURE)}


# ------------------------------------------------------------- a registered version, loaded verified


class FakeRegistry:
    """The few registry reads the verified loader makes, over a local model folder."""

    def __init__(self, folder: Path, tags: dict[str, str], run_id: str = RUN_ID) -> None:
        self.folder, self.tags, self.run_id = folder, tags, run_id
        self.tracking_uri = "http://127.0.0.1:9"  # never contacted: the folder is local

    def get_model_version(self, name: str, version: str) -> Any:
        return SimpleNamespace(name=name, version=version, run_id=self.run_id, tags=dict(self.tags))

    def get_model_version_download_uri(self, name: str, version: str) -> str:
        return str(self.folder)


@pytest.fixture
def downloads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    real = modelstore._download

    def counting(mlflow_client: Any, location: str, dst: str) -> Path:
        seen.append(location)
        return real(mlflow_client, location, dst)

    monkeypatch.setattr(modelstore, "_download", counting)
    return seen


def test_a_signed_version_loads_from_one_download(model_dir, key, downloads) -> None:
    registry = FakeRegistry(model_dir, _signed(key, provenance.file_manifest(model_dir, "m")))
    model = modelstore.load_model_version(NAME, "3", mlflow_client=registry, verify_key=key.public_key())
    assert model.predict_proba(_frame(3)).shape == (3, 2)
    assert downloads == [str(model_dir)]


def test_a_version_altered_after_signing_is_refused_before_loading(model_dir, key, marker, downloads) -> None:
    registry = FakeRegistry(model_dir, _signed(key, provenance.file_manifest(model_dir, "m")))
    _make_pickle_model(model_dir, marker)  # the store's files replaced after registration
    with pytest.raises(
        ModelRefusedError,
        match=r"file model.skops is missing; file model.pkl is not in the manifest; file MLmodel has sha256",
    ):
        modelstore.load_model_version(NAME, "3", mlflow_client=registry, verify_key=key.public_key())
    assert not marker.exists()


def test_an_unsigned_version_is_refused_without_a_download(model_dir, key, downloads) -> None:
    registry = FakeRegistry(model_dir, provenance.manifest_tags(provenance.file_manifest(model_dir, "m")))
    with pytest.raises(ModelRefusedError, match="no ct.provenance / ct.provenance_signature tag"):
        modelstore.load_model_version(NAME, "3", mlflow_client=registry, verify_key=key.public_key())
    assert downloads == []


# ------------------------------------------------------------------ the endpoint refuses, mails once


@pytest.fixture
def sink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """An SMTP sink on a free port, and the settings of an endpoint mailing through it."""
    from continuous_training.ops.mailsink import MailSink

    mail_dir = tmp_path / "mail"
    server = MailSink(mail_dir, host="127.0.0.1", port=0)
    port = server.start()
    monkeypatch.setenv("CT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CT_LAKE", str(tmp_path / "lake"))
    monkeypatch.setenv("CT_SMTP_PORT", str(port))
    monkeypatch.setenv("CT_ALERT_TO", "oncall@example.com")
    yield {"mail_dir": mail_dir, "settings": load_settings(), "port": port}
    server.stop()


def _holder(settings: Any, loader: Callable[[str, str], Any], alias: list[str]) -> Any:
    from continuous_training.serving.holder import ModelHolder

    holder = ModelHolder("http://127.0.0.1:9", NAME, CONTRACT, loader=loader, settings=settings)
    holder._resolve_alias = lambda: alias[0]  # the registry's answer, scripted
    return holder


def test_the_endpoint_keeps_the_champion_and_mails_a_refusal_once(saved_model, sink) -> None:
    from continuous_training.alerts import mail as mails
    from continuous_training.ops.mailsink import read_mail

    good = modelstore.load_model(saved_model)

    def loader(name: str, version: str) -> Any:
        if version == "1":
            return good
        raise ModelRefusedError(f"model {name} version {version}", "no ct.provenance tag: test")

    alias = ["1"]
    workers = [_holder(sink["settings"], loader, alias) for _ in range(2)]
    for worker in workers:
        assert worker.check().version == "1"
    alias[0] = "2"  # moved by hand to a version without provenance
    for worker in workers:
        assert worker.check(force=True).version == "1"
        health = worker.health()
        assert health["model_version"] == "1"
        assert health["last_error"].startswith(f"refused {NAME} version 2 (still serving version 1): ")
        assert "no ct.provenance tag" in health["last_error"]
    restarted = _holder(sink["settings"], loader, alias)  # a worker restarted: it refuses, no mail
    assert restarted.check() is None
    assert "refused" in restarted.health()["last_error"]

    received = read_mail(sink["mail_dir"])
    assert len(received) == 1
    assert received[0]["X-CT-Event"] == mails.model_refused_event_key(NAME, "2")
    assert received[0]["Subject"] == f"[ct] Model refused: {NAME} v2 will not serve"
    assert received[0]["To"] == "oncall@example.com"
    body = received[0].get_body(preferencelist=("html",)).get_content()
    assert "no ct.provenance tag: test" in body
    assert "Serving instead" in body

    # The deploy task (Airflow's SMTP connection) uses the same event key: no second mail.
    from continuous_training.alerts.notifier import notify

    refused = mails.model_refused_mail(
        name=NAME, version="2", reason="again", refused_by="deploy", serving="1"
    )
    assert notify(refused) is False
    assert len(read_mail(sink["mail_dir"])) == 1
    entry = json.loads(Lake(sink["settings"].lake).alert_ledger(refused.event_key).read_text())
    assert entry["details"]["version"] == "2"


def test_a_failed_mail_is_retried_by_the_next_refusal(tmp_path, monkeypatch) -> None:
    from continuous_training.alerts.mail import model_refused_mail
    from continuous_training.alerts.mailer import mail_once

    monkeypatch.setenv("CT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CT_LAKE", str(tmp_path / "lake"))
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        monkeypatch.setenv("CT_SMTP_PORT", str(sock.getsockname()[1]))
    settings = load_settings()
    mail = model_refused_mail(name=NAME, version="5", reason="r", refused_by="t", serving=None)
    with pytest.raises(ConnectionRefusedError):
        mail_once(mail, settings=settings)
    assert not Lake(settings.lake).alert_ledger(mail.event_key).exists()  # free for the next attempt


def test_the_refusal_path_loads_no_airflow(sink) -> None:
    # What the endpoint runs when it refuses a version, in a fresh interpreter.
    code = (
        "import sys\n"
        "from continuous_training.serving.holder import ModelHolder\n"
        "from continuous_training.alerts.mail import model_refused_mail\n"
        "from continuous_training.alerts.mailer import mail_once\n"
        "sent = mail_once(model_refused_mail(name='m', version='9', reason='r', refused_by='t', serving=None))\n"
        "print(sent, sorted({m.split('.')[0] for m in sys.modules} & {'airflow', 'great_expectations', 'evidently'}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "True []"
