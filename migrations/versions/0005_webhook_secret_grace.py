"""The previous webhook secret, valid for a grace period after a rotation.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06

``tenants.previous_webhook_secret`` and ``tenants.previous_webhook_secret_expires_at``: after
``POST /v1/webhooks/secret/rotate`` callbacks are signed with both the new and the previous
secret until the expiry (``CAKE_WEBHOOK_SECRET_GRACE_S``), so a receiver that still holds the
old secret keeps accepting deliveries while it is switched over. Both are null for tenants
that never rotated, which is what existing rows get.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("previous_webhook_secret", sa.String(length=128), nullable=True))
        batch.add_column(
            sa.Column(
                "previous_webhook_secret_expires_at", sa.DateTime(timezone=True), nullable=True
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("previous_webhook_secret_expires_at")
        batch.drop_column("previous_webhook_secret")
