"""What the stateful property tests share: the keys and their tags, what a committed write
invalidates, and the derandomized Hypothesis settings of the tracked-path machines."""
from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

#: key -> the tags its value is stored under ("c" has none)
KEYS = {"a": ("g1",), "b": ("g1", "g2"), "c": ()}
#: what a committed write of a key invalidates: the key, one of its tags, or both
MODE = st.sampled_from(["key", "tag", "both"])


def targets(key: str, mode: str) -> tuple[list[str], list[str]]:
    """``(keys, tags)`` a committed write of ``key`` invalidates in ``mode`` (a key without
    tags: the key)."""
    tags = KEYS[key]
    if mode == "key" or not tags:
        return [key], []
    if mode == "tag":
        return [], [tags[-1]]
    return [key], list(tags)


def derandomized(examples_env: str, examples: int, steps: int) -> settings:
    """The same interleavings every run: a stable run time in CI (set
    ``EXAMCACHE_TRACKING_RANDOM=1`` to explore new ones; ``examples_env`` sets how many)."""
    return settings(
        max_examples=int(os.environ.get(examples_env, str(examples))),
        stateful_step_count=steps,
        deadline=None,
        database=None,
        derandomize=not os.environ.get("EXAMCACHE_TRACKING_RANDOM"),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


def play(machine, steps, invariants) -> None:
    """Run a scripted interleaving through a machine: each ``(rule, kwargs)`` step, then
    every invariant; the machine is torn down whatever happens."""
    try:
        for rule_name, kwargs in steps:
            getattr(machine, rule_name)(**kwargs)
            for check in invariants:
                getattr(machine, check)()
    finally:
        machine.teardown()


def assert_saw(seen, events, label: str = "") -> None:
    """The script reached the interleavings it is there for (``events``: at least how many
    of each)."""
    short = {event: seen[event] for event in events if seen[event] < events[event]}
    assert not short, f"{label}expected at least {events}, saw {dict(seen)}"
