"""The job queue: a Celery app configured from settings, shared by the API and the workers.

A message carries the job id only; the database holds everything else (spec, state, results),
so a lost or duplicated message is harmless: the worker claims the job in the database before
it runs it, and a sweeper re-enqueues jobs the broker may have lost.

With no ``CAKE_BROKER_URL`` the broker is kombu's filesystem transport under
``CAKE_DATA_DIR/broker``: the embedded service needs no broker server. With Redis the
visibility timeout is set longer than any single step, so an unacknowledged message of a
long-running job is not redelivered to a second worker while the first still works on it.

Each process builds one :class:`CeleryQueue` from its settings (inside its
:class:`~cake_shared.services.Services`); there is no process-wide Celery app, so two apps
with different brokers in one process each publish to their own. Celery itself is imported
when a queue first talks to its broker, not when this module is, which keeps it off the API's
start-up.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cake_shared.queue_names import FALLBACK_QUEUE, QUEUES
from cake_shared.settings import Settings

if TYPE_CHECKING:
    from celery import Celery

TASK_NAME = "cake.run_job"
#: How often an idle embedded worker looks for new message files (seconds); it bounds the
#: delay from ``POST /v1/jobs`` to ``running`` on the filesystem broker.
FILESYSTEM_POLL_S = 0.1


def filesystem_folders(settings: Settings) -> dict[str, Path]:
    """The folders of the filesystem broker: messages, processed messages, exchange tables."""
    root = settings.broker_folder()
    return {
        "data": root / "messages",
        "processed": root / "processed",
        "control": root / "control",
    }


def _broker_options(settings: Settings, url: str) -> dict[str, Any]:
    if url.startswith("filesystem"):
        folders = filesystem_folders(settings)
        for folder in folders.values():
            folder.mkdir(parents=True, exist_ok=True)
        return {
            # One folder for both directions: producers (API) and consumers (workers) on one
            # machine share it.
            "data_folder_in": str(folders["data"]),
            "data_folder_out": str(folders["data"]),
            # Consuming a message renames it into this folder. A rename within one file system
            # is atomic, so two workers can never take the same file; with the default
            # (the system temp folder, maybe another file system) the move is copy-then-delete.
            # The worker's sweeper prunes old files here.
            "store_processed": True,
            "processed_folder": str(folders["processed"]),
            "control_folder": str(folders["control"]),
            "polling_interval": FILESYSTEM_POLL_S,
        }
    if url.startswith(("redis://", "rediss://", "redis+socket://")):
        return {"visibility_timeout": settings.visibility_timeout_s}
    return {}


def build_celery(settings: Settings) -> Celery:
    """A Celery app for ``settings``; most callers want a :class:`CeleryQueue`, which builds
    one when it first needs it."""
    from celery import Celery
    from kombu import Exchange, Queue

    url = settings.resolved_broker_url()
    if url.rstrip("/") == "filesystem:":
        url = "filesystem://localhost//"  # kombu warns about a missing host otherwise
    app = Celery("cake", broker=url, set_as_current=False)
    exchange = Exchange("cake", type="direct")
    app.conf.update(
        broker_transport_options=_broker_options(settings, url),
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=5,
        # A publish that cannot reach the broker fails fast: the job stays queued in the
        # database and the sweeper enqueues it again later.
        task_publish_retry_policy={
            "max_retries": 3,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        task_queues=[Queue(name, exchange, routing_key=name) for name in QUEUES],
        task_default_queue=FALLBACK_QUEUE,
        task_default_exchange="cake",
        task_default_routing_key=FALLBACK_QUEUE,
        task_create_missing_queues=False,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        result_backend=None,
        # A message is acknowledged only after the task returns, so a crash never silently
        # drops a job. When a prefork pool child dies, its parent gives the message back at
        # once (reject_on_worker_lost); when the whole worker dies, Redis keeps the message
        # unacknowledged until the visibility timeout. Neither is what resumes the job: the
        # sweeper of any live worker requeues it from the database (at once for a dead process
        # on its host, else after job_heartbeat_timeout_s), and the claim turns every
        # redelivered copy into a no-op. The attempt count in the database, not the broker,
        # ends a job that kills its worker every time (max_attempts), so no redelivery loop.
        # One message per worker process at a time (prefetch 1): a busy worker holds no
        # second job that an idle worker could run.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_send_task_events=False,
        # Remote control needs broadcast queues; the embedded filesystem broker does without.
        worker_enable_remote_control=not url.startswith("filesystem"),
        worker_cancel_long_running_tasks_on_connection_loss=False,
        enable_utc=True,
    )
    return app


class CeleryQueue:
    """Publishes job ids to the broker of ``settings`` (a
    :class:`~cake_shared.services.JobQueue`); a worker consumes from the same :attr:`app`.

    The Celery app is built on first use (once, also when threads race), so building a
    ``CeleryQueue`` costs nothing and imports nothing.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._app: Celery | None = None
        self._lock = threading.Lock()

    @property
    def app(self) -> Celery:
        if self._app is None:
            with self._lock:
                if self._app is None:
                    self._app = build_celery(self.settings)
        return self._app

    def enqueue(self, job_id: str, queue: str, countdown: float | None = None) -> None:
        """Publish ``job_id`` to ``queue`` (``gpu`` or ``cpu``); raises when the broker is
        down.

        Call it after the job row is committed: a worker that gets the message before the row
        exists would find nothing to run.
        """
        if queue not in QUEUES:
            raise ValueError(f"unknown queue {queue!r}; expected one of {', '.join(QUEUES)}")
        self.app.send_task(
            TASK_NAME, args=[job_id], queue=queue, routing_key=queue, countdown=countdown
        )

    def ping(self, timeout: float = 2.0) -> None:
        """Raise if the broker cannot be reached within about ``timeout`` seconds
        (``/readyz``)."""
        app = self.app  # building it creates the filesystem broker's folders
        if self.settings.resolved_broker_url().startswith("filesystem"):
            for folder in filesystem_folders(self.settings).values():
                if not folder.is_dir():
                    raise OSError(f"broker folder {folder.name!r} is missing")
        with app.connection_for_write(connect_timeout=timeout) as conn:
            conn.ensure_connection(
                max_retries=1, interval_start=0, interval_step=0, timeout=timeout
            )

    def depth(self, queue: str) -> int:
        """Messages waiting in ``queue`` (not counting ones a worker holds); for metrics and
        the sweeper. A queue the broker has never seen holds 0."""
        from kombu.exceptions import ChannelError

        with self.app.connection_for_read() as conn:
            channel = conn.default_channel
            try:
                return int(channel.queue_declare(queue=queue, passive=True).message_count)
            except ChannelError:
                return 0

    def close(self) -> None:
        """Let go of the app (a later call builds a new one). Its broker connections are not
        closed: kombu keeps them in a process-wide pool per broker URL, shared by every Celery
        app of the process on that broker, which would find the pool closed."""
        with self._lock:
            app, self._app = self._app, None
        if app is not None:
            app.close()
