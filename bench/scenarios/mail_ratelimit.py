"""Scenario 5, part 3: the accuracy of ``mail.rate_limit`` (part of ``mail-throughput``).

For each configured rate, ``N`` mails are written to the outbox while no consumer runs (rows
inserted directly, as ``send_queued`` writes them), then TWO ``examcache-consumer -w 4``
processes start on the same queue and share the limit through its Redis. At the SMTP sink:

* **max in any window**: the most arrivals in one window of the period, over every window
  anchored at an arrival (a window holding the most can always be slid to start at one);
  the guarantee is that it never exceeds the limit;
* **achieved rate**: ``mails / (last - first + period)`` -- what a perfect limiter filling
  every window to the limit would show as exactly the configured rate (N arrivals in each
  of the ``mails / N`` windows);
* the time from the consumers' start to the last arrival.
"""
from __future__ import annotations

import sys
import time
import uuid

from ..charts import pyplot, save
from ..stats import median, most_in_any_window
from .mail_parts import insert_rows, outbox_rows, run_alone

#: (mail.rate_limit, mails queued): about four periods' worth each
RATES = (("10/s", 40), ("25/s", 100), ("50/s", 200))
CONSUMERS = 2


def _queue(db_url: str, prefix: str, n: int) -> None:
    from sqlalchemy import create_engine

    engine = create_engine(db_url)
    insert_rows(engine, outbox_rows(prefix, n, "Rate", "<p>rate</p>"))
    engine.dispose()


def _one(env, sink, queue_url: str, rate: str, mails: int, workers: int, tag: str) -> dict:
    from pyramid_examcache.rates import parse_rates

    (spec,) = parse_rates("mail.rate_limit", rate)
    ini = env.write_ini(f"mail-ratelimit-{tag}.ini", **{
        "mail.port": str(sink.port), "mail.queue_url": queue_url, "mail.workers": str(workers),
        "mail.rate_limit": rate, "mail.queue_name": f"bench-rl-{tag}", "mail.relay_interval": "1"})
    prefix = f"rl{tag}-"
    _queue(env.db_url, prefix, mails)
    started = time.monotonic()
    consumers = [env.consumer(ini, workers=workers) for _ in range(CONSUMERS)]
    try:
        deadline = started + 120
        while sink.handler.count(prefix) < mails and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        for consumer in consumers:
            env.stop(consumer)
    times = sink.handler.times(prefix)
    assert len(times) == mails, (prefix, len(times))  # each mail exactly once
    span = times[-1] - times[0]
    achieved = mails / (span + spec.period) * spec.period  # per period
    return {"rate": rate, "limit": spec.limit, "period_s": spec.period, "mails": mails,
            "arrivals": [round(t - times[0], 4) for t in times],
            "max_in_window": most_in_any_window(times, spec.period),
            "achieved_per_period": round(achieved, 2),
            "achieved_ratio": round(achieved / spec.limit, 3),
            "first_to_last_s": round(span, 3), "from_start_s": round(times[-1] - started, 3)}


def run(env, sink, queue_url: str, rounds: int = 2, workers: int = 4,
        quick: bool = False) -> dict:
    """Every rate of :data:`RATES`, ``rounds`` times (alternating); medians per rate."""
    rates = RATES[:1] if quick else RATES
    runs: dict[str, list] = {rate: [] for rate, _ in rates}
    for rnd in range(1 if quick else rounds):
        for i, (rate, mails) in enumerate(rates):
            runs[rate].append(_one(env, sink, queue_url, rate, mails if not quick else 20,
                                   workers, f"{rnd}{i}{uuid.uuid4().hex[:4]}"))
    out: dict = {"consumers": CONSUMERS, "workers": workers, "rates": {}}
    for rate, res in runs.items():
        out["rates"][rate] = {
            "runs": res, "limit": res[0]["limit"], "mails": res[0]["mails"],
            "max_in_window": max(x["max_in_window"] for x in res),
            "achieved_ratio": median([x["achieved_ratio"] for x in res]),
            "achieved_per_period": median([x["achieved_per_period"] for x in res]),
            "from_start_s": median([x["from_start_s"] for x in res])}
    out["goals"] = {"never more than the limit in any window": all(
        x["max_in_window"] <= x["limit"] for x in out["rates"].values())}
    return out


def markdown(t: dict) -> list[str]:
    """The report's table (``t``: the ``rate_limit`` entry of the mail-throughput results)."""
    lines = ["### The rate limiter's accuracy (`mail.rate_limit`)", "",
             f"{t['consumers']} consumers × {t['workers']} workers sharing one limit through the "
             "queue's Redis; the mails are queued before the consumers start. *Max in any "
             "window*: the most arrivals at the sink in one window of the period, over every "
             "window anchored at an arrival (the guarantee: ≤ the limit). *Achieved*: mails ÷ "
             "(last − first arrival + one period), per period: a limiter filling every window "
             "to the limit shows exactly the configured rate.", "",
             "| `mail.rate_limit` | mails | max in any window | achieved per period | "
             "achieved ÷ configured | consumer start→last, s | per round (achieved ÷ conf.) |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for rate, x in t["rates"].items():
        per_round = ", ".join(f"{r['achieved_ratio']:.2f}" for r in x["runs"])
        lines.append(f"| `{rate}` | {x['mails']} | {x['max_in_window']} (limit {x['limit']}) | "
                     f"{x['achieved_per_period']:.1f} | {x['achieved_ratio']:.2f} | "
                     f"{x['from_start_s']:.2f} | {per_round} |")
    lines += [""] + [f"- goal {k}: **{'met' if v else 'MISSED'}**"
                     for k, v in t.get("goals", {}).items()] + [""]
    return lines


def chart(t: dict, path: str) -> str:
    """Arrivals in the trailing window of one period, ÷ the limit, over time (first round of
    each rate): the guarantee is that the line never rises above 1."""
    fig, ax = pyplot().subplots(figsize=(8, 3.6))
    for rate, x in t["rates"].items():
        run = x["runs"][0]
        times, period = run["arrivals"], run["period_s"]
        load = [sum(1 for u in times[:i + 1] if u > a - period) / x["limit"]
                for i, a in enumerate(times)]
        ax.step(times, load, where="post", label=f"mail.rate_limit = {rate}")
    ax.axhline(1.0, color="black", linestyle="--", linewidth=1, label="the limit")
    ax.set_xlabel("seconds since the first arrival")
    ax.set_ylabel("arrivals in the last period ÷ limit")
    ax.set_ylim(0, 1.2)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Rate limiter: arrivals at the SMTP sink in the trailing window")
    return save(fig, path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    """Run this part alone in its own bench environment: ``OUT_DIR/mail-ratelimit.json``, the
    chart ``OUT_DIR/mail-ratelimit.png`` and the Markdown section on stdout."""
    result, path = run_alone("mail-ratelimit", run, argv)
    chart(result, path)
    print("\n".join(markdown(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
