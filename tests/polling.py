"""``wait_until``: poll a condition with a deadline (no sleep as negative proof).

Kept free of the test extras' imports (aiosmtpd, webtest, ...) so that the tracking and
read-lease tests also run on a minimal install (tests/test_minimal_install.py)."""
from __future__ import annotations

import time
from typing import Any, Callable


def wait_until(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05,
               message: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{message} not reached after {timeout}s")
