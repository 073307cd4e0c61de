"""tag retention: expiry and pin of tags pushed outside builds, last push of every manifest

Revision ID: 0005
Revises: 0004

Existing data is given a full retention period from the upgrade, so an upgrade never deletes images at
once: every manifest's ``pushed_at`` is the upgrade time (the column's default, a constant written into
the schema because SQLite can only add a NOT NULL column with a constant default; the code always sets
the column itself), and every tag pushed outside builds in a project with a retention period expires
that period after the upgrade. Build tags (a build's ID, ``<build>-<target>``, save-tags) keep no expiry
of their own: their build's retention decides.
"""

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHUNK = 500

# The tables as this revision knows them (not the models, which later revisions may change).
projects = sa.table("projects", sa.column("id", sa.String), sa.column("retention_seconds", sa.BigInteger))
repositories = sa.table("repositories", sa.column("id", sa.Integer), sa.column("name", sa.String))
tags = sa.table(
    "tags",
    sa.column("repository_id", sa.Integer),
    sa.column("name", sa.String),
    sa.column("expires_at", sa.DateTime),
)
builds = sa.table("builds", sa.column("id", sa.String), sa.column("project_id", sa.String))
save_tags = sa.table("save_tags", sa.column("project_id", sa.String), sa.column("tag", sa.String))


def upgrade() -> None:
    now = datetime.now(UTC).replace(tzinfo=None)
    # Plain ALTER TABLE … ADD COLUMN, never batch mode: a batch "move and copy" drops the old table, and with
    # foreign keys on, dropping manifests cascades into every reference and tag.
    op.add_column("tags", sa.Column("expires_at", sa.DateTime(), nullable=True))
    op.add_column("tags", sa.Column("pinned", sa.Boolean(), server_default=sa.false(), nullable=False))
    op.create_index("ix_tags_pinned_expires", "tags", ["pinned", "expires_at"], unique=False)
    pushed_default = sa.text(f"'{now.strftime('%Y-%m-%d %H:%M:%S.%f')}'")
    op.add_column("manifests", sa.Column("pushed_at", sa.DateTime(), server_default=pushed_default, nullable=False))
    op.create_index("ix_manifests_repository_pushed", "manifests", ["repository_id", "pushed_at"], unique=False)
    _expire_existing_tags(op.get_bind(), now)


def _expire_existing_tags(connection: sa.Connection, now: datetime) -> None:
    """Give each non-build tag of a project with a retention period that period from now."""
    limited = connection.execute(
        sa.select(projects.c.id, projects.c.retention_seconds).where(projects.c.retention_seconds.is_not(None))
    ).all()
    for project_id, seconds in limited:
        expires_at = now + timedelta(seconds=seconds)
        rows = connection.execute(
            sa.select(repositories.c.id, repositories.c.name).where(
                (repositories.c.name == project_id) | repositories.c.name.startswith(f"{project_id}/", autoescape=True)
            )
        ).all()
        for repository_id, name in rows:
            if name != project_id:  # builds live only in the project's own repository
                connection.execute(
                    sa.update(tags).where(tags.c.repository_id == repository_id).values(expires_at=expires_at)
                )
                continue
            build_ids = set(connection.scalars(sa.select(builds.c.id).where(builds.c.project_id == project_id)))
            held = set(connection.scalars(sa.select(save_tags.c.tag).where(save_tags.c.project_id == project_id)))
            names = connection.scalars(sa.select(tags.c.name).where(tags.c.repository_id == repository_id)).all()
            free = [tag for tag in names if tag.split("-", 1)[0] not in build_ids and tag not in held]
            for start in range(0, len(free), CHUNK):
                connection.execute(
                    sa.update(tags)
                    .where(tags.c.repository_id == repository_id, tags.c.name.in_(free[start : start + CHUNK]))
                    .values(expires_at=expires_at)
                )


def downgrade() -> None:
    # Plain ALTER TABLE … DROP COLUMN (SQLite >= 3.35, PostgreSQL), for the reason given in upgrade().
    op.drop_index("ix_manifests_repository_pushed", table_name="manifests")
    op.drop_index("ix_tags_pinned_expires", table_name="tags")
    op.execute("ALTER TABLE manifests DROP COLUMN pushed_at")
    op.execute("ALTER TABLE tags DROP COLUMN pinned")
    op.execute("ALTER TABLE tags DROP COLUMN expires_at")
