"""``Client``: typed methods for every endpoint of the cake-distill REST API (API.md).

A few lines distill a teacher::

    from cake_client import Client

    client = Client("http://127.0.0.1:8000")
    teacher = client.teachers.upload("wine_mlp.pt", input_shape=[13])
    job = client.jobs.create(teacher.id, preset="fast")
    job = job.wait(on_progress=lambda p: print(p.phase, f"{p.progress:.0%}"))
    if job.succeeded:
        job.download_student("student.pt")   # sha256 checked against the artifact list
        job.download_onnx("student.onnx")     # the same student as ONNX

Every create call sends an ``Idempotency-Key`` (generated when not given), so the transport may
retry it after a lost response without creating a second object.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import httpx

from cake_client import downloads, streams
from cake_client._http import DEFAULT_MAX_RETRIES, Transport, new_idempotency_key
from cake_client.errors import ArtifactUnavailable
from cake_client.models import (
    Architecture,
    Artifact,
    Dataset,
    Deployment,
    Job,
    JobEvent,
    JobProgress,
    Page,
    Teacher,
)
from cake_client.multipart import FilePart, MultipartBody, ProgressCallback
from cake_client.streams import SSE_READ_TIMEOUT_S
from cake_shared.student_files import (
    DEPLOYMENT_KEYS,
    STUDENT_INT8_ONNX,
    STUDENT_ONNX,
    STUDENT_PT,
    missing_reason,
)

__all__ = [
    "SSE_READ_TIMEOUT_S",
    "UPLOAD_READ_TIMEOUT_S",
    "Client",
    "Datasets",
    "Jobs",
    "Teachers",
    "build_spec",
    "shape_list",
]

T = TypeVar("T")

#: Read timeout of an upload's answer: the service checks a teacher in a sandbox first (60 s
#: by default), so the response may take much longer than an ordinary request.
UPLOAD_READ_TIMEOUT_S = 300.0


def shape_list(input_shape: str | Sequence[int]) -> list[int]:
    """``"1,28,28"``, ``"[13]"``, ``(1, 8, 8)`` -> ``[1, 28, 28]``; the service validates ranges.

    A string is parsed as strictly as the service does: a JSON array of positive integers or
    comma-separated positive integers; anything else (``"[13,"``, ``"13,"``) is a ValueError.
    """
    if isinstance(input_shape, str):
        text = input_shape.strip()
        if text.startswith("["):
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = None
            ok = isinstance(parsed, list) and all(
                isinstance(d, int) and not isinstance(d, bool) for d in parsed
            )
            if not ok:
                raise ValueError(
                    f"input shape {input_shape!r} is not a JSON array of integers, e.g. [1,28,28]"
                )
            dims = list(parsed)
        else:
            tokens = [tok.strip() for tok in text.split(",")]
            if not text or not all(tok.isascii() and tok.isdigit() for tok in tokens):
                raise ValueError(
                    f"input shape {input_shape!r} is not a comma-separated list of integers, "
                    "e.g. 1,28,28"
                )
            dims = [int(tok) for tok in tokens]
    else:
        dims = [int(d) for d in input_shape]
    if not dims or any(d < 1 for d in dims):
        raise ValueError(f"input shape {input_shape!r} must be positive integers, e.g. 1,28,28")
    return dims


def _file(path: str | os.PathLike[str], what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} not found: {p}")
    return p


def _teacher_fields(
    input_shape: str | Sequence[int],
    name: str | None,
    num_classes: int | None,
    **extra: str,
) -> dict[str, str]:
    """The form fields that describe a teacher, for both ways of uploading one.

    ``/v1/teachers`` and the one-shot ``/v1/jobs`` form take the same teacher fields, so the
    shape is validated and encoded by one rule; ``extra`` (the one-shot's ``spec``) goes right
    after ``input_shape``, keeping the field order the service has always received.
    """
    fields = {"input_shape": json.dumps(shape_list(input_shape)), **extra}
    if name is not None:
        fields["name"] = name
    if num_classes is not None:
        fields["num_classes"] = str(int(num_classes))
    return fields


class _Resource:
    def __init__(self, client: Client) -> None:
        self._client = client

    @property
    def _t(self) -> Transport:
        return self._client.transport

    def _pages(
        self,
        path: str,
        parse: Callable[[dict[str, Any]], T],
        params: dict[str, Any],
        limit: int,
        after: str | None,
    ) -> Iterator[Page]:
        """The pages of a list endpoint from ``after`` on, each fetched when asked for.

        One generator serves both ways of listing: ``list_page`` takes the first page only,
        ``list`` (:meth:`_items`) follows ``next_after`` until ``has_more`` ends.
        """
        cursor = after
        while True:
            page = self._t.json("GET", path, params={**params, "limit": limit, "after": cursor})
            yield Page(
                data=[parse(item) for item in page.get("data") or []],
                has_more=bool(page.get("has_more")),
                next_after=page.get("next_after"),
            )
            cursor = page.get("next_after")
            if not page.get("has_more") or not cursor:
                return

    @staticmethod
    def _items(pages: Iterator[Page]) -> Iterator[Any]:
        """Every item of every page, so ``list`` callers need not know about pages."""
        return (item for page in pages for item in page.data)

    def _upload(
        self,
        path: str,
        fields: dict[str, str],
        file: FilePart,
        idempotency_key: str | None,
        on_progress: ProgressCallback | None,
    ) -> Any:
        """POST a multipart form with one file; every upload endpoint takes exactly one.

        The read timeout is stretched to ``UPLOAD_READ_TIMEOUT_S`` because the service checks
        the file before it answers, and the ``Idempotency-Key`` lets the transport retry the
        POST after a lost response without creating a second object.
        """
        body = MultipartBody(fields, [file], on_progress)
        headers = {
            "Content-Type": body.content_type,
            "Content-Length": str(len(body)),
            "Idempotency-Key": idempotency_key or new_idempotency_key(),
        }
        timeout = httpx.Timeout(
            max(self._t.timeout, UPLOAD_READ_TIMEOUT_S), connect=min(self._t.timeout, 10.0)
        )
        return self._t.json("POST", path, content=body, headers=headers, timeout=timeout)


Stored = TypeVar("Stored", Teacher, Dataset)


class _StoredFiles(_Resource, Generic[Stored]):
    """What the two collections of uploaded files share: upload, get one, list newest first."""

    _path: ClassVar[str]
    _model: ClassVar[type[Teacher] | type[Dataset]]

    def _parse(self, data: dict[str, Any]) -> Stored:
        return self._model.from_json(data)  # type: ignore[return-value]

    def get(self, object_id: str, /) -> Stored:
        return self._parse(self._t.json("GET", f"{self._path}/{object_id}"))

    def list(self, limit: int = 20, after: str | None = None) -> Iterator[Stored]:
        """Every object, newest first; ``limit`` is the page size (1..100), not a total."""
        return self._items(self._pages(self._path, self._parse, {}, limit, after))

    def list_page(self, limit: int = 20, after: str | None = None) -> Page:
        return next(self._pages(self._path, self._parse, {}, limit, after))

    def _upload_file(
        self,
        path: str | os.PathLike[str],
        what: str,
        fields: dict[str, str],
        idempotency_key: str | None,
        on_progress: ProgressCallback | None,
    ) -> Stored:
        """POST the file at ``path`` (``what`` names it in a missing-file error) as ``file``."""
        part = FilePart("file", _file(path, what))
        return self._parse(self._upload(self._path, fields, part, idempotency_key, on_progress))


class Teachers(_StoredFiles[Teacher]):
    """``/v1/teachers``: upload, get, list, delete."""

    _path = "/v1/teachers"
    _model = Teacher

    def upload(
        self,
        path: str | os.PathLike[str],
        input_shape: str | Sequence[int],
        name: str | None = None,
        num_classes: int | None = None,
        idempotency_key: str | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Teacher:
        """Stream a TorchScript file to the service, which checks it before answering.

        ``on_progress(sent_bytes, total_bytes)`` is called as the body is sent. Raises
        ``TeacherInvalid`` when the service refuses the file (its ``detail`` says why) and
        ``PayloadTooLarge`` above the service's cap.
        """
        fields = _teacher_fields(input_shape, name, num_classes)
        return self._upload_file(path, "teacher file", fields, idempotency_key, on_progress)

    def delete(self, teacher_id: str) -> None:
        """Delete a teacher (``Conflict`` while a queued or running job uses it)."""
        self._t.send("DELETE", f"/v1/teachers/{teacher_id}")


class Datasets(_StoredFiles[Dataset]):
    """``/v1/datasets``: evaluation data sets (``.npz`` with ``x`` and ``y``)."""

    _path = "/v1/datasets"
    _model = Dataset

    def upload(
        self,
        path: str | os.PathLike[str],
        name: str | None = None,
        idempotency_key: str | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Dataset:
        fields = {"name": name} if name is not None else {}
        return self._upload_file(path, "data set file", fields, idempotency_key, on_progress)


class Jobs(_Resource):
    """``/v1/jobs``: create, get, list, cancel, events (JSON and SSE), artifacts, downloads."""

    # -- create ----------------------------------------------------------------------------------
    def create(
        self,
        teacher_id: str,
        spec: dict[str, Any] | None = None,
        preset: str | None = None,
        student: str | dict[str, Any] | None = None,
        eval_dataset_id: str | None = None,
        seed: int | None = None,
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
        mlflow_tracking_uri: str | None = None,
        input_range: Sequence[float] | None = None,
    ) -> Job:
        """Create a job for an uploaded teacher.

        ``spec`` is the JSON job spec of API.md (without ``teacher_id``); the keyword arguments
        override its fields. ``student`` is an architecture name or ``{"arch", "width"}``.
        ``callback_url``: the service POSTs the job there when it ends, signed (see
        ``Client.webhook_secret`` and ``cake_client.webhooks.verify_signature``).
        ``mlflow_tracking_uri``: when the job succeeds the service logs it to this MLflow server
        (only where the operator lets this tenant name one: ``CAKE_MLFLOW_SPEC_TENANTS``).
        ``input_range``: ``(low, high)``, the range your preprocessing puts every input value in
        (e.g. ``(-1, 1)``); the presets use it to train the student on images in that range.
        Raises ``ValidationError`` (with ``errors`` naming the field) for a bad spec.
        """
        body = build_spec(spec, preset, student, eval_dataset_id, seed, metadata, input_range)
        body["teacher_id"] = teacher_id
        if callback_url is not None:
            body["callback_url"] = callback_url
        if mlflow_tracking_uri is not None:
            body["mlflow_tracking_uri"] = mlflow_tracking_uri
        headers = {"Idempotency-Key": idempotency_key or new_idempotency_key()}
        return self._job(self._t.json("POST", "/v1/jobs", json_body=body, headers=headers))

    def create_oneshot(
        self,
        teacher_path: str | os.PathLike[str],
        input_shape: str | Sequence[int],
        spec: dict[str, Any] | None = None,
        name: str | None = None,
        num_classes: int | None = None,
        idempotency_key: str | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Job:
        """Upload the teacher and create the job in one request (the multipart form)."""
        part = FilePart("teacher", _file(teacher_path, "teacher file"))
        fields = _teacher_fields(input_shape, name, num_classes, spec=json.dumps(spec or {}))
        return self._job(self._upload("/v1/jobs", fields, part, idempotency_key, on_progress))

    # -- read ------------------------------------------------------------------------------------
    def _job(self, data: dict[str, Any]) -> Job:
        return Job.from_json(data, self._client)

    def get(self, job_id: str) -> Job:
        return self._job(self._t.json("GET", f"/v1/jobs/{job_id}"))

    def list(
        self,
        status: str | None = None,
        teacher_id: str | None = None,
        limit: int = 20,
        after: str | None = None,
    ) -> Iterator[Job]:
        """Every job (optionally of one status or teacher), newest first, page by page."""
        params = {"status": status, "teacher_id": teacher_id}
        return self._items(self._pages("/v1/jobs", self._job, params, limit, after))

    def list_page(
        self,
        status: str | None = None,
        teacher_id: str | None = None,
        limit: int = 20,
        after: str | None = None,
    ) -> Page:
        params = {"status": status, "teacher_id": teacher_id}
        return next(self._pages("/v1/jobs", self._job, params, limit, after))

    def cancel(self, job_id: str) -> Job:
        """Ask the job to stop (queued: at once; running: at its next step); idempotent."""
        return self._job(self._t.json("POST", f"/v1/jobs/{job_id}/cancel", retry_safe=True))

    def delete(self, job_id: str) -> None:
        """Delete a finished job with its events and artifacts (``Conflict`` while active)."""
        self._t.send("DELETE", f"/v1/jobs/{job_id}")

    def events(self, job_id: str, after: str | None = None, limit: int = 100) -> Iterator[JobEvent]:
        """The job's log so far, oldest first (JSON pages; see ``stream_events`` for live)."""
        return self._items(
            self._pages(f"/v1/jobs/{job_id}/events", JobEvent.from_json, {}, limit, after)
        )

    # -- live events -----------------------------------------------------------------------------
    def stream_events(self, job_id: str, after: str | None = None) -> Iterator[JobEvent]:
        """Live events (Server-Sent Events) until the job ends, oldest first.

        Reconnects after a dropped connection from the last event seen (``Last-Event-ID``), so
        no event is lost or repeated; raises ``ServiceUnreachable`` after ``max_retries``
        reconnects in a row that delivered nothing.
        """
        return streams.stream_events(self._t, job_id, after)

    def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        on_progress: Callable[[JobProgress], None] | None = None,
        poll_interval: float = 1.0,
    ) -> Job:
        """Block until the job is succeeded, failed or canceled; return that final ``Job``.

        Follows the SSE stream (updates as they happen, no polling load); when the stream
        cannot be opened or keeps breaking, falls back to long polls of ``GET /v1/jobs/{id}``
        (``wait=30`` with the last ``ETag``: the service answers as soon as the job changes,
        and an unchanged job is a bodiless 304); a service that answers at once is asked
        every ``poll_interval`` seconds.
        ``on_progress`` gets a ``JobProgress`` after each update, with monotone ``progress``.
        Raises ``WaitTimeout`` after ``timeout`` seconds (the job keeps running on the service).
        """
        poller = streams.JobPoller(self._t, self._job)
        return streams.wait(self._t, poller, job_id, timeout, on_progress, poll_interval)

    # -- artifacts -------------------------------------------------------------------------------
    def artifacts(self, job_id: str) -> list[Artifact]:
        data = self._t.json("GET", f"/v1/jobs/{job_id}/artifacts")
        return [Artifact.from_json(item) for item in data.get("data") or []]

    def download(
        self,
        job_id: str,
        name: str,
        path: str | os.PathLike[str],
        on_progress: ProgressCallback | None = None,
    ) -> Path:
        """Download artifact ``name`` to ``path`` (a file, or a folder to put it in).

        The bytes go to a temporary file beside the target, hashed on the way; only when the
        SHA-256 equals the artifact list's (else the ETag's) is it renamed into place, so the
        target is never a partial or corrupt file. A connection lost mid-way resumes with a
        ``Range`` request. Raises ``Conflict`` before the job has succeeded, ``NotFound`` for
        an unknown artifact, ``ArtifactUnavailable`` (with the manifest's reason) for a
        ``student.onnx`` or ``student.int8.onnx`` the job did not keep, ``ChecksumMismatch``
        when the hashes differ.
        """
        listing = {a.name: a for a in self.artifacts(job_id)}
        expected = listing.get(name)
        if expected is None and name in DEPLOYMENT_KEYS:
            # Not a typo: the job decided not to keep it; say why instead of a bare 404.
            reason = missing_reason(self.manifest(job_id), name)
            raise ArtifactUnavailable(job_id, name, reason, sorted(listing))
        sha = expected.sha256 if expected is not None else None
        return downloads.download(self._t, job_id, name, path, sha, on_progress)

    def download_student(
        self,
        job_id: str,
        path: str | os.PathLike[str],
        on_progress: ProgressCallback | None = None,
    ) -> Path:
        """Download ``student.pt`` (TorchScript) of a succeeded job, sha256 verified."""
        return self.download(job_id, STUDENT_PT, path, on_progress)

    def download_onnx(
        self,
        job_id: str,
        path: str | os.PathLike[str],
        int8: bool = False,
        on_progress: ProgressCallback | None = None,
    ) -> Path:
        """Download ``student.onnx`` (``int8=True``: ``student.int8.onnx``, the int8 QDQ
        quantization) of a succeeded job, sha256 verified.

        Raises ``ArtifactUnavailable`` when the job did not keep that file (the ONNX export
        failed its check, or int8 lost too much agreement with the teacher); its ``reason``
        is the manifest's.
        """
        name = STUDENT_INT8_ONNX if int8 else STUDENT_ONNX
        return self.download(job_id, name, path, on_progress)

    def manifest(self, job_id: str) -> dict[str, Any]:
        """The job's ``manifest.json`` (spec, metrics, history, deployment), parsed; fetched
        like every download (sha256 checked) through a temporary folder."""
        with tempfile.TemporaryDirectory(prefix="cake-manifest-") as folder:
            path = self.download(job_id, "manifest.json", folder)
            document = json.loads(path.read_text(encoding="utf-8"))
        return document if isinstance(document, dict) else {}

    def deployment(self, job_id: str) -> Deployment | None:
        """The deployment section of the job's manifest: the table (size, CPU latency at
        batch 1 and 64, agreement with the teacher of each form of the model) and what became
        of the ONNX export and the int8 quantization. None for a job that ran before the
        service exported ONNX."""
        return Deployment.from_manifest(self.manifest(job_id))


