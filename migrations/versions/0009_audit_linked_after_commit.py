"""audit_logs: rows may commit unlinked (PostgreSQL links them right after the commit)

Revision ID: 0009
Revises: 0008

On PostgreSQL an audit row commits with the change it records but without its sequence number
and hashes; `audit.link_chain` links it in a transaction of its own, so requests no longer
queue on their project's chain head. The three link columns become nullable, and a partial
index finds the unlinked rows of a chain.
"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

LINK_COLUMNS = (("seq", sa.Integer()), ("prev_hash", sa.String(64)), ("entry_hash", sa.String(64)))


def upgrade():
    with op.batch_alter_table("audit_logs", schema=None) as batch_op:
        for name, type_ in LINK_COLUMNS:
            batch_op.alter_column(name, existing_type=type_, nullable=True)
        batch_op.create_index(
            "ix_audit_logs_unlinked",
            ["chain"],
            unique=False,
            postgresql_where=sa.text("seq IS NULL"),
            sqlite_where=sa.text("seq IS NULL"),
        )


def downgrade():
    # Rows still unlinked cannot satisfy NOT NULL: link them first (`sentinel-cp` cron sweep).
    with op.batch_alter_table("audit_logs", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_logs_unlinked")
        for name, type_ in LINK_COLUMNS:
            batch_op.alter_column(name, existing_type=type_, nullable=False)
