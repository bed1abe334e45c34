"""A load generator's HTTP/1.1 client: one keep-alive connection over asyncio streams.

``hey`` and ``wrk`` cost the machine under test little because they do little per request; an
``httpx.AsyncClient`` per simulated client costs about a millisecond of CPU per answer, which on
this 2-core machine is as much as the server spends and shows up in the latencies measured (a
thousand long-pollers woken at once: 1.2 s of the generator's CPU against 0.37 s of the
server's). This speaks just enough HTTP/1.1 for GETs of the service, whose answers always carry
``Content-Length``.
"""

from __future__ import annotations

import asyncio
import contextlib


class RawHttp:
    """One keep-alive HTTP/1.1 connection with just enough of the protocol for these GETs (the
    service answers with ``Content-Length``, never chunked); reconnects after an error."""

    def __init__(self, host: str, port: int, headers: dict[str, str]) -> None:
        self._host, self._port = host, port
        self._fixed = "".join(
            f"{k}: {v}\r\n" for k, v in {"Host": f"{host}:{port}", **headers}.items()
        )
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def get(
        self, target: str, headers: dict[str, str], timeout: float
    ) -> tuple[int, dict[str, str], bytes]:
        """``GET target``: (status, lower-cased headers, body)."""
        try:
            return await asyncio.wait_for(self._get(target, headers), timeout)
        except BaseException:
            await self.close()  # a half-read answer must not be read as the next one
            raise

    async def _get(self, target: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        if self._streams is None:
            self._streams = await asyncio.open_connection(self._host, self._port)
        reader, writer = self._streams
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(f"GET {target} HTTP/1.1\r\n{self._fixed}{extra}\r\n".encode("latin-1"))
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        status_line, *lines = head.split("\r\n")
        fields = {}
        for line in lines:
            name, _, value = line.partition(":")
            if name:
                fields[name.strip().lower()] = value.strip()
        length = int(fields.get("content-length", "0"))
        body = await reader.readexactly(length) if length else b""
        return int(status_line.split(" ", 2)[1]), fields, body

    async def close(self) -> None:
        if self._streams is not None:
            writer = self._streams[1]
            self._streams = None
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


#: What a raw client's request may raise: the connection dropped, timed out or answered garbage.
RAW_ERRORS = (
    OSError,
    asyncio.IncompleteReadError,
    asyncio.LimitOverrunError,
    TimeoutError,
    ValueError,
)
