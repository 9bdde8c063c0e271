"""The Markdown report and the throughput chart."""
from __future__ import annotations

import datetime as dt
import os
import platform
import re
import subprocess
import sys
from importlib import metadata

from .charts import pyplot, save
from .stats import sum_counts

PACKAGES = ("pyramid", "pyramid_tm", "waitress", "SQLAlchemy", "psycopg", "redis", "hiredis",
            "huey", "aiosmtpd", "dogpile.cache", "webob")


ORDER = ("ours", "ours-tracking", "ours-tracking-2p", "ours-lease", "ours-lease-2p",
         "ours-early", "seed", "dogpile", "dogpile-dlock", "raw", "fixed", "orm", "bare")


def _ordered(targets: dict) -> list:
    """Targets in a fixed order (results.json sorts its keys)."""
    return sorted(targets.items(), key=lambda kv: ORDER.index(kv[0]) if kv[0] in ORDER else 99)


def machine(env) -> dict:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    with env.pg() as conn:
        pg = conn.execute("SHOW server_version").fetchone()[0]
    # EXAMCACHE_BENCH_COMMIT: the commit a copy of the tree was exported from (`git archive`)
    commit = os.environ.get("EXAMCACHE_BENCH_COMMIT")
    try:
        commit = commit or subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
            cwd=os.path.dirname(os.path.dirname(__file__))).stdout.strip() or "?"
    except OSError:
        commit = "?"
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    return {"uname": " ".join(platform.uname()), "cpu": cpu, "cores": os.cpu_count(),
            "python": sys.version.split()[0], "redis": env.redis().info("server")["redis_version"],
            "postgresql": pg, "wrk": (wrk.stdout + wrk.stderr).split("\n")[0].strip(),
            "packages": versions, "commit": commit,
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def _f(value, digits: int = 1, suffix: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        return f"{value:,.{digits}f}{suffix}"
    return f"{value}{suffix}"


def _goals(goals: dict) -> list[str]:
    return [f"- goal {name}: **{'met' if ok else 'MISSED'}**" for name, ok in goals.items()]


def chart(result: dict, path: str) -> str:
    names = [name for name, _ in _ordered(result["targets"])]
    rps = [result["targets"][n]["rps"] for n in names]
    runs = [[x["rps"] for x in result["targets"][n]["runs"]] for n in names]
    palette = {"ours": "#1f77b4", "ours-tracking": "#ff7f0e", "ours-lease": "#2ca02c",
               "ours-early": "#d62728"}
    colors = [palette.get(n, "#999999") for n in names]
    fig, ax = pyplot().subplots(figsize=(9, 4.2), dpi=110)
    bars = ax.bar(names, rps, color=colors)
    for i, values in enumerate(runs):
        ax.scatter([i] * len(values), values, color="black", s=8, zorder=3)
    for bar, n, values in zip(bars, names, runs):
        t = result["targets"][n]
        ax.annotate(f"{t['rps']:,.0f}/s\np50 {t['p50_ms']:.1f} ms",
                    (bar.get_x() + bar.get_width() / 2, max(values)), xytext=(0, 4),
                    textcoords="offset points", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("requests/s (median of rounds; dots = rounds)")
    ax.tick_params(axis="x", labelsize=8)
    ax.set_title(f"GET exam 1's questions ({result['body_bytes']:,} B JSON): wrk "
                 f"{result['connections']} connections, waitress {result['server_threads']} threads",
                 fontsize=9)
    ax.set_ylim(0, max(max(v) for v in runs) * 1.25)
    return save(fig, path)


def markdown(results: dict, chart_path: str | None, report_dir: str) -> str:
    m = results["machine"]
    s = results["scenarios"]
    lines = ["# pyramid_examcache benchmarks", ""]
    if results.get("quick"):
        lines += ["> **--quick run**: tiny sizes for a smoke test; these are not results.", ""]
    lines += [f"Produced by `{results['command']}` on {m['date']} (commit {m['commit']}), "
              f"in {results['elapsed_s']:.0f} s. Raw numbers: `results.json` beside the chart.", "",
              "| machine | |", "|---|---|",
              f"| uname | `{m['uname']}` |", f"| CPU | {m['cpu']}, {m['cores']} cores |",
              f"| Python | {m['python']} |", f"| Redis | {m['redis']} (a private redis-server) |",
              f"| PostgreSQL | {m['postgresql']} (a private database, dropped afterwards) |",
              f"| wrk | {m['wrk']} |",
              "| packages | " + ", ".join(f"{k} {v}" for k, v in m["packages"].items()) + " |", "",
              "Every server is waitress in its own process with the same thread count; ours is the "
              "demo (`demo_app:main`, PostgreSQL + Redis), the peers are one Pyramid app "
              "(`bench/peers/app.py`) built on the demo's own configuration (same tweens, "
              "pyramid_tm, renderer, data), one route per peer. Medians of the rounds; the rounds "
              "alternate between targets.", ""]
    if "throughput" in s:
        t = s["throughput"]
        by = t.get("ratios_by") or {"ours": t["ratios"]}
        cpu_by = t.get("cpu_ratios_by") or {"ours": t.get("cpu_ratios") or {}}
        ours = [o for o in ("ours", "ours-tracking", "ours-lease", "ours-early") if o in by]
        lines += ["## 1. Cached view throughput and latency", "",
                  f"wrk `-t{t['wrk_threads']} -c{t['connections']} -d{t['seconds']:g}s --latency`, "
                  f"{t['rounds']} alternating rounds, waitress {t['server_threads']} threads; body "
                  f"{t['body_bytes']:,} bytes, byte-identical for every target: "
                  f"{_f(all(t['same_body'].values()))}.", "",
                  "| target | req/s | p50 ms | p99 ms | " + " | ".join(
                      f"{o} ÷ target (req/s)" for o in ours) + " | server CPU µs/req | "
                  + " | ".join(f"target ÷ {o} (CPU/req)" for o in ours)
                  + " | Redis CPU µs/req | Redis commands/req | req/s per round | other CPU s "
                  "per round | errors |",
                  "|---|---:|---:|---:|" + "---:|" * len(ours) + "---:|" + "---:|" * len(ours)
                  + "---:|---:|---|---|---:|"]
        for name, x in _ordered(t["targets"]):
            cells = [f"**{name}**: {x['label']}", _f(x["rps"], 0), _f(x["p50_ms"], 2),
                     _f(x["p99_ms"], 2)]
            cells += ["–" if name == o else _f(by[o].get(name), 2, "×") for o in ours]
            cells.append(_f(x.get("server_cpu_us"), 0))
            cells += ["–" if name == o else _f(cpu_by[o].get(name), 2, "×") for o in ours]
            cells += [_f(x.get("redis_cpu_us"), 0), _f(x.get("redis_calls_per_req"), 2),
                      _join(x["runs"], "rps", "{:,.0f}"),
                      ", ".join(str(v) for v in x.get("other_cpu_s", [])), str(x["errors"])]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", "Server CPU µs/req: user+system CPU of the target's waitress process during "
                  "the run ÷ requests served (the process is GIL-bound at ~1.1 cores, so this is "
                  "what sets req/s, and it is much less sensitive to other work on the machine). "
                  "Other CPU: CPU seconds used during the run by anything but the target, Redis "
                  "and wrk (noise); each run waits for the machine to be nearly idle first."]
        lines += [""] + _goals(t["goals"]) + [""]
        per_round = t.get("ratios_per_round") or {}
        if per_round:
            lines += ["Ratios per round (round *i* of each target ran within one cycle of the "
                      "others): " + "; ".join(
                          f"{o} ÷ {peer}: " + ", ".join(_f(v, 2) for v in per_round[o][peer])
                          for o in ours for peer in ("bare", "fixed", "raw", "seed", "dogpile")
                          if peer in per_round.get(o, {})) + ".", ""]
        calls = [(name, x) for name, x in _ordered(t["targets"]) if x.get("redis_calls")]
        if calls:
            lines += ["Redis commands per target, all rounds (`CONFIG RESETSTAT` before each "
                      "run, `INFO commandstats` after it; per request): " + "; ".join(
                          f"**{name}** " + ", ".join(
                              f"{k} {v / x['requests']:.3g}" for k, v in
                              sorted(x["redis_calls"].items(), key=lambda kv: -kv[1]))
                          for name, x in calls) + ".", ""]
        cs = t.get("redis_commandstats") or {}
        if cs:
            lines += ["Redis server time per command during these runs (`INFO commandstats`): "
                      + ", ".join(f"{k} {v['usec_per_call']:.1f} µs ({v['calls']:,} calls)"
                                  for k, v in sorted(cs.items())) + ". Ours is "
                      "one pipelined `HMGET v s t g` + a `GET` per tag version per hit (the "
                      "value's bytes come from the process's near cache once validated; "
                      "`HMGET v d s t g` when the process has no copy); ours-tracking serves a "
                      "held value after the shared barrier (one `PING` on the tracking "
                      "connection for every request in flight when it was sent) with no "
                      "command of its own; ours-lease and ours-early serve it with no "
                      "barrier and no command (read leases: the lease keeper's few commands "
                      "per 250 ms are all); the seed, raw and dogpile peers one `GET` of the "
                      "value.", ""]
        if chart_path:
            rel = os.path.relpath(chart_path, report_dir)
            lines += [f"![throughput]({rel})", ""]
        lines += _bare_section(t, ours)
    if "stampede" in s:
        t = s["stampede"]
        lines += ["## 2. Stampede: database loads for 50 concurrent cold requests", "",
                  f"Counted: {t['count']}. The key is deleted before each run; the "
                  f"{t['requests']} clients connect first and send at once (a barrier), spread "
                  f"round-robin over the processes. {t['rounds']} runs each.", "",
                  "| target | 1 process: loads (median) | runs | 4 processes: loads (median) | runs |",
                  "|---|---:|---|---:|---|"]
        for name, x in _ordered(t["targets"]):
            lines.append(f"| **{name}**: {x['label']} | {_f(x['1p']['median'])} | "
                         f"{x['1p']['loads']} | {_f(x['4p']['median'])} | {x['4p']['loads']} |")
        lines += [""] + _goals(t["goals"]) + [""]
    if "consistency" in s:
        t = s["consistency"]
        lines += ["## 3. Consistency: stale reads, 1 writer and "
                  f"{t['readers']} readers, {t['writes']} writes", "",
                  "A read is stale when it returns a version older than one whose PUT response "
                  "had already returned when the read was sent.", "",
                  "| target | stale reads (median) | reads (median) | stale / reads, all runs | "
                  "fresh after the writer stopped | per run (stale/reads) |",
                  "|---|---:|---:|---:|---|---|"]
        for name, x in _ordered(t["targets"]):
            share = x["stale_total"] / x["reads_total"] if x["reads_total"] else 0
            lines.append(f"| **{name}** | {_f(x['stale_median'])} | {_f(x['reads_median'])} | "
                         f"{x['stale_total']} / {x['reads_total']} ({share:.1%}) | "
                         f"{_f(x['fresh_after_all'])} | "
                         f"{_join(x['runs'], None, None)} |")
        lines += [""] + _goals(t["goals"]) + [""]
    if "mail-enqueue" in s:
        t = s["mail-enqueue"]
        rt = t["round_trips"]
        lines += ["## 4. Mail enqueue: registration latency with a slow SMTP server", "",
                  f"aiosmtpd takes {t['smtp_delay_s']:g} s per message; argon2 lowered "
                  f"({t['argon2']}) so the hash does not hide what we measure. Ours: "
                  "`POST /api/auth/register` (outbox row in the same transaction, pushed to Huey "
                  "after the commit; `examcache-consumer -w 4` runs meanwhile). Sync: the same "
                  "registration sending with smtplib inside the request (few samples: each takes "
                  "the full SMTP time). Rounds alternate. p99 of this few samples is close to the "
                  "maximum.", "",
                  "| registration | n | p50 ms | p99 ms | max ms |", "|---|---:|---:|---:|---:|",
                  f"| **ours** (queued) | {t['queued']['n']} | {_f(t['queued']['p50_ms'], 2)} | "
                  f"{_f(t['queued']['p99_ms'], 2)} | {_f(t['queued']['max_ms'], 2)} |",
                  f"| sync smtplib | {t['sync']['n']} | {_f(t['sync']['p50_ms'], 0)} | "
                  f"{_f(t['sync']['p99_ms'], 0)} | {_f(t['sync']['max_ms'], 0)} |", "",
                  f"p50 sync ÷ queued: {_f(t['speedup_p50'], 0, '×')}. Enqueue cost, consumer "
                  f"stopped, `INFO commandstats` over {rt['registrations']} registrations: "
                  f"**{rt['per_registration']:.2f} Redis round trips per registration** "
                  f"({', '.join(f'{k} {v}' for k, v in sorted(rt['commands'].items()))}).", ""]
        lines += _goals(t["goals"]) + [""]
    if "mail-throughput" in s:
        t = s["mail-throughput"]
        lines += ["## 5. Mail throughput: consumer to aiosmtpd", "",
                  f"{t['mails']} mails queued by registrations while no consumer runs, then "
                  f"`examcache-consumer -w {t['workers']}`; rate = deliveries from the first to "
                  f"the last, timed at the SMTP server. {t['rounds']} alternating rounds.", "",
                  "| SMTP connections | mails/s (median) | first→last, s | consumer start→last, s |"
                  " connections opened | mails/s per round |", "|---|---:|---:|---:|---:|---|"]
        labels = {"reuse": "reused (one per worker, `mail.smtp_max_messages_per_connection = 100`)",
                  "reconnect": "one per mail (`mail.smtp_max_messages_per_connection = 1`)",
                  "server-closes": "reused, but the server closes after each message"}
        for name, x in t["modes"].items():
            lines.append(f"| {labels.get(name, name)} | {_f(x['per_s'], 0)} | "
                         f"{_f(median_of(x, 'first_to_last_s'), 2)} | {_f(x['from_start_s'], 2)} | "
                         f"{_f(x.get('connections'), 0)} | "
                         f"{_join(x['runs'], 'per_s', '{:,.0f}')} |")
        lines += ["", f"Reused ÷ one per mail: {_f(t['reuse_speedup'], 2, '×')} (same sink, same "
                  "workers). With the server closing, each reused connection fails at `MAIL FROM` "
                  "and the mail is sent again on a new one within the same attempt; each mail "
                  "arrived exactly once.", ""]
        lines += _goals(t.get("goals", {})) + [""]
        if "rate_limit" in t:
            from .scenarios import mail_ratelimit

            lines += mail_ratelimit.markdown(t["rate_limit"])
        if "priority" in t:
            from .scenarios import mail_priority

            chart_file = results.get("mail_priority_chart")
            lines += mail_priority.markdown(t["priority"], chart_file and os.path.relpath(
                chart_file, report_dir))
    if "memory" in s:
        t = s["memory"]
        lines += ["## 6. Memory per cached exam", "",
                  f"JSON body: {t['json_body_bytes']:,} bytes. `MEMORY USAGE key SAMPLES 0`.", "",
                  "| store | key | stored bytes | MEMORY USAGE | ÷ JSON body |",
                  "|---|---|---:|---:|---:|"]
        for name, x in t["keys"].items():
            lines.append(f"| **{name}** | `{x['key']}` | {x['stored_value_bytes']:,} | "
                         f"{x['memory_usage']:,} | {_f(x['overhead_vs_body'], 3, '×')} |")
        lines += ["", f"Ours also keeps one tag-version key per tag, shared by every entry "
                  f"under that tag: `{t['tag_key']['key']}` = {t['tag_key']['memory_usage']} bytes.",
                  ""]
    if "write" in s:
        lines += _write_section(s["write"])
    from .scenarios import http_cache

    lines += http_cache.markdown(s)
    from .scenarios import cluster

    lines += cluster.markdown(s)
    from .scenarios import scaling

    lines += scaling.markdown(s, results.get("scaling_chart"), report_dir)
    from . import lease_write, topology_hits

    lines += topology_hits.bench_markdown(s, results.get("topology_hits_chart"), report_dir)
    lines += lease_write.bench_markdown(s, results.get("topology_writes_chart"), report_dir)
    lines += ["## Notes", "",
              "- Where the time goes on a hit: `python -m bench.profile_hit --profile` (in-process, "
              "pyinstrument) and py-spy on the waitress process under wrk. Three fixes in the "
              "add-on, each measured: (1) the lookup script copied the 47 kB value through Lua "
              "(~100 µs of Redis time per hit; ours/seed 1.41×, goal missed); (2) a pooled-"
              "connection checkout and redis-py's command packer cost a third of the client CPU "
              "of a hit: the hit path now sends hand-packed, pipelined commands on a per-thread "
              "connection, with no Lua (the atomic script runs only on a miss), and was still "
              "1.42× (the 47 kB reply read and parsed under the GIL dominated); (3) a near cache: "
              "a value the process already holds is validated by its fill stamp and tag versions "
              "(the same round trip, the same G2 proof) and served without transferring its "
              "bytes again.",
              "- Loads in scenario 2 are SQL statements, not policy counters: the same count "
              "applies to every target.",
              "- All figures come from one 2-core VM shared with other work; rounds alternate "
              "between targets so that drift hits them alike, and the per-round numbers are "
              "shown next to each median.", ""]
    return "\n".join(lines)


#: sections written into the report by other commands (``python -m bench.lease_write``)
KEPT = (re.compile(r"## Write scaling: .*?(?=\n## |\Z)", re.S),)


def kept_sections(path: str) -> list[str]:
    """The sections of an existing report that ``python -m bench`` does not produce."""
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        text = fh.read()
    return [m.group(0) for pattern in KEPT for m in [pattern.search(text)] if m]


def restore_sections(path: str, sections: list[str]) -> None:
    """Put ``sections`` back, before the Notes (as ``bench.lease_write`` inserts them)."""
    if not sections:
        return
    with open(path) as fh:
        text = fh.read()
    anchor = text.find("\n## Notes")
    block = "".join(section.rstrip() + "\n\n" for section in sections)
    text = text[:anchor + 1] + block + text[anchor + 1:] if anchor >= 0 else text + "\n" + block
    with open(path, "w") as fh:
        fh.write(text)


def _bare_section(t: dict, ours: list[str]) -> list[str]:
    """Issue 22: ours ÷ the bare server, and the goals against it and the raw GET."""
    bare = t["targets"].get("bare")
    if bare is None:
        return []
    lines = ["## Bare server ceiling", "",
             f"**bare**: a plain WSGI callable on waitress ({t['server_threads']} threads, like "
             "every target; `bench/bare.py`) replaying the demo's cached response byte for "
             "byte (body and headers, captured from the demo in the same run): no Pyramid, no "
             f"WebOb. It served **{bare['rps']:,.0f} req/s** (p50 {bare['p50_ms']:.2f} ms, "
             f"{_f(bare.get('server_cpu_us'), 0)} µs CPU/req): the physical limit of this "
             "server for these bytes. Issue 22's goals: ours ≥ 0.85× bare and ≥ 1.5× the raw "
             "Redis GET peer, in the same run.", "",
             "| ours | req/s | ÷ bare | ÷ raw | goal ≥ 0.85× bare | goal ≥ 1.5× raw | "
             "÷ bare per round |", "|---|---:|---:|---:|---|---|---|"]
    for o in ours:
        r = t["ratios_by"][o]
        per_round = (t.get("ratios_per_round") or {}).get(o, {}).get("bare", [])
        lines.append(f"| **{o}** | {_f(t['targets'][o]['rps'], 0)} | {_f(r.get('bare'), 2, '×')} "
                     f"| {_f(r.get('raw'), 2, '×')} | {_pass(r.get('bare'), 0.85)} | "
                     f"{_pass(r.get('raw'), 1.5)} | {', '.join(_f(v, 2) for v in per_round)} |")
    return lines + [""]


def _pass(value, goal: float) -> str:
    if value is None:
        return "–"
    return "pass" if value >= goal else f"**miss** (by {goal - value:.2f})"


def _counts(counts: dict) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in sorted(counts.items())) or "none"


def _write_section(t: dict) -> list[str]:
    seq = t["modes"]["sequential"]
    lines = ["## 7. Write path: cost of the durable invalidation log", "",
             "The demo served twice side by side on the same private PostgreSQL and Redis: "
             "**on** = `examcache.invalidation_log = true` (the default: one INSERT into "
             "`examcache_invalidation_log` per writing transaction, its id deleted by the relay "
             f"thread every {t['relay_interval_s']:g} s), **off** = `false`. Each run is "
             f"{t['writes']} authenticated `PUT /api/exams/1/questions/{{id}}` that each change "
             f"the text (after {t['warmup']} warm-up PUTs per server): *sequential* = one "
             f"keep-alive connection; *concurrent* = {t['writers']} writers started together, "
             "one connection and one question each. Runs alternate "
             f"({', '.join(t['order'][:4])}, …; {t['rounds']} rounds); after each *on* run "
             "the bench waits until the relay has emptied the table, so its DELETEs are "
             "accounted to that run. Latency percentiles pool every PUT of the rounds; PUT/s "
             "and CPU are medians of the rounds. Both servers are the bench's wrapper of the "
             "demo (`bench.serve ours --counters`, which counts statements).", "",
             "| mode | log | p50 ms | p90 ms | p99 ms | mean ms | max ms | PUT/s | PUT/s per round "
             "| server CPU µs/PUT | PostgreSQL backends CPU µs/PUT | WAL bytes/PUT |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
    for mode, m in t["modes"].items():
        for name in ("on", "off"):
            x = m["configs"][name]
            lines.append(f"| {mode} | **{name}** | {_f(x['p50_ms'], 2)} | {_f(x['p90_ms'], 2)} | "
                         f"{_f(x['p99_ms'], 2)} | {_f(x['mean_ms'], 2)} | {_f(x['max_ms'], 1)} | "
                         f"{_f(x['per_s'], 0)} | {_join(x['runs'], 'per_s', '{:,.0f}')} | "
                         f"{_f(x['server_cpu_us'], 0)} | {_f(x['pg_cpu_us'], 0)} | "
                         f"{_f(x['wal_bytes'], 0)} |")
        r = m["ratios"]
        lines.append(f"| {mode} | on ÷ off | {_f(r['p50_ms'], 3, '×')} | {_f(r['p90_ms'], 3, '×')} "
                     f"| {_f(r['p99_ms'], 3, '×')} | {_f(r['mean_ms'], 3, '×')} | | "
                     f"{_f(median_list(m['paired_per_s_ratios']), 3, '×')} | per round: "
                     f"{', '.join(f'{v:.3f}' for v in m['paired_per_s_ratios'])} (mean "
                     f"latency: {', '.join(f'{v:.3f}' for v in m['paired_mean_ratios'])}) | "
                     f"{_f(r['server_cpu_us'], 2, '×')} | {_f(r['pg_cpu_us'], 2, '×')} | |")
    it = t.get("interleaved")
    if it:
        for name in ("on", "off"):
            x = it[name]
            lines.append(f"| interleaved | **{name}** | {_f(x['p50_ms'], 2)} | {_f(x['p90_ms'], 2)} "
                         f"| {_f(x['p99_ms'], 2)} | {_f(x['mean_ms'], 2)} | {_f(x['max_ms'], 1)} "
                         "| – | – | – | – | – |")
        r = it["ratios"]
        lines.append(f"| interleaved | on ÷ off | {_f(r['p50_ms'], 3, '×')} | "
                     f"{_f(r['p90_ms'], 3, '×')} | {_f(r['p99_ms'], 3, '×')} | "
                     f"{_f(r['mean_ms'], 3, '×')} | | | | | | |")
    lines += ["", "PUT/s on ÷ off is the median of the per-round ratios (on and off of the same "
              "round ran back to back); the latency ratios compare the pooled percentiles."]
    if it:
        per_round = ", ".join(f"{x['median_diff_ms']:+.3f}" for x in it["runs"])
        lines += ["", f"*Interleaved*: {it['pairs']} pairs of sequential PUTs, one to each server, "
                  "alternately on first and off first (one keep-alive connection per server), so "
                  "that machine noise hits both alike. Paired difference on − off per PUT: "
                  f"**median {it['median_diff_ms']:+.3f} ms**, mean {it['mean_diff_ms']:+.3f} ms "
                  f"(per round, median: {per_round}); "
                  f"on slower in {it['on_slower_share']:.0%} of the pairs."]
    on_runs = [x for m in t["modes"].values() for x in m["configs"]["on"]["runs"]]
    deletes = sum(x["relay_statements"].get("DELETE", 0) for x in on_runs)
    rounds_ms = [v for x in on_runs + (it["runs"] if it else []) for v in x["relay_round_ms"]]
    lines += ["", "SQL statements per PUT in the request (SQLAlchemy `before_cursor_execute` "
              "on the app's engine, by thread): "
              + "; ".join(f"**{name}** {_counts(seq['request_statements'][name])} + "
                          f"{seq['request_commits'][name]:g} COMMIT"
                          for name in ("on", "off")) + ". Relay thread during the *on* runs "
              f"(including the wait for the empty table): {deletes} DELETE statements for "
              f"{len(on_runs) * t['writes']} PUTs, "
              + ", ".join(f"{k} {v}" for k, v in sorted(
                  sum_counts([x["relay_statements"] for x in on_runs]).items()))
              + f", {sum(x['relay_commits'] for x in on_runs)} COMMITs.", ""]
    for mode, m in t["modes"].items():
        x = m["configs"]["on"]
        o, c = x["overlapping_relay_delete"], x["not_overlapping"]
        lines.append(f"- {mode}, **on**: {o['n']} of {x['n']} PUTs overlapped a relay round "
                     f"that deleted rows: p50 {_f(o['p50_ms'], 2)} ms, mean "
                     f"{_f(o['mean_ms'], 2)} ms, max {_f(o['max_ms'], 1)} ms (the others: p50 "
                     f"{_f(c['p50_ms'], 2)}, mean {_f(c['mean_ms'], 2)}, max "
                     f"{_f(c['max_ms'], 1)} ms).")
    if it:
        o, c = it["on_overlapping_relay_delete"], it["on_not_overlapping"]
        lines.append(f"- interleaved, **on**: {o['n']} of {it['on']['n']} PUTs overlapped a relay "
                     f"round that deleted rows: p50 {_f(o['p50_ms'], 2)} ms, mean "
                     f"{_f(o['mean_ms'], 2)} ms, max {_f(o['max_ms'], 1)} ms (the others: p50 "
                     f"{_f(c['p50_ms'], 2)}, mean {_f(c['mean_ms'], 2)}, max "
                     f"{_f(c['max_ms'], 1)} ms).")
    if rounds_ms:
        lines.append(f"- relay rounds that deleted rows during the runs: {len(rounds_ms)}, "
                     f"{min(rounds_ms):.1f}–{max(rounds_ms):.1f} ms each (median "
                     f"{sorted(rounds_ms)[len(rounds_ms) // 2]:.1f} ms).")
    drains = [x["drain_s"] for x in on_runs + (it["runs"] if it else [])
              if x["drain_s"] is not None]
    stats = t["log_stats"]["on"] or {}
    lines += [f"- after each *on* run the table was empty within {max(drains):.2f} s "
              f"(rows left: {', '.join(str(x['log_rows_left']) for x in on_runs + (it['runs'] if it else []))}).",
              f"- log table `examcache_invalidation_log`: {t['log_rows_before']} row(s) before "
              "the servers started"
              + (" (left by processes that exited before their relay deleted their applied "
                 "rows, e.g. `examcache-initdb`'s seed transaction; the first relay round "
                 "re-applies them)" if t["log_rows_before"] else "") + ", "
              f"**{t['log_rows_after']} rows after the run**; the *on* server recorded "
              f"{stats.get('recorded')} rows, its writers applied {stats.get('applied_by_writer')}, "
              f"its relay re-applied {stats.get('relayed')} (relay errors "
              f"{stats.get('relay_errors')}); the *off* server has no log: "
              f"{_f(t['log_stats']['off'] is None)}.",
              _table_line(t.get("log_table")),
              "- WAL bytes are `pg_current_wal_lsn()` differences: cluster-wide, so they include "
              "anything else the shared PostgreSQL wrote meanwhile (and, for *on*, the relay's "
              "DELETE). Backend CPU is `/proc/<pid>/stat` of the private database's backends.", ""]
    lines += _goals(t["goals"]) + [""]
    return lines


def _table_line(x: dict | None) -> str:
    if not x or "inserted" not in x:
        return "- log table statistics: –"
    return (f"- log table's statistics after the servers stopped (`pg_stat_user_tables`, "
            f"since the database was created: the seed row, earlier scenarios' writes, the "
            f"warm-up and the runs): {x['inserted']} rows inserted, "
            f"{x['deleted']} deleted, {x['rows']} rows left, {x['dead']} dead tuples, "
            f"{x['autovacuums']} autovacuum(s), table + index {x['total_bytes']:,} bytes.")


def median_list(values):
    from .stats import median

    return median(values)


def _join(runs, field, fmt) -> str:
    if field is None:
        return ", ".join(f"{r['stale']}/{r['reads']}" for r in runs)
    return ", ".join(fmt.format(r[field]) for r in runs)


def median_of(entry: dict, field: str):
    from .stats import median

    return median([r[field] for r in entry["runs"]])
