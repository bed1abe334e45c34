"""An S3 endpoint that is down but counts: it accepts each connection and closes it at once.

A refused port says nothing about how many tries a store call made; this listener counts them
(one connection per HTTP request: botocore does not retry underneath, ``cake_shared.storage``),
so a test can tell the API's short store budget from a worker's long one by the requests each
makes, not by timing alone.
"""

from __future__ import annotations

import socket
import threading
from types import TracebackType


class ClosingEndpoint:
    """``with ClosingEndpoint() as endpoint:`` ``endpoint.url`` for ``s3_endpoint_url``;
    ``endpoint.connections`` counts what reached it."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._sock.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="closing-endpoint", daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            conn.close()

    def __enter__(self) -> ClosingEndpoint:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()
