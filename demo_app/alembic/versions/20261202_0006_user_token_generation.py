"""users.token_generation: login tokens carry it; bumped at logout and password change

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 00:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("users", sa.Column("token_generation", sa.Integer(), nullable=False,
                                     server_default="0"))


def downgrade():
    with op.batch_alter_table("users") as batch:  # SQLite cannot drop a column in place
        batch.drop_column("token_generation")
