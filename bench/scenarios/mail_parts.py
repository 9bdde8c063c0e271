"""What the parts of ``mail-throughput`` that queue their own mail share
(:mod:`.mail_ratelimit`, :mod:`.mail_priority`): outbox rows written as ``send_queued``
writes them, inserted while no consumer runs, and running one part alone."""
from __future__ import annotations

import os
import uuid

SENDER = "no-reply@example.com"


def outbox_rows(prefix: str, n: int, subject: str, html: str, priority: int = 0) -> list[dict]:
    """``n`` fresh outbox rows, one recipient each: ``{prefix}{i}@example.com``."""
    from pyramid_examcache.mail.message import make_message_id
    from pyramid_examcache.mail.outbox import new_row, utcnow

    rows = []
    for i in range(n):
        job_id = uuid.uuid4().hex
        rows.append(new_row(job_id, make_message_id(job_id, SENDER), SENDER,
                            [f"{prefix}{i}@example.com"], subject, html, None, {}, utcnow(),
                            priority=priority))
    return rows


def insert_rows(engine, rows: list[dict]) -> None:
    """``rows`` in the outbox, in one transaction (not pushed to the queue)."""
    from pyramid_examcache.mail.outbox import outbox_table

    with engine.begin() as conn:
        conn.execute(outbox_table.insert(), rows)


def run_alone(name: str, run, argv: list[str] | None) -> tuple[dict, str]:
    """``run(env, sink, queue_url)`` in a bench environment of its own (the queue on Redis
    database 2); its result, also written to ``OUT_DIR/{name}.json``, and the path its chart
    goes to, ``OUT_DIR/{name}.png`` (``OUT_DIR``: ``argv[0]``, else ``bench/results``)."""
    import json
    import sys

    from ..env import environment
    from ..smtpsink import Sink

    out_dir = (argv or sys.argv[1:] or ["bench/results"])[0]
    os.makedirs(out_dir, exist_ok=True)
    with environment() as env, Sink() as sink:
        result = run(env, sink, env.queue_url.rsplit("/", 1)[0] + "/2")
    with open(os.path.join(out_dir, f"{name}.json"), "w") as fh:
        json.dump(result, fh, indent=1)
    return result, os.path.join(out_dir, f"{name}.png")
