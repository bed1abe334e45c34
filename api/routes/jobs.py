"""Jobs: create (JSON, or one-shot multipart with the teacher), list, get, cancel, delete, events.

``POST /v1/jobs`` takes either content type, so it reads the body itself instead of declaring a
body parameter; the OpenAPI request body is declared by hand and points at ``JobCreate`` and
``OneShotJobForm``.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from sqlalchemy.orm import Session
from sse_starlette import EventSourceResponse, ServerSentEvent

from api import idempotency
from api.conditional import etag_matches
from api.crud import events, jobs, teachers
from api.deps import AppContext, IdempotencyKeyDep, SessionDep, TenantDep, tenant_of
from api.errors import ApiError, not_found, validation_error
from api.job_bodies import JobBody
from api.job_planning import check_callback, plan_job
from api.job_watch import JobChange
from api.routes import common
from api.schemas import (
    ANY_CLIENT_ERROR,
    EventList,
    Job,
    JobCreate,
    JobList,
    JobSpecIn,
    problem_responses,
)
from api.serializers import event_out, job_etag, job_out, page
from api.uploads import MultipartForm, load_json
from cake_shared.models import Job as JobRow
from cake_shared.models import JobEvent
from cake_shared.status import TERMINAL_STATUSES, JobStatus

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=ANY_CLIENT_ERROR)
#: ``GET /v1/jobs/{id}`` alone: included without the router-level ``current_principal`` (the
#: route checks the key itself, ``tenant_of``), so that a poll runs no dependency solving.
poll_router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=ANY_CLIENT_ERROR)

JobId = Annotated[str, Path(alias="id", description="job_… identifier")]

MAX_JSON_BYTES = 1 << 20
#: The longest ``wait`` of a long poll: under the minute after which proxies tend to cut.
MAX_WAIT_S = 60.0
#: The OpenAPI description of the job's ``ETag`` response header.
ETAG_HEADER: dict[str, Any] = {
    "description": "Weak tag of the job's current state; send it back as If-None-Match.",
    "schema": {"type": "string"},
}

ONE_SHOT_FORM = common.UploadForm(
    file_field="teacher",
    text_fields=frozenset({"input_shape", "spec", "name", "num_classes"}),
    required=("teacher", "input_shape"),
    schema="OneShotJobForm",
)
JOB_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/JobCreate"}},
        **ONE_SHOT_FORM.request_body()["content"],
    },
}


async def _read_capped(request: Request, limit: int) -> bytes:
    """The body, refusing it (413) as soon as it exceeds ``limit``: never read whole first."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "payload_too_large", f"a job spec is at most {limit} bytes of JSON")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, "payload_too_large", f"a job spec is at most {limit} bytes of JSON")
    return bytes(body)


def _validation(exc: ValidationError, prefix: list[str | int]) -> RequestValidationError:
    errors = []
    for err in exc.errors():
        errors.append({**err, "loc": (*prefix, *err.get("loc", ()))})
    return RequestValidationError(errors)


def _create_json(
    ctx: AppContext, tenant: str, body: JobCreate, request_hash: str, idem_key: str | None
) -> JSONResponse:
    """A job of a stored teacher (blocking: checks and writes)."""

    def create(session: Session) -> JobRow:
        teacher = teachers.get_job_teacher(session, tenant, body.teacher_id, ["body", "teacher_id"])
        check_callback(ctx, body.callback_url, ["body", "callback_url"])
        plan = plan_job(session, tenant, teacher, body, ["body"], ctx.settings)
        return jobs.insert_job(ctx, session, tenant, teacher.id, plan)

    return _create(ctx, tenant, idem_key, request_hash, create)


