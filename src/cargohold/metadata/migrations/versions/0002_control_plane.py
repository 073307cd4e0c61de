"""control plane

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 03:08:13.585897
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "credentials",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("permissions", sa.Text(), nullable=False),
        sa.Column("metadata_json", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=True),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.Column("last_used_at", sa.DateTime(), nullable=True),
        sa.Column("project_id", sa.String(length=32), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credentials")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_credentials_token_hash")),
    )
    with op.batch_alter_table("credentials", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_credentials_project_id"), ["project_id"], unique=False)

    op.create_table(
        "oidc_token_uses",
        sa.Column("issuer", sa.String(length=255), nullable=False),
        sa.Column("jti", sa.String(length=255), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("issuer", "jti", name=op.f("pk_oidc_token_uses")),
    )
    with op.batch_alter_table("oidc_token_uses", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_oidc_token_uses_expires_at"), ["expires_at"], unique=False)

    op.create_table(
        "projects",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("retention_seconds", sa.BigInteger(), nullable=True),
        sa.Column("max_builds", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_projects")),
    )
    op.create_table(
        "builds",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("project_id", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("saved_at", sa.DateTime(), nullable=True),
        sa.Column("expires_at", sa.DateTime(), nullable=True),
        sa.Column("pinned", sa.Boolean(), nullable=False),
        sa.Column("manifest_digest", sa.String(length=140), nullable=True),
        sa.Column("media_type", sa.String(length=255), nullable=True),
        sa.Column("platforms", sa.Text(), nullable=True),
        sa.Column("targets", sa.Text(), nullable=True),
        sa.Column("total_size", sa.BigInteger(), nullable=True),
        sa.Column("unique_size", sa.BigInteger(), nullable=True),
        sa.Column("provenance", sa.Text(), nullable=True),
        sa.Column("failure", sa.Text(), nullable=True),
        sa.Column("created_by", sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_builds_project_id_projects"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_builds")),
    )
    with op.batch_alter_table("builds", schema=None) as batch_op:
        batch_op.create_index("ix_builds_project_created", ["project_id", "created_at"], unique=False)

    op.create_table(
        "trust_relationships",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("project_id", sa.String(length=32), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("issuer", sa.String(length=255), nullable=False),
        sa.Column("owner", sa.String(length=100), nullable=False),
        sa.Column("repository", sa.String(length=100), nullable=False),
        sa.Column("owner_id", sa.String(length=32), nullable=True),
        sa.Column("repository_id", sa.String(length=32), nullable=True),
        sa.Column("workflow", sa.String(length=300), nullable=True),
        sa.Column("environment", sa.String(length=255), nullable=True),
        sa.Column("ref_pattern", sa.String(length=255), nullable=True),
        sa.Column("runner_environment", sa.String(length=32), nullable=True),
        sa.Column("allowed_events", sa.Text(), nullable=True),
        sa.Column("pull_only", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_trust_relationships_project_id_projects"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trust_relationships")),
    )
    with op.batch_alter_table("trust_relationships", schema=None) as batch_op:
        batch_op.create_index("ix_trust_owner_repository", ["owner", "repository"], unique=False)
        batch_op.create_index(batch_op.f("ix_trust_relationships_project_id"), ["project_id"], unique=False)

    op.create_table(
        "save_tags",
        sa.Column("project_id", sa.String(length=32), nullable=False),
        sa.Column("tag", sa.String(length=128), nullable=False),
        sa.Column("build_id", sa.String(length=32), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["build_id"], ["builds.id"], name=op.f("fk_save_tags_build_id_builds"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_save_tags_project_id_projects"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("project_id", "tag", name=op.f("pk_save_tags")),
    )
    with op.batch_alter_table("save_tags", schema=None) as batch_op:
        batch_op.create_index("ix_save_tags_build_id", ["build_id"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("save_tags", schema=None) as batch_op:
        batch_op.drop_index("ix_save_tags_build_id")

    op.drop_table("save_tags")
    with op.batch_alter_table("trust_relationships", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_trust_relationships_project_id"))
        batch_op.drop_index("ix_trust_owner_repository")

    op.drop_table("trust_relationships")
    with op.batch_alter_table("builds", schema=None) as batch_op:
        batch_op.drop_index("ix_builds_project_created")

    op.drop_table("builds")
    op.drop_table("projects")
    with op.batch_alter_table("oidc_token_uses", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_oidc_token_uses_expires_at"))

    op.drop_table("oidc_token_uses")
    with op.batch_alter_table("credentials", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_credentials_project_id"))

    op.drop_table("credentials")
