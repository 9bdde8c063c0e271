"""pyramid_examcache tables: the mail outbox and the invalidation log

Revision ID: 7f8e9d0c1b2a
Revises: 1a2b3c4d5e6f
Create Date: 2026-01-02 00:00:00.000000

"""
from alembic import op

from pyramid_examcache.cache.invalidation_log import (
    create_invalidation_log,
    drop_invalidation_log,
)
from pyramid_examcache.mail.outbox import create_outbox, drop_outbox

# revision identifiers, used by Alembic.
revision = '7f8e9d0c1b2a'
down_revision = '1a2b3c4d5e6f'
branch_labels = None
depends_on = None


def upgrade():
    create_outbox(op)
    create_invalidation_log(op)


def downgrade():
    drop_invalidation_log(op)
    drop_outbox(op)
