"""Python client of the cake-distill REST API: ``from cake_client import Client``.

Only ``httpx`` and ``httpx-sse`` (the job's live event stream) are needed (no torch, no
database, no pydantic), so pipelines can use the client without the engine. The other modules
of this project it imports are :mod:`cake_shared.status` (the job status and phase words),
:mod:`cake_shared.signing` (the webhook signature rule) and :mod:`cake_shared.student_files`
(the student's file names), shipped in the same distribution and importing nothing but the
standard library, so the service and the client read one definition of each. See
:mod:`cake_client.client` for an example.
"""

from cake_client.client import Client, Datasets, Jobs, Teachers, build_spec, shape_list
from cake_client.errors import (
    ArtifactUnavailable,
    CakeAPIError,
    CakeError,
    ChecksumMismatch,
    Conflict,
    DatasetInvalid,
    NotFound,
    NotReady,
    PayloadTooLarge,
    RateLimited,
    ServerError,
    ServiceUnreachable,
    TeacherInvalid,
    Unauthorized,
    ValidationError,
    WaitTimeout,
)
from cake_client.models import (
    FINISHED_STATUSES,
    Architecture,
    Artifact,
    Dataset,
    Deployment,
    DeploymentRow,
    Int8Quantization,
    Job,
    JobError,
    JobEvent,
    JobProgress,
    OnnxExport,
    Page,
    Teacher,
)
from cake_client.webhooks import verify_signature

__all__ = [
    "FINISHED_STATUSES",
    "Architecture",
    "Artifact",
    "ArtifactUnavailable",
    "CakeAPIError",
    "CakeError",
    "ChecksumMismatch",
    "Client",
    "Conflict",
    "Dataset",
    "DatasetInvalid",
    "Datasets",
    "Deployment",
    "DeploymentRow",
    "Int8Quantization",
    "Job",
    "JobError",
    "JobEvent",
    "JobProgress",
    "Jobs",
    "NotFound",
    "NotReady",
    "OnnxExport",
    "Page",
    "PayloadTooLarge",
    "RateLimited",
    "ServerError",
    "ServiceUnreachable",
    "Teacher",
    "TeacherInvalid",
    "Teachers",
    "Unauthorized",
    "ValidationError",
    "WaitTimeout",
    "build_spec",
    "shape_list",
    "verify_signature",
]
