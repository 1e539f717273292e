"""daemon scale-out: leader lease, schedule ticks, one open segment membership per customer

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
import yaml
from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OPEN_MEMBERSHIP = "membership AND left_at IS NULL"


def upgrade() -> None:
    op.create_table('daemon_leader',
    sa.Column('name', sa.String(), nullable=False),
    sa.Column('holder', sa.String(), nullable=False),
    sa.Column('epoch', sa.Integer(), nullable=False),
    sa.Column('lease_until', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('schedule_ticks',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('playbook_id', sa.String(), nullable=False),
    sa.Column('tick', sa.DateTime(timezone=True), nullable=False),
    sa.Column('holder', sa.String(), nullable=False),
    sa.Column('epoch', sa.Integer(), nullable=False),
    sa.Column('ran_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('playbook_id', 'tick')
    )
    with op.batch_alter_table('enrollments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('membership', sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
    _mark_memberships()
    op.create_index('uq_enrollments_open_membership', 'enrollments',
                    ['playbook_id', 'customer_id'], unique=True,
                    sqlite_where=sa.text(OPEN_MEMBERSHIP),
                    postgresql_where=sa.text(OPEN_MEMBERSHIP))


def _mark_memberships() -> None:
    """Enrollments of playbooks whose recorded versions have a `segment` trigger are
    memberships; where two were open at once (a race the index now stops), every one but the
    first is closed at its entry, so the unique index can be built."""
    bind = op.get_bind()
    segment = sorted({playbook_id for playbook_id, source in bind.execute(
        sa.text("SELECT playbook_id, source FROM playbook_versions")) if _is_segment(source)})
    if not segment:
        return
    mark = sa.text("UPDATE enrollments SET membership = :yes WHERE playbook_id IN :ids"
                   ).bindparams(sa.bindparam("ids", expanding=True))
    bind.execute(mark, {"yes": True, "ids": segment})
    bind.execute(sa.text(
        "UPDATE enrollments SET left_at = entered_at WHERE membership AND left_at IS NULL "
        "AND id > (SELECT min(o.id) FROM enrollments o WHERE o.playbook_id = "
        "enrollments.playbook_id AND o.customer_id = enrollments.customer_id "
        "AND o.membership AND o.left_at IS NULL)"))


def _is_segment(source: str) -> bool:
    try:
        document = yaml.safe_load(source)
    except yaml.YAMLError:
        return False
    trigger = document.get("trigger") if isinstance(document, dict) else None
    return isinstance(trigger, dict) and "segment" in trigger


def downgrade() -> None:
    op.drop_index('uq_enrollments_open_membership', table_name='enrollments')
    with op.batch_alter_table('enrollments', schema=None) as batch_op:
        batch_op.drop_column('membership')
    op.drop_table('schedule_ticks')
    op.drop_table('daemon_leader')
