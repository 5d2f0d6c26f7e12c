"""Reading the MLflow model registry: which version an alias names, a version's model and what it
carries (its drift reference sample), and the one way the project loads a model.

The ground the endpoint, the monitor and the model stages share. It never writes (registration, alias
moves and tags belong to :mod:`continuous_training.model`), and it imports mlflow only inside its
functions: importing mlflow costs seconds.

Loading a model is loading files someone else may have written, so every load goes through
:func:`load_model_dir`, from files downloaded once into a private temporary folder: every file is hashed
and compared with the manifest the pipeline recorded (the same files, the same hashes), the ``MLmodel``
file must describe a scikit-learn model saved with skops (``serialization_format: skops``, a
``.skops`` file, no code paths, no other flavor or loader module), and only then is the skops file
(the bytes that were hashed) read by ``skops.io.loads`` with the project's own list of trusted types
(:data:`SKOPS_TRUSTED_TYPES`, never the list a model declares). A registered version must also carry
the pipeline's signed provenance (:mod:`continuous_training.provenance`): :func:`load_model_version`.
MLflow's own loaders are never used: with ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION`` false (as every
process of the project runs) they refuse every scikit-learn model, and they would trust the model's
own list of types.

Every call talks to ``settings.mlflow_tracking_uri``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from continuous_training.lineage import MODEL_NAME_IN_RUN, REFERENCE_ARTIFACT, REFERENCE_SCORES_ARTIFACT
from continuous_training.provenance import (
    ModelRefusedError,
    check_manifest,
    compare_manifests,
    file_manifest,
    is_safe_relative,
    manifest_from_tags,
    sha256_bytes,
    verify_provenance,
)
from continuous_training.settings import Settings, load_settings

if TYPE_CHECKING:
    import pandas as pd
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from mlflow import MlflowClient

#: Types skops must trust to load the project's pipeline beyond the scikit-learn and numpy types skops
#: itself trusts (HistGradientBoosting's internal preprocessor and trees). The one list every load uses.
SKOPS_TRUSTED_TYPES: tuple[str, ...] = (
    "functools.partial",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.utils.validation.check_array",
)
#: The model description MLflow writes beside the model file.
MLMODEL_FILE = "MLmodel"
#: The only flavors a model may declare, and the only loader module its python_function flavor may name.
ALLOWED_FLAVORS = frozenset({"sklearn", "python_function"})
SKLEARN_LOADER_MODULE = "mlflow.sklearn"
#: The only serialization accepted (pickle and cloudpickle run code when read).
SKOPS_FORMAT = "skops"
SKOPS_SUFFIX = ".skops"


def client() -> MlflowClient:
    """An MlflowClient on the configured tracking server (also sets the fluent API's tracking URI)."""
    import mlflow

    uri = load_settings().mlflow_tracking_uri
    mlflow.set_tracking_uri(uri)
    return mlflow.MlflowClient(uri)


def alias_version(mlflow_client: MlflowClient, name: str, alias: str) -> str | None:
    """The version an alias points at, or None if the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        registered = mlflow_client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    version = (registered.aliases or {}).get(alias)
    return str(version) if version is not None else None


# ------------------------------------------------------------------------------------ model format


def check_model_format(mlmodel: str, files: Collection[str], what: str) -> str:
    """The skops file an ``MLmodel`` text names, if it describes a model this project may load.

    Args:
        mlmodel: the ``MLmodel`` file's text.
        files: the model's files (relative paths).
        what: the model (named in errors).

    Returns:
        The relative path of the ``.skops`` file.

    Raises:
        ModelRefusedError: not YAML; a flavor other than sklearn / python_function; a loader module other
            than mlflow.sklearn; code paths; a serialization other than skops; a model file that is not
            a ``.skops`` file of the model.
    """
    import yaml

    try:
        spec = yaml.safe_load(mlmodel)
    except yaml.YAMLError as exc:
        raise ModelRefusedError(what, f"{MLMODEL_FILE} is not YAML ({exc})") from None
    flavors = spec.get("flavors") if isinstance(spec, dict) else None
    if not isinstance(flavors, dict) or not isinstance(flavors.get("sklearn"), dict):
        raise ModelRefusedError(
            what, f"{MLMODEL_FILE} declares no sklearn flavor; expected a scikit-learn model"
        )
    other = sorted(set(flavors) - ALLOWED_FLAVORS)
    if other:
        raise ModelRefusedError(
            what, f"{MLMODEL_FILE} declares flavor(s) {other}; expected only {sorted(ALLOWED_FLAVORS)}"
        )
    sklearn = flavors["sklearn"]
    serialization = sklearn.get("serialization_format")
    if serialization != SKOPS_FORMAT:
        raise ModelRefusedError(
            what,
            f"{MLMODEL_FILE}: sklearn serialization_format is {serialization!r}; expected {SKOPS_FORMAT!r} "
            "(pickle and cloudpickle run code when loaded)",
        )
    pickled = sklearn.get("pickled_model")
    if not is_safe_relative(pickled) or not str(pickled).endswith(SKOPS_SUFFIX):
        raise ModelRefusedError(
            what,
            f"{MLMODEL_FILE}: sklearn pickled_model is {pickled!r}; expected a {SKOPS_SUFFIX} file of the model",
        )
    if pickled not in files:
        raise ModelRefusedError(
            what, f"{MLMODEL_FILE}: sklearn pickled_model {pickled} is not a file of the model"
        )
    for flavor_name, flavor in flavors.items():
        if isinstance(flavor, dict) and flavor.get("code"):
            raise ModelRefusedError(
                what,
                f"{MLMODEL_FILE}: flavor {flavor_name} ships code paths {flavor['code']!r}; expected none",
            )
    pyfunc = flavors.get("python_function")
    if pyfunc is not None:
        if not isinstance(pyfunc, dict) or pyfunc.get("loader_module") != SKLEARN_LOADER_MODULE:
            loader = pyfunc.get("loader_module") if isinstance(pyfunc, dict) else pyfunc
            raise ModelRefusedError(
                what,
                f"{MLMODEL_FILE}: python_function loader_module is {loader!r}; expected {SKLEARN_LOADER_MODULE!r}",
            )
        if pyfunc.get("model_path", pickled) != pickled:
            raise ModelRefusedError(
                what,
                f"{MLMODEL_FILE}: python_function model_path {pyfunc.get('model_path')!r} is not the sklearn "
                f"model {pickled!r}",
            )
    return str(pickled)


def _read_hashed(root: Path, rel: str, manifest: Mapping[str, str], what: str) -> bytes:
    """A file's bytes, checked again against the manifest: what is parsed is what was hashed."""
    data = (root / rel).read_bytes()
    if sha256_bytes(data) != manifest[rel]:
        raise ModelRefusedError(
            what, f"file {rel} changed while it was read; expected sha256 {manifest[rel]}"
        )
    return data


def verified_model_bytes(root: Path, manifest: Mapping[str, str], what: str) -> tuple[str, bytes]:
    """Check a model folder against its manifest and the format rules, without deserializing anything.

    Args:
        root: the model's folder (as downloaded).
        manifest: ``{relative path: sha256}`` the folder must hold exactly.
        what: the model (named in errors).

    Returns:
        The ``.skops`` file's relative path and its bytes (the ones hashed).

    Raises:
        ModelRefusedError: a file is missing, extra or different, or the format is not allowed.
    """
    manifest = check_manifest(manifest, what)
    compare_manifests(manifest, file_manifest(root, what), what)
    if MLMODEL_FILE not in manifest:
        raise ModelRefusedError(what, f"no {MLMODEL_FILE} file; expected an MLflow model folder")
    mlmodel = _read_hashed(root, MLMODEL_FILE, manifest, what)
    pickled = check_model_format(mlmodel.decode("utf-8", errors="replace"), manifest, what)
    return pickled, _read_hashed(root, pickled, manifest, what)


def load_model_dir(root: Path, manifest: Mapping[str, str], what: str) -> Any:
    """The scikit-learn model of a local MLflow model folder, after every check (the one loader).

    Its ``predict_proba(X)[:, 1]`` is the positive-class probability for a frame of the contract's
    features.

    Args:
        root: the model's folder.
        manifest: ``{relative path: sha256}`` the folder must hold exactly (the signed or run manifest).
        what: the model (named in errors).

    Raises:
        ModelRefusedError: the files, the format or the types in the skops file are not trusted; nothing
            of the model was deserialized.
    """
    import skops.io
    from skops.io.exceptions import UntrustedTypesFoundException

    pickled, data = verified_model_bytes(root, manifest, what)
    try:
        return skops.io.loads(data, trusted=list(SKOPS_TRUSTED_TYPES))
    except UntrustedTypesFoundException as exc:
        raise ModelRefusedError(
            what, f"{pickled} holds types outside the project's trusted list ({exc})"
        ) from None


def load_model(path: str | Path) -> Any:
    """The scikit-learn model of an MLflow model folder on this machine that you made yourself.

    The format rules and the trusted types apply; the digest is that of the folder itself, so it proves
    nothing about where the files came from: models from the registry load through
    :func:`load_model_version` (signed) or :func:`load_run_model` (the run's manifest).

    Raises:
        ValueError: ``path`` is a URI, not a local folder.
        ModelRefusedError: the format or the types are not trusted.
    """
    text = str(path)
    if "://" in text or text.startswith(("models:", "runs:")):
        raise ValueError(f"{text}: expected a local folder; load registry models with load_model_version")
    root = Path(text)
    what = f"model folder {root}"
    return load_model_dir(root, file_manifest(root, what), what)


# ------------------------------------------------------------------------------- what is expected


@dataclass(frozen=True)
class ExpectedModel:
    """Where a model's files are and what they must be.

    Attributes:
        what: the model, as errors name it (``model <name> version <v>`` or ``run <id>``).
        location: the artifact URI of its folder.
        manifest: ``{relative path: sha256}`` of its files (signed, or the run's).
        provenance: the verified provenance payload (None for a run's model, not yet registered).
    """

    what: str
    location: str
    manifest: dict[str, str]
    provenance: dict[str, Any] | None = None


def model_verify_key(settings: Settings | None = None) -> Ed25519PublicKey:
    """The pipeline's public key (:func:`continuous_training.credentials.model_verify_key`)."""
    from continuous_training.credentials import model_verify_key as read_key

    return read_key(settings or load_settings())


def trusted_version(
    mlflow_client: MlflowClient,
    name: str,
    version: str | int,
    verify_key: Ed25519PublicKey | None = None,
    model_version: Any = None,
) -> ExpectedModel:
    """A registered version's files as its signed provenance names them (reads tags only, no download).

    Args:
        mlflow_client: the registry.
        name, version: the version.
        verify_key: the pipeline's public key (default: :func:`model_verify_key`).
        model_version: the version's registry entry (``ModelVersion``), if the caller just read it
            (e.g. by alias); else it is read.

    Raises:
        ModelRefusedError: no valid signed provenance, a failed gate, or a manifest that is not the signed one.
        continuous_training.credentials.CredentialError: there is no verification key.
    """
    version = str(version)
    what = f"model {name} version {version}"
    mv = model_version
    if mv is None or str(mv.version) != version or mv.name != name:
        mv = mlflow_client.get_model_version(name, version)
    tags = dict(mv.tags or {})
    key = verify_key or model_verify_key()
    payload = verify_provenance(tags, key, name=name, version=version, run_id=mv.run_id, what=what)
    manifest = manifest_from_tags(tags, what, expected_sha256=payload["manifest_sha256"])
    location = mlflow_client.get_model_version_download_uri(name, version)
    return ExpectedModel(what=what, location=location, manifest=manifest, provenance=payload)


def run_model_location(mlflow_client: MlflowClient, run_id: str) -> str:
    """The artifact URI of the model a run logged as ``model`` (its logged model's, else the run's)."""
    run = mlflow_client.get_run(run_id)
    outputs = getattr(run, "outputs", None)
    for output in getattr(outputs, "model_outputs", None) or []:
        logged = mlflow_client.get_logged_model(output.model_id)
        if logged.name == MODEL_NAME_IN_RUN:
            return str(logged.artifact_location)
    return f"{run.info.artifact_uri}/{MODEL_NAME_IN_RUN}"


def run_model(mlflow_client: MlflowClient, run_id: str) -> ExpectedModel:
    """A run's model as its training recorded it (the challenger, before it is registered and signed).

    Raises:
        ModelRefusedError: the run carries no manifest, or one that does not match its digest.
    """
    what = f"the model of run {run_id}"
    tags = mlflow_client.get_run(run_id).data.tags
    manifest = manifest_from_tags(tags, what)
    return ExpectedModel(what=what, location=run_model_location(mlflow_client, run_id), manifest=manifest)


def _download(mlflow_client: MlflowClient, location: str, dst: str) -> Path:
    import mlflow.artifacts

    return Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=location, dst_path=dst, tracking_uri=mlflow_client.tracking_uri
        )
    )


