"""rfm incremental: the values each customer was ranked with, the last ranking's bounds

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04

An existing database has no bounds yet (`rfm_ranking.bounds` NULL) and every customer with a
purchase differs from the ranked values (0): its first RFM refresh ranks everyone, as before.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MOVED = {
    "sqlite": "purchase_count IS NOT rfm_purchase_count OR last_purchase_at IS NOT "
              "rfm_last_purchase_at OR round(CAST(total_spent AS NUMERIC), 4) IS NOT rfm_revenue",
    "postgresql": "purchase_count IS DISTINCT FROM rfm_purchase_count OR last_purchase_at IS "
                  "DISTINCT FROM rfm_last_purchase_at OR round(CAST(total_spent AS NUMERIC), 4) IS "
                  "DISTINCT FROM rfm_revenue",
}
KEYS = {"r": ("rfm_last_purchase_at", "rfm_purchase_count > 0"),
        "f": ("rfm_purchase_count", "rfm_last_purchase_at IS NOT NULL"),
        "m": ("rfm_revenue", "rfm_purchase_count > 0")}


def upgrade() -> None:
    op.create_table('rfm_ranking',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('ranked', sa.Integer(), nullable=False),
    sa.Column('generation', sa.Integer(), nullable=False),
    sa.Column('bounds', sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), 'postgresql'),
              nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.execute("INSERT INTO rfm_ranking (id, ranked, generation) VALUES (1, 0, 0)")
    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('rfm_last_purchase_at', sa.DateTime(timezone=True),
                                      nullable=True))
        batch_op.add_column(sa.Column('rfm_purchase_count', sa.Integer(), nullable=False,
                                      server_default='0'))
        batch_op.add_column(sa.Column('rfm_revenue', sa.Numeric(), nullable=False,
                                      server_default='0'))
    dialect = op.get_bind().dialect.name
    byte_order = 'customer_id COLLATE "C"' if dialect == "postgresql" else "customer_id"
    for name, (key, ranked) in KEYS.items():
        op.execute(f"CREATE INDEX ix_customers_rfm_{name} ON customers ({key}, {byte_order})"
                   f" WHERE {ranked}")
    op.execute(f"CREATE INDEX ix_customers_rfm_moved ON customers (customer_id)"
               f" WHERE {MOVED[dialect]}")


def downgrade() -> None:
    for name in ("moved", *KEYS):
        op.drop_index(f'ix_customers_rfm_{name}', table_name='customers')
    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.drop_column('rfm_revenue')
        batch_op.drop_column('rfm_purchase_count')
        batch_op.drop_column('rfm_last_purchase_at')
    op.drop_table('rfm_ranking')
