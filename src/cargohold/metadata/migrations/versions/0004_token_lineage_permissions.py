"""token lineage and permissions: credential parents, admin permission sets, OIDC trust links, trust
permissions, upload sessions' credentials

Existing credentials become roots (``parent_id`` NULL) with their kind's default permission set: admin
rows get ``["admin"]``; project and pull rows already carry theirs (pull+push, pull) in ``permissions``.
Existing trust relationships keep what they granted: ``["pull"]`` when pull-only, else ``["pull", "push"]``.
Upload sessions opened before the upgrade belong to no credential (they still expire as before).

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("credentials", schema=None) as batch_op:
        batch_op.add_column(sa.Column("parent_id", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("admin_permissions", sa.Text(), nullable=True))
        batch_op.create_index(batch_op.f("ix_credentials_parent_id"), ["parent_id"], unique=False)
    op.execute("UPDATE credentials SET admin_permissions = '[\"admin\"]' WHERE kind = 'admin'")

    op.create_table(
        "credential_trusts",
        sa.Column("credential_id", sa.String(length=32), nullable=False),
        sa.Column("trust_id", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(
            ["credential_id"],
            ["credentials.id"],
            name=op.f("fk_credential_trusts_credential_id_credentials"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("credential_id", "trust_id", name=op.f("pk_credential_trusts")),
    )
    with op.batch_alter_table("credential_trusts", schema=None) as batch_op:
        batch_op.create_index("ix_credential_trusts_trust_id", ["trust_id"], unique=False)

    with op.batch_alter_table("trust_relationships", schema=None) as batch_op:
        batch_op.add_column(sa.Column("permissions", sa.Text(), nullable=True))
    op.execute(
        "UPDATE trust_relationships SET permissions = "
        'CASE WHEN pull_only THEN \'["pull"]\' ELSE \'["pull", "push"]\' END'
    )
    with op.batch_alter_table("trust_relationships", schema=None) as batch_op:
        batch_op.alter_column("permissions", existing_type=sa.Text(), nullable=False)

    with op.batch_alter_table("upload_sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("credential_id", sa.String(length=32), nullable=True))
        batch_op.create_index("ix_upload_sessions_credential_updated", ["credential_id", "updated_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("upload_sessions", schema=None) as batch_op:
        batch_op.drop_index("ix_upload_sessions_credential_updated")
        batch_op.drop_column("credential_id")
    with op.batch_alter_table("trust_relationships", schema=None) as batch_op:
        batch_op.drop_column("permissions")
    with op.batch_alter_table("credential_trusts", schema=None) as batch_op:
        batch_op.drop_index("ix_credential_trusts_trust_id")
    op.drop_table("credential_trusts")
    with op.batch_alter_table("credentials", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_credentials_parent_id"))
        batch_op.drop_column("admin_permissions")
        batch_op.drop_column("parent_id")