def load_expected(mlflow_client: MlflowClient, expected: ExpectedModel) -> Any:
    """Download a model's files once into a private temporary folder and :func:`load_model_dir` them.

    Raises:
        ModelRefusedError: see :func:`load_model_dir`.
    """
    with tempfile.TemporaryDirectory(prefix="ct-model-") as tmp:
        return load_model_dir(
            _download(mlflow_client, expected.location, tmp), expected.manifest, expected.what
        )


def check_expected(mlflow_client: MlflowClient, expected: ExpectedModel) -> None:
    """Download a model's files and check them (digest and format) without deserializing anything.

    Raises:
        ModelRefusedError: see :func:`verified_model_bytes`.
    """
    with tempfile.TemporaryDirectory(prefix="ct-model-") as tmp:
        verified_model_bytes(
            _download(mlflow_client, expected.location, tmp), expected.manifest, expected.what
        )


def logged_model_manifest(mlflow_client: MlflowClient, location: str, what: str) -> dict[str, str]:
    """Download a just-logged model's files once, check their format, and return their manifest.

    Raises:
        ModelRefusedError: the model is not one this project may load (e.g. not skops).
    """
    with tempfile.TemporaryDirectory(prefix="ct-model-") as tmp:
        root = _download(mlflow_client, location, tmp)
        manifest = file_manifest(root, what)
        verified_model_bytes(root, manifest, what)
        return manifest


