"""byte order (COLLATE "C") for repository and tag names on PostgreSQL

OCI listings are in lexical byte order and paged with ``last``; a PostgreSQL database created with a language
locale would order and compare them differently. SQLite already compares byte-wise: nothing changes there.

Revision ID: 0010
Revises: 0009
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BYTE_ORDERED = (("repositories", "name", 255), ("tags", "name", 128))


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column, length in BYTE_ORDERED:
        # Rebuilds the column's indexes (the unique name, the primary key) under the new collation.
        op.execute(f'ALTER TABLE {table} ALTER COLUMN {column} TYPE varchar({length}) COLLATE "C"')


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column, length in BYTE_ORDERED:
        op.execute(f'ALTER TABLE {table} ALTER COLUMN {column} TYPE varchar({length}) COLLATE "default"')
