"""Scaling out: the demo on 1, 2 and 4 waitress processes and under gunicorn --preload.

Each deployment (:mod:`bench.deployments`) serves the demo's cached
``GET /api/exams/1/questions`` on one port: waitress processes share it with
``SO_REUSEPORT``, gunicorn's pre-forked workers accept on the master's socket.  The
near cache runs in ``barrier`` mode (``examcache.near_cache = barrier``, the one-Redis
default), and in ``lease`` mode for the ``-lease`` deployments.

Per deployment and round: *hits*: wrk alone (``-c16``: enough connections for the
kernel to spread over 4 processes), req/s, latency, CPU per request over all of the
deployment's serving processes and each one's share (the balance); *writes*: the
consistency scenario's race (:func:`bench.scenarios.consistency.race`: one writer
``PUT``s new versions of question 1 through the app, six readers check each version
they read on their own connections, spread over the processes) while wrk loads the
same URL: a read is stale when it returns a version older than one whose ``PUT``
had returned before the read was sent.  The load average is recorded before each
run (the machine is shared).  Rounds alternate between deployments.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

from ..charts import pyplot, save
from ..deployments import Deployment
from ..stats import median, ratio
from .consistency import _VERSION, race
from .throughput import WRK_THREADS, _process_cpu, parse_wrk, wait_quiet

PATH = "/api/exams/1/questions"
PUT_PATH = "/api/exams/1/questions/{q}"
CONNECTIONS = 16
#: (name, kind, processes, near-cache mode)
DEPLOYMENTS = (("waitress-1p", "waitress", 1, "barrier"),
               ("waitress-2p", "waitress", 2, "barrier"),
               ("waitress-4p", "waitress", 4, "barrier"),
               ("gunicorn-2w", "gunicorn", 2, "barrier"),
               ("gunicorn-4w", "gunicorn", 4, "barrier"),
               ("waitress-2p-lease", "waitress", 2, "lease"),
               ("gunicorn-2w-lease", "gunicorn", 2, "lease"))
QUICK = ("waitress-2p", "gunicorn-2w")
MODES = {"barrier": {"examcache.near_cache": "barrier"},
         "lease": {"examcache.near_cache": "lease"}}


def _wrk_args(url: str, seconds: float) -> list[str]:
    exe = shutil.which("wrk") or "/usr/bin/wrk"
    return [exe, f"-t{WRK_THREADS}", f"-c{CONNECTIONS}", f"-d{max(1, round(seconds))}s",
            "--latency", url]


def _warm(dep: Deployment) -> None:
    """New connections until every process has served (and cached) the page."""
    for _ in range(8 * dep.processes):
        client = dep.client()
        for _ in range(3):
            status, headers, body = client.request("GET", PATH)
            assert status == 200, (dep.name, status, body[:200])
        client.close()
    assert headers.get("x-cache") == "HIT", (dep.name, headers)


def hits(dep: Deployment, seconds: float, patience: float) -> dict:
    busy = wait_quiet(patience=patience)
    load = os.getloadavg()[0]
    pids = dep.pids()
    c0 = {p: _process_cpu(p) for p in pids}
    out = subprocess.run(_wrk_args(dep.base + PATH, seconds), check=True, capture_output=True,
                         text=True).stdout
    used = {p: _process_cpu(p) - c0[p] for p in pids}
    result = parse_wrk(out)
    requests = result["rps"] * max(1, round(seconds))
    total = sum(used.values())
    result.update({"load_avg_1m": round(load, 2), "busy_before": round(busy, 3),
                   "cpu_us_per_req": total / requests * 1e6 if requests else None,
                   "cpu_share": sorted((round(v / total, 2) for v in used.values()), reverse=True)
                   if total else []})
    return result


def writes(dep: Deployment, token: str, qid: int, text: str, first: int, count: int) -> dict:
    """The race (writer + checking readers) while wrk loads the same URL."""
    load = os.getloadavg()[0]
    wrk = subprocess.Popen(_wrk_args(dep.base + PATH, 600), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)  # wrk's connections are up before the first write
        result = race(dep, PATH, PUT_PATH, qid, text, first, count,
                      {"Authorization": f"Bearer {token}"})
    finally:
        wrk.send_signal(signal.SIGINT)  # wrk stops and prints its summary
        out, _ = wrk.communicate(30)
    load_rps = parse_wrk(out)
    result.update({"load_avg_1m": round(load, 2), "wrk_rps": load_rps["rps"],
                   "wrk_p99_ms": load_rps["p99_ms"], "wrk_non2xx": load_rps["non2xx"]})
    return result


def run(env, quick: bool = False, rounds: int | None = None, seconds: float | None = None,
        targets=None) -> dict:
    rounds, seconds, count, patience = rounds or 3, seconds or 5.0, 100, 20.0
    if quick:
        rounds, seconds, count, patience = 1, 1.0, 10, 0.0
    chosen = targets or (QUICK if quick else [d[0] for d in DEPLOYMENTS])
    plan = [d for d in DEPLOYMENTS if d[0] in chosen]
    deps: dict[str, Deployment] = {}
    runs: dict[str, dict] = {d[0]: {"hits": [], "writes": []} for d in plan}
    try:
        for name, kind, processes, mode in plan:
            ini = env.write_ini(f"scaling-{mode}.ini", **MODES[mode])
            deps[name] = Deployment(env, name, kind, processes, ini)
            _warm(deps[name])
        first = next(iter(deps.values()))
        token = env.login(first)
        client = first.client()
        data, _ = client.json("GET", PATH)
        client.close()
        question = min(data["questions"], key=lambda q: q["position"])
        qid, text = question["id"], _VERSION.sub("", question["text"])
        version = 10_000_000  # above the consistency scenario's versions
        for _ in range(rounds):
            for name, *_ in plan:
                runs[name]["hits"].append(hits(deps[name], seconds, patience))
                runs[name]["writes"].append(writes(deps[name], token, qid, text, version, count))
                version += count
        client = first.client()  # leave the question as it was
        client.json("PUT", PUT_PATH.format(q=qid), {"text": question["text"]},
                    headers={"Authorization": f"Bearer {token}"})
        client.close()
    finally:
        for dep in deps.values():
            dep.stop()
    return _summary(plan, runs, rounds, seconds, count)


def _summary(plan, runs: dict, rounds: int, seconds: float, count: int) -> dict:
    out = {"connections": CONNECTIONS, "wrk_threads": WRK_THREADS, "rounds": rounds,
           "seconds": seconds, "writes": count, "deployments": {}}
    for name, kind, processes, mode in plan:
        h, w = runs[name]["hits"], runs[name]["writes"]
        out["deployments"][name] = {
            "kind": kind, "processes": processes, "mode": mode, "hits": h, "writes": w,
            "rps": median([x["rps"] for x in h]), "p50_ms": median([x["p50_ms"] for x in h]),
            "p99_ms": median([x["p99_ms"] for x in h]),
            "cpu_us_per_req": median([x["cpu_us_per_req"] for x in h]),
            "load_avg": [x["load_avg_1m"] for x in h],
            "rps_under_writes": median([x["wrk_rps"] for x in w]),
            "stale": sum(x["stale"] for x in w), "reads": sum(x["reads"] for x in w),
            "fresh_after_all": all(x["fresh_after"] for x in w),
            "errors": sum(x["non2xx"] + x["socket_errors"] for x in h)
            + sum(x["wrk_non2xx"] for x in w)}
    base = out["deployments"].get("waitress-1p")
    for x in out["deployments"].values():
        x["vs_1p"] = ratio(x["rps"], base["rps"]) if base else None
    out["goals"] = {f"{name}: 0 stale reads": x["stale"] == 0 and x["fresh_after_all"]
                    for name, x in out["deployments"].items()}
    return out


def chart(result: dict, path: str) -> str:
    deps = result["deployments"]
    names = list(deps)
    fig, ax = pyplot().subplots(figsize=(9, 4.2), dpi=110)
    xs = range(len(names))
    ax.bar([i - 0.2 for i in xs], [deps[n]["rps"] for n in names], width=0.4,
           label="hits only", color="#1f77b4")
    ax.bar([i + 0.2 for i in xs], [deps[n]["rps_under_writes"] for n in names], width=0.4,
           label="with a writer", color="#ff7f0e")
    for i, n in enumerate(names):
        ax.annotate(f"{deps[n]['rps']:,.0f}/s\nstale {deps[n]['stale']}", (i - 0.2, deps[n]["rps"]),
                    xytext=(0, 4), textcoords="offset points", ha="center", fontsize=8)
    ax.set_xticks(list(xs), names, fontsize=8)
    ax.set_ylabel("requests/s (median of rounds)")
    ax.set_title(f"Scaling out: the demo's cached GET, wrk {result['connections']} connections, "
                 f"{os.cpu_count()} cores", fontsize=9)
    ax.legend(fontsize=8)
    ax.set_ylim(0, max(deps[n]["rps"] for n in names) * 1.3)
    return save(fig, path)


def _rounds(hits: list[dict]) -> str:
    return ", ".join(f"{h['rps']:,.0f}" for h in hits)


def markdown(s: dict, chart_path: str | None = None, report_dir: str = ".") -> list[str]:
    if "scaling" not in s:
        return []
    t = s["scaling"]
    lines = ["## Scaling out", "",
             "The demo on N processes behind one port. **waitress-Np**: N independent "
             "`python -m bench.serve ours` waitress processes (8 threads each), each with its "
             "own listening socket on the same port (`SO_REUSEPORT`: the kernel spreads new "
             "connections over them by a hash; no proxy in front). **gunicorn-Nw**: `gunicorn "
             "--paste bench.ini --preload -k gthread --threads 8 -w N` (the app built once in "
             "the master, then forked). Near cache: `examcache.near_cache = barrier` (the "
             "one-Redis default), `lease` for the `-lease` rows. "
             f"*Hits*: wrk `-t{t['wrk_threads']} -c{t['connections']} -d{t['seconds']:g}s` "
             f"alone; *with a writer*: wrk on the same URL while one writer `PUT`s "
             f"{t['writes']} new versions of question 1 through the app and six reader threads "
             "check every version they read (a read is stale when it returns a version older "
             "than one whose `PUT` had returned before the read was sent). "
             f"{t['rounds']} alternating rounds; CPU share = each serving process's share of "
             "the deployment's CPU during the hits run (the balance).", "",
             "| deployment | processes | mode | req/s | ÷ waitress-1p | p50 ms | p99 ms | "
             "CPU µs/req (all processes) | CPU share per process | req/s with a writer | "
             "stale reads / checked reads | fresh after | load avg (1 min) before runs | "
             "req/s per round | errors |",
             "|---|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---|---|---|---:|"]
    for name, x in t["deployments"].items():
        shares = "; ".join("/".join(f"{v:.2f}" for v in h["cpu_share"]) for h in x["hits"])
        vs = f"{x['vs_1p']:.2f}×" if x["vs_1p"] else "–"
        lines.append(
            f"| **{name}** | {x['processes']} | {x['mode']} | {x['rps']:,.0f} | {vs} | "
            f"{x['p50_ms']:.2f} | {x['p99_ms']:.2f} | {x['cpu_us_per_req']:,.0f} | {shares} | "
            f"{x['rps_under_writes']:,.0f} | **{x['stale']}** / {x['reads']:,} | "
            f"{'yes' if x['fresh_after_all'] else '**no**'} | "
            f"{', '.join(f'{v:.2f}' for v in x['load_avg'])} | "
            f"{_rounds(x['hits'])} | {x['errors']} |")
    lines += ["", f"The machine has {os.cpu_count()} cores, shared with other work (load average "
              "above): more processes than cores cannot add throughput here; what the rows show "
              "is the cost of each layout and that no layout reads stale.", ""]
    lines += [f"- goal {name}: **{'met' if ok else 'MISSED'}**" for name, ok in t["goals"].items()]
    lines.append("")
    if chart_path:
        lines += [f"![scaling]({os.path.relpath(chart_path, report_dir)})", ""]
    return lines