def load_model_version(
    name: str,
    version: str | int,
    *,
    mlflow_client: MlflowClient | None = None,
    verify_key: Ed25519PublicKey | None = None,
    model_version: Any = None,
) -> Any:
    """The scikit-learn pipeline of a registered version, if it carries the pipeline's signed provenance
    and its files are the signed ones (see :func:`load_model_dir`; arguments as :func:`trusted_version`).

    Raises:
        ModelRefusedError: the version may not be loaded (named with what was expected).
        continuous_training.credentials.CredentialError: there is no verification key.
    """
    mlflow_client = mlflow_client or client()
    expected = trusted_version(mlflow_client, name, version, verify_key, model_version)
    return load_expected(mlflow_client, expected)


def load_run_model(run_id: str, *, mlflow_client: MlflowClient | None = None) -> Any:
    """The scikit-learn pipeline a run logged, checked against the run's manifest and the format rules.

    Raises:
        ModelRefusedError: the run's model may not be loaded.
    """
    mlflow_client = mlflow_client or client()
    return load_expected(mlflow_client, run_model(mlflow_client, run_id))


def load_reference_sample(name: str, version: str | int) -> pd.DataFrame:
    """The drift reference sample logged with a model version's run (features + target).

    Raises:
        ValueError: the version has no run.
    """
    found = _reference_artifact(name, version, REFERENCE_ARTIFACT, "reference sample")
    if found is None:
        raise ValueError(f"model {name} v{version}: its run holds no {REFERENCE_ARTIFACT}")
    return found


def load_reference_scores(name: str, version: str | int) -> pd.DataFrame | None:
    """The version's scores of its held-out rows (column ``score``), the reference of prediction drift;
    None for a version trained before they were logged.

    Raises:
        ValueError: the version has no run.
    """
    return _reference_artifact(name, version, REFERENCE_SCORES_ARTIFACT, "holdout scores")


def _reference_artifact(name: str, version: str | int, artifact: str, what: str) -> pd.DataFrame | None:
    import mlflow.artifacts
    import pandas as pd

    mlflow_client = client()
    mv = mlflow_client.get_model_version(name, str(version))
    if not mv.run_id:
        raise ValueError(f"model {name} v{version} has no run, so no {what}")
    folder = str(Path(artifact).parent)
    if Path(artifact).name not in {
        Path(f.path).name for f in mlflow_client.list_artifacts(mv.run_id, folder)
    }:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(
            run_id=mv.run_id,
            artifact_path=artifact,
            dst_path=tmp,
            tracking_uri=load_settings().mlflow_tracking_uri,
        )
        return pd.read_parquet(Path(path))
