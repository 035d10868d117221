"""per-project GitOps configuration

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

import sentinel_cp.db

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TS = sentinel_cp.db.UTCDateTime(timezone=True)


def upgrade():
    op.create_table(
        "gitops_configs",
        sa.Column("project_id", sa.Uuid(), nullable=False),
        sa.Column("repository", sa.String(length=140), nullable=False),
        sa.Column("branch", sa.String(length=255), nullable=False),
        sa.Column("path", sa.String(length=255), nullable=False),
        sa.Column("api_base_url", sa.String(length=255), nullable=False),
        sa.Column("secret_encrypted", sa.Text(), nullable=False),
        sa.Column("access_token_encrypted", sa.Text(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_gitops_configs_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("project_id", name=op.f("pk_gitops_configs")),
    )
    op.create_index("ix_gitops_configs_repository", "gitops_configs", ["repository"])


def downgrade():
    op.drop_index("ix_gitops_configs_repository", table_name="gitops_configs")
    op.drop_table("gitops_configs")
