"""users.is_admin: who may use the admin page (examcache.admin_path)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 00:00:03
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("users", sa.Column("is_admin", sa.Boolean(), nullable=False,
                                     server_default=sa.false()))


def downgrade():
    with op.batch_alter_table("users") as batch:  # SQLite cannot drop a column in place
        batch.drop_column("is_admin")
