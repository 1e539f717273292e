"""customers' everyday facts in one covering index (replaces ix_customers_last_active_at)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04

A playbook that filters only on these facts (inactive, spend, purchase count, segment, RFM
segment, created_at) is evaluated by SQLite from the index alone, a third of the table's width
(issue 14: evaluation held at the floor). Led by last_active_at, it also serves the range
lookups the single-column index served, so it replaces that one: sync maintains one index there,
as before. docs/EVALUATION.md says which conditions it covers.
"""

from collections.abc import Sequence

from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FACTS = ['last_active_at', 'created_at', 'purchase_count', 'total_spent', 'segment',
         'rfm_segment', 'customer_id']


def upgrade() -> None:
    op.drop_index('ix_customers_last_active_at', table_name='customers')
    op.create_index('ix_customers_facts', 'customers', FACTS, unique=False)


def downgrade() -> None:
    op.drop_index('ix_customers_facts', table_name='customers')
    op.create_index('ix_customers_last_active_at', 'customers', ['last_active_at'], unique=False)
