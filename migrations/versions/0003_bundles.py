"""bundles and per-node delivery state

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import sentinel_cp.db

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
TS = sentinel_cp.db.UTCDateTime(timezone=True)
AUTO_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade():
    op.create_table(
        "bundles",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("project_id", sa.Uuid(), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("storage_key", sa.String(length=255), nullable=False),
        sa.Column("files", JSON, nullable=False),
        sa.Column("manifest", JSON, nullable=False),
        sa.Column("config_sha256", sa.String(length=64), nullable=False),
        sa.Column("errors", JSON, nullable=False),
        sa.Column("warnings", JSON, nullable=False),
        sa.Column("output", JSON, nullable=False),
        sa.Column("signature", sa.Text(), nullable=True),
        sa.Column("signing_key_id", sa.String(length=64), nullable=True),
        sa.Column("risk_level", sa.String(length=8), nullable=True),
        sa.Column("risk_reasons", JSON, nullable=False),
        sa.Column("diff_summary", JSON, nullable=True),
        sa.Column("parent_bundle_id", sa.String(length=64), nullable=True),
        sa.Column("source_type", sa.String(length=16), nullable=False),
        sa.Column("source_ref", sa.String(length=255), nullable=True),
        sa.Column("created_by", sa.String(length=255), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("compile_started_at", TS, nullable=True),
        sa.Column("compile_attempts", sa.Integer(), nullable=False),
        sa.Column("compiled_at", TS, nullable=True),
        sa.Column("revoked_at", TS, nullable=True),
        sa.Column("revoke_reason", sa.String(length=500), nullable=True),
        sa.Column("artifact_deleted_at", TS, nullable=True),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_bundles_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bundles")),
        sa.UniqueConstraint("project_id", "version", name="uq_bundles_project_version"),
    )
    op.create_index("ix_bundles_project_created", "bundles", ["project_id", "created_at"])
    op.create_index("ix_bundles_status", "bundles", ["status"])
    op.create_table(
        "node_bundle_statuses",
        sa.Column("id", AUTO_ID, autoincrement=True, nullable=False),
        sa.Column("project_id", sa.Uuid(), nullable=False),
        sa.Column("node_id", sa.Uuid(), nullable=False),
        sa.Column("bundle_id", sa.String(length=64), nullable=False),
        sa.Column("rollout_id", sa.Uuid(), nullable=True),
        sa.Column("previous_bundle_id", sa.String(length=64), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=1000), nullable=True),
        sa.Column("logs", sa.Text(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("activated_at", TS, nullable=True),
        sa.Column("verified_at", TS, nullable=True),
        sa.ForeignKeyConstraint(
            ["bundle_id"],
            ["bundles.id"],
            name=op.f("fk_node_bundle_statuses_bundle_id_bundles"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["node_id"],
            ["nodes.id"],
            name=op.f("fk_node_bundle_statuses_node_id_nodes"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_node_bundle_statuses_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_node_bundle_statuses")),
    )
    op.create_index(
        "ix_node_bundle_statuses_node_bundle", "node_bundle_statuses", ["node_id", "bundle_id"]
    )
    op.create_index("ix_node_bundle_statuses_rollout", "node_bundle_statuses", ["rollout_id"])
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("assigned_rollout_id", sa.Uuid(), nullable=True))


def downgrade():
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("assigned_rollout_id")
    op.drop_index("ix_node_bundle_statuses_rollout", table_name="node_bundle_statuses")
    op.drop_index("ix_node_bundle_statuses_node_bundle", table_name="node_bundle_statuses")
    op.drop_table("node_bundle_statuses")
    op.drop_index("ix_bundles_status", table_name="bundles")
    op.drop_index("ix_bundles_project_created", table_name="bundles")
    op.drop_table("bundles")
