"""Mail priorities: ``high``, ``normal``, ``low`` and the Huey priorities they map to.

A queued mail carries a priority (``send_queued(priority=...)``, default
``mail.default_priority``), stored in its outbox row as Huey's number (:data:`PRIORITIES`:
10, 0, -10; higher runs first) so that every push of the job -- after the commit, by the
relay, after a retry, a "send now" or a shutdown -- hands it to the queue with the same
priority. A consumer takes the highest priority first: a verification mail queued behind
thousands of bulk mails is the next one delivered (docs/design/mail.md, "Priorities").

Priorities order the *queue*, not the work in hand: a mail already taken by a worker is not
interrupted, and within one priority the order stays first in, first out.
"""
from __future__ import annotations

from typing import Any

from ..settings import MAIL_PRIORITIES

__all__ = ["HIGH", "LOW", "NORMAL", "PRIORITIES", "PERIODIC", "priority_name",
           "priority_value"]

HIGH, NORMAL, LOW = MAIL_PRIORITIES

#: name -> Huey priority (``huey.PriorityRedisHuey``, ``SqliteHuey``: higher first)
PRIORITIES: dict[str, int] = {HIGH: 10, NORMAL: 0, LOW: -10}

#: the relay and purge tasks run before any mail: a backlog never holds up the relay
PERIODIC = 100

_NAMES = {value: name for name, value in PRIORITIES.items()}


def priority_value(priority: Any, default: str = NORMAL) -> int:
    """Huey's number for ``priority`` (``'high'``, ``'normal'``, ``'low'``; ``None``:
    ``default``). Anything else raises :class:`TypeError` (not a string) or
    :class:`ValueError` (another string), naming the argument."""
    if priority is None:
        priority = default
    if not isinstance(priority, str):
        raise TypeError(f"priority must be one of {', '.join(MAIL_PRIORITIES)} (a string), "
                        f"not {type(priority).__name__}")
    try:
        return PRIORITIES[priority]
    except KeyError:
        raise ValueError(f"priority must be one of {', '.join(MAIL_PRIORITIES)}, "
                         f"not {priority!r}") from None


def priority_name(value: int | None) -> str:
    """The name of a stored priority (an unknown or missing number reads as the closest)."""
    if value is None:
        return NORMAL
    if value in _NAMES:
        return _NAMES[value]
    return HIGH if value > 0 else LOW if value < 0 else NORMAL
