"""Scenarios 4 and 5: the mailer.

4 (enqueue): registration latency with an SMTP server that takes 5 s per
message -- ours (``POST /api/auth/register``: outbox row + push to Huey after
the commit; the consumer runs meanwhile and delivers to the slow server) vs a
peer route that sends synchronously with smtplib inside the request.  Then,
consumer stopped, ``CONFIG RESETSTAT`` on the private Redis, N registrations,
``INFO commandstats``: Redis round trips per registration.

5 (throughput): 200 registrations queue 200 mails while no consumer runs; then
``examcache-consumer -w 4`` starts and we time the deliveries at aiosmtpd from
the first to the 200th (and from the consumer's start), and count the SMTP
connections at the sink.  Modes: ``reuse`` (each worker keeps its connection,
``mail.smtp_max_messages_per_connection = 100``), ``reconnect`` (``= 1``: a new
connection per mail) and ``server-closes`` (reuse on, but the sink hangs up
after every message: the client notices at ``MAIL FROM`` and sends again on a
new connection).  Each mail must arrive exactly once.  Then the rate limiter's accuracy on
the same sink (:mod:`.mail_ratelimit`), and the latency of high and low priority mails under
a backlog (:mod:`.mail_priority`).
"""
from __future__ import annotations

import threading
import time
import uuid

from ..smtpsink import Sink
from . import mail_priority, mail_ratelimit
from ..stats import median, percentile

SMTP_DELAY = 5.0
PASSWORD = "correct horse battery"


def _register(client, path: str, email: str) -> float:
    started = time.perf_counter()
    status, _, body = client.request("POST", path, {"email": email, "password": PASSWORD,
                                                    "name": "Bench User"})
    elapsed = (time.perf_counter() - started) * 1000
    assert status == 201, (path, status, body[:300])
    return elapsed


def _summary(samples: list[float]) -> dict:
    return {"n": len(samples), "p50_ms": median(samples), "p99_ms": percentile(samples, 99),
            "max_ms": max(samples) if samples else None}


def run_enqueue(env, quick: bool = False, rounds: int = 3, queued_per_round: int = 10,
                sync_per_round: int = 2, rt_samples: int = 20) -> dict:
    if quick:
        rounds, queued_per_round, sync_per_round, rt_samples = 1, 3, 1, 3
    delay = 1.0 if quick else SMTP_DELAY
    with Sink() as sink:
        sink.handler.delay = delay
        ini = env.write_ini("mail-enqueue.ini", **{"mail.port": str(sink.port),
                                                   "mail.queue_url": env.queue_url})
        ours = env.serve("ours", ini=ini, name="ours-mail")
        peers = env.serve("peers", ini=ini, name="peers-mail")
        consumer = env.consumer(ini, workers=4)
        queued, sync = [], []
        try:
            oc, pc = ours.client(), peers.client()
            _register(oc, "/api/auth/register", f"warm-{uuid.uuid4().hex[:8]}@example.com")
            for _ in range(rounds):
                for _ in range(queued_per_round):
                    queued.append(_register(oc, "/api/auth/register",
                                            f"enq-{uuid.uuid4().hex[:12]}@example.com"))
                for _ in range(sync_per_round):
                    sync.append(_register(pc, "/sync/register",
                                          f"sync-{uuid.uuid4().hex[:12]}@example.com"))
            env.stop(consumer)
            r = env.redis()
            r.config_resetstat()
            for _ in range(rt_samples):
                _register(oc, "/api/auth/register", f"rt-{uuid.uuid4().hex[:12]}@example.com")
            stats = r.info("commandstats")
            oc.close()
            pc.close()
        finally:
            env.stop(consumer)
            ours.stop()
            peers.stop()
        delivered = sink.handler.count("enq-")
    calls = {k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items()}
    calls.pop("config|resetstat", None)
    calls.pop("info", None)
    total = sum(calls.values())
    out = {"smtp_delay_s": delay, "argon2": "time_cost=1, memory_cost=1 MiB, parallelism=1",
           "queued": _summary(queued), "sync": _summary(sync),
           "queued_samples_ms": queued, "sync_samples_ms": sync,
           "delivered_during_run": delivered,
           "round_trips": {"registrations": rt_samples, "commands": calls,
                           "per_registration": total / rt_samples}}
    out["speedup_p50"] = (out["sync"]["p50_ms"] / out["queued"]["p50_ms"]
                          if queued and sync else None)
    out["goals"] = {"ours: p50 < 20 ms": out["queued"]["p50_ms"] < 20}
    return out


