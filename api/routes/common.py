"""What several routers share: list parameters, the upload handshake, the idempotent create.

Teachers, data sets and jobs are all created the same way: a multipart upload streamed to disk
(or a JSON body), then, in the thread pool, an ``Idempotency-Key`` replay check, the create, the
stored response and the commit, with a 201/202 and a ``Location``. Written once here so the three
cannot drift apart in how they answer a retry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from sqlalchemy.orm import Session

from api import idempotency
from api.deps import AppContext
from api.teacher_check import TeacherFacts, check_teacher
from api.uploads import (
    MultipartForm,
    UploadedFile,
    parse_input_shape_field,
    parse_int_field,
    parse_name_field,
    read_multipart,
)

LimitQuery = Annotated[int, Query(ge=1, le=100, description="Page size, 1..100.")]
AfterQuery = Annotated[
    str | None, Query(description="Cursor: the next_after of the previous page.")
]

Created = TypeVar("Created")


@dataclass(frozen=True)
class UploadForm:
    """A multipart create's parts: the file, the text parts, those required, and the name of
    the form's schema in the OpenAPI document (declared by hand: the body is read as a stream,
    not as a FastAPI body parameter)."""

    file_field: str
    text_fields: frozenset[str]
    required: tuple[str, ...]
    schema: str

    def request_body(self) -> dict[str, Any]:
        """The OpenAPI ``requestBody`` of the route (its ``openapi_extra``)."""
        ref = {"$ref": f"#/components/schemas/{self.schema}"}
        return {"required": True, "content": {"multipart/form-data": {"schema": ref}}}


async def with_upload(
    request: Request,
    spec: UploadForm,
    handle: Callable[[AppContext, str, MultipartForm, str | None], Response],
    tenant: str,
    idem_key: str | None,
) -> Response:
    """Stream the multipart form to disk (size-capped), run ``handle(ctx, tenant, form,
    idem_key)`` in the thread pool (it blocks: checks, store, database) and remove the temporary
    files whatever happens."""
    ctx: AppContext = request.app.state.ctx
    form = await read_multipart(
        request,
        file_fields={spec.file_field},
        text_fields=spec.text_fields,
        required=spec.required,
        max_file_bytes=ctx.settings.max_upload_bytes,
        tmp_dir=ctx.upload_dir,
    )
    try:
        return await run_in_threadpool(handle, ctx, tenant, form, idem_key)
    finally:
        await run_in_threadpool(form.cleanup)


def create_once(
    ctx: AppContext,
    tenant: str,
    idem_key: str | None,
    request_hash: str,
    collection: str,
    status_code: int,
    create: Callable[[Session], Created],
    out: Callable[[Created], dict[str, Any]],
    after_commit: Callable[[Session, Created], None] | None = None,
) -> JSONResponse:
    """Create at most once per ``Idempotency-Key`` (blocking; call from the thread pool).

    A stored response for the key is replayed; otherwise ``create`` adds the object, its body
    (``out``) is stored under the key in the same commit and returned with ``status_code`` and
    ``Location: <collection>/<id>``. ``after_commit`` (the broker send of a job) runs only when
    this request's commit won, so a concurrent retry never acts twice.
    """
    idem = idempotency.make_request(tenant, idem_key, f"POST {collection}", request_hash)
    ttl = ctx.settings.idempotency_ttl_s
    with ctx.sessionmaker() as session:
        replayed = idempotency.replay(session, idem, ttl)
        if replayed is not None:
            return replayed
        row = create(session)
        body = out(row)
        replayed = idempotency.commit_created(session, idem, ttl, status_code, body)
        if replayed is not None:
            return replayed
        if after_commit is not None:
            after_commit(session, row)
    return idempotency.created_response(status_code, body, f"{collection}/{body['id']}")


@dataclass(frozen=True)
class TeacherFields:
    """The text parts that come with an uploaded teacher (its own upload and the one-shot job)."""

    input_shape: list[int]
    num_classes: int | None
    name: str | None

    @classmethod
    def parse(cls, form: MultipartForm) -> TeacherFields:
        """422 naming the part that is malformed."""
        return cls(
            input_shape=parse_input_shape_field(
                form.fields["input_shape"], ["body", "input_shape"]
            ),
            num_classes=parse_int_field(form.fields.get("num_classes"), ["body", "num_classes"], 2),
            name=parse_name_field(form.fields.get("name"), ["body", "name"]),
        )

    def check(self, ctx: AppContext, upload: UploadedFile) -> TeacherFacts:
        """The sandboxed check of the uploaded file against these fields (blocking)."""
        return check_teacher(
            upload.path, self.input_shape, self.num_classes, ctx.settings, ["body", "input_shape"]
        )
