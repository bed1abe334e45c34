"""Webhooks: the tenant's signing secret for job callbacks (``callback_url`` on a job).

Each tenant has one secret, created on first use. Every callback is signed with the secret
current at the moment of the attempt, so after a rotation even retries of older deliveries
carry the new signature. The replaced secret signs too, as a second ``v1``, until
``previous_secret_expires_at`` (``CAKE_WEBHOOK_SECRET_GRACE_S`` after the rotation, 24 h by
default): receivers can switch to the new secret without refusing deliveries meanwhile.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from api.crud import webhooks
from api.deps import CtxDep, SessionDep, TenantDep
from api.schemas import ANY_CLIENT_ERROR
from cake_shared.models import Tenant
from cake_shared.signing import ALGORITHM, DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER
from cake_shared.webhooks import signing_secrets

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], responses=ANY_CLIENT_ERROR)

SIGNATURE_FORMAT = "t=<unix seconds>,v1=<hex HMAC-SHA256(secret, '<t>.' + raw body)>"


class WebhookSecret(BaseModel):
    """How to check that a callback came from this service."""

    object: Literal["webhook_secret"] = Field(
        "webhook_secret", description="Always 'webhook_secret'."
    )
    secret: str = Field(..., description="The tenant's signing secret (whsec_…); keep it private.")
    signature_header: str = Field(SIGNATURE_HEADER, description="Header carrying the signature.")
    algorithm: str = Field(ALGORITHM, description="HMAC with SHA-256.")
    signature_format: str = Field(
        SIGNATURE_FORMAT,
        description=(
            "Recompute the HMAC over the timestamp, a dot and the raw body; compare in constant "
            "time; refuse timestamps more than a few minutes old. cake_client.webhooks."
            "verify_signature does all three."
        ),
    )
    event_header: str = Field(
        EVENT_HEADER, description="Carries job.succeeded, job.failed or job.canceled."
    )
    delivery_header: str = Field(
        DELIVERY_HEADER, description="The same on every retry of one delivery: drop repeats."
    )
    previous_secret_expires_at: datetime | None = Field(
        None,
        description=(
            "Until then callbacks also carry a signature with the secret the last rotation "
            "replaced (a second v1 entry), so a receiver still holding it keeps verifying; "
            "null when no previous secret signs any more."
        ),
    )


def _out(row: Tenant) -> WebhookSecret:
    """The answer for ``row``: the expiry only while the previous secret still signs (the same
    rule the sender applies, :func:`~cake_shared.webhooks.signing_secrets`)."""
    previous_signs = len(signing_secrets(row)) > 1
    until = row.previous_webhook_secret_expires_at if previous_signs else None
    return WebhookSecret(secret=row.webhook_secret, previous_secret_expires_at=until)


@router.get(
    "/secret",
    response_model=WebhookSecret,
    summary="The webhook signing secret",
    description="The caller's tenant's secret for job callbacks, created on first use.",
)
def get_secret(session: SessionDep, tenant: TenantDep) -> WebhookSecret:
    return _out(webhooks.current_secret(session, tenant))


@router.post(
    "/secret/rotate",
    response_model=WebhookSecret,
    summary="Replace the webhook signing secret",
    description=(
        "A new secret takes effect at once: every callback attempt from now on, retries of "
        "earlier deliveries included, is signed with it. The replaced secret signs as well (a "
        "second v1 in the signature header) until previous_secret_expires_at, "
        "CAKE_WEBHOOK_SECRET_GRACE_S after the rotation; rotating again in that time ends the "
        "older secret at once."
    ),
)
def rotate_secret(ctx: CtxDep, session: SessionDep, tenant: TenantDep) -> WebhookSecret:
    return _out(webhooks.rotate_secret(session, tenant, ctx.settings.webhook_secret_grace_s))
