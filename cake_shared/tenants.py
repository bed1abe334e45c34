"""Tenants and API keys: creation, hashing, lookup. Used by the API (auth) and the CLI (keys).

A key is ``cake_<43 url-safe characters>`` (256 random bits). Only its SHA-256 is stored: a
leaked database does not leak usable keys, and a fast hash is enough for a secret that long.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cake_shared.ids import new_id
from cake_shared.models import ApiKey, Tenant, utcnow

KEY_PREFIX = "cake_"
TENANT_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_webhook_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def get_or_create_tenant(session: Session, name: str) -> Tenant:
    """The tenant row, created (with a fresh webhook secret) on first use; commits if created."""
    row = session.get(Tenant, name)
    if row is not None:
        return row
    row = Tenant(name=name, webhook_secret=new_webhook_secret())
    session.add(row)
    try:
        session.commit()
    except IntegrityError:  # created meanwhile by another process
        session.rollback()
        row = session.get(Tenant, name)
        assert row is not None
    return row


@dataclass(frozen=True)
class CreatedKey:
    row: ApiKey
    secret: str  # shown once, never stored


def create_key(session: Session, tenant: str, name: str | None = None) -> CreatedKey:
    if not TENANT_NAME.match(tenant):
        raise ValueError(
            "tenant names are 1-64 characters: lower-case letters, digits, '_', '.', '-'"
        )
    get_or_create_tenant(session, tenant)
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        id=new_id("api_key"),
        tenant=tenant,
        name=name,
        prefix=secret[: len(KEY_PREFIX) + 6],
        key_hash=hash_key(secret),
    )
    session.add(row)
    session.commit()
    return CreatedKey(row=row, secret=secret)


def list_keys(session: Session, tenant: str | None = None) -> list[ApiKey]:
    query = select(ApiKey).order_by(ApiKey.created_at)
    if tenant is not None:
        query = query.where(ApiKey.tenant == tenant)
    return list(session.scalars(query))


def revoke_key(session: Session, key_id_or_prefix: str) -> ApiKey | None:
    """Revoke by id (``key_...``) or by the prefix shown in lists; None if nothing matched."""
    row = session.get(ApiKey, key_id_or_prefix)
    if row is None:
        matches = list(session.scalars(select(ApiKey).where(ApiKey.prefix == key_id_or_prefix)))
        if len(matches) != 1:
            return None
        row = matches[0]
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.commit()
    return row


def keys_configured(session: Session) -> bool:
    """True once any key was ever created: the service then requires keys.

    Revoked keys count too, so revoking every key locks the service rather than opening it
    to anyone as single-user local mode would.
    """
    return session.scalar(select(ApiKey.id).limit(1)) is not None


def tenant_for_secret(session: Session, secret: str) -> ApiKey | None:
    """The live key row for a presented secret, or None."""
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(secret)))
    if row is None or row.revoked_at is not None:
        return None
    return row
