"""drift

Revision ID: 0006
Revises: 0005

"""
from alembic import op
import sqlalchemy as sa

import sentinel_cp.db

# revision identifiers, used by Alembic.
revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('drift_events',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('project_id', sa.Uuid(), nullable=False),
    sa.Column('node_id', sa.Uuid(), nullable=False),
    sa.Column('node_name', sa.String(length=100), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.String(length=32), nullable=False),
    sa.Column('severity', sa.String(length=16), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('expected_bundle_id', sa.String(length=64), nullable=True),
    sa.Column('actual_bundle_id', sa.String(length=64), nullable=True),
    sa.Column('expected_config_hash', sa.String(length=64), nullable=True),
    sa.Column('actual_config_hash', sa.String(length=64), nullable=True),
    sa.Column('first_seen_at', sentinel_cp.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('opened_at', sentinel_cp.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('remediated_at', sentinel_cp.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('resolved_at', sentinel_cp.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('resolved_by', sa.String(length=255), nullable=True),
    sa.Column('resolution', sa.String(length=16), nullable=True),
    sa.Column('comment', sa.String(length=1000), nullable=True),
    sa.ForeignKeyConstraint(['node_id'], ['nodes.id'], name=op.f('fk_drift_events_node_id_nodes'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_drift_events_project_id_projects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_drift_events'))
    )
    with op.batch_alter_table('drift_events', schema=None) as batch_op:
        batch_op.create_index('ix_drift_events_node_opened', ['node_id', 'opened_at'], unique=False)
        batch_op.create_index('ix_drift_events_project_opened', ['project_id', 'opened_at'], unique=False)
        batch_op.create_index('ix_drift_events_project_status', ['project_id', 'status'], unique=False)
        # at most one active event per node and kind
        batch_op.create_index('uq_drift_events_active_node_kind', ['node_id', 'kind'], unique=True, sqlite_where=sa.text("status = 'active'"), postgresql_where=sa.text("status = 'active'"))

    op.create_table('drift_observations',
    sa.Column('node_id', sa.Uuid(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('project_id', sa.Uuid(), nullable=False),
    sa.Column('first_seen_at', sentinel_cp.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['node_id'], ['nodes.id'], name=op.f('fk_drift_observations_node_id_nodes'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_drift_observations_project_id_projects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('node_id', 'kind', name=op.f('pk_drift_observations'))
    )
    with op.batch_alter_table('drift_observations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_drift_observations_project_id'), ['project_id'], unique=False)


def downgrade():
    with op.batch_alter_table('drift_observations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_drift_observations_project_id'))

    op.drop_table('drift_observations')
    with op.batch_alter_table('drift_events', schema=None) as batch_op:
        batch_op.drop_index('uq_drift_events_active_node_kind', sqlite_where=sa.text("status = 'active'"), postgresql_where=sa.text("status = 'active'"))
        batch_op.drop_index('ix_drift_events_project_status')
        batch_op.drop_index('ix_drift_events_project_opened')
        batch_op.drop_index('ix_drift_events_node_opened')

    op.drop_table('drift_events')
