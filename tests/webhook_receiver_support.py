"""A real HTTP server on loopback that receives job callbacks, for the webhook tests.

Each path has its own script: the status codes of its first answers (then ``then``), an
optional delay before answering, an optional ``Location`` for 3xx answers. Every request is
recorded with its raw body and headers, so the tests check signatures over the exact bytes.
With ``tls`` (a server-side ``ssl.SSLContext``) it speaks https, for the tests that check which
name the sender puts in the TLS handshake and verifies the certificate against.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    at: float  # time.monotonic()


@dataclass
class Script:
    statuses: list[int] = field(default_factory=list)
    then: int = 200
    delay_s: float = 0.0
    location: str | None = None


class WebhookReceiver:
    """``ThreadingHTTPServer`` on 127.0.0.1 (a port the OS picks), recording every POST."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.received: list[Received] = []
        self.scripts: dict[str, Script] = {}
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver._lock:
                    receiver.received.append(Received(self.path, headers, body, time.monotonic()))
                    script = receiver.scripts.setdefault(self.path, Script())
                    status = script.statuses.pop(0) if script.statuses else script.then
                if script.delay_s:
                    time.sleep(script.delay_s)
                self.send_response(status)
                if script.location and 300 <= status < 400:
                    self.send_header("Location", script.location)
                answer = b'{"ok": true}' if status < 300 else b'{"ok": false}'
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                with contextlib.suppress(OSError):  # the sender gave up (timeout test)
                    self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:  # a failed handshake is an OSError in accept: the server drops it
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="webhook-receiver", daemon=True
        )
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def script(
        self,
        path: str,
        statuses: list[int] | None = None,
        then: int = 200,
        delay_s: float = 0.0,
        location: str | None = None,
    ) -> str:
        """Set how ``path`` answers; returns its URL."""
        with self._lock:
            self.scripts[path] = Script(list(statuses or []), then, delay_s, location)
        return self.url(path)

    def at(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path == path]

    def wait(self, path: str, count: int, timeout: float) -> list[Received]:
        """The requests to ``path`` once there are at least ``count``; fails after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.at(path)
            if len(got) >= count:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{path}: {len(got)} request(s) after {timeout:.0f}s, expected {count}"
                )
            time.sleep(0.02)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


@contextmanager
def webhook_receiver(tls: ssl.SSLContext | None = None) -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver(tls)
    try:
        yield receiver
    finally:
        receiver.close()
