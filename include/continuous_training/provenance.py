"""Trust in a model: the digest of its files and the signed provenance of a registered version.

Training hashes every file of the model it logged (a *manifest*, ``{relative path: sha256}``) and
records it on its run; registration checks the version's files against that manifest, copies it to the
version and signs the version's *provenance* with the pipeline's Ed25519 key
(:func:`continuous_training.credentials.model_signing_key`): a canonical JSON (sorted keys, no spaces) of

``{"schema", "model_name", "model_version", "run_id", "manifest_sha256", "verdict": {"passed",
"metric", "value", "forced"}, "key_id", "signed_at"}``

stored in the version tag :data:`~continuous_training.lineage.TAG_PROVENANCE`, with the signature
(url-safe base64) in :data:`~continuous_training.lineage.TAG_PROVENANCE_SIGNATURE`. Anyone holding the
public key (:func:`continuous_training.credentials.model_verify_key`) can check that a version is one
the train DAG registered after a passing gate, and that its files are those the pipeline trained.

Pure functions over tags, bytes and folders: no MLflow, no room. Every refusal is a
:class:`ModelRefusedError` naming the model (and version), the file and what was expected.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import stat
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from continuous_training.lineage import (
    TAG_MODEL_MANIFEST,
    TAG_MODEL_MANIFEST_SHA256,
    TAG_PROVENANCE,
    TAG_PROVENANCE_SIGNATURE,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

#: Version of the provenance payload's layout.
PROVENANCE_SCHEMA = 1
_HEX = frozenset("0123456789abcdef")
_CHUNK = 1 << 20


class ModelRefusedError(RuntimeError):
    """A model's provenance, files or format are not what the pipeline made: never load or serve it.

    Attributes:
        what: the model it is about (``model <name> version <v>``, or the challenger's run).
        problem: what is wrong, naming the file or tag and what was expected.
    """

    def __init__(self, what: str, problem: str) -> None:
        super().__init__(f"{what}: refused: {problem}")
        self.what = what
        self.problem = problem


def canonical_json(obj: Any) -> str:
    """The one text a JSON value signs and hashes as: sorted keys, no spaces, ASCII, no NaN."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= _HEX


def is_safe_relative(path: Any) -> bool:
    """True for a normalised relative POSIX path inside its folder (no ``..``, ``.``, ``\\`` or root)."""
    if not isinstance(path, str) or not path or "\\" in path or "\x00" in path:
        return False
    pure = PurePosixPath(path)
    return (
        not pure.is_absolute()
        and all(part not in ("", ".", "..") for part in path.split("/"))
        and pure.as_posix() == path
    )


# ------------------------------------------------------------------------------------------- digest


def file_manifest(root: Path, what: str) -> dict[str, str]:
    """``{relative POSIX path: sha256}`` of every file under ``root``.

    Args:
        root: the model's folder.
        what: the model it is (named in errors).

    Raises:
        ModelRefusedError: the folder holds a symlink or something that is not a file or a folder,
            or no file at all.
    """
    manifest: dict[str, str] = {}
    for directory, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            path = Path(directory) / name
            rel = path.relative_to(root).as_posix()
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise ModelRefusedError(what, f"{rel} is a symbolic link; a model holds plain files only")
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode):
                raise ModelRefusedError(what, f"{rel} is not a regular file")
            digest = hashlib.sha256()
            with path.open("rb") as fh:
                while chunk := fh.read(_CHUNK):
                    digest.update(chunk)
            manifest[rel] = digest.hexdigest()
    if not manifest:
        raise ModelRefusedError(what, f"no file found in {root}")
    return dict(sorted(manifest.items()))


def check_manifest(manifest: Any, what: str) -> dict[str, str]:
    """``manifest`` if it is a non-empty ``{safe relative path: sha256 hex}``.

    Raises:
        ModelRefusedError: naming the entry that is not.
    """
    if not isinstance(manifest, Mapping) or not manifest:
        raise ModelRefusedError(what, "the manifest is not a non-empty JSON object {relative path: sha256}")
    for path, digest in manifest.items():
        if not is_safe_relative(path):
            raise ModelRefusedError(
                what, f"the manifest names {path!r}, not a relative path inside the model"
            )
        if not _is_sha256(digest):
            raise ModelRefusedError(
                what, f"the manifest's entry {path}: expected a sha256 hex, got {digest!r}"
            )
    return dict(sorted(manifest.items()))