#: name -> (mail.smtp_max_messages_per_connection, the sink closes after each message)
THROUGHPUT_MODES = {"reuse": ("100", False), "reconnect": ("1", False),
                    "server-closes": ("100", True)}


def run_throughput(env, quick: bool = False, rounds: int = 3, mails: int = 200,
                   workers: int = 4) -> dict:
    if quick:
        rounds, mails = 1, 20
    results: dict[str, list] = {name: [] for name in THROUGHPUT_MODES}
    with Sink() as sink:
        connections = _count_connections(sink.handler)
        queue_url = env.queue_url.rsplit("/", 1)[0] + "/2"  # its own queue, apart from scenario 4
        inis = {name: env.write_ini(f"mail-throughput-{name}.ini", **{
            "mail.port": str(sink.port), "mail.queue_url": queue_url,
            "mail.workers": str(workers), "mail.smtp_max_messages_per_connection": cap,
            # the demo's sign-up throttle and hashing slots would refuse the 8 filling threads
            "demo.signup_limit": "1000000", "demo.hash_slots": "8", "demo.hash_wait": "30"})
            for name, (cap, _) in THROUGHPUT_MODES.items()}
        web = env.serve("ours", ini=inis["reuse"], name="ours-mailtp")
        try:
            for rnd in range(rounds):
                for name, (_, close) in THROUGHPUT_MODES.items():
                    sink.handler.close_after_message = close
                    run = _throughput_run(env, sink, web, inis[name], f"tp{rnd}{name}-", mails,
                                          workers, connections)
                    results[name].append(run)
        finally:
            web.stop()
        # the rate limiter's accuracy, on the same sink (its own queue names)
        rate_limit = mail_ratelimit.run(env, sink, queue_url, rounds=min(rounds, 2),
                                        workers=workers, quick=quick)
        # queue-to-delivery latency of high and low priority under a backlog
        priority = mail_priority.run(env, sink, queue_url, workers=workers, quick=quick)
    out = {"mails": mails, "workers": workers, "rounds": rounds, "modes": {},
           "rate_limit": rate_limit, "priority": priority}
    for name, res in results.items():
        out["modes"][name] = {"runs": res, "per_s": median([x["per_s"] for x in res]),
                              "from_start_s": median([x["from_start_s"] for x in res]),
                              "connections": median([x["connections"] for x in res])}
    a, b = out["modes"]["reuse"]["per_s"], out["modes"]["reconnect"]["per_s"]
    out["reuse_speedup"] = a / b if a and b else None
    out["goals"] = {"reuse >= 3x a connection per mail": bool(out["reuse_speedup"]
                                                              and out["reuse_speedup"] >= 3)}
    return out


def _throughput_run(env, sink, web, ini: str, prefix: str, mails: int, workers: int,
                    connections) -> dict:
    """Queue ``mails`` with no consumer running, then time a consumer delivering them."""
    _fill(web, prefix, mails)
    opened = connections()
    started = time.monotonic()
    consumer = env.consumer(ini, workers=workers)
    try:
        deadline = started + 300
        while sink.handler.count(prefix) < mails and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        env.stop(consumer)
    times = sink.handler.times(prefix)
    assert len(times) == mails, (prefix, len(times))  # each mail exactly once
    span = times[mails - 1] - times[0]
    return {"mails": mails, "first_to_last_s": round(span, 3),
            "per_s": (mails - 1) / span if span else None,
            "from_start_s": round(times[mails - 1] - started, 3),
            "connections": connections() - opened}


def _count_connections(handler):
    """Count SMTP sessions at the sink (one EHLO each: no STARTTLS here); returns a reader."""
    inner = handler.handle_EHLO
    opened = [0]

    async def handle_EHLO(server, session, envelope, hostname, responses):
        with handler.lock:
            opened[0] += 1
        return await inner(server, session, envelope, hostname, responses)

    handler.handle_EHLO = handle_EHLO  # looked up per connection by aiosmtpd

    def read() -> int:
        with handler.lock:
            return opened[0]
    return read


def _fill(server, prefix: str, n: int, threads: int = 8) -> None:
    emails = [f"{prefix}{i}-{uuid.uuid4().hex[:8]}@example.com" for i in range(n)]
    chunks = [emails[i::threads] for i in range(threads)]
    errors: list = []

    def work(chunk):
        client = server.client()
        try:
            for email in chunk:
                _register(client, "/api/auth/register", email)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            client.close()

    ts = [threading.Thread(target=work, args=(c,)) for c in chunks]
    for t in ts:
        t.start()
    for t in ts:
        t.join(300)
    if errors:
        raise errors[0]
