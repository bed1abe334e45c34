"""Typed errors of the engine.

Every error carries a machine-readable ``code`` (the same vocabulary as the REST API's problem
documents) and a message written for the person who has to fix the input, so callers (CLI,
service) can show it verbatim.
"""

from __future__ import annotations


class CakeError(Exception):
    """Base class: something the user can act on, with a stable ``code``."""

    code = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SpecError(CakeError):
    """The job spec is invalid; ``field`` names the offending setting (dotted path)."""

    code = "validation_error"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


class TeacherInvalidError(CakeError):
    """The teacher file cannot be used: not TorchScript, wrong output, not differentiable..."""

    code = "teacher_invalid"


class DatasetInvalidError(CakeError):
    """An evaluation data set (``.npz`` with ``x`` and ``y``) does not fit the teacher."""

    code = "dataset_invalid"


class SynthesisDivergedError(CakeError):
    """Synthetic inputs or the synthesis loss became non-finite."""

    code = "synthesis_diverged"


class TrainingDivergedError(CakeError):
    """The student's loss became non-finite."""

    code = "training_diverged"


class JobCanceled(CakeError):
    """Raised from inside the pipeline when the cancel check says stop."""

    code = "canceled"
