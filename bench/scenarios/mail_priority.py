"""Scenario 5, part 4: queue-to-delivery latency of high and low priority under a backlog
(part of ``mail-throughput``; alone: ``python -m bench.scenarios.mail_priority OUT_DIR``).

``BACKLOG`` low-priority mails are written to the outbox in one transaction and pushed as
the after-commit step does (:meth:`MailQueue.push_many`), with no consumer running; then
``examcache-consumer -w 4`` starts on the same Redis queue (``huey.PriorityRedisHuey``).
Once it is delivering, one high- and one low-priority probe are queued every
``INTERVAL`` s (each committed, then pushed, as ``send_queued`` does after the commit).
Latency = the probe's arrival at the SMTP sink - its commit. High probes should arrive
within a delivery or two; low probes wait for the backlog ahead of them (first in, first
out within a priority). Each mail must arrive exactly once.
"""
from __future__ import annotations

import sys
import time
import uuid

from ..charts import pyplot, save
from ..stats import median, percentile
from .mail_parts import insert_rows, outbox_rows, run_alone

BACKLOG = 3000
PROBES = 30
INTERVAL = 0.3


def _rows(prefix: str, n: int, priority: int) -> list[dict]:
    return outbox_rows(prefix, n, "Priority", "<p>p</p>", priority=priority)


def _queue(queue, engine, rows: list[dict]) -> None:
    """Commit ``rows`` in one transaction, then push them (the after-commit step)."""
    insert_rows(engine, rows)
    if len(rows) == 1:
        queue.push(engine, rows[0]["id"])
    else:
        queue.push_many(engine, [r["id"] for r in rows])


def _arrivals(sink, prefix: str) -> dict[str, float]:
    with sink.handler.lock:
        return {rcpt: t for t, rcpt in sink.handler.deliveries if rcpt.startswith(prefix)}


