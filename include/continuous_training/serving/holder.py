"""The models an endpoint worker holds: a registry alias, polled and swapped without a failed request.

The ``champion`` alias is the model that serves. When shadow scoring is on (``release.shadow_share``),
a second holder follows the ``challenger`` alias: its model also scores sampled requests off the
request path (:mod:`continuous_training.serving.shadow`) and never answers a client. A challenger alias
naming the version the champion holder already serves reuses that loaded model (no second copy); a
missing challenger alias is the normal state between releases.

Only a version the pipeline trained is swapped in, whatever the alias: the default loader
(:func:`continuous_training.modelstore.load_model_version`) verifies the version's signed provenance,
its files against the signed manifest and the skops format before any byte of the model is read. A
refused version never serves (nor shadow-scores): the previous model stays, ``/health`` reports the
refusal (``last_error`` for the champion, ``shadow.last_error`` for the challenger, saying that the
champion is unaffected), and on-call gets one mail per version (the alert ledger in the lake is shared
by the endpoint's workers, its restarts and the deploy task; :mod:`continuous_training.alerts.mailer`
sends it over plain SMTP, without Airflow).
"""

from __future__ import annotations

import dataclasses
import html
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from continuous_training.config import DatasetContract
from continuous_training.lineage import CHAMPION
from continuous_training.modelstore import load_model_version
from continuous_training.provenance import ModelRefusedError
from continuous_training.serving.request import sample_frame
from continuous_training.serving.scorer import Scorer, compile_scorer
from continuous_training.settings import Settings, load_settings

if TYPE_CHECKING:
    from continuous_training.alerts.mail import Mail

log = logging.getLogger(__name__)

# How long startup waits for the first alias lookup before serving 503s; MLflow's client retries
# an unreachable server for minutes, and a worker must come up (and report no_model) regardless.
STARTUP_WAIT_SECONDS = 30.0


# A version that failed to load is retried after this long (or at once on /reload), not every poll.
FAILED_LOAD_RETRY_SECONDS = 30.0


@dataclass(frozen=True)
class ServedModel:
    """A loaded model version; replaced as a whole, so a request sees one consistent version."""

    name: str
    version: str
    model: Any
    loaded_at: datetime
    scorer: Scorer
    scorer_kind: str


def _is_missing_alias(exc: Exception) -> bool:
    from mlflow.exceptions import RestException

    if not isinstance(exc, RestException):
        return False
    # An unknown model is RESOURCE_DOES_NOT_EXIST; a known model without the alias is
    # INVALID_PARAMETER_VALUE "...alias champion not found" (measured on mlflow 3.17.2).
    return exc.error_code == "RESOURCE_DOES_NOT_EXIST" or (
        exc.error_code == "INVALID_PARAMETER_VALUE" and "not found" in str(exc)
    )


