"""live execution: outbox attempts and payloads apart, versions with templates, tags, secrets

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from sqlalchemy.dialects import postgresql

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('engine_secrets',
    sa.Column('name', sa.String(), nullable=False),
    sa.Column('value', sa.String(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('action_attempts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('action_id', sa.Integer(), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('worker', sa.String(), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('outcome', sa.String(), nullable=False),
    sa.Column('error', sa.String(), nullable=True),
    sa.ForeignKeyConstraint(['action_id'], ['actions.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('action_attempts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_action_attempts_action_id'), ['action_id'], unique=False)

    with op.batch_alter_table('actions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('playbook_id', sa.String(), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('stage', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.drop_index(batch_op.f('ix_actions_customer_id'))
        batch_op.create_index('ix_actions_customer_connector', ['customer_id', 'connector'], unique=False)
        batch_op.create_index(batch_op.f('ix_actions_playbook_id'), ['playbook_id'], unique=False)

    # The payload in its own table: a status update of `actions` no longer rewrites it (SQLite
    # writes whole records). After the batch above: SQLite's batch mode copies and drops
    # `actions`, which a filled `action_payloads` referencing it would refuse; the column is
    # then dropped in place (ALTER TABLE ... DROP COLUMN, SQLite 3.35+).
    op.create_table('action_payloads',
    sa.Column('action_id', sa.Integer(), nullable=False),
    sa.Column('payload', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.ForeignKeyConstraint(['action_id'], ['actions.id'], ),
    sa.PrimaryKeyConstraint('action_id')
    )
    op.execute("INSERT INTO action_payloads (action_id, payload) SELECT id, payload FROM actions")
    op.drop_column('actions', 'payload')

    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('file_tags', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False, server_default='[]'))
        batch_op.add_column(sa.Column('tags_added', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False, server_default='[]'))
        batch_op.add_column(sa.Column('tags_removed', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False, server_default='[]'))

    op.execute("UPDATE customers SET file_tags = tags")  # every tag so far came from a file

    with op.batch_alter_table('enrollments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('event_id', sa.String(), nullable=True))
        batch_op.add_column(sa.Column('converted_at', sa.DateTime(timezone=True), nullable=True))

    with op.batch_alter_table('playbook_versions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('templates', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False, server_default='{}'))

    with op.batch_alter_table('points_ledger', schema=None) as batch_op:
        batch_op.add_column(sa.Column('playbook_id', sa.String(), nullable=True))

    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('playbook_id', sa.String(), nullable=True))
        batch_op.add_column(sa.Column('done_at', sa.DateTime(timezone=True), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.drop_column('done_at')
        batch_op.drop_column('playbook_id')

    with op.batch_alter_table('points_ledger', schema=None) as batch_op:
        batch_op.drop_column('playbook_id')

    with op.batch_alter_table('playbook_versions', schema=None) as batch_op:
        batch_op.drop_column('templates')

    with op.batch_alter_table('enrollments', schema=None) as batch_op:
        batch_op.drop_column('converted_at')
        batch_op.drop_column('event_id')

    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.drop_column('tags_removed')
        batch_op.drop_column('tags_added')
        batch_op.drop_column('file_tags')

    # the payloads back into `actions`, before its batch (which SQLite does by copying it)
    op.add_column('actions', sa.Column('payload', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False, server_default='{}'))
    op.execute("UPDATE actions SET payload = (SELECT p.payload FROM action_payloads p"
               " WHERE p.action_id = actions.id) WHERE id IN (SELECT action_id FROM action_payloads)")
    op.drop_table('action_payloads')

    with op.batch_alter_table('actions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_actions_playbook_id'))
        batch_op.drop_index('ix_actions_customer_connector')
        batch_op.create_index(batch_op.f('ix_actions_customer_id'), ['customer_id'], unique=False)
        batch_op.drop_column('sent_at')
        batch_op.drop_column('stage')
        batch_op.drop_column('playbook_id')

    with op.batch_alter_table('action_attempts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_action_attempts_action_id'))

    op.drop_table('action_attempts')
    op.drop_table('engine_secrets')