def manifest_sha256(manifest: Mapping[str, str]) -> str:
    """The digest of a manifest: SHA-256 of its canonical JSON."""
    return sha256_bytes(canonical_json(dict(manifest)).encode())


def compare_manifests(expected: Mapping[str, str], found: Mapping[str, str], what: str) -> None:
    """Refuse unless ``found`` holds exactly the files of ``expected``, each with its hash.

    Raises:
        ModelRefusedError: naming every missing, extra and changed file.
    """
    problems = [f"file {p} is missing" for p in sorted(set(expected) - set(found))]
    problems += [f"file {p} is not in the manifest" for p in sorted(set(found) - set(expected))]
    problems += [
        f"file {p} has sha256 {found[p]}, expected {expected[p]}"
        for p in sorted(set(expected) & set(found))
        if found[p] != expected[p]
    ]
    if problems:
        raise ModelRefusedError(what, "; ".join(problems) + " (the manifest recorded when it was trained)")


def manifest_tags(manifest: Mapping[str, str]) -> dict[str, str]:
    """The tags a run (and its version) carry the manifest in: its canonical JSON and its digest."""
    return {
        TAG_MODEL_MANIFEST: canonical_json(dict(sorted(manifest.items()))),
        TAG_MODEL_MANIFEST_SHA256: manifest_sha256(manifest),
    }


def manifest_from_tags(
    tags: Mapping[str, str], what: str, expected_sha256: str | None = None
) -> dict[str, str]:
    """The manifest carried in ``tags``, checked against its digest (and ``expected_sha256`` if given).

    Args:
        tags: a run's or a model version's tags.
        what: the model they belong to (named in errors).
        expected_sha256: the digest the signed provenance names, if any.

    Raises:
        ModelRefusedError: a tag is missing, the manifest is not one, or a digest does not match.
    """
    raw, sha = tags.get(TAG_MODEL_MANIFEST), tags.get(TAG_MODEL_MANIFEST_SHA256)
    if not raw or not sha:
        missing = [t for t, v in ((TAG_MODEL_MANIFEST, raw), (TAG_MODEL_MANIFEST_SHA256, sha)) if not v]
        raise ModelRefusedError(
            what, f"no {' / '.join(missing)} tag: not a model logged by the train task (it records its files)"
        )
    try:
        parsed = json.loads(raw)
    except ValueError as exc:
        raise ModelRefusedError(what, f"tag {TAG_MODEL_MANIFEST} is not JSON ({exc})") from None
    manifest = check_manifest(parsed, what)
    digest = manifest_sha256(manifest)
    if digest != sha:
        raise ModelRefusedError(
            what, f"tag {TAG_MODEL_MANIFEST} has sha256 {digest}, tag {TAG_MODEL_MANIFEST_SHA256} says {sha}"
        )
    if expected_sha256 is not None and digest != expected_sha256:
        raise ModelRefusedError(
            what,
            f"tag {TAG_MODEL_MANIFEST} has sha256 {digest}, the signed provenance says {expected_sha256}",
        )
    return manifest