def _wait(sink, prefix: str, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while sink.handler.count(prefix) < n and time.monotonic() < deadline:
        time.sleep(0.02)


def run(env, sink, queue_url: str, workers: int = 4, quick: bool = False) -> dict:
    from sqlalchemy import create_engine

    from pyramid_examcache.mail.priority import PRIORITIES
    from pyramid_examcache.mail.queue import build_queue

    backlog, probes = (200, 5) if quick else (BACKLOG, PROBES)
    sink.handler.close_after_message = False  # (the last throughput mode may have set it)
    tag = uuid.uuid4().hex[:6]
    name = f"bench-prio-{tag}"
    ini = env.write_ini(f"mail-priority-{tag}.ini", **{
        "mail.port": str(sink.port), "mail.queue_url": queue_url, "mail.queue_name": name,
        "mail.workers": str(workers), "mail.relay_interval": "1"})
    queue = build_queue({"mail.queue_url": queue_url, "mail.queue_name": name,
                         "sqlalchemy.url": env.db_url})
    engine = create_engine(env.db_url)
    prefix = f"pr{tag}-"
    started = time.monotonic()
    _queue(queue, engine, _rows(f"{prefix}bulk", backlog, PRIORITIES["low"]))
    queued_s = time.monotonic() - started
    consumer = env.consumer(ini, workers=workers)
    sent: dict[str, float] = {}
    try:
        _wait(sink, f"{prefix}bulk", 1, 120)
        for i in range(probes):
            for kind in ("high", "low"):
                rows = _rows(f"{prefix}{kind}{i}-", 1, PRIORITIES[kind])
                _queue(queue, engine, rows)
                sent[f"{prefix}{kind}{i}-0@example.com"] = time.monotonic()
            time.sleep(INTERVAL)
        _wait(sink, f"{prefix}high", probes, 120)
        left_when_high_done = backlog - sink.handler.count(f"{prefix}bulk")
        _wait(sink, prefix, backlog + 2 * probes, 900)
    finally:
        env.stop(consumer)
        engine.dispose()
        queue.close()
    arrived = _arrivals(sink, prefix)
    assert len(arrived) == backlog + 2 * probes == sink.handler.count(prefix), len(arrived)
    latency = {kind: [arrived[r] - t for r, t in sent.items()
                      if r.startswith(f"{prefix}{kind}")] for kind in ("high", "low")}
    bulk = sorted(t for r, t in arrived.items() if r.startswith(f"{prefix}bulk"))
    out = {"backlog": backlog, "probes": probes, "interval_s": INTERVAL, "workers": workers,
           "queued_backlog_s": round(queued_s, 2),
           "backlog_per_s": round((backlog - 1) / (bulk[-1] - bulk[0]), 1),
           "backlog_left_when_high_done": left_when_high_done,
           "latency_s": {k: sorted(round(v, 4) for v in vs) for k, vs in latency.items()}}
    for kind, values in latency.items():
        out[kind] = {"p50_s": median(values), "p90_s": percentile(values, 90),
                     "max_s": max(values)}
    out["goals"] = {"high priority: every probe delivered within 5 s": out["high"]["max_s"] <= 5}
    return out


def chart(t: dict, path: str) -> str:
    """A histogram of the probes' queue-to-delivery latency, high vs low (log scale)."""
    import numpy as np

    plt = pyplot()

    values = t["latency_s"]
    lo = max(min(min(v) for v in values.values()), 0.01)
    hi = max(max(v) for v in values.values())
    bins = np.geomspace(lo * 0.9, hi * 1.1, 40)
    fig, ax = plt.subplots(figsize=(9, 4), dpi=110)
    for kind, color in (("high", "#d62728"), ("low", "#1f77b4")):
        x = t[kind]
        ax.hist(values[kind], bins=bins, color=color, alpha=0.75,
                label=f"{kind}: p50 {x['p50_s']:.2f} s, p90 {x['p90_s']:.2f} s, "
                      f"max {x['max_s']:.2f} s")
    ax.set_xscale("log")
    ax.set_xlabel("queue-to-delivery latency, s (commit to arrival at the SMTP sink; log scale)")
    ax.set_ylabel("probes")
    ax.set_title(f"{t['probes']} high + {t['probes']} low probes queued every "
                 f"{t['interval_s']} s behind a backlog of {t['backlog']:,} low-priority mails; "
                 f"examcache-consumer -w {t['workers']}", fontsize=9)
    ax.legend(fontsize=8)
    return save(fig, path)


def markdown(t: dict, chart_path: str | None = None) -> list[str]:
    """The report's section (``t``: the ``priority`` entry of the mail-throughput results)."""
    lines = ["### Priorities: queue-to-delivery latency under a backlog", "",
             f"{t['backlog']:,} low-priority mails queued in one transaction (pushed as after a "
             f"commit, in {t['queued_backlog_s']:.1f} s) with no consumer running; then "
             f"`examcache-consumer -w {t['workers']}` on the Redis queue "
             "(`huey.PriorityRedisHuey`), and once it delivers, one `high` and one `low` probe "
             f"every {t['interval_s']} s ({t['probes']} each). Latency: the probe's commit to "
             "its arrival at the SMTP sink. Each mail arrived exactly once.", "",
             "| priority | probes | p50, s | p90, s | max, s |", "|---|---:|---:|---:|---:|"]
    for kind in ("high", "low"):
        x = t[kind]
        lines.append(f"| `{kind}` | {t['probes']} | {x['p50_s']:.2f} | {x['p90_s']:.2f} | "
                     f"{x['max_s']:.2f} |")
    lines += ["", f"The backlog drained at {t['backlog_per_s']:.0f} mails/s; when the last high "
              f"probe arrived, {t['backlog_left_when_high_done']:,} backlog mails were still "
              "waiting: the low probes wait behind them (first in, first out within a priority).",
              ""]
    if chart_path:
        lines += [f"![priorities]({chart_path})", ""]
    lines += [f"- goal {k}: **{'met' if v else 'MISSED'}**" for k, v in t["goals"].items()]
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    """Run this part alone in its own bench environment: ``OUT_DIR/mail-priority.json``, the
    chart ``OUT_DIR/mail-priority.png`` and the Markdown section on stdout."""
    result, path = run_alone("mail-priority", run, argv)
    print("\n".join(markdown(result, chart(result, path))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
