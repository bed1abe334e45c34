"""Job change notifications (PostgreSQL).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05

A trigger sends ``NOTIFY cake_job_changed, '<job id>'`` whenever a job's ``updated_at`` changes
or the job is deleted, so the API's long polls (``api.job_watch``) hear of a change at once
instead of on their next round. Heartbeats write ``updated_at`` back unchanged and notify
nobody. Every writer (the API, workers, the sweeper, webhooks) is covered because the database
itself notifies. SQLite has no notifications: nothing changes there.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        """
        CREATE FUNCTION cake_notify_job_changed() RETURNS trigger AS $$
        BEGIN
            PERFORM pg_notify('cake_job_changed', COALESCE(NEW.id, OLD.id));
            RETURN NULL;
        END
        $$ LANGUAGE plpgsql
        """
    )
    op.execute(
        """
        CREATE TRIGGER jobs_notify_update AFTER UPDATE ON jobs FOR EACH ROW
        WHEN (OLD.updated_at IS DISTINCT FROM NEW.updated_at)
        EXECUTE FUNCTION cake_notify_job_changed()
        """
    )
    op.execute(
        """
        CREATE TRIGGER jobs_notify_delete AFTER DELETE ON jobs FOR EACH ROW
        EXECUTE FUNCTION cake_notify_job_changed()
        """
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS jobs_notify_delete ON jobs")
    op.execute("DROP TRIGGER IF EXISTS jobs_notify_update ON jobs")
    op.execute("DROP FUNCTION IF EXISTS cake_notify_job_changed()")
