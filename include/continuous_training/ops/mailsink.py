"""A real SMTP server on loopback that stores every message it receives as an ``.eml`` file.

The embedded stack uses it in place of a mail relay: Airflow's SMTP notifier talks real SMTP to it,
and tests or a person read the mail folder (``$CT_HOME/mail``). Each file holds the raw message as
received, preceded by ``X-Envelope-From`` / ``X-Envelope-To`` headers, because the SMTP envelope
(who the mail was actually delivered to) can differ from the ``To:`` header.

Run it on its own with ``python -m continuous_training.ops.mailsink --host H --port P --dir D``; it
serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import email
import email.message
import email.policy
import logging
import os
import signal
import socket
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: How long the aiosmtpd controller may take to answer its own probe connection; its 5 s
#: default is tight on a 2-core machine busy starting Airflow.
READY_TIMEOUT_S = 30.0


def _envelope_header(value: str) -> str:
    # Addresses come from the client; never let them smuggle extra header lines into the file.
    return value.replace("\r", " ").replace("\n", " ")


class _EmlHandler:
    """aiosmtpd handler writing each message to ``<mail_dir>/<UTC timestamp>-<uuid8>.eml``."""

    def __init__(self, mail_dir: Path) -> None:
        self.mail_dir = mail_dir

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = envelope.original_content if envelope.original_content is not None else envelope.content
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        header = (
            f"X-Envelope-From: {_envelope_header(str(envelope.mail_from or ''))}\r\n"
            f"X-Envelope-To: {_envelope_header(', '.join(envelope.rcpt_tos))}\r\n"
        ).encode()
        try:
            path = write_eml(self.mail_dir, header + raw)
        except OSError as exc:
            log.error("could not store a message in %s: %s", self.mail_dir, exc)
            return "451 Requested action aborted: local error in processing"
        log.info("stored mail from %s to %s as %s", envelope.mail_from, envelope.rcpt_tos, path.name)
        return "250 Message accepted for delivery"


def write_eml(mail_dir: Path, data: bytes) -> Path:
    """Write one message atomically (temporary file + rename) and return its path.

    The name starts with a UTC timestamp to the microsecond, so sorting names sorts by arrival.

    Args:
        mail_dir: the mail folder (created if missing).
        data: the message bytes.

    Returns:
        The path of the new ``.eml`` file.
    """
    mail_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    final = mail_dir / f"{stamp}-{uuid.uuid4().hex[:8]}.eml"
    tmp = mail_dir / f".{final.name}.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, final)
    return final


def _make_controller(handler: _EmlHandler, sock: socket.socket) -> Any:
    from aiosmtpd.controller import Controller

    class _BoundController(Controller):
        """A Controller serving on a socket we bound ourselves.

        aiosmtpd binds host:port itself and then probes that same port, so port 0 would fail; binding
        first gives us the real port without the race of "find a free port, close it, reuse it".
        """

        def _create_server(self) -> Any:
            return self.loop.create_server(self._factory_invoker, sock=sock, ssl=self.ssl_context)

    host, port = sock.getsockname()[:2]
    # An explicit server_hostname avoids socket.getfqdn(), which can hang for seconds without DNS.
    return _BoundController(
        handler, hostname=host, port=port, ready_timeout=READY_TIMEOUT_S, server_hostname="localhost"
    )


class MailSink:
    """An SMTP server on loopback storing each received message as an ``.eml`` file.

    Args:
        mail_dir: folder receiving the messages.
        host: address to bind (loopback by default; never expose it).
        port: port to bind; 0 picks a free one (see :meth:`start`'s return value).
    """

    def __init__(self, mail_dir: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.mail_dir = Path(mail_dir)
        self.host = host
        self.port = port
        self._controller: Any = None

    def start(self) -> int:
        """Bind, start serving in a background thread and return the bound port.

        Returns:
            The TCP port the server listens on.

        Raises:
            OSError: the address cannot be bound (e.g. the port is taken) or the mail folder
                cannot be created.
        """
        if self._controller is not None:
            return self.port
        self.mail_dir.mkdir(parents=True, exist_ok=True)
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            # Lets a restarted sink rebind while old connections sit in TIME_WAIT; on Linux it does
            # not allow two listeners on one port.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            controller = _make_controller(_EmlHandler(self.mail_dir), sock)
            controller.start()
        except BaseException:
            sock.close()
            raise
        self._controller = controller
        self.port = sock.getsockname()[1]
        log.info("mail sink listening on %s:%s, writing to %s", self.host, self.port, self.mail_dir)
        return self.port

    def stop(self) -> None:
        """Stop serving and release the port (no-op when not started)."""
        if self._controller is None:
            return
        self._controller.stop()
        self._controller = None
        log.info("mail sink on %s:%s stopped", self.host, self.port)

    def __enter__(self) -> MailSink:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def read_mail(mail_dir: Path) -> list[email.message.EmailMessage]:
    """Parse every stored message, oldest first.

    Args:
        mail_dir: the sink's mail folder; a missing folder means no mail yet.

    Returns:
        The messages, parsed with ``email.policy.default``.
    """
    mail_dir = Path(mail_dir)
    if not mail_dir.is_dir():
        return []
    files = sorted(p for p in mail_dir.glob("*.eml") if not p.name.startswith("."))
    return [email.message_from_bytes(p.read_bytes(), policy=email.policy.default) for p in files]


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT: ``python -m continuous_training.ops.mailsink --host H --port P --dir D``.

    Args:
        argv: command-line arguments (default ``sys.argv[1:]``).

    Returns:
        The process exit code (0 after a clean stop).
    """
    parser = argparse.ArgumentParser(
        prog="python -m continuous_training.ops.mailsink",
        description="SMTP server on loopback storing each message as an .eml file.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=8025, help="port to bind, 0 = any free port (default 8025)"
    )
    parser.add_argument("--dir", required=True, type=Path, help="folder receiving the .eml files")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    sink = MailSink(args.dir, host=args.host, port=args.port)
    try:
        sink.start()
    except OSError as exc:
        log.error("cannot start the mail sink on %s:%s (folder %s): %s", args.host, args.port, args.dir, exc)
        return 1
    try:
        # A bounded wait keeps the main thread responsive to signals on every platform.
        while not stop.wait(1.0):
            pass
    finally:
        sink.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
