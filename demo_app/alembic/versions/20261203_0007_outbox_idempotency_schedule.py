"""mail outbox: idempotency_key (unique index) and send_at (pyramid_examcache release 3 columns)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 00:00:00
"""
from alembic import op

from pyramid_examcache.mail.outbox import add_new_columns, drop_new_columns

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade():
    add_new_columns(op, 3)


def downgrade():
    drop_new_columns(op, 3)
