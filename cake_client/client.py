"""``Client``: typed methods for every endpoint of the cake-distill REST API (API.md).

A few lines distill a teacher::

    from cake_client import Client

    client = Client("http://127.0.0.1:8000")
    teacher = client.teachers.upload("wine_mlp.pt", input_shape=[13])
    job = client.jobs.create(teacher.id, preset="fast")
    job = job.wait(on_progress=lambda p: print(p.phase, f"{p.progress:.0%}"))
    if job.succeeded:
        job.download_student("student.pt")   # sha256 checked against the artifact list

Every create call sends an ``Idempotency-Key`` (generated when not given), so the transport may
retry it after a lost response without creating a second object.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import httpx
from httpx_sse import EventSource, SSEError

from cake_client._http import DEFAULT_MAX_RETRIES, Transport, new_idempotency_key
from cake_client.errors import (
    ChecksumMismatch,
    NotReady,
    RateLimited,
    ServerError,
    ServiceUnreachable,
    WaitTimeout,
)
from cake_client.models import (
    Architecture,
    Artifact,
    Dataset,
    Job,
    JobEvent,
    JobProgress,
    Page,
    Teacher,
)
from cake_client.multipart import FilePart, MultipartBody, ProgressCallback
from cake_shared.status import TERMINAL_STATUSES, JobPhase, JobStatus

T = TypeVar("T")

#: Read timeout of an upload's answer: the service checks a teacher in a sandbox first (60 s
#: by default), so the response may take much longer than an ordinary request.
UPLOAD_READ_TIMEOUT_S = 300.0
#: The service sends an SSE heartbeat every 10 s; no byte for this long means a dead stream.
SSE_READ_TIMEOUT_S = 45.0


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


def _etag_sha(value: str | None) -> str | None:
    if not value:
        return None
    return value.strip().removeprefix("W/").strip('"') or None


class _Resource:
    def __init__(self, client: Client) -> None:
        self._client = client

    @property
    def _t(self) -> Transport:
        return self._client.transport

    def _paginate(
        self,
        path: str,
        parse: Callable[[dict[str, Any]], T],
        params: dict[str, Any],
        limit: int,
        after: str | None,
    ) -> Iterator[T]:
        """Yield every item of every page, following ``next_after`` until ``has_more`` ends."""
        cursor = after
        while True:
            page = self._t.json("GET", path, params={**params, "limit": limit, "after": cursor})
            for item in page.get("data") or []:
                yield parse(item)
            cursor = page.get("next_after")
            if not page.get("has_more") or not cursor:
                return

    def _page(
        self,
        path: str,
        parse: Callable[[dict[str, Any]], T],
        params: dict[str, Any],
        limit: int,
        after: str | None,
    ) -> Page:
        page = self._t.json("GET", path, params={**params, "limit": limit, "after": after})
        return Page(
            data=[parse(item) for item in page.get("data") or []],
            has_more=bool(page.get("has_more")),
            next_after=page.get("next_after"),
        )

    def _upload(
        self,
        path: str,
        fields: dict[str, str],
        files: list[FilePart],
        idempotency_key: str | None,
        on_progress: ProgressCallback | None,
    ) -> Any:
        body = MultipartBody(fields, files, on_progress)
        headers = {
            "Content-Type": body.content_type,
            "Content-Length": str(len(body)),
            "Idempotency-Key": idempotency_key or new_idempotency_key(),
        }
        timeout = httpx.Timeout(
            max(self._t.timeout, UPLOAD_READ_TIMEOUT_S), connect=min(self._t.timeout, 10.0)
        )
        return self._t.json("POST", path, content=body, headers=headers, timeout=timeout)


class Teachers(_Resource):
    """``/v1/teachers``: upload, get, list, delete."""

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
        file = _file(path, "teacher file")
        fields = {"input_shape": json.dumps(shape_list(input_shape))}
        if name is not None:
            fields["name"] = name
        if num_classes is not None:
            fields["num_classes"] = str(int(num_classes))
        data = self._upload(
            "/v1/teachers", fields, [FilePart("file", file)], idempotency_key, on_progress
        )
        return Teacher.from_json(data)

    def get(self, teacher_id: str) -> Teacher:
        return Teacher.from_json(self._t.json("GET", f"/v1/teachers/{teacher_id}"))

    def list(self, limit: int = 20, after: str | None = None) -> Iterator[Teacher]:
        """Every teacher, newest first; ``limit`` is the page size (1..100), not a total."""
        return self._paginate("/v1/teachers", Teacher.from_json, {}, limit, after)

    def list_page(self, limit: int = 20, after: str | None = None) -> Page:
        return self._page("/v1/teachers", Teacher.from_json, {}, limit, after)

    def delete(self, teacher_id: str) -> None:
        """Delete a teacher (``Conflict`` while a queued or running job uses it)."""
        self._t.send("DELETE", f"/v1/teachers/{teacher_id}")


class Datasets(_Resource):
    """``/v1/datasets``: evaluation data sets (``.npz`` with ``x`` and ``y``)."""

    def upload(
        self,
        path: str | os.PathLike[str],
        name: str | None = None,
        idempotency_key: str | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Dataset:
        file = _file(path, "data set file")
        fields = {"name": name} if name is not None else {}
        data = self._upload(
            "/v1/datasets", fields, [FilePart("file", file)], idempotency_key, on_progress
        )
        return Dataset.from_json(data)

    def get(self, dataset_id: str) -> Dataset:
        return Dataset.from_json(self._t.json("GET", f"/v1/datasets/{dataset_id}"))

    def list(self, limit: int = 20, after: str | None = None) -> Iterator[Dataset]:
        return self._paginate("/v1/datasets", Dataset.from_json, {}, limit, after)


@dataclass
class _StreamState:
    """What an SSE connection learned, kept across reconnects."""

    last_id: str | None = None
    ended: bool = False
    final_status: str | None = None


class _StreamBroken(Exception):
    """The SSE connection failed or closed mid-way (internal: triggers reconnect/polling)."""


@dataclass
class _Deadlined:
    """The part of a response that httpx-sse's ``EventSource`` reads (``headers`` and
    ``iter_text``), raising ``WaitTimeout`` once ``deadline`` has passed.

    Why: httpx-sse consumes heartbeat comments without yielding anything, so a loop over its
    events alone would not notice the deadline of ``wait(timeout=...)`` while the service sends
    nothing but heartbeats (a queued job), and the read timeout never fires either: every
    heartbeat is a successful read. Checking at each chunk of text sees every heartbeat.
    httpx-sse 0.4 reads exactly these two members of the response; should a later version read
    another, ``test_wait_times_out_while_only_heartbeats_arrive`` fails.
    """

    response: httpx.Response
    job_id: str
    deadline: float | None

    @property
    def headers(self) -> httpx.Headers:
        return self.response.headers

    def iter_text(self) -> Iterator[str]:
        for text in self.response.iter_text():
            if self.deadline is not None and time.monotonic() > self.deadline:
                raise WaitTimeout(self.job_id, 0.0)
            yield text


class _Tracker:
    """Turns job snapshots and events into ``JobProgress`` reports with monotone progress."""

    def __init__(self, job_id: str, callback: Callable[[JobProgress], None] | None) -> None:
        self.job_id = job_id
        self.callback = callback
        self.status: str = JobStatus.QUEUED
        self.phase: str = JobPhase.QUEUED
        self.progress = 0.0
        self.phase_progress: float | None = None

    def _emit(self, message: str, event: JobEvent | None) -> None:
        if self.callback is not None:
            self.callback(
                JobProgress(
                    self.job_id,
                    self.status,
                    self.phase,
                    self.progress,
                    self.phase_progress,
                    message,
                    event,
                )
            )

    def _phase(self, phase: str | None) -> None:
        if phase and phase != self.phase:
            self.phase = phase
            self.phase_progress = None

    def job(self, job: Job) -> None:
        self.status = job.status
        self._phase(job.phase)
        self.progress = max(self.progress, job.progress)
        if job.status == JobStatus.SUCCEEDED:
            self.phase_progress = 1.0
        message = job.error.message if job.error else ""
        self._emit(message, None)

    def event(self, event: JobEvent) -> None:
        if event.type in TERMINAL_STATUSES:
            self.status = event.type
            if event.type == JobStatus.SUCCEEDED:
                self.progress, self.phase_progress = 1.0, 1.0
        elif event.type in ("started", "phase", "progress", "metrics"):
            self.status = JobStatus.RUNNING
        self._phase(event.phase)
        if event.progress is not None:
            self.progress = max(self.progress, min(1.0, event.progress))
        if event.phase_progress is not None:
            self.phase_progress = event.phase_progress
        elif event.type == "phase":
            self.phase_progress = 0.0
        self._emit(event.message, event)


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
    ) -> Job:
        """Create a job for an uploaded teacher.

        ``spec`` is the JSON job spec of API.md (without ``teacher_id``); the keyword arguments
        override its fields. ``student`` is an architecture name or ``{"arch", "width"}``.
        ``callback_url``: the service POSTs the job there when it ends, signed (see
        ``Client.webhook_secret`` and ``cake_client.webhooks.verify_signature``).
        Raises ``ValidationError`` (with ``errors`` naming the field) for a bad spec.
        """
        body = build_spec(spec, preset, student, eval_dataset_id, seed, metadata)
        body["teacher_id"] = teacher_id
        if callback_url is not None:
            body["callback_url"] = callback_url
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
        file = _file(teacher_path, "teacher file")
        fields = {
            "input_shape": json.dumps(shape_list(input_shape)),
            "spec": json.dumps(spec or {}),
        }
        if name is not None:
            fields["name"] = name
        if num_classes is not None:
            fields["num_classes"] = str(int(num_classes))
        data = self._upload(
            "/v1/jobs", fields, [FilePart("teacher", file)], idempotency_key, on_progress
        )
        return self._job(data)

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
        return self._paginate("/v1/jobs", self._job, params, limit, after)

    def list_page(
        self,
        status: str | None = None,
        teacher_id: str | None = None,
        limit: int = 20,
        after: str | None = None,
    ) -> Page:
        params = {"status": status, "teacher_id": teacher_id}
        return self._page("/v1/jobs", self._job, params, limit, after)

    def cancel(self, job_id: str) -> Job:
        """Ask the job to stop (queued: at once; running: at its next step); idempotent."""
        return self._job(self._t.json("POST", f"/v1/jobs/{job_id}/cancel", retry_safe=True))

    def delete(self, job_id: str) -> None:
        """Delete a finished job with its events and artifacts (``Conflict`` while active)."""
        self._t.send("DELETE", f"/v1/jobs/{job_id}")

    def events(self, job_id: str, after: str | None = None, limit: int = 100) -> Iterator[JobEvent]:
        """The job's log so far, oldest first (JSON pages; see ``stream_events`` for live)."""
        return self._paginate(f"/v1/jobs/{job_id}/events", JobEvent.from_json, {}, limit, after)

    # -- live events -----------------------------------------------------------------------------
    def _stream(
        self, job_id: str, state: _StreamState, deadline: float | None = None
    ) -> Iterator[JobEvent]:
        """One SSE connection: yield events until ``end`` (sets ``state.ended``) or a failure.

        Raises ``_StreamBroken`` on a transport failure or a close without ``end``, and
        ``WaitTimeout`` (with ``job_id``) when ``deadline`` passes.
        """
        read_s = SSE_READ_TIMEOUT_S
        if deadline is not None:
            read_s = max(0.1, min(read_s, deadline - time.monotonic() + 0.5))
        timeout = httpx.Timeout(self._t.timeout, read=read_s)
        headers = {"Accept": "text/event-stream"}
        if state.last_id:
            headers["Last-Event-ID"] = state.last_id
        try:
            response = self._t.send(
                "GET",
                f"/v1/jobs/{job_id}/events",
                params={"after": state.last_id},
                headers=headers,
                stream=True,
                timeout=timeout,
            )
        except (ServiceUnreachable, ServerError, NotReady, RateLimited) as exc:
            raise _StreamBroken(str(exc)) from exc
        try:
            source = EventSource(cast(httpx.Response, _Deadlined(response, job_id, deadline)))
            for message in source.iter_sse():
                if not message.data:
                    # the reconnection hint, or a heartbeat that httpx-sse dispatches as an
                    # empty message once an id was seen: nothing to report
                    continue
                if message.event == "end":
                    state.ended = True
                    with contextlib.suppress(json.JSONDecodeError, AttributeError):
                        state.final_status = json.loads(message.data).get("status")
                    return
                try:
                    payload = json.loads(message.data)
                except json.JSONDecodeError:
                    continue
                if not isinstance(payload, dict):
                    continue
                event = JobEvent.from_json(payload)
                state.last_id = event.id or message.id or state.last_id
                yield event
        except SSEError as exc:  # the answer is not an event stream
            raise _StreamBroken(f"the service did not answer with an event stream: {exc}") from exc
        except httpx.ReadTimeout as exc:
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(job_id, 0.0) from None
            raise _StreamBroken(f"no data for {read_s:g} s") from exc
        except httpx.HTTPError as exc:
            raise _StreamBroken(str(exc) or type(exc).__name__) from exc
        finally:
            response.close()
        raise _StreamBroken("the event stream closed before the job ended")

    def stream_events(self, job_id: str, after: str | None = None) -> Iterator[JobEvent]:
        """Live events (Server-Sent Events) until the job ends, oldest first.

        Reconnects after a dropped connection from the last event seen (``Last-Event-ID``), so
        no event is lost or repeated; raises ``ServiceUnreachable`` after ``max_retries``
        reconnects in a row that delivered nothing.
        """
        state = _StreamState(last_id=after)
        failures = 0
        while True:
            try:
                for event in self._stream(job_id, state):
                    failures = 0
                    yield event
                return
            except _StreamBroken as exc:
                if failures >= self._t.max_retries:
                    raise ServiceUnreachable(
                        f"lost the event stream of job {job_id}: {exc}", url=self._t.base_url
                    ) from None
                self._t.sleep(self._t.backoff(failures))
                failures += 1

    def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        on_progress: Callable[[JobProgress], None] | None = None,
        poll_interval: float = 1.0,
    ) -> Job:
        """Block until the job is succeeded, failed or canceled; return that final ``Job``.

        Follows the SSE stream (updates as they happen, no polling load); when the stream
        cannot be opened or keeps breaking, falls back to ``GET /v1/jobs/{id}`` every
        ``poll_interval`` seconds. ``on_progress`` gets a ``JobProgress`` after each update,
        with monotone ``progress``. Raises ``WaitTimeout`` after ``timeout`` seconds (the job
        keeps running on the service).
        """
        start = time.monotonic()
        deadline = None if timeout is None else start + timeout
        tracker = _Tracker(job_id, on_progress)
        job = self.get(job_id)
        tracker.job(job)
        state = _StreamState()
        use_stream = True
        broken = 0
        while not job.finished:
            try:
                if use_stream:
                    try:
                        for event in self._stream(job_id, state, deadline):
                            broken = 0
                            tracker.event(event)
                    except _StreamBroken:
                        broken += 1
                        # Two failures in a row: the stream is not going to work (proxy that
                        # buffers, old server); polling always does.
                        use_stream = broken < 2
                else:
                    self._sleep_until(poll_interval, deadline)
                if deadline is not None and time.monotonic() >= deadline:
                    raise WaitTimeout(job_id, 0.0)
                job = self.get(job_id)
                tracker.job(job)
            except WaitTimeout:
                raise WaitTimeout(job_id, float(timeout or 0.0), last=job) from None
        return job

    @staticmethod
    def _sleep_until(interval: float, deadline: float | None) -> None:
        delay = interval
        if deadline is not None:
            delay = min(delay, max(0.0, deadline - time.monotonic()))
        time.sleep(delay)

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
        an unknown artifact, ``ChecksumMismatch`` when the hashes differ.
        """
        target = Path(path)
        if target.is_dir():
            target = target / name
        listing = {a.name: a for a in self.artifacts(job_id)}
        expected = listing.get(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name}.", suffix=".part"
        )
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as fh:
                actual, etag = self._fetch(job_id, name, fh, on_progress)
            wanted = expected.sha256 if expected is not None else _etag_sha(etag)
            if wanted and actual != wanted:
                raise ChecksumMismatch(name, wanted, actual)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return target

    def _fetch(
        self, job_id: str, name: str, fh: Any, on_progress: ProgressCallback | None
    ) -> tuple[str, str | None]:
        """Stream the artifact into ``fh``; returns (sha256 hex, ETag)."""
        digest = hashlib.sha256()
        written = 0
        etag: str | None = None
        failures = 0
        while True:
            headers: dict[str, str] = {}
            if written and etag:
                headers = {"Range": f"bytes={written}-", "If-Range": etag}
            response = self._t.send(
                "GET", f"/v1/jobs/{job_id}/artifacts/{name}", headers=headers, stream=True
            )
            try:
                if response.status_code != 206 and written:
                    fh.seek(0)
                    fh.truncate()
                    digest, written = hashlib.sha256(), 0
                etag = response.headers.get("etag") or etag
                length = response.headers.get("content-length")
                total = written + int(length) if length and length.isdigit() else 0
                for chunk in response.iter_bytes():
                    fh.write(chunk)
                    digest.update(chunk)
                    written += len(chunk)
                    if on_progress is not None:
                        on_progress(written, max(total, written))
                return digest.hexdigest(), etag
            except httpx.TransportError as exc:
                if failures >= self._t.max_retries:
                    raise ServiceUnreachable(
                        f"download of {name} broke off after {written} bytes: {exc}",
                        url=self._t.base_url,
                    ) from None
                self._t.sleep(self._t.backoff(failures))
                failures += 1
            finally:
                response.close()

    def download_student(
        self,
        job_id: str,
        path: str | os.PathLike[str],
        on_progress: ProgressCallback | None = None,
    ) -> Path:
        """Download ``student.pt`` (TorchScript) of a succeeded job, sha256 verified."""
        return self.download(job_id, "student.pt", path, on_progress)


def build_spec(
    spec: dict[str, Any] | None = None,
    preset: str | None = None,
    student: str | dict[str, Any] | None = None,
    eval_dataset_id: str | None = None,
    seed: int | None = None,
    metadata: dict[str, Any] | None = None,
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
