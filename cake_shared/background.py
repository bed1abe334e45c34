"""The lifecycle of a loop that runs on a daemon thread beside a process's real work.

The API's worker watch (:class:`cake_shared.workers.WorkerWatch`) and the worker's sweeper
(``worker.sweeper.Sweeper``) each repeat a task every few seconds on such a thread. They share
this start and stop, so that both behave alike at shutdown: starting twice never runs two
loops, a stopped loop can be started again, and stopping waits a bounded time for the loop to
end (the thread is a daemon, so one stuck in the database cannot hold the process up).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import ClassVar

__all__ = ["BackgroundLoop"]


class BackgroundLoop(ABC):
    """Runs :meth:`_run` on a daemon thread called ``thread_name``.

    ``_run`` must return soon after ``self._stop`` is set: it waits on that event between
    rounds (``self._stop.wait(interval)``) rather than sleeping.
    """

    thread_name: ClassVar[str] = "cake-background"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @abstractmethod
    def _run(self) -> None:
        """The loop itself, run on the thread until ``self._stop`` is set."""

    def start(self) -> None:
        """Start the thread, unless it is already running."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the loop to end and wait up to ``timeout`` seconds for the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