def _create_one_shot(
    ctx: AppContext, tenant: str, form: MultipartForm, idem_key: str | None
) -> JSONResponse:
    """Teacher and job in one transaction: a spec error leaves no teacher behind."""
    fields = common.TeacherFields.parse(form)
    try:
        spec_json = load_json(form.fields.get("spec") or "{}", ["body", "spec"])
    except json.JSONDecodeError as exc:
        raise validation_error(["body", "spec"], f"not valid JSON ({exc.msg})") from None
    if isinstance(spec_json, dict) and "teacher_id" in spec_json:
        raise validation_error(
            ["body", "spec", "teacher_id"],
            "not allowed in the one-shot form: the teacher is the uploaded file",
        )
    try:
        body = JobSpecIn.model_validate(spec_json)
    except ValidationError as exc:
        raise _validation(exc, ["body", "spec"]) from None

    check_callback(ctx, body.callback_url, ["body", "spec", "callback_url"])
    upload = form.files["teacher"]

    def create(session: Session) -> JobRow:
        facts = fields.check(ctx, upload)
        plan = plan_job(session, tenant, facts, body, ["body", "spec"], ctx.settings)
        teacher = teachers.create_teacher(ctx, session, tenant, upload, facts, fields.name)
        return jobs.insert_job(ctx, session, tenant, teacher.id, plan)

    return _create(ctx, tenant, idem_key, form.content_hash(), create)


def _create(
    ctx: AppContext,
    tenant: str,
    idem_key: str | None,
    request_hash: str,
    create: Callable[[Session], JobRow],
) -> JSONResponse:
    """Either body: 202 with the queued job; the broker hears of it only once it is committed
    (and only from the request whose commit won)."""

    def send(session: Session, job: JobRow) -> None:
        jobs.enqueue(ctx, session, job)

    return common.create_once(
        ctx, tenant, idem_key, request_hash, "/v1/jobs", 202, create, job_out, send
    )


@router.post(
    "",
    status_code=202,
    response_model=Job,
    summary="Create a job",
    description=(
        "JSON (`JobCreate`: only `teacher_id` is required; every default is filled in and echoed "
        "in `spec`), or the one-shot multipart form (`OneShotJobForm`: parts `teacher`, "
        "`input_shape`, `spec`, optional `name`) that uploads the teacher and creates the job "
        "in one call. Unknown fields are a 422."
    ),
    openapi_extra={"requestBody": JOB_BODY},
    responses=problem_responses(404, 409, 413, 422, 503),
)
async def create_job(
    request: Request, tenant: TenantDep, idem_key: IdempotencyKeyDep = None
) -> Response:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        return await common.with_upload(request, ONE_SHOT_FORM, _create_one_shot, tenant, idem_key)
    # Any other content type is read as JSON: curl -d sends form-urlencoded by default.
    raw = await _read_capped(request, MAX_JSON_BYTES)
    try:
        data = load_json(raw or b"null", ["body"])
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise validation_error(
            ["body"],
            f"body is not valid JSON ({exc}); send the job as application/json, or as "
            "multipart/form-data with the teacher file",
        ) from None
    try:
        body = JobCreate.model_validate(data)
    except ValidationError as exc:
        raise _validation(exc, ["body"]) from None
    request_hash = idempotency.json_hash(data)
    ctx: AppContext = request.app.state.ctx
    return await run_in_threadpool(_create_json, ctx, tenant, body, request_hash, idem_key)


@router.get("", response_model=JobList, summary="List jobs, newest first")
def list_jobs(
    session: SessionDep,
    tenant: TenantDep,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this status.")] = None,
    teacher_id: Annotated[str | None, Query(description="Only jobs of this teacher.")] = None,
    limit: common.LimitQuery = 20,
    after: common.AfterQuery = None,
) -> dict[str, Any]:
    rows, has_more = jobs.list_jobs(session, tenant, status, teacher_id, limit, after)
    return page([job_out(r) for r in rows], has_more)


