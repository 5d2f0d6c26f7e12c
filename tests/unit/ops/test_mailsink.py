"""The SMTP sink: real SMTP over loopback, messages read back from the folder."""

from __future__ import annotations

import signal
import smtplib
import socket
import subprocess
import sys
import time
from email.message import EmailMessage
from pathlib import Path

import pytest

from continuous_training.ops.mailsink import MailSink, read_mail


def _message(subject: str, to: str = "oncall@example.com") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "continuous-training@localhost"
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content(f"body of {subject}\nsecond line ü")
    return msg


def test_message_sent_with_smtplib_is_stored_and_read_back(tmp_path: Path) -> None:
    mail_dir = tmp_path / "mail"
    with MailSink(mail_dir) as sink:
        assert sink.port > 0
        with smtplib.SMTP("127.0.0.1", sink.port, timeout=10) as client:
            client.send_message(_message("first"), to_addrs=["oncall@example.com", "lead@example.com"])
            client.send_message(_message("second"))

    messages = read_mail(mail_dir)
    assert [m["Subject"] for m in messages] == ["first", "second"]
    first = messages[0]
    assert first["From"] == "continuous-training@localhost"
    assert first["To"] == "oncall@example.com"
    # The envelope says who really got it, which can differ from the To: header.
    assert first["X-Envelope-To"] == "oncall@example.com, lead@example.com"
    assert first["X-Envelope-From"] == "continuous-training@localhost"
    assert first.get_content().splitlines() == ["body of first", "second line ü"]
    files = sorted(mail_dir.iterdir())
    assert len(files) == 2
    assert all(p.suffix == ".eml" and not p.name.startswith(".") for p in files)


def test_stopped_sink_releases_its_port_and_stop_is_idempotent(tmp_path: Path) -> None:
    sink = MailSink(tmp_path / "mail")
    port = sink.start()
    sink.stop()
    sink.stop()
    with pytest.raises(ConnectionRefusedError), smtplib.SMTP("127.0.0.1", port, timeout=2):
        pass


def test_start_on_a_taken_port_raises(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError, match="(?i)address already in use"):
            MailSink(tmp_path / "mail", port=taken.getsockname()[1]).start()


def test_read_mail_of_missing_folder_is_empty(tmp_path: Path) -> None:
    assert read_mail(tmp_path / "nothing-here") == []


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_module_runs_until_sigterm(tmp_path: Path) -> None:
    mail_dir = tmp_path / "mail"
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "continuous_training.ops.mailsink",
            "--port",
            str(port),
            "--dir",
            str(mail_dir),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                client = smtplib.SMTP("127.0.0.1", port, timeout=5)
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
                assert time.monotonic() < deadline, "mail sink did not listen within 30 s"
                time.sleep(0.1)
        with client:
            client.send_message(_message("via module"))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
    assert [m["Subject"] for m in read_mail(mail_dir)] == ["via module"]
