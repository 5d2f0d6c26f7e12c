"""Sending alert mail to on-call: task failures (a notifier) and domain events (bad data, drift, gate,
rollback). What the mails say is :mod:`continuous_training.alerts.mail`.

This module is imported by DAG files at parse time, so it imports nothing heavy and reads no file at
import or construction; recipients and the sender are resolved when a mail is actually sent.

Domain alerts are idempotent: each carries an event key (e.g. ``bad-data/2026-10-05/<sha12>``) and a
ledger entry under ``<lake>/alerts/`` records that it was sent (:mod:`continuous_training.alerts.ledger`,
shared with the endpoint's Airflow-free :mod:`continuous_training.alerts.mailer`), so a re-run, a cleared
task or another process never mails the same event twice.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from airflow.providers.smtp.notifications.smtp import SmtpNotifier

from continuous_training.alerts.ledger import send_once
from continuous_training.alerts.mail import FAILURE_HTML, FAILURE_SUBJECT, Mail
from continuous_training.alerts.mailer import SUBJECT_PREFIX
from continuous_training.alerts.mailer import from_email as _from_email
from continuous_training.alerts.mailer import recipients as _recipients
from continuous_training.settings import load_settings

log = logging.getLogger(__name__)


class OnCallNotifier(SmtpNotifier):
    """Mails on-call when a task fails: which task, which run, the error text and the log link.

    Use it as ``on_failure_callback=OnCallNotifier()`` (in ``default_args``). Recipients default to
    ``alerts.on_call`` of ``policy.yaml`` (``CT_ALERT_TO`` overrides), the connection to ``CT_SMTP_CONN_ID``.
    """

    def __init__(self, to: str | Iterable[str] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("subject", FAILURE_SUBJECT)
        kwargs.setdefault("html_content", FAILURE_HTML)
        kwargs.setdefault("smtp_conn_id", load_settings().smtp_conn_id)
        super().__init__(to=to or [], **kwargs)

    def notify(self, context: Any) -> None:
        self.to = _recipients(self.to)
        if self.from_email is None:
            self.from_email = _from_email()
        super().notify(context)


def send_alert(
    event_key: str,
    subject: str,
    html_body: str,
    *,
    to: str | Iterable[str] | None = None,
    details: Mapping[str, Any] | None = None,
) -> bool:
    """Send a domain alert once per event.

    Args:
        event_key: identifies the event (same event -> same key); the ledger makes a second send a no-op.
        subject: mail subject; ``[ct]`` is prefixed.
        html_body: the mail body (HTML; escape what you interpolate).
        to: recipients; default ``alerts.on_call`` from policy.yaml (``CT_ALERT_TO`` overrides).
        details: JSON-serialisable facts stored in the ledger entry beside the mail.

    Returns:
        True if a mail was sent now, False if this event had already been mailed.
    """
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    recipients = _recipients(to)
    full_subject = SUBJECT_PREFIX + subject

    def send() -> None:
        with SmtpHook(smtp_conn_id=load_settings().smtp_conn_id) as hook:
            hook.send_email_smtp(
                to=recipients,
                subject=full_subject,
                html_content=html_body,
                from_email=hook.from_email or _from_email(),
                custom_headers={"X-CT-Event": event_key},
            )

    # The ledger claims the event atomically: of two runs racing on the same event, exactly one mails it.
    return send_once(event_key, full_subject, send, to=recipients, details=details)


def notify(mail: Mail, *, to: str | Iterable[str] | None = None) -> bool:
    """Send a :class:`~continuous_training.alerts.mail.Mail` once per event (see :func:`send_alert`)."""
    return send_alert(mail.event_key, mail.subject, mail.html, to=to, details=mail.details)
