"""lifecycle: leases, audit log, removed tags, storage metering, build indexes for the sweeps

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=128), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_leases")),
    )
    op.create_table(
        "lifecycle_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.String(length=32), nullable=True),
        sa.Column("build_id", sa.String(length=32), nullable=True),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("rule", sa.String(length=32), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lifecycle_events")),
    )
    with op.batch_alter_table("lifecycle_events", schema=None) as batch_op:
        batch_op.create_index("ix_lifecycle_events_project_at", ["project_id", "at"], unique=False)
        batch_op.create_index("ix_lifecycle_events_build_id", ["build_id"], unique=False)
        batch_op.create_index("ix_lifecycle_events_at", ["at"], unique=False)
    op.create_table(
        "removed_tags",
        sa.Column("repository", sa.String(length=255), nullable=False),
        sa.Column("tag", sa.String(length=128), nullable=False),
        sa.Column("event_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["lifecycle_events.id"],
            name=op.f("fk_removed_tags_event_id_lifecycle_events"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("repository", "tag", name=op.f("pk_removed_tags")),
    )
    with op.batch_alter_table("removed_tags", schema=None) as batch_op:
        batch_op.create_index("ix_removed_tags_event_id", ["event_id"], unique=False)
    op.create_table(
        "project_storage",
        sa.Column("project_id", sa.String(length=32), nullable=False),
        sa.Column("stored_bytes", sa.BigInteger(), nullable=False),
        sa.Column("metered_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_project_storage_project_id_projects"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("project_id", name=op.f("pk_project_storage")),
    )
    op.create_table(
        "usage_months",
        sa.Column("project_id", sa.String(length=32), nullable=False),
        sa.Column("month", sa.String(length=7), nullable=False),
        sa.Column("byte_hours", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_usage_months_project_id_projects"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("project_id", "month", name=op.f("pk_usage_months")),
    )
    with op.batch_alter_table("builds", schema=None) as batch_op:
        batch_op.create_index("ix_builds_project_status_saved", ["project_id", "status", "saved_at"], unique=False)
        batch_op.create_index("ix_builds_status_expires", ["status", "expires_at"], unique=False)
        batch_op.create_index("ix_builds_status_created", ["status", "created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("builds", schema=None) as batch_op:
        batch_op.drop_index("ix_builds_status_created")
        batch_op.drop_index("ix_builds_status_expires")
        batch_op.drop_index("ix_builds_project_status_saved")
    op.drop_table("usage_months")
    op.drop_table("project_storage")
    with op.batch_alter_table("removed_tags", schema=None) as batch_op:
        batch_op.drop_index("ix_removed_tags_event_id")
    op.drop_table("removed_tags")
    with op.batch_alter_table("lifecycle_events", schema=None) as batch_op:
        batch_op.drop_index("ix_lifecycle_events_at")
        batch_op.drop_index("ix_lifecycle_events_build_id")
        batch_op.drop_index("ix_lifecycle_events_project_at")
    op.drop_table("lifecycle_events")
    op.drop_table("leases")