#: The parameters of ``GET /v1/jobs/{id}`` as the OpenAPI document states them (the route
#: reads them itself: see ``get_job``).
_GET_JOB_PARAMETERS: list[dict[str, Any]] = [
    {
        "name": "id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "description": "job_… identifier", "title": "Id"},
        "description": "job_… identifier",
    },
    {
        "name": "wait",
        "in": "query",
        "required": False,
        "schema": {
            "type": "number",
            "maximum": MAX_WAIT_S,
            "minimum": 0,
            "description": "Seconds to wait for the job to change before answering (0..60).",
            "default": 0,
            "title": "Wait",
        },
        "description": "Seconds to wait for the job to change before answering (0..60).",
    },
    {
        "name": "if-none-match",
        "in": "header",
        "required": False,
        "schema": {
            "anyOf": [{"type": "string"}, {"type": "null"}],
            "description": "ETags of earlier answers (or `*`): 304 while one is current.",
            "title": "If-None-Match",
        },
        "description": "ETags of earlier answers (or `*`): 304 while one is current.",
    },
]


@dataclass(frozen=True)
class _JobRead:
    """One read of ``GET /v1/jobs/{id}``: the JSON body (``None`` when ``If-None-Match`` still
    matched), its ETag, the ``updated_at`` both come from, and whether a ``wait`` may wait."""

    content: bytes | None
    etag: str
    stamp: datetime | None
    may_wait: bool

    def response(self) -> Response:
        if self.content is None:
            return Response(status_code=304, headers={"ETag": self.etag})
        return Response(self.content, media_type="application/json", headers={"ETag": self.etag})


def _json_bytes(body: dict[str, Any]) -> bytes:
    """The bytes ``JSONResponse`` would send for ``body``."""
    return json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def _read_job(ctx: AppContext, tenant: str, job_id: str, if_none_match: str | None) -> _JobRead:
    """The job's body and ETag; no body when ``If-None-Match`` still matches.

    The first query reads only ``tenant`` and ``updated_at`` (the tag's source): a conditional
    poll of an unchanged job ends there, and a body built earlier from the same ``updated_at``
    (:class:`~api.job_bodies.JobBodies`) is sent as it was. Only a changed job is read whole,
    and its tag is taken from that same row, so the body and the tag sent together always
    agree. A client that holds the current state may wait for the next, and one without a tag
    may wait for a change unless the job has ended (nothing but its deletion would come); a
    client with a stale tag is behind and gets the job at once."""
    stamp = jobs.job_stamp(ctx.engine, tenant, job_id)
    body = ctx.job_bodies.get(job_id, stamp)
    if body is None:
        etag = job_etag(job_id, stamp)
        if if_none_match is not None and etag_matches(if_none_match, etag):
            return _JobRead(None, etag, stamp, may_wait=True)
        with ctx.sessionmaker() as session:
            row = jobs.get_job(session, tenant, job_id)
            ended = row.status in TERMINAL_STATUSES
            body = JobBody(row.updated_at, _json_bytes(job_out(row)), ended)
        ctx.job_bodies.put(job_id, body)
    return _answer(job_id, body, if_none_match)


def _answer(job_id: str, body: JobBody, if_none_match: str | None) -> _JobRead:
    """The answer that ``body`` (the job as it is now) makes to a client holding
    ``if_none_match``: 304 while its tag is current, else the body."""
    etag = job_etag(job_id, body.stamp)
    if if_none_match is not None and etag_matches(if_none_match, etag):
        return _JobRead(None, etag, body.stamp, may_wait=True)
    return _JobRead(body.content, etag, body.stamp, if_none_match is None and not body.ended)


