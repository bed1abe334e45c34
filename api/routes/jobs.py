"""Jobs: create (JSON, or one-shot multipart with the teacher), list, get, cancel, delete, events.

``POST /v1/jobs`` takes either content type, so it reads the body itself instead of declaring a
body parameter; the OpenAPI request body is declared by hand and points at ``JobCreate`` and
``OneShotJobForm``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from sqlalchemy import select
from sse_starlette import EventSourceResponse, ServerSentEvent

from api import idempotency, service
from api.deps import AppContext, IdempotencyKeyDep, SessionDep, TenantDep
from api.errors import ApiError, validation_error
from api.schemas import (
    ANY_CLIENT_ERROR,
    EventList,
    Job,
    JobCreate,
    JobList,
    JobSpecIn,
    problem_responses,
)
from api.uploads import (
    MultipartForm,
    check_teacher,
    load_json,
    parse_input_shape_field,
    parse_int_field,
    parse_name_field,
    read_multipart,
)
from cake_shared.models import Job as JobRow
from cake_shared.models import JobEvent
from cake_shared.models import Teacher as TeacherRow
from cake_shared.status import TERMINAL_STATUSES, JobStatus

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=ANY_CLIENT_ERROR)

JobId = Annotated[str, Path(alias="id", description="job_… identifier")]
LimitQuery = Annotated[int, Query(ge=1, le=100, description="Page size, 1..100.")]
AfterQuery = Annotated[
    str | None, Query(description="Cursor: the next_after of the previous page.")
]

MAX_JSON_BYTES = 1 << 20

JOB_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/JobCreate"}},
        "multipart/form-data": {"schema": {"$ref": "#/components/schemas/OneShotJobForm"}},
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
    idem = idempotency.make_request(tenant, idem_key, "POST /v1/jobs", request_hash)
    ttl = ctx.settings.idempotency_ttl_s
    with ctx.sessionmaker() as session:
        replayed = idempotency.replay(session, idem, ttl)
        if replayed is not None:
            return replayed
        teacher = session.get(TeacherRow, body.teacher_id)
        if teacher is None or teacher.tenant != tenant or teacher.deleted_at is not None:
            raise ApiError(
                404,
                "not_found",
                f"no teacher with id {body.teacher_id!r}",
                errors=[{"loc": ["body", "teacher_id"], "msg": "no such teacher"}],
            )
        service.check_callback(ctx, body.callback_url, ["body", "callback_url"])
        plan = service.plan_job(session, tenant, teacher, body, ["body"], ctx.settings)
        job = service.insert_job(ctx, session, tenant, teacher.id, plan)
        out = service.job_out(job)
        replayed = idempotency.commit_created(session, idem, ttl, 202, out)
        if replayed is not None:
            return replayed
        service.enqueue(ctx, session, job)
    return idempotency.created_response(202, out, f"/v1/jobs/{job.id}")


def _create_one_shot(
    ctx: AppContext, tenant: str, form: MultipartForm, idem_key: str | None
) -> JSONResponse:
    """Teacher and job in one transaction: a spec error leaves no teacher behind."""
    shape = parse_input_shape_field(form.fields["input_shape"], ["body", "input_shape"])
    num_classes = parse_int_field(form.fields.get("num_classes"), ["body", "num_classes"], 2)
    name = parse_name_field(form.fields.get("name"), ["body", "name"])
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

    service.check_callback(ctx, body.callback_url, ["body", "spec", "callback_url"])
    idem = idempotency.make_request(tenant, idem_key, "POST /v1/jobs", form.content_hash())
    ttl = ctx.settings.idempotency_ttl_s
    upload = form.files["teacher"]
    with ctx.sessionmaker() as session:
        replayed = idempotency.replay(session, idem, ttl)
        if replayed is not None:
            return replayed
        facts = check_teacher(
            upload.path, shape, num_classes, ctx.settings, ["body", "input_shape"]
        )
        plan = service.plan_job(session, tenant, facts, body, ["body", "spec"], ctx.settings)
        teacher = service.store_teacher(ctx, session, tenant, upload, facts, name)
        job = service.insert_job(ctx, session, tenant, teacher.id, plan)
        out = service.job_out(job)
        replayed = idempotency.commit_created(session, idem, ttl, 202, out)
        if replayed is not None:
            return replayed
        service.enqueue(ctx, session, job)
    return idempotency.created_response(202, out, f"/v1/jobs/{job.id}")


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
    ctx: AppContext = request.app.state.ctx
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        form = await read_multipart(
            request,
            file_fields={"teacher"},
            text_fields={"input_shape", "spec", "name", "num_classes"},
            required=("teacher", "input_shape"),
            max_file_bytes=ctx.settings.max_upload_bytes,
            tmp_dir=ctx.upload_dir,
        )
        try:
            return await run_in_threadpool(_create_one_shot, ctx, tenant, form, idem_key)
        finally:
            await run_in_threadpool(form.cleanup)
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
    return await run_in_threadpool(_create_json, ctx, tenant, body, request_hash, idem_key)


@router.get("", response_model=JobList, summary="List jobs, newest first")
def list_jobs(
    session: SessionDep,
    tenant: TenantDep,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this status.")] = None,
    teacher_id: Annotated[str | None, Query(description="Only jobs of this teacher.")] = None,
    limit: LimitQuery = 20,
    after: AfterQuery = None,
) -> dict[str, Any]:
    stmt = select(JobRow).where(JobRow.tenant == tenant)
    if status is not None:
        stmt = stmt.where(JobRow.status == status)
    if teacher_id is not None:
        stmt = stmt.where(JobRow.teacher_id == teacher_id)
    rows, has_more = service.newest_first(session, stmt, JobRow, limit, after)
    return service.page([service.job_out(r) for r in rows], has_more)


def _read_job(ctx: AppContext, tenant: str, job_id: str) -> dict[str, Any]:
    with ctx.sessionmaker() as session:
        return service.job_out(service.get_job(session, tenant, job_id))


@router.get("/{id}", response_model=Job, summary="Get a job", responses=problem_responses(404))
async def get_job(request: Request, job_id: JobId, tenant: TenantDep) -> JSONResponse:
    """The polling path: one thread-pool hop that opens, reads and closes its own session (no
    connection held while waiting for the event loop), and ``job_out`` already validated the
    body, so it goes out as is."""
    ctx: AppContext = request.app.state.ctx
    out = await anyio.to_thread.run_sync(_read_job, ctx, tenant, job_id, limiter=ctx.db_limiter())
    return JSONResponse(out)


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
    return service.job_out(service.cancel_job(session, tenant, job_id))


@router.delete(
    "/{id}",
    status_code=204,
    summary="Delete a finished job",
    description="Deletes the job, its events and artifacts. 409 while it is queued or running.",
    responses=problem_responses(404, 409),
)
def delete_job(request: Request, job_id: JobId, session: SessionDep, tenant: TenantDep) -> Response:
    service.delete_job(request.app.state.ctx, session, tenant, job_id)
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


def _after_seq(session: Any, job_id: str, after: str | None) -> int:
    if not after:
        return 0
    seq = session.scalar(
        select(JobEvent.seq).where(JobEvent.job_id == job_id, JobEvent.id == after)
    )
    if seq is None:
        raise validation_error(["query", "after"], f"no event {after!r} in job {job_id}")
    return int(seq)


def _poll(ctx: AppContext, job_id: str, after_seq: int) -> tuple[str | None, list[JobEvent]]:
    """The job's status, then its events after ``after_seq`` (read in this order, so a finished
    status guarantees every event written before it is in the list)."""
    with ctx.sessionmaker() as session:
        status = session.scalar(select(JobRow.status).where(JobRow.id == job_id))
        events = list(
            session.scalars(
                select(JobEvent)
                .where(JobEvent.job_id == job_id, JobEvent.seq > after_seq)
                .order_by(JobEvent.seq)
                .limit(SSE_BATCH)
            )
        )
        return status, events


def _sse(event: JobEvent) -> ServerSentEvent:
    """``id:`` the event id, ``event:`` its type, ``data:`` the event as compact JSON."""
    data = json.dumps(service.event_out(event), separators=(",", ":"))
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
        status, events = await run_in_threadpool(_poll, ctx, job_id, after_seq)
        for event in events:
            after_seq = event.seq
            yield _sse(event)
        if (status is None or status in TERMINAL_STATUSES) and len(events) < SSE_BATCH:
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
    job = service.get_job(session, tenant, job_id)
    if accept and "text/event-stream" in accept.lower():
        after_seq = _after_seq(session, job.id, after or last_event_id)
        ctx: AppContext = request.app.state.ctx
        return EventSourceResponse(
            _stream(ctx, job.id, after_seq),
            headers={"Cache-Control": "no-cache"},
            ping=ctx.sse_heartbeat_s,
            ping_message_factory=_keep_alive,
            sep=SSE_SEP,
        )
    after_seq = _after_seq(session, job.id, after)
    rows = list(
        session.scalars(
            select(JobEvent)
            .where(JobEvent.job_id == job.id, JobEvent.seq > after_seq)
            .order_by(JobEvent.seq)
            .limit(limit + 1)
        )
    )
    has_more = len(rows) > limit
    return service.page([service.event_out(e) for e in rows[:limit]], has_more)
