"""The outbox row's state machine (PostgreSQL) and the Alembic helpers."""
from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.operations import Operations

from pyramid_examcache.mail import outbox
from pyramid_examcache.mail.outbox import (ACTIVE, COMPLETED, DELAYED, FAILED, WAITING, TABLE_NAME,
                                           create_outbox, drop_outbox, metadata, utcnow)
from pyramid_examcache.mail.status import job_status, purge_finished

from .helpers import insert_job, load

S = dt.timedelta(seconds=1)


def test_claim_starts_one_attempt_only(db):
    job = insert_job(db)
    now = utcnow()
    with db.begin() as conn:
        row = outbox.claim(conn, job, 60, now)
        assert row.state == ACTIVE and row.attempts == 1 and row.progress == 10
        assert outbox.claim(conn, job, 60, now) is None  # a duplicate queue entry: no-op
    assert outbox.claim(db.connect(), "unknown", 60, now) is None


def test_expired_lease_can_be_claimed_again_and_fences_the_old_attempt(db):
    job = insert_job(db)
    t0 = utcnow()
    with db.begin() as conn:
        outbox.claim(conn, job, 5, t0)
        assert outbox.claim(conn, job, 5, t0 + 4 * S) is None
        second = outbox.claim(conn, job, 5, t0 + 6 * S)
        assert second.attempts == 2
        assert not outbox.mark_completed(conn, job, 1, t0 + 7 * S)  # the stale attempt
        assert outbox.mark_completed(conn, job, 2, t0 + 7 * S)
    assert load(db, job).state == COMPLETED


def test_delayed_row_is_claimable_when_due(db):
    job = insert_job(db)
    t0 = utcnow()
    with db.begin() as conn:
        outbox.claim(conn, job, 60, t0)
        outbox.mark_delayed(conn, job, 1, "451 later", t0 + 10 * S, t0)
        assert outbox.claim(conn, job, 60, t0 + 5 * S) is None
        assert outbox.claim(conn, job, 60, t0 + 9.5 * S).attempts == 2  # within the slack
    assert load(db, job).failed_reason == "451 later"


def test_status_dict_through_all_states(db):
    job = insert_job(db)
    t0 = utcnow()
    with db.connect() as conn:
        assert job_status(conn, job) == {"id": job, "state": WAITING, "progress": 0,
                                         "attempts": 0, "failedReason": None,
                                         "nextAttemptAt": None, "failedRecipients": None,
                                         "priority": "normal"}
    with db.begin() as conn:
        outbox.claim(conn, job, 60, t0)
        outbox.mark_delayed(conn, job, 1, "421 busy", t0, t0)
        delayed = job_status(conn, job)
        assert (delayed["state"], delayed["failedReason"]) == (DELAYED, "421 busy")
        assert dt.datetime.fromisoformat(delayed["nextAttemptAt"]) == t0
        outbox.claim(conn, job, 60, t0)
        outbox.mark_failed(conn, job, 2, "550 no", t0)
        assert job_status(conn, job) == {"id": job, "state": FAILED, "progress": 100,
                                         "attempts": 2, "failedReason": "550 no",
                                         "nextAttemptAt": None, "failedRecipients": None,
                                         "priority": "normal"}
        assert job_status(conn, "missing") is None
        assert job_status(conn, "") is None
        assert job_status(conn, "\x00") is None  # PostgreSQL refuses NUL: not an error, unknown
        assert job_status(conn, "x" * 65) is None


def test_release_returns_an_active_row_to_the_relay(db):
    job = insert_job(db, enqueued_at=utcnow())
    with db.begin() as conn:
        outbox.claim(conn, job, 60, utcnow())
        assert outbox.release(conn, job, utcnow())
        assert not outbox.release(conn, job, utcnow())
    row = load(db, job)
    assert row.state == WAITING and row.enqueued_at is None and row.lease_until is None


def test_purge_keeps_what_is_young_and_failed_longer(db):
    now = utcnow()
    old_done = insert_job(db, state=COMPLETED, finished_at=now - 100 * S)
    young_done = insert_job(db, state=COMPLETED, finished_at=now - 5 * S)
    old_failed = insert_job(db, state=FAILED, finished_at=now - 100 * S)
    very_old_failed = insert_job(db, state=FAILED, finished_at=now - 1000 * S)
    waiting = insert_job(db)
    with db.begin() as conn:
        assert purge_finished(conn, 10, 500, now) == 2
    remaining = {j for j in (old_done, young_done, old_failed, very_old_failed, waiting)
                 if load(db, j) is not None}
    assert remaining == {young_done, old_failed, waiting}


def test_alembic_helpers_create_the_same_table(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'm.sqlite'}")
    with engine.begin() as conn:
        create_outbox(Operations(MigrationContext.configure(conn)))
    inspector = sa.inspect(engine)
    assert {c["name"] for c in inspector.get_columns(TABLE_NAME)} == set(
        metadata.tables[TABLE_NAME].c.keys())
    assert {i["name"] for i in inspector.get_indexes(TABLE_NAME)} == {
        i.name for i in metadata.tables[TABLE_NAME].indexes}
    with engine.begin() as conn:  # and it works as an outbox on SQLite too
        conn.execute(outbox.outbox_table.insert().values(**outbox.new_row(
            "j1", "<j1@x>", "a@x.org", ["b@x.org"], "s", "h", None, {}, utcnow())))
        assert outbox.claim(conn, "j1", 60, utcnow()).attempts == 1
    with engine.begin() as conn:
        drop_outbox(Operations(MigrationContext.configure(conn)))
    assert TABLE_NAME not in sa.inspect(engine).get_table_names()


def test_add_new_columns_upgrades_an_old_table_and_is_idempotent():
    """The Alembic helper for the columns added with two-phase retries and failedRecipients."""
    import sqlalchemy as sa
    from alembic.migration import MigrationContext
    from alembic.operations import Operations

    engine = sa.create_engine("sqlite://")
    new = {"failed_recipients", "retried_at"}
    with engine.begin() as conn:
        old = sa.MetaData()
        sa.Table(outbox.TABLE_NAME, old, *[c for c in outbox._columns() if c.name not in new])
        old.create_all(conn)
        op = Operations(MigrationContext.configure(conn))
        outbox.add_new_columns(op)
        outbox.add_new_columns(op)  # a database made by create_outbox already has them
        names = {c["name"] for c in sa.inspect(conn).get_columns(outbox.TABLE_NAME)}
        assert new <= names
        outbox.drop_new_columns(op)
        names = {c["name"] for c in sa.inspect(conn).get_columns(outbox.TABLE_NAME)}
        assert not new & names