def build_spec(
    spec: dict[str, Any] | None = None,
    preset: str | None = None,
    student: str | dict[str, Any] | None = None,
    eval_dataset_id: str | None = None,
    seed: int | None = None,
    metadata: dict[str, Any] | None = None,
    input_range: Sequence[float] | None = None,
) -> dict[str, Any]:
    """A job spec: ``spec`` (not modified) with the given fields laid over it."""
    body: dict[str, Any] = json.loads(json.dumps(spec)) if spec else {}
    if preset is not None:
        body["preset"] = preset
    if student is not None:
        merged = dict(body.get("student") or {})
        merged.update({"arch": student} if isinstance(student, str) else student)
        body["student"] = merged
    if eval_dataset_id is not None:
        body["eval_dataset_id"] = eval_dataset_id
    if seed is not None:
        body["seed"] = seed
    if metadata is not None:
        body["metadata"] = metadata
    if input_range is not None:
        body["input_range"] = [float(v) for v in input_range]
    return body


class Client:
    """A client of one cake-distill service.

    Args:
        base_url: the service, e.g. ``http://127.0.0.1:8000``; default ``$CAKE_URL``, else
            ``http://127.0.0.1:8000``.
        api_key: sent as ``Authorization: Bearer``; default ``$CAKE_API_KEY``.
        timeout: seconds for connect/read/write of ordinary requests (uploads and event
            streams get longer read timeouts).
        max_retries: retries after the first attempt for connection errors, 429 and 5xx.
            The default 6 waits about 16 to 32 s in all before giving up: enough to ride
            through a restart of the API (about 10 s on a loaded machine).
        backoff_base, backoff_max: the exponential backoff's first delay and cap (seconds).
        transport: an ``httpx`` transport (tests, proxies, custom TLS).
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 30.0,
        max_retries: int = DEFAULT_MAX_RETRIES,
        *,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.transport = Transport(
            base_url,
            api_key,
            timeout,
            max_retries,
            backoff_base=backoff_base,
            backoff_max=backoff_max,
            transport=transport,
        )
        self.teachers = Teachers(self)
        self.jobs = Jobs(self)
        self.datasets = Datasets(self)

    @property
    def base_url(self) -> str:
        return self.transport.base_url

    def architectures(self) -> list[Architecture]:
        """The student architectures the service can train."""
        data = self.transport.json("GET", "/v1/architectures")
        return [Architecture.from_json(item) for item in data.get("data") or []]

    def health(self) -> dict[str, Any]:
        """``GET /healthz``: the API process is up."""
        return dict(self.transport.json("GET", "/healthz"))

    def ready(self) -> dict[str, Any]:
        """``GET /readyz``: database, broker and store answer (``NotReady`` otherwise)."""
        return dict(self.transport.json("GET", "/readyz"))

    def webhook_secret(self) -> str:
        """The tenant's secret that signs job callbacks (``Cake-Signature``)."""
        return str(self.transport.json("GET", "/v1/webhooks/secret")["secret"])

    def rotate_webhook_secret(self) -> str:
        """Replace the signing secret; callbacks from now on are signed with the new one."""
        return str(self.transport.json("POST", "/v1/webhooks/secret/rotate")["secret"])

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.base_url!r})"
