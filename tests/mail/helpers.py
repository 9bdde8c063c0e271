from __future__ import annotations

import uuid

from pyramid_examcache.mail.message import make_message_id
from pyramid_examcache.mail.outbox import get, new_row, outbox_table, utcnow


def insert_job(engine, to="ann@example.com", *, sender="no-reply@exams.example", **values) -> str:
    job_id = uuid.uuid4().hex
    row = new_row(job_id, make_message_id(job_id, sender), sender, [to], "Subject",
                  "<p>Hi</p>", None, {}, utcnow())
    row.update(values)
    with engine.begin() as conn:
        conn.execute(outbox_table.insert().values(**row))
    return job_id


def load(engine, job_id):
    with engine.connect() as conn:
        return get(conn, job_id)
