"""The words of a job's state, spelled once: its status, its phase, its webhook's delivery.

Every member is a ``str`` (:class:`enum.StrEnum`): it compares equal to, formats as, is
serialized to JSON as, and is stored in the database as exactly the string that API.md
documents, so the wire and the database see the same words as before. Rows read back from the
database hold plain strings; they compare equal to the members.

The state machine (``cake_shared.jobs``): ``queued -> running -> succeeded | failed |
canceled``, plus ``running -> queued`` when a worker hands a job back. The phase is ``queued``
while queued, one of :data:`RUNNING_PHASES` while running, and the final status once the job
has ended.

This module imports nothing but the standard library: the client SDK (``cake_client``) and the
command line use it without the database, pydantic or torch.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "ACTIVE_STATUSES",
    "RUNNING_PHASES",
    "TERMINAL_STATUSES",
    "JobPhase",
    "JobStatus",
    "WebhookStatus",
]


class JobStatus(StrEnum):
    """A job's ``status``."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


#: Statuses after which a job never changes again (its final event has the status as type).
TERMINAL_STATUSES: frozenset[JobStatus] = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED}
)
#: Statuses of a job that is not over: it still needs its teacher and cannot be deleted.
ACTIVE_STATUSES: frozenset[JobStatus] = frozenset(set(JobStatus) - TERMINAL_STATUSES)


class JobPhase(StrEnum):
    """A job's ``phase``: ``queued``, a running phase, or the final status."""

    QUEUED = JobStatus.QUEUED.value
    SYNTHESIZING = "synthesizing"
    TRAINING = "training"
    EVALUATING = "evaluating"
    EXPORTING = "exporting"
    SUCCEEDED = JobStatus.SUCCEEDED.value
    FAILED = JobStatus.FAILED.value
    CANCELED = JobStatus.CANCELED.value


#: The phases of a running job, in the order the engine runs them (``cake_core.pipeline.PHASES``
#: names the same ones; tests/test_status.py checks that they agree).
RUNNING_PHASES: tuple[JobPhase, ...] = (
    JobPhase.SYNTHESIZING,
    JobPhase.TRAINING,
    JobPhase.EVALUATING,
    JobPhase.EXPORTING,
)


class WebhookStatus(StrEnum):
    """The state of a job's callback delivery (``webhook.status``; the column
    ``webhook_status`` is null until the job ends, which the API reports as ``waiting``)."""

    WAITING = "waiting"
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
