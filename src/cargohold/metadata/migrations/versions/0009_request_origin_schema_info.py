"""request origin in the audit log, and which Cargohold version brought the schema to each revision

Revision ID: 0009
Revises: 0008
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMN (nullable, no default): removed_tags references lifecycle_events, so no table rebuild.
    op.add_column("lifecycle_events", sa.Column("request_id", sa.String(length=128), nullable=True))
    op.add_column("lifecycle_events", sa.Column("client_address", sa.String(length=64), nullable=True))
    op.create_table(
        "schema_info",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )


def downgrade() -> None:
    op.drop_table("schema_info")
    with op.batch_alter_table("lifecycle_events", schema=None) as batch_op:
        batch_op.drop_column("client_address")
        batch_op.drop_column("request_id")
