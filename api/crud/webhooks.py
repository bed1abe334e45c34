"""The tenant's webhook signing secret: read (created on first use) and rotate."""

from __future__ import annotations

from sqlalchemy.orm import Session

from cake_shared.tenants import get_or_create_tenant, new_webhook_secret


def current_secret(session: Session, tenant: str) -> str:
    """The secret callbacks are signed with now; the tenant row is created on first use."""
    return get_or_create_tenant(session, tenant).webhook_secret


def rotate_secret(session: Session, tenant: str) -> str:
    """Replace the secret and commit: every callback attempt from now on, retries included,
    is signed with the new one."""
    row = get_or_create_tenant(session, tenant)
    row.webhook_secret = new_webhook_secret()
    session.commit()
    return row.webhook_secret