class ModelHolder:
    """Keeps the version an alias names loaded and swaps it when the alias moves.

    A daemon thread resolves the alias every ``poll_seconds``. A new version is loaded and warmed up
    in that thread, then published with one reference assignment: requests already running finish
    on the model they started with, and none waits for or fails because of a swap. A version that
    fails to load (or to score a sample row) is logged, reported in ``last_error``, and the previous
    model keeps serving. A version the loader refuses (provenance, digest, format:
    :class:`~continuous_training.provenance.ModelRefusedError`) is handled the same way, and mailed to
    on-call once per version.

    The ``champion`` holder serves; a holder of another alias (the ``challenger``, for shadow scoring)
    only says which model to shadow-score with: its messages and mails name its alias and say that
    the champion is unaffected, and a missing alias is logged at info once, as a normal state.

    Args:
        tracking_uri: the MLflow tracking/registry server.
        model_name: the registered model whose alias is followed.
        contract: the dataset contract (for the warm-up row).
        poll_seconds: alias polling period.
        loader: ``(name, version) -> estimator``; default
            :func:`continuous_training.modelstore.load_model_version` on ``tracking_uri``, verified with
            the pipeline's public key under ``settings.secrets_dir``.
        settings: where the verification key, the lake (alert ledger) and the SMTP server are; default
            :func:`~continuous_training.settings.load_settings`.
        alias: the registry alias followed (default ``champion``).
        champion: for a holder of another alias, the champion's holder: its loaded model is reused
            when both aliases name the same version, and its version is named in refusals.
    """

    def __init__(
        self,
        tracking_uri: str,
        model_name: str,
        contract: DatasetContract,
        poll_seconds: float = 2.0,
        loader: Callable[[str, str], Any] | None = None,
        settings: Settings | None = None,
        *,
        alias: str = CHAMPION,
        champion: ModelHolder | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.alias = alias
        self.champion = champion
        self.model_name = model_name
        self.contract = contract
        self.poll_seconds = poll_seconds
        self.settings = settings or load_settings()
        self._loader = loader or self._load_verified
        self._current: ServedModel | None = None
        self._check_lock = threading.Lock()
        self._stop = threading.Event()
        self._first_check = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: Any = None
        self._registry_error: str | None = None
        self._failed: tuple[str, float, str] | None = None  # (version, monotonic time, message)
        self._alias_state: str | None = None  # last logged alias state, to log changes only
        self._alias_entry: Any = None  # the ModelVersion the alias last named

    @property
    def current(self) -> ServedModel | None:
        """The model serving now (None before the first successful load)."""
        return self._current

    @property
    def last_error(self) -> str | None:
        """The latest registry or load failure not yet resolved."""
        if self._registry_error:
            return self._registry_error
        return self._failed[2] if self._failed else None

    def _registry(self) -> Any:
        from mlflow import MlflowClient

        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        return self._client

    def _load_verified(self, name: str, version: str) -> Any:
        from continuous_training.credentials import model_verify_key

        # The key is read at each load: one written after the endpoint started is picked up. The entry
        # the alias lookup just read (tags included) saves a registry call.
        return load_model_version(
            name,
            version,
            mlflow_client=self._registry(),
            verify_key=model_verify_key(self.settings),
            model_version=self._alias_entry,
        )

    def _resolve_alias(self) -> str | None:
        try:
            self._alias_entry = self._registry().get_model_version_by_alias(self.model_name, self.alias)
            return str(self._alias_entry.version)
        except Exception as exc:
            if _is_missing_alias(exc):
                return None
            raise

    def _note_alias(self, state: str, message: str, *args: Any) -> None:
        if state != self._alias_state:
            self._alias_state = state
            log.info(message, *args)

    @property
    def serves(self) -> bool:
        """True for the champion's holder (its model answers clients), False for a shadow alias."""
        return self.alias == CHAMPION

    def _champion_version(self) -> str | None:
        served = self.champion.current if self.champion is not None else None
        return served.version if served is not None else None

    def _no_alias(self, current: ServedModel | None) -> None:
        """The alias names no version (never set, or removed): log the state once, stop using the model."""
        if self.serves:
            if current is None:
                self._note_alias(
                    "none", "Model %r has no %r alias yet: /predict answers 503", self.model_name, CHAMPION
                )
            else:
                # The endpoint serves the champion and nothing else: a removed alias (e.g. a first
                # deploy rolled back) must not leave the rejected version answering.
                self._note_alias(
                    "gone",
                    "Alias %r of %r was removed; stopped serving version %s: /predict answers 503",
                    CHAMPION,
                    self.model_name,
                    current.version,
                )
        elif current is None:
            # Between releases there is no challenger: the normal state, not a warning.
            self._note_alias(
                "none", "Model %r has no %r alias: no shadow scoring", self.model_name, self.alias
            )
        else:
            self._note_alias(
                "gone",
                "Alias %r of %r was removed; stopped shadow scoring with version %s",
                self.alias,
                self.model_name,
                current.version,
            )
        self._current = None

    def check(self, force: bool = False) -> ServedModel | None:
        """Resolve the alias now and load its version if it is not the one serving.

        Never raises: failures are logged and reported by :attr:`last_error`.

        Args:
            force: retry a version that failed to load without waiting for the retry delay.

        Returns:
            The model serving after the check.
        """
        with self._check_lock:
            try:
                version = self._resolve_alias()
            except Exception as exc:
                message = f"registry {self.tracking_uri} unreachable or failing: {exc}"
                if self._registry_error is None:
                    log.warning("%s (keeps polling)", message)
                self._registry_error = message
                return self._current
            if self._registry_error is not None:
                log.info("Registry %s answers again", self.tracking_uri)
                self._registry_error = None
            current = self._current
            if version is None:
                self._no_alias(current)
                return None
            self._note_alias(
                f"v{version}", "Alias %r of %r points at version %s", self.alias, self.model_name, version
            )
            shared = self.champion.current if self.champion is not None else None
            if shared is not None and shared.version == version:
                # Both aliases name the version the champion serves (the state after a deploy): one
                # loaded copy, not two.
                if current is not shared:
                    self._current = shared
                    self._failed = None
                return shared
            if current is not None and current.version == version:
                return current
            if (
                self._failed is not None
                and self._failed[0] == version
                and not force
                and time.monotonic() - self._failed[1] < FAILED_LOAD_RETRY_SECONDS
            ):
                return current
            self._load(version)
            return self._current

    def _load(self, version: str) -> None:
        started = time.monotonic()
        try:
            model = self._loader(self.model_name, version)
        except ModelRefusedError as exc:
            self._refuse(version, exc)
            return
        except Exception as exc:
            self._fail(version, exc)
            return
        try:
            scores = np.asarray(model.predict_proba(sample_frame(self.contract)))
            if scores.ndim != 2 or scores.shape[0] != 1 or scores.shape[1] < 2:
                raise ValueError(f"predict_proba on one row returned shape {scores.shape}; expected (1, 2)")
        except Exception as exc:
            self._fail(version, exc)
            return
        scorer, kind = compile_scorer(model, self.contract)
        previous = self._current
        self._current = ServedModel(self.model_name, version, model, datetime.now(UTC), scorer, kind)
        self._failed = None
        log.info(
            "%s %s version %s (was %s, scorer %s), loaded in %.1f s",
            "Serving" if self.serves else f"Shadow scoring ({self.alias}) with",
            self.model_name,
            version,
            previous.version if previous else None,
            kind,
            time.monotonic() - started,
        )

    def _unaffected(self) -> str:
        """For a shadow alias: what its failure leaves as it was (the champion)."""
        return (
            f"not shadow-scored; the champion is unaffected and keeps serving version "
            f"{self._champion_version()}"
        )

    def _fail(self, version: str, exc: Exception) -> None:
        if self.serves:
            message = f"loading {self.model_name} version {version} failed: {type(exc).__name__}: {exc}"
            self._failed = (version, time.monotonic(), message)
            serving = self._current.version if self._current else None
            log.error("%s; still serving version %s", message, serving, exc_info=exc)
            return
        message = (
            f"loading {self.alias} {self.model_name} version {version} failed ({self._unaffected()}): "
            f"{type(exc).__name__}: {exc}"
        )
        self._failed = (version, time.monotonic(), message)
        # The previous shadow version is no longer the alias's: scoring with it would compare nothing
        # anyone is about to release.
        self._current = None
        log.error("%s", message, exc_info=exc)

    def _refuse(self, version: str, exc: ModelRefusedError) -> None:
        serving = self._current.version if self._current else None
        if self.serves:
            message = f"refused {self.model_name} version {version} (still serving version {serving}): {exc}"
        else:
            message = (
                f"refused {self.alias} {self.model_name} version {version} ({self._unaffected()}): {exc}"
            )
            self._current = None  # as in _fail: nothing is shadow-scored until a trusted version
        again = self._failed is not None and self._failed[2] == message
        self._failed = (version, time.monotonic(), message)
        # Logged as an error once; the retries (every FAILED_LOAD_RETRY_SECONDS) only at info.
        log.log(logging.INFO if again else logging.ERROR, "%s", message)
        # Imported here: only a refusal needs the mail code (Airflow-free, it loads no airflow).
        from continuous_training.alerts.mail import model_refused_mail
        from continuous_training.alerts.mailer import mail_once

        if self.serves:
            mail = model_refused_mail(
                name=self.model_name,
                version=version,
                reason=str(exc),
                refused_by=f"the prediction endpoint (worker pid {os.getpid()})",
                serving=serving,
            )
        else:
            mail = self._shadow_refused_mail(version, exc)
        try:
            if mail_once(mail, settings=self.settings):
                log.warning("Mailed on-call that %s version %s was refused", self.model_name, version)
        except Exception:  # the refusal stands; a failed mail is retried with the next load attempt
            log.exception("Could not mail on-call that %s version %s was refused", self.model_name, version)

    def _shadow_refused_mail(self, version: str, exc: ModelRefusedError) -> Mail:
        """The refusal mail of a shadow alias's version: it names the alias and the unaffected champion.

        Same event key as a refused champion (one mail per version, whoever refused it): a version
        refused as challenger is refused again, without a second mail, if it is ever made champion.
        """
        from continuous_training.alerts.mail import model_refused_mail

        champion = self._champion_version()
        mail = model_refused_mail(
            name=self.model_name,
            version=version,
            reason=str(exc),
            refused_by=f"the prediction endpoint's shadow scoring (worker pid {os.getpid()}), as {self.alias}",
            serving=champion,
        )
        note = (
            f"<p>This version is the <code>{html.escape(self.alias)}</code>: it was to be shadow-scored "
            "beside the champion, never to answer clients. The champion is unaffected: "
            f"{'v' + html.escape(champion) if champion else 'nothing'} keeps serving, and no request is "
            "shadow-scored until the alias names a trusted version.</p>"
        )
        return dataclasses.replace(
            mail,
            subject=(
                f"{self.alias.capitalize()} refused: {self.model_name} v{version} will not be shadow-scored "
                f"(champion {'v' + champion if champion else 'none'} unaffected)"
            ),
            html=note + mail.html,
            details={**mail.details, "alias": self.alias},
        )

    def _run(self) -> None:
        while True:
            try:
                self.check()
            except Exception:  # check() does not raise; this guards the thread against surprises
                log.exception("Alias poll failed")
            finally:
                self._first_check.set()
            if self._stop.wait(self.poll_seconds):
                return

    def start(self) -> None:
        """Start polling (the first check runs at once, in the polling thread)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"{self.alias}-poller", daemon=True)
        self._thread.start()

    def wait_first_check(self, timeout: float) -> bool:
        """Wait until the first alias check finished; True if it did within ``timeout`` seconds."""
        return self._first_check.wait(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop polling (a registry call in flight is abandoned: the thread is a daemon)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def health(self) -> dict[str, Any]:
        """The ``/health`` body."""
        served = self._current
        return {
            "status": "ok" if served is not None else "no_model",
            "model_name": self.model_name,
            "model_version": served.version if served else None,
            "pid": os.getpid(),
            "loaded_at": served.loaded_at.isoformat() if served else None,
            "scorer": served.scorer_kind if served else None,
            "last_error": self.last_error,
        }
