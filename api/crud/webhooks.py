"""The tenant's webhook signing secret: read (created on first use) and rotate."""

from __future__ import annotations

from sqlalchemy.orm import Session

from cake_shared.models import Tenant
from cake_shared.tenants import get_or_create_tenant
from cake_shared.webhooks import rotate_webhook_secret


def current_secret(session: Session, tenant: str) -> Tenant:
    """The tenant row whose secret callbacks are signed with now (created on first use); its
    previous secret and that secret's expiry come along for the answer."""
    return get_or_create_tenant(session, tenant)


def rotate_secret(session: Session, tenant: str, grace_s: float) -> Tenant:
    """Replace the secret and commit: every callback attempt from now on, retries included,
    is signed with the new one, and with the replaced one for ``grace_s`` more seconds."""
    return rotate_webhook_secret(session, tenant, grace_s)
