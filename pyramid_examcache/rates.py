"""Rate specifications: ``14/s``, ``600/m``, ``1000/h``, ``50000/d``, lists of them, and
per-domain lists.

:func:`parse_rates` and :func:`parse_domain_rates` read the ``mail.rate_limit`` and
``mail.domain_rate_limits`` settings (:mod:`pyramid_examcache.settings`); a malformed value
is a :class:`pyramid.exceptions.ConfigurationError` naming the setting and the bad part.
What the limiter does with them: :mod:`pyramid_examcache.mail.ratelimit`.
"""
from __future__ import annotations

import re
from typing import NamedTuple

from pyramid.exceptions import ConfigurationError

#: seconds per unit of a rate's period
UNITS = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0,
         "h": 3600.0, "hour": 3600.0, "d": 86400.0, "day": 86400.0}
_RATE = re.compile(r"(\d+)\s*/\s*([a-z]+)")
_DOMAIN = re.compile(r"(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
                     r"(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*")
RATE_FORMS = "N/s, N/m, N/h or N/d with N a whole number >= 1 (e.g. 14/s, 50000/d)"


class Rate(NamedTuple):
    """At most ``limit`` sends in any window of ``period`` seconds."""
    limit: int
    period: float
    text: str

    def __str__(self) -> str:
        return self.text


def _bad(name: str, value: str, part: str, allowed: str) -> ConfigurationError:
    return ConfigurationError(f"Invalid setting {name} = {value!r}: {part!r} {allowed}")


def parse_rates(name: str, raw: object) -> tuple[Rate, ...]:
    """``"14/s, 50000/d"`` (one or more rates, commas or new lines) -> each limit, shortest
    period first; blank or ``off``: ``()`` (no limit). One rate per period."""
    value = str(raw if raw is not None else "").strip()
    if value.lower() in ("", "off", "none"):
        return ()
    rates: dict[float, Rate] = {}
    for part in filter(None, (p.strip() for p in re.split(r"[,\n]", value))):
        rate = _rate(name, value, part)
        if rate.period in rates:
            raise _bad(name, value, part, f"repeats the period of {rates[rate.period].text}")
        rates[rate.period] = rate
    return tuple(sorted(rates.values(), key=lambda r: r.period))


def _rate(name: str, whole: str, part: str) -> Rate:
    match = _RATE.fullmatch(part.strip().lower())
    if match is None:
        raise _bad(name, whole, part.strip(), f"is not a rate: use {RATE_FORMS}")
    count, unit = int(match.group(1)), match.group(2)
    if unit not in UNITS and unit.rstrip("s") not in UNITS:
        raise _bad(name, whole, unit, "is not a period: use s, m, h or d")
    if count < 1:
        raise _bad(name, whole, part.strip(), "allows nothing: the count must be >= 1 "
                   "(leave the setting unset for no limit)")
    period = UNITS.get(unit) or UNITS[unit.rstrip("s")]
    return Rate(count, period, f"{count}/{unit}")


def parse_domain_rates(name: str, raw: object) -> dict[str, Rate]:
    """``"gmail.com=20/s, example.org=5/m"`` (commas or new lines) -> ``{domain: Rate}``;
    domains are lower-cased (IDNA A-labels for non-ASCII ones), each named once."""
    value = str(raw if raw is not None else "").strip()
    rates: dict[str, Rate] = {}
    for item in filter(None, (p.strip() for p in re.split(r"[,\n]", value))):
        domain, sep, rate = item.partition("=")
        domain = domain.strip().lower().rstrip(".")
        if not sep:
            raise _bad(name, value, item, "must be domain=rate, e.g. gmail.com=20/s")
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            raise _bad(name, value, domain, "is not a domain name") from None
        if not _DOMAIN.fullmatch(domain):
            raise _bad(name, value, domain, "is not a domain name")
        if domain in rates:
            raise _bad(name, value, domain, "is named twice")
        rates[domain] = _rate(name, value, rate)
    return rates