@poll_router.get(
    "/{id}",
    response_model=Job,
    summary="Get a job",
    description=(
        "`ETag` changes whenever anything in the job does (status, phase, progress, metrics, "
        "error, ...); a poll that sends it back as `If-None-Match` (or `*`, or a list holding "
        "it; weak comparison) gets `304 Not Modified` with an empty body while the job is "
        "unchanged.\n\n"
        "Long polling: with `wait=N` (seconds, up to 60) the answer waits until the job "
        "changes, at most N seconds. With a current `If-None-Match` it waits for the next "
        "state and answers 200 with it, or 304 when N seconds passed without a change; "
        "without one it waits for a change from the state at the request (200 either way), "
        "unless the job has ended. An ETag that is no longer current, or a job of another "
        "tenant (404), is answered at once."
    ),
    responses={
        200: {"headers": {"ETag": ETAG_HEADER}},
        304: {
            "description": "Not modified: `If-None-Match` matched the job's current ETag",
            "headers": {"ETag": ETAG_HEADER},
        },
        **problem_responses(404),
    },
    openapi_extra={"parameters": _GET_JOB_PARAMETERS, "security": [{"HTTPBearer": []}]},
)
async def get_job(request: Request) -> Response:
    """The polling path. Its three parameters (documented in ``_GET_JOB_PARAMETERS``) are read
    here rather than declared: FastAPI's per-parameter work (a validation model each, dependency
    cache keys) cost a quarter of a status poll's CPU, and it checks the key itself
    (``tenant_of``, on ``poll_router``) for the same reason. The read runs via
    ``short_read`` and ``_read_job`` already validated and encoded the body, so it goes out as
    is (or, on a matching ``If-None-Match``, is never built). A long poll waits on the process's
    :class:`~api.job_watch.JobWatch`, which holds no thread and no connection, and reads the job
    again only when it changed."""
    ctx: AppContext = request.app.state.ctx
    tenant = await tenant_of(request)
    job_id: str = request.path_params["id"]
    if_none_match = request.headers.get("if-none-match")
    wait = _wait_seconds(request.query_params.get("wait"))
    read = await ctx.short_read(_read_job, ctx, tenant, job_id, if_none_match)
    if wait > 0 and read.may_wait:
        change = await ctx.job_watch.wait_for_change(job_id, read.stamp, wait)
        if change is not None:
            read = _read_changed(ctx, job_id, if_none_match, change) or await ctx.short_read(
                _read_job, ctx, tenant, job_id, if_none_match
            )
    return read.response()


def _read_changed(
    ctx: AppContext, job_id: str, if_none_match: str | None, change: JobChange
) -> _JobRead | None:
    """The answer to a long poll that was woken by ``change``, without the database when the
    body for the changed state is kept (another waiter of the job built it); None to read the
    job. The tenant was checked before the request waited (a job's tenant never changes)."""
    if change.gone:
        raise not_found("job", job_id)
    body = ctx.job_bodies.get(job_id, change.stamp)
    return None if body is None else _answer(job_id, body, if_none_match)


def _wait_seconds(text: str | None) -> float:
    """``wait`` of ``GET /v1/jobs/{id}``: seconds from 0 to ``MAX_WAIT_S``, else 422."""
    if text is None:
        return 0.0
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 <= seconds <= MAX_WAIT_S:  # also NaN and the infinities
        raise validation_error(
            ("query", "wait"), f"Input should be a number from 0 to {MAX_WAIT_S:g}"
        )
    return seconds


@router.post(
    "/{id}/cancel",
    response_model=Job,
    summary="Cancel a job",
    description=(
        "A queued job is canceled at once; a running one gets `cancel_requested` and ends "
        "`canceled` at its next step; a finished job is returned unchanged."
    ),
    responses=problem_responses(404),
)
def cancel_job(job_id: JobId, session: SessionDep, tenant: TenantDep) -> dict[str, Any]:
    return job_out(jobs.cancel_job(session, tenant, job_id))


@router.delete(
    "/{id}",
    status_code=204,
    summary="Delete a finished job",
    description="Deletes the job, its events and artifacts. 409 while it is queued or running.",
    responses=problem_responses(404, 409),
)
def delete_job(request: Request, job_id: JobId, session: SessionDep, tenant: TenantDep) -> Response:
    jobs.delete_job(request.app.state.ctx, session, tenant, job_id)
    return Response(status_code=204)


# --------------------------------------------------------------------------------------------
# events
# --------------------------------------------------------------------------------------------


