"""The attempt whose artifacts a job serves.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07

``jobs.artifacts_attempt``: artifacts and checkpoints are written under per-attempt keys
(``jobs/<id>/attempts/<n>/...``, ``cake_shared.job_keys``), and a job that succeeds records
the attempt that won beside its artifact rows, so a stale attempt's late writes land in a
folder nothing serves, and the sweeper can tell the winner's objects from a loser's. Null for
jobs that did not succeed and for jobs that ended before this revision: their artifact rows
keep naming the old keys (``jobs/<id>/artifacts/<name>``) and keep downloading. A downgrade
keeps working too: every artifact row names its own key, whichever folder that is.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("artifacts_attempt", sa.Integer(), nullable=True))


def downgrade() -> None:
    # Not batch mode: on SQLite that copies ``jobs`` into a new table and drops the old one,
    # and the drop cascades (``ON DELETE CASCADE``, foreign keys on) to every artifact row and
    # event. SQLite (3.35 and later) and PostgreSQL both drop a column in place.
    op.drop_column("jobs", "artifacts_attempt")
