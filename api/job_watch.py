"""Long polling: one watcher per API process tells waiting requests that their job changed.

``GET /v1/jobs/{id}?wait=30`` that finds the job as its client last saw it waits here instead of
asking again. The watcher asks the database, once per round, for the ``updated_at`` of every
job anybody waits on (one query whatever the number of waiting clients: a thousand clients on
one job cost one row per round) and wakes the waiters whose stamp differs or whose job is gone.
``updated_at`` is what the job's ETag is made of (:func:`api.serializers.job_etag`), so a waiter
wakes exactly when a poll would have got a new body.

On PostgreSQL the watcher also ``LISTEN``\\ s: a trigger (migration 0004) sends a ``NOTIFY`` with
the job id whenever a job's ``updated_at`` changes or the job is deleted, and a notification for
a watched job starts a round at once. The round's interval is then only a safety net for a lost
listening connection. SQLite has no notifications: the round runs every ``poll_s`` (0.25 s, so
every waiter hears of a change within about a quarter of a second; a round is one indexed
query, four a second).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

import anyio
from sqlalchemy import Engine, select
from sqlalchemy.engine import make_url

from cake_shared.models import Job

log = logging.getLogger("cake.api.watch")

#: The channel migration 0004's trigger notifies, with the job id as the payload.
CHANNEL = "cake_job_changed"
#: Job ids per query of a round (SQLite caps a statement's parameters).
_CHUNK = 500


class _Gone:
    """The stamp of a job that no longer exists: unequal to every real stamp."""


GONE = _Gone()
Stamp = datetime | None | _Gone


@dataclass(frozen=True)
class JobChange:
    """What a waiter is woken with: the job's ``updated_at`` as the round read it."""

    stamp: Stamp

    @property
    def gone(self) -> bool:
        return isinstance(self.stamp, _Gone)


@dataclass(eq=False)
class _Waiter:
    stamp: Stamp
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    change: JobChange | None = None


def read_stamps(engine: Engine, job_ids: list[str]) -> dict[str, Stamp]:
    """``updated_at`` of each job of ``job_ids`` that exists (any tenant's: the route checked
    the tenant before it waited), on one pooled connection."""
    table = Job.__table__
    stamps: dict[str, Stamp] = {}
    with engine.connect() as connection:
        for start in range(0, len(job_ids), _CHUNK):
            chunk = job_ids[start : start + _CHUNK]
            query = select(table.c.id, table.c.updated_at).where(table.c.id.in_(chunk))
            stamps.update({row.id: row.updated_at for row in connection.execute(query)})
    return stamps


class JobWatch:
    """The waiters of one API process, keyed by job id, and the loop that wakes them.

    The loop runs on the event loop of the requests that wait, only while somebody waits; its
    database reads go to a worker thread (``limiter`` bounds them like every short read). A
    failed read is logged and tried again next round: waiters then time out as if nothing
    changed, which is what a client would have seen from a poll that failed.
    """

    def __init__(
        self,
        read: Callable[[list[str]], dict[str, Stamp]],
        *,
        poll_s: float = 0.25,
        limiter: Callable[[], anyio.CapacityLimiter] | None = None,
        listen_url: str | None = None,
        listening_poll_s: float = 5.0,
    ) -> None:
        self._read = read
        self.poll_s = poll_s
        self.listening_poll_s = listening_poll_s
        self._limiter = limiter
        self._waiting: dict[str, set[_Waiter]] = {}
        self._task: asyncio.Task[None] | None = None
        self._poke: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener = _Listener(listen_url, self._notified) if listen_url else None
        #: Rounds run so far: one database read each (tests and the benchmark read it).
        self.rounds = 0

    @property
    def listening(self) -> bool:
        """Whether a PostgreSQL ``LISTEN`` connection is up (rounds are then a safety net)."""
        return self._listener is not None and self._listener.listening

    @property
    def waiting(self) -> int:
        """Requests waiting right now."""
        return sum(len(waiters) for waiters in self._waiting.values())

    async def wait_for_change(self, job_id: str, stamp: Stamp, timeout: float) -> JobChange | None:
        """Wait until job ``job_id``'s ``updated_at`` differs from ``stamp`` (or the job is
        gone) and return the stamp the round saw; None when ``timeout`` seconds passed first.

        Passing the stamp on spares the woken requests a query each: a thousand clients of one
        job that all wake on the same change answer from the body the first of them built."""
        waiter = _Waiter(stamp)
        self._waiting.setdefault(job_id, set()).add(waiter)
        self._ensure_running()
        try:
            with anyio.move_on_after(timeout):
                await waiter.changed.wait()
            return waiter.change
        finally:
            waiters = self._waiting.get(job_id)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._waiting[job_id]

    def close(self) -> None:
        """Stop the loop and the listening thread (waiters left time out on their own)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = None
        if self._listener is not None:
            self._listener.stop()

    # -- the loop ------------------------------------------------------------------------------
    def _ensure_running(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is not None and not self._task.done() and self._loop is loop:
            return
        self._loop = loop
        self._poke = asyncio.Event()
        self._task = self._loop.create_task(self._run(), name="cake-job-watch")
        if self._listener is not None:
            self._listener.start()

    async def _run(self) -> None:
        assert self._poke is not None
        while self._waiting:
            job_ids = list(self._waiting)
            try:
                stamps = await anyio.to_thread.run_sync(
                    self._read, job_ids, limiter=self._limiter() if self._limiter else None
                )
            except Exception as exc:
                log.warning("job watch: reading %d job(s) failed: %s", len(job_ids), exc)
            else:
                self.rounds += 1
                self._wake(job_ids, stamps)
            with anyio.move_on_after(self.listening_poll_s if self.listening else self.poll_s):
                await self._poke.wait()
            self._poke.clear()

    def _wake(self, job_ids: Iterable[str], stamps: dict[str, Stamp]) -> None:
        for job_id in job_ids:
            current = stamps.get(job_id, GONE)
            for waiter in self._waiting.get(job_id, ()):
                if waiter.stamp != current and waiter.change is None:
                    waiter.change = JobChange(current)
                    waiter.changed.set()

    def _notified(self, job_id: str) -> None:
        """From the listening thread: a job changed; start a round now if anybody waits on it."""
        loop, poke = self._loop, self._poke
        if loop is None or poke is None or job_id not in self._waiting:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile (shut down)
            loop.call_soon_threadsafe(poke.set)


class _Listener:
    """A thread that holds one PostgreSQL connection in ``LISTEN`` and passes each notified job
    id to ``on_notify``. While it is connected the watcher's rounds slow to a safety net; when the
    connection drops it reconnects with a growing pause, and the rounds run at full pace."""

    def __init__(self, url: str, on_notify: Callable[[str], None]) -> None:
        self._url = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        self._on_notify = on_notify
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.listening = False

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="cake-job-listen", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(3.0)
            self._thread = None

    def _run(self) -> None:
        import psycopg

        pause = 1.0
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._url, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.listening = True
                    pause = 1.0
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=1.0):
                            self._on_notify(note.payload)
            except Exception as exc:
                if not self._stop.is_set():
                    log.warning("job watch: LISTEN connection lost (%s); reconnecting", exc)
            finally:
                self.listening = False
            self._stop.wait(pause)
            pause = min(pause * 2, 30.0)
