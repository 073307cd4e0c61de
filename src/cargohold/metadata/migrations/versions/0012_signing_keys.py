"""registry-token signing keys in the database, shared by every replica

Revision ID: 0012
Revises: 0010
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A new table referenced by nothing: no rebuild of an existing one.
    op.create_table(
        "signing_keys",
        sa.Column("serial", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kid", sa.String(length=64), nullable=False),
        sa.Column("private_key", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("serial", name=op.f("pk_signing_keys")),
        sa.UniqueConstraint("kid", name=op.f("uq_signing_keys_kid")),
    )


def downgrade() -> None:
    op.drop_table("signing_keys")
