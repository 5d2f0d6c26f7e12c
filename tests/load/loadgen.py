"""An open-loop load generator for the prediction endpoint: a fixed request rate over keep-alive connections.

Each of ``connections`` connections sends its share of the rate on a fixed schedule (connection ``k``
sends requests ``k``, ``k + C``, ``k + 2C``, ... at ``start + i / rate``), one request at a time. A
request's latency counts from the moment it was due, not from when it left: when the endpoint falls
behind, the wait before sending is part of what the client sees (no coordinated omission).

The HTTP/1.1 requests are written by hand on asyncio streams (pre-encoded bodies, a minimal reply
parser) so that the generator costs a small share of one core at a few hundred requests per second and
leaves the rest to the endpoint it measures. A connection is pinned to one endpoint worker for its life
(the workers share the listening socket; the one that accepted a connection answers all of it), so the
versions one connection sees are the versions one worker served, in order.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Reply:
    """One request's fate."""

    #: The connection (0..C-1) and how many times it had been reopened before this request.
    connection: int
    generation: int
    #: When it was due (``time.monotonic()``) and how long after that its reply was complete.
    due: float
    latency_ms: float
    #: The HTTP status, None when no reply came (connection refused, reset or timed out).
    status: int | None
    #: ``X-Model-Version`` of the reply (None on failures without one).
    version: str | None
    error: str | None = None


@dataclass
class LoadRun:
    """Traffic at ``rate`` requests/s from ``connections`` connections until :meth:`stop` (or ``duration_s``).

    Args:
        host: the endpoint's host.
        port: its port.
        bodies: JSON bodies to send, in turn.
        rate: requests per second, all connections together.
        connections: keep-alive connections (each at ``rate / connections``).
        timeout_s: a reply later than this counts as failed (status None) and the connection is reopened.
        duration_s: longest run (the caller usually stops it sooner).
    """

    host: str
    port: int
    bodies: list[bytes]
    rate: float
    connections: int = 8
    timeout_s: float = 10.0
    duration_s: float = 3600.0
    replies: list[Reply] = field(default_factory=list)
    started: float | None = None
    _thread: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> LoadRun:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="loadgen", daemon=True)
        self._thread.start()
        while self.started is None:
            time.sleep(0.01)
        return self

    def stop(self) -> list[Reply]:
        """Stop sending, wait for the replies in flight; every reply, in order of due time."""
        self._stop.set()
        assert self._thread is not None
        self._thread.join(self.timeout_s + 30)
        return sorted(self.replies, key=lambda r: r.due)

    async def _main(self) -> None:
        self.started = time.monotonic() + 0.2
        await asyncio.gather(*(self._connection(k) for k in range(self.connections)))

    def _request(self, n: int) -> bytes:
        body = self.bodies[n % len(self.bodies)]
        head = (
            f"POST /predict HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body

    async def _connection(self, k: int) -> None:
        assert self.started is not None
        step = self.connections / self.rate
        due = self.started + k / self.rate
        end = self.started + self.duration_s
        generation, n = 0, k
        streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        while not self._stop.is_set() and due < end:
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            status = version = error = None
            sent_on = generation
            try:
                if streams is None:
                    streams = await asyncio.wait_for(
                        asyncio.open_connection(self.host, self.port), self.timeout_s
                    )
                reader, writer = streams
                writer.write(self._request(n))
                status, headers = await asyncio.wait_for(_read_reply(reader), self.timeout_s)
                version = headers.get("x-model-version")
                if headers.get("connection", "").lower() == "close":
                    writer.close()
                    streams, generation = None, generation + 1
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
                error = f"{type(exc).__name__}: {exc}"
                if streams is not None:
                    streams[1].close()
                streams, generation = None, generation + 1
            self.replies.append(
                Reply(
                    connection=k,
                    generation=sent_on,
                    due=due,
                    latency_ms=(time.monotonic() - due) * 1000.0,
                    status=status,
                    version=version,
                    error=error,
                )
            )
            due += step
            n += self.connections
        if streams is not None:
            streams[1].close()


async def _read_reply(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """Read one HTTP/1.1 reply (Content-Length bodies only); its status and lower-cased headers."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            key, value = line.split(":", 1)
            headers[key.strip().lower()] = value.strip()
    if "content-length" not in headers:
        raise ValueError(f"a reply without Content-Length: {lines[0]!r}")
    await reader.readexactly(int(headers["content-length"]))
    return status, headers


def json_bodies(rows: list[dict[str, Any]]) -> list[bytes]:
    """One ``{"rows": [row]}`` body per row."""
    return [json.dumps({"rows": [row]}, separators=(",", ":")).encode() for row in rows]


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, linear between ranks."""
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=float), q))


def switches(replies: list[Reply]) -> dict[tuple[int, int], list[str]]:
    """The versions each connection (each of its lives) saw, in order, repeats collapsed."""
    seen: dict[tuple[int, int], list[str]] = {}
    for reply in replies:
        if reply.version is None:
            continue
        versions = seen.setdefault((reply.connection, reply.generation), [])
        if not versions or versions[-1] != reply.version:
            versions.append(reply.version)
    return seen
