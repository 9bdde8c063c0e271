"""``GET /api/jobs/{jobId}``: a queued mail's status (M4), for its owner or an admin.

A job belongs to the account it mails: the demo only ever mails an account's own
address (verification mails, from register and resend), so ownership is recorded by
the recipient address the outbox row already holds -- no column of its own.  A
registration's mail thus belongs to the registered user (who can read it once
verified and logged in), whoever sent the request.  Anybody else -- anonymous, or
another user -- gets the same 404 as for a job that does not exist, so job ids cannot
be probed.  Admins (``is_admin``) see every job.
"""
from __future__ import annotations

from email.utils import getaddresses

from pyramid.httpexceptions import HTTPNotFound
from pyramid.view import view_config
from sqlalchemy import select

from pyramid_examcache.mail.outbox import outbox_table
from pyramid_examcache.mail.status import is_job_id


def job_recipients(request, job_id: str) -> set[str]:
    """The lower-cased addresses a job mails (to, cc and bcc); empty if no such job."""
    recipients = request.dbsession.scalar(
        select(outbox_table.c.recipients).where(outbox_table.c.id == job_id))
    if isinstance(recipients, dict):  # {"to": [...], "cc": [...], "bcc": [...]}
        recipients = [a for kind in ("to", "cc", "bcc") for a in recipients.get(kind) or ()]
    return {address.lower() for _, address in getaddresses(
        [str(r) for r in recipients or ()]) if address}


def may_read(request, job_id: str) -> bool:
    user = request.identity
    if user is None:
        return False
    return bool(user.is_admin) or user.email.lower() in job_recipients(request, job_id)


@view_config(route_name="job", request_method="GET", renderer="json")
def job_status(request):
    job_id = request.matchdict["jobId"]
    status = None
    if is_job_id(job_id) and may_read(request, job_id):
        status = request.mailer.job_status(job_id)
    if status is None:
        raise HTTPNotFound("no such job")
    return status
