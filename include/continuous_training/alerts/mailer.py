"""Alert mail without Airflow: plain SMTP, for processes that do not run Airflow (the endpoint).

Airflow's tasks mail through their SMTP connection (:mod:`continuous_training.alerts.notifier`); the
endpoint talks to ``settings.smtp_server`` / ``settings.smtp_port`` itself, with the sender and
recipients of ``policy.yaml`` (``alerts``). Both go through the same ledger
(:mod:`continuous_training.alerts.ledger`), so an event is mailed once whichever process sees it.
"""

from __future__ import annotations

import smtplib
from collections.abc import Iterable
from email.message import EmailMessage

from continuous_training.alerts.ledger import send_once
from continuous_training.alerts.mail import Mail
from continuous_training.lake import Lake
from continuous_training.settings import Settings, load_settings

#: Seconds an SMTP exchange may take; the endpoint's poll thread waits for it.
SMTP_TIMEOUT_S = 10.0
SUBJECT_PREFIX = "[ct] "


def recipients(to: str | Iterable[str] | None = None, settings: Settings | None = None) -> list[str]:
    """``to`` if given, else ``alerts.on_call`` of policy.yaml (``CT_ALERT_TO`` overrides)."""
    if to:
        return [to] if isinstance(to, str) else list(to)
    from continuous_training.config import load_policy

    return list(load_policy(settings.config_dir if settings else None).alerts.on_call)


def from_email(settings: Settings | None = None) -> str:
    """The sender, ``alerts.from_email`` of policy.yaml."""
    from continuous_training.config import load_policy

    return load_policy(settings.config_dir if settings else None).alerts.from_email


def send_smtp(
    *,
    to: list[str],
    subject: str,
    html: str,
    event_key: str,
    settings: Settings,
    timeout: float = SMTP_TIMEOUT_S,
) -> None:
    """Send one HTML mail to ``settings.smtp_server:smtp_port`` (plain SMTP, as the embedded sink takes it).

    Raises:
        OSError: the server cannot be reached (smtplib's errors are OSErrors).
    """
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = from_email(settings)
    message["To"] = ", ".join(to)
    message["X-CT-Event"] = event_key
    message.set_content("This alert is HTML; open it in a mail reader that shows HTML.")
    message.add_alternative(html, subtype="html")
    with smtplib.SMTP(settings.smtp_server, settings.smtp_port, timeout=timeout) as smtp:
        smtp.send_message(message)


def mail_once(mail: Mail, *, settings: Settings | None = None, to: str | Iterable[str] | None = None) -> bool:
    """Send a :class:`~continuous_training.alerts.mail.Mail` over plain SMTP, once per event.

    Returns:
        True if it was sent now, False if this event had been mailed already (by any process).

    Raises:
        OSError: the SMTP server cannot be reached (the event stays unclaimed for a retry).
    """
    settings = settings or load_settings()
    rcpts = recipients(to, settings)
    subject = SUBJECT_PREFIX + mail.subject

    def send() -> None:
        send_smtp(to=rcpts, subject=subject, html=mail.html, event_key=mail.event_key, settings=settings)

    return send_once(mail.event_key, subject, send, to=rcpts, details=mail.details, lake=Lake(settings.lake))