# --------------------------------------------------------------------------------------- provenance


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short name of a public key (first 16 hex of the SHA-256 of its raw bytes), for messages."""
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return sha256_bytes(raw)[:16]


def provenance_claims(
    *,
    name: str,
    version: str | int,
    run_id: str,
    manifest_sha256: str,
    verdict: Mapping[str, Any],
    public_key: Ed25519PublicKey,
) -> dict[str, Any]:
    """What a version's provenance asserts, without the signing time.

    Args:
        name, version: the registered model version.
        run_id: the MLflow run that trained it.
        manifest_sha256: the digest of its files' manifest.
        verdict: the gate verdict (``passed``, ``metric``, ``challenger_value``, ``forced``).
        public_key: the signer's public key (its :func:`key_id` is recorded).
    """
    value = verdict.get("challenger_value")
    return {
        "schema": PROVENANCE_SCHEMA,
        "model_name": name,
        "model_version": str(version),
        "run_id": run_id,
        "manifest_sha256": manifest_sha256,
        "verdict": {
            "passed": verdict.get("passed") is True,
            "metric": str(verdict.get("metric")),
            "value": None if value is None else float(value),
            "forced": bool(verdict.get("forced", False)),
        },
        "key_id": key_id(public_key),
    }


def sign_provenance(
    claims: Mapping[str, Any], key: Ed25519PrivateKey, signed_at: datetime | None = None
) -> dict[str, str]:
    """The version tags holding ``claims`` signed now (or at ``signed_at``): payload and signature."""
    when = (signed_at or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="seconds")
    payload = canonical_json({**claims, "signed_at": when})
    signature = base64.urlsafe_b64encode(key.sign(payload.encode())).decode()
    return {TAG_PROVENANCE: payload, TAG_PROVENANCE_SIGNATURE: signature}


def verify_provenance(
    tags: Mapping[str, str],
    public_key: Ed25519PublicKey,
    *,
    name: str,
    version: str | int,
    run_id: str | None,
    what: str | None = None,
) -> dict[str, Any]:
    """The provenance of a version, if its signature verifies and it names this version, after a passing gate.

    Args:
        tags: the version's tags.
        public_key: the pipeline's verification key.
        name, version: the version the tags belong to.
        run_id: the version's run (as the registry records it).
        what: how errors name the version (default ``model <name> version <version>``).

    Returns:
        The signed payload.

    Raises:
        ModelRefusedError: a tag is missing, the signature does not verify with ``public_key``, or the
            payload names another model, version or run, a failed gate, or no manifest digest.
    """
    from cryptography.exceptions import InvalidSignature

    what = what or f"model {name} version {version}"
    raw, signature = tags.get(TAG_PROVENANCE), tags.get(TAG_PROVENANCE_SIGNATURE)
    if not raw or not signature:
        missing = [t for t, v in ((TAG_PROVENANCE, raw), (TAG_PROVENANCE_SIGNATURE, signature)) if not v]
        raise ModelRefusedError(
            what,
            f"no {' / '.join(missing)} tag: only versions the train DAG registered (signed provenance) may serve",
        )
    try:
        sig = base64.b64decode(signature.encode("ascii"), altchars=b"-_", validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise ModelRefusedError(what, f"tag {TAG_PROVENANCE_SIGNATURE} is not url-safe base64") from None
    try:
        public_key.verify(sig, raw.encode())
    except InvalidSignature:
        try:
            claimed = json.loads(raw).get("key_id")
        except (ValueError, AttributeError):
            claimed = None
        raise ModelRefusedError(
            what,
            f"the signature in {TAG_PROVENANCE_SIGNATURE} does not verify {TAG_PROVENANCE} with the pipeline's "
            f"key (key id {key_id(public_key)}; the provenance names key id {claimed}): altered, or not "
            "signed by this pipeline",
        ) from None
    payload = json.loads(raw)
    if not isinstance(payload, dict) or payload.get("schema") != PROVENANCE_SCHEMA:
        raise ModelRefusedError(what, f"tag {TAG_PROVENANCE}: expected a schema {PROVENANCE_SCHEMA} object")
    expected = {"model_name": name, "model_version": str(version), "run_id": run_id}
    for field, want in expected.items():
        if payload.get(field) != want:
            raise ModelRefusedError(
                what, f"the signed provenance names {field} {payload.get(field)!r}, this version has {want!r}"
            )
    verdict = payload.get("verdict")
    if not isinstance(verdict, dict) or verdict.get("passed") is not True:
        raise ModelRefusedError(
            what, f"the signed provenance records a gate verdict that did not pass: {verdict}"
        )
    if not _is_sha256(payload.get("manifest_sha256")):
        raise ModelRefusedError(what, "the signed provenance names no manifest sha256")
    return payload


def carries_provenance(
    tags: Mapping[str, str], public_key: Ed25519PublicKey, claims: Mapping[str, Any]
) -> bool:
    """Whether ``tags`` already hold a valid signature of exactly ``claims`` (whenever it was signed).

    Lets registration re-run without re-signing: the same claims keep the same tags.
    """
    try:
        payload = verify_provenance(
            tags,
            public_key,
            name=str(claims["model_name"]),
            version=str(claims["model_version"]),
            run_id=claims["run_id"],
        )
    except ModelRefusedError:
        return False
    return {k: v for k, v in payload.items() if k != "signed_at"} == dict(claims)


def version_tags(
    *,
    name: str,
    version: str | int,
    run_id: str,
    manifest: Mapping[str, str],
    verdict: Mapping[str, Any],
    key: Ed25519PrivateKey,
    signed_at: datetime | None = None,
) -> dict[str, str]:
    """Every trust tag of a version: its manifest, digest, signed provenance and signature."""
    claims = provenance_claims(
        name=name,
        version=version,
        run_id=run_id,
        manifest_sha256=manifest_sha256(manifest),
        verdict=verdict,
        public_key=key.public_key(),
    )
    return {**manifest_tags(manifest), **sign_provenance(claims, key, signed_at)}
