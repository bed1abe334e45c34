"""The webhook deliverer: a thread in every worker that sends the due job callbacks.

It runs in the worker's main process (jobs run in pool children, which cannot wake it) and
looks for due deliveries every ``webhook_poll_s`` (2 s), so a callback follows its job within
about that. Attempts go out on a small thread pool (``webhook_concurrency``), so one receiver
that takes its full time limit does not hold up the others. Claims are compare-and-sets in
the database (``cake_shared.webhooks``): any number of workers can run a deliverer.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor, wait

from cake_shared import webhooks
from cake_shared.services import Services

log = logging.getLogger("cake.worker.webhooks")


def deliver_round(services: Services, pool: ThreadPoolExecutor, limit: int) -> int:
    """Send the attempts due now (up to ``limit``) on ``pool``; how many were sent."""
    due = webhooks.due_deliveries(services, limit)
    futures = [pool.submit(webhooks.deliver, services, job_id) for job_id in due]
    wait(futures)
    sent = 0
    for future in futures:
        try:
            sent += future.result() is not None
        except Exception as exc:  # the database may be down; the lease expires, then a retry
            log.warning("webhook delivery failed (%s: %s)", type(exc).__name__, exc)
    return sent


class WebhookDeliverer:
    """Runs :func:`deliver_round` until stopped, on a daemon thread (every ``poll_s``, default
    ``webhook_poll_s``, ``concurrency`` attempts at once, default ``webhook_concurrency``)."""

    def __init__(
        self, services: Services, poll_s: float | None = None, concurrency: int | None = None
    ) -> None:
        self.services = services
        self.poll_s = poll_s
        self.concurrency = concurrency
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def wake(self) -> None:
        """Look for due deliveries now (a job just ended)."""
        self._wake.set()

    def _run(self) -> None:
        settings = self.services.settings
        poll = self.poll_s or settings.webhook_poll_s
        workers = self.concurrency or settings.webhook_concurrency
        with ThreadPoolExecutor(workers, thread_name_prefix="cake-webhook") as pool:
            while not self._stop.is_set():
                self._wake.clear()
                try:
                    sent = deliver_round(self.services, pool, workers)
                except Exception as exc:  # the database may be down; try again later
                    reason = getattr(exc, "orig", None) or exc
                    log.warning("webhook round failed (%s: %s)", type(exc).__name__, reason)
                    sent = 0
                if sent:
                    continue  # more may be due right away
                self._wake.wait(poll)

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="cake-webhooks", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