#: Line end of every field: the service has always sent ``\n`` (sse-starlette's default is
#: ``\r\n``; both are valid SSE, this keeps the bytes clients have seen).
SSE_SEP = "\n"
#: The reconnection delay the stream's first message suggests to EventSource clients (ms).
SSE_RETRY_MS = 2000
#: Events read per database poll; a full batch means more may be waiting, so no ``end`` yet.
SSE_BATCH = 500


def _poll(ctx: AppContext, job_id: str, seq: int) -> tuple[str | None, list[JobEvent]]:
    """One poll of the stream in its own short session (none is held between polls)."""
    with ctx.sessionmaker() as session:
        return events.poll(session, job_id, seq, SSE_BATCH)


def _sse(event: JobEvent) -> ServerSentEvent:
    """``id:`` the event id, ``event:`` its type, ``data:`` the event as compact JSON."""
    data = json.dumps(event_out(event), separators=(",", ":"))
    kind = "".join(ch for ch in event.type if ch not in "\r\n") or "message"
    return ServerSentEvent(data, event=kind, id=event.id, sep=SSE_SEP)


def _keep_alive() -> ServerSentEvent:
    """The heartbeat comment: it keeps proxies from closing an idle stream and tells clients
    (``cake_client`` reads 45 s of silence as a dead stream) that the server is there."""
    return ServerSentEvent(comment="keep-alive", sep=SSE_SEP)


async def _stream(ctx: AppContext, job_id: str, after_seq: int) -> AsyncIterator[ServerSentEvent]:
    """Poll the database every ``sse_poll_s``; end after the job finished and its events are
    out, with a final ``end`` event so EventSource clients know not to reconnect.

    Heartbeats and a client that goes away are sse-starlette's work (``job_events``): the
    library cancels this generator on disconnect, so no poll outlives its listener."""
    yield ServerSentEvent(retry=SSE_RETRY_MS, sep=SSE_SEP)
    while True:
        status, batch = await run_in_threadpool(_poll, ctx, job_id, after_seq)
        for event in batch:
            after_seq = event.seq
            yield _sse(event)
        if (status is None or status in TERMINAL_STATUSES) and len(batch) < SSE_BATCH:
            final = json.dumps({"status": status or "deleted"})
            yield ServerSentEvent(final, event="end", sep=SSE_SEP)
            return
        await anyio.sleep(ctx.sse_poll_s)


@router.get(
    "/{id}/events",
    response_model=EventList,
    summary="The job's log, oldest first (JSON or Server-Sent Events)",
    description=(
        "JSON: a page of events after `after`. With `Accept: text/event-stream` the events "
        "stream live as Server-Sent Events (`id:` the event id, `event:` its type, `data:` the "
        "event as JSON), with a comment heartbeat every 10 s, until the job ends; a last "
        "`end` event carries the final status. `Last-Event-ID` resumes like `after`."
    ),
    responses={
        200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}},
        **problem_responses(404, 422),
    },
)
def job_events(
    request: Request,
    job_id: JobId,
    session: SessionDep,
    tenant: TenantDep,
    after: Annotated[
        str | None, Query(description="Only events after this event id (evt_…).")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100, description="Page size (JSON), 1..100.")] = 100,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
    last_event_id: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Response | dict[str, Any]:
    job = jobs.get_job(session, tenant, job_id)
    if accept and "text/event-stream" in accept.lower():
        after_seq = events.after_seq(session, job.id, after or last_event_id)
        ctx: AppContext = request.app.state.ctx
        return EventSourceResponse(
            _stream(ctx, job.id, after_seq),
            headers={"Cache-Control": "no-cache"},
            ping=ctx.sse_heartbeat_s,
            ping_message_factory=_keep_alive,
            sep=SSE_SEP,
        )
    seq = events.after_seq(session, job.id, after)
    rows, has_more = events.page_after(session, job.id, seq, limit)
    return page([event_out(e) for e in rows], has_more)
