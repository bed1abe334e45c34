"""cake_shared.background.BackgroundLoop: the start/stop shared by the worker watch and sweeper."""

from __future__ import annotations

import threading

from cake_shared.background import BackgroundLoop


class _Counter(BackgroundLoop):
    thread_name = "test-loop"

    def __init__(self) -> None:
        super().__init__()
        self.rounds = 0
        self.ran = threading.Event()

    def _run(self) -> None:
        while True:
            self.rounds += 1
            self.ran.set()
            if self._stop.wait(0.01):
                return


def test_start_twice_runs_one_daemon_thread_and_stop_joins_it() -> None:
    loop = _Counter()
    loop.start()
    thread = loop._thread
    loop.start()
    assert loop._thread is thread
    assert thread is not None and thread.daemon and thread.name == "test-loop"
    assert loop.ran.wait(5)
    loop.stop()
    assert loop._thread is None and not thread.is_alive()


def test_a_stopped_loop_starts_again() -> None:
    loop = _Counter()
    loop.start()
    assert loop.ran.wait(5)
    loop.stop()
    loop.ran.clear()
    loop.start()
    assert loop.ran.wait(5)
    loop.stop()
    assert loop.rounds >= 2


def test_stop_before_start_is_harmless() -> None:
    _Counter().stop()
