"""The job queues' names: the one definition that settings, routing, publishing, the worker,
the metrics and the CLI read.

A queue name that one module spells and another does not know is a job nobody takes, so every
check of a name goes through this module. It imports nothing (not Celery, not pydantic), so the
settings and the CLI can read it without paying for the broker's client.
"""

from __future__ import annotations

from typing import Final

GPU: Final = "gpu"
CPU: Final = "cpu"
#: The queues a job can be published to and a worker can consume.
QUEUES: Final[tuple[str, ...]] = (GPU, CPU)
#: Where a job goes when nothing chose otherwise; every worker with a CPU can serve it.
FALLBACK_QUEUE: Final = CPU
#: ``CAKE_DEFAULT_QUEUE=auto``: ``gpu`` while a live CUDA worker serves it, else ``cpu``.
AUTO: Final = "auto"
#: What ``CAKE_DEFAULT_QUEUE`` may be.
QUEUE_CHOICES: Final[tuple[str, ...]] = (AUTO, *QUEUES)


def queue_or_fallback(name: str | None) -> str:
    """``name`` when it is a real queue, else :data:`FALLBACK_QUEUE`.

    For rows written before the names were checked at start-up: such a job is still published
    somewhere a worker listens, instead of to a queue nobody consumes.
    """
    return name if name is not None and name in QUEUES else FALLBACK_QUEUE
