"""``python -m bench.lease_write``: what each near-cache mode costs a write, as processes multiply.

For N = 1, 4, 8, 16 and 32 *reader processes* (each a ``RedisBackend`` with tracking, as a
web worker has, serving one held key), the bench process writes (``invalidate(keys=[k],
tags=["t"])``) ``-n`` times and times each call, in two states:

* **idle**: the readers read once every 50 ms (enough to hold a lease);
* **load**: each reader serves reads back to back, one web request's worth of CPU each
  (~150 µs of JSON work) with a GIL release in between, as a saturated sync worker does:
  N of them saturate the 2 cores.

and in two modes: **lease** (read leases: a write waits for every lease holder's
acknowledgement) and **barrier** (leases off: a barrier per read, a write returns once Redis
acknowledged it). Then **8 writer processes** write back to back for ``--seconds`` beside 4
loaded readers: writes/s in total and the latency of each.

One run, on the bench's own private redis-server (nothing shared is touched); the results go
to ``DIR/results.json``, the chart to ``DIR/writes.png`` and the tables to the report's
"Write scaling" section (replaced in place)::

    python -m bench.lease_write --out bench/results-lease-write --report bench/RESULTS.md

``--topologies single,sentinel,cluster`` runs the same measurement on each topology in turn,
each a private one (tests/topologies.py: Sentinel is a primary, a replica and 3 sentinels,
Cluster 3 primaries), readers and writers that topology's backend with tracking on; Sentinel
and Cluster have the ``barrier`` mode only (read leases need a single Redis).  Results,
chart and a RESULTS.md go to ``--out`` (the report above is not touched)::

    python -m bench.lease_write --topologies single,sentinel,cluster \
        --out bench/results-lease-write-topologies

``python -m bench topology-writes`` (and ``all``) runs that measurement on all three
(:func:`run_scenario`) in the bench's run: a section of its report (:func:`bench_markdown`)
and ``DIR/topology-writes.png`` (:func:`topology_chart`).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager

from .charts import pyplot, save

MODES = {"lease": 1000, "barrier": 0}  # examcache.tracking_lease_ms per mode
GOALS = {"p99_ms_n16_load": 10.0, "writes_per_s_8_writers": 1000.0}
#: a run's sizes: reader counts, writes per setting, writer processes, their seconds
SIZES: dict = {"counts": [1, 4, 8, 16, 32], "n": 200, "writers": 8, "seconds": 5.0}
QUICK_SIZES: dict = {"counts": [1], "n": 20, "writers": 2, "seconds": 0.5}  # a smoke test's

#: the backend of a reader or writer process: a ``redis+cluster://`` URL gets the Cluster
#: backend (barrier only: no read leases), a ``redis+sentinel://`` URL the Sentinel backend
#: (``RedisBackend`` builds it; ``lease_ms`` is ignored there), else the single-Redis one
BACKEND = r"""
def make_backend(url, prefix, lease_ms, near=True):
    near_args = {"near_cache_bytes": 1 << 20, "tracking": True} if near else {}
    if url.startswith("redis+cluster://"):
        from pyramid_examcache.cache.backends.cluster import ClusterBackend
        return ClusterBackend(url, prefix=prefix, **near_args)
    from pyramid_examcache.cache.backends.redis import RedisBackend
    return RedisBackend(url, prefix=prefix, lease_ms=lease_ms, **near_args)
"""
_ns: dict = {}
exec(BACKEND, _ns)
make_backend = _ns["make_backend"]

READER = BACKEND + r"""
import json, sys, time
url, prefix, lease_ms, load = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
b = make_backend(url, prefix, lease_ms)
work = {"questions": [{"id": i, "text": "q" * 60, "choices": ["a", "b", "c", "d"]}
                      for i in range(12)]}
def get():
    try:
        return b.get("hot")
    except Exception:  # a read timed out on the busy machine: a web worker's policy fails
        return None  # open, and this reader keeps reading (else the load would shrink)
deadline = time.monotonic() + 30
while time.monotonic() < deadline:  # a held value and (leases on) a usable lease
    if get() == b"v" and (lease_ms == 0 or b.read_lease_valid()):
        break
    time.sleep(0.01)
else:
    sys.exit("reader: no held value / lease after 30 s")
print("up", type(b).__name__, b.near_mode, flush=True)
end = time.monotonic() + 900
while time.monotonic() < end:
    get()
    if load:
        json.dumps(work)  # a request's CPU
        time.sleep(0)  # its socket I/O: the GIL is released
    else:
        time.sleep(0.05)
"""

WRITER = BACKEND + r"""
import json, sys, time
url, prefix, lease_ms, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
b = make_backend(url, prefix, lease_ms)
print("up", type(b).__name__, b.near_mode, flush=True)
sys.stdin.readline()  # all writers start together
ms, end, i = [], time.monotonic() + seconds, 0
while time.monotonic() < end:
    t = time.perf_counter()
    b.invalidate(keys=[f"w{i % 5}"], tags=["t"])
    ms.append((time.perf_counter() - t) * 1000)
    i += 1
print(json.dumps(ms), flush=True)
b.close()
"""


@contextmanager
def private_redis():
    from .env import _stop, free_port, wait_for_port

    workdir = tempfile.mkdtemp(prefix="examcache-lease-write-")
    port = free_port()
    proc = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind",
         "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc=proc)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)


def _spawn(script: str, *args: str, stdin=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE,
                            stdin=stdin, text=True)


def _await_up(procs: list[subprocess.Popen]) -> list[str]:
    """Wait for each process's ``up`` line; the backends they built (class and near mode)."""
    backends = set()
    for p in procs:
        line = p.stdout.readline().split()
        if line[:1] != ["up"]:
            raise RuntimeError(f"a bench process did not start (exit {p.wait()})")
        backends.add(" ".join(line[1:]))
    return sorted(backends)


def _summary(ms: list[float]) -> dict:
    ms = sorted(ms)
    return {"n": len(ms), "p50_ms": round(statistics.median(ms), 2),
            "p99_ms": round(ms[max(0, int(len(ms) * 0.99) - 1)], 2), "max_ms": round(ms[-1], 2)}


def _stop_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def _prime(url: str, prefix: str) -> None:
    """The key every reader holds."""
    import redis

    if url.startswith("redis://"):  # the bench's own redis-server (Sentinel and Cluster are
        redis.Redis.from_url(url).flushdb()  # fresh private ones; every prefix is new there)
    b = make_backend(url, prefix, 0, near=False)
    b.lookup("hot", "t0", 5, 3600)  # takes the key's lease (a miss) ...
    if not b.fill("hot", "t0", b"v", 3600):  # ... and fills it
        raise RuntimeError("could not prime the held key")
    b.close()


def measure(url: str, mode: str, readers: int, load: bool, n: int,
            record_backends: bool = False) -> dict:
    """``n`` writes by this process while ``readers`` processes read (``record_backends``:
    the row names the backends the readers and this writer built)."""
    lease_ms = MODES[mode]
    prefix = f"lw-{mode}-{readers}-{int(load)}:"
    _prime(url, prefix)
    procs = [_spawn(READER, url, prefix, str(lease_ms), "1" if load else "0")
             for _ in range(readers)]
    try:
        backends = _await_up(procs)
        writer = make_backend(url, prefix, lease_ms)
        backends = sorted({*backends, f"{type(writer).__name__} {writer.near_mode}"})
        ms = []
        for i in range(n):
            started = time.perf_counter()
            writer.invalidate(keys=[f"k{i % 5}"], tags=["t"])
            ms.append((time.perf_counter() - started) * 1000)
        writer.close()
        row = {"mode": mode, "readers": readers, "load": load, **_summary(ms)}
        return {**row, "backends": backends} if record_backends else row
    finally:
        _stop_all(procs)


def measure_writers(url: str, mode: str, writers: int, readers: int, seconds: float,
                    record_backends: bool = False) -> dict:
    """``writers`` processes writing back to back beside ``readers`` loaded readers."""
    lease_ms = MODES[mode]
    prefix = f"lw-{mode}-w{writers}:"
    _prime(url, prefix)
    procs = [_spawn(READER, url, prefix, str(lease_ms), "1") for _ in range(readers)]
    wprocs = [_spawn(WRITER, url, prefix, str(lease_ms), str(seconds), stdin=subprocess.PIPE)
              for _ in range(writers)]
    try:
        backends = _await_up(procs + wprocs)
        for w in wprocs:
            w.stdin.write("go\n")
            w.stdin.flush()
        ms: list[float] = []
        for w in wprocs:
            ms += json.loads(w.stdout.readline())
        row = {"mode": mode, "writers": writers, "readers": readers, "seconds": seconds,
               "writes_per_s": round(len(ms) / seconds), **_summary(ms)}
        return {**row, "backends": backends} if record_backends else row
    finally:
        _stop_all(procs + wprocs)


def _p99_axes(ax, title: str) -> None:
    """The write charts' axes: p99 over reader processes (both log), the goal's line."""
    ax.axhline(GOALS["p99_ms_n16_load"], color="grey", linewidth=0.8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("reader processes")
    ax.set_ylabel("invalidate() p99, ms")
    ax.set_title(title)


def chart(results: dict, path: str) -> None:
    fig, ax = pyplot().subplots(figsize=(7, 4))
    for mode in MODES:
        for load, style in ((False, "--"), (True, "-")):
            rows = [r for r in results["scaling"] if r["mode"] == mode and r["load"] == load]
            ax.plot([r["readers"] for r in rows], [r["p99_ms"] for r in rows], style,
                    marker="o", label=f"{mode}, {'under load' if load else 'idle'}")
    _p99_axes(ax, "What a write costs as processes multiply")
    ax.legend()
    save(fig, path, dpi=110)


def report(results: dict, chart_rel: str) -> str:
    lines = ["## Write scaling: what a write costs per near-cache mode", "",
             f"`python -m bench.lease_write --out {results['out']} --report …` on "
             f"{results['when']} (commit {results['commit']}), in {results['took_s']:.0f} s, one "
             "run. `invalidate()` of one key and one tag, timed in the writing process; readers "
             "are separate processes each serving one held key (idle: a read every 50 ms; under "
             "load: reads back to back with ~150 µs of request CPU each and a GIL release in "
             "between, so N ≥ 2 saturate the 2 cores). **lease**: read leases (a write waits "
             "for every lease holder's acknowledgement); **barrier**: leases off, a barrier per "
             "read (a write returns once Redis acknowledged it).", "",
             "| readers | lease idle p50 / p99 / max ms | lease under load | barrier idle | "
             "barrier under load |", "|---:|---|---|---|---|"]
    by = {(r["mode"], r["readers"], r["load"]): r for r in results["scaling"]}
    for n in results["counts"]:
        cells = []
        for mode in MODES:
            for load in (False, True):
                r = by[(mode, n, load)]
                cells.append(f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f} / {r['max_ms']:.1f}")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += ["", f"{results['writers'][0]['writers']} writer processes writing back to back "
              f"for {results['writers'][0]['seconds']:.0f} s beside "
              f"{results['writers'][0]['readers']} loaded readers:", "",
              "| mode | writes/s (all writers) | p50 ms | p99 ms | max ms |",
              "|---|---:|---:|---:|---:|"]
    for r in results["writers"]:
        lines.append(f"| {r['mode']} | {r['writes_per_s']:,} | {r['p50_ms']:.1f} | "
                     f"{r['p99_ms']:.1f} | {r['max_ms']:.1f} |")
    lines += ["", "Goals (the read-leases issue): write p99 ≤ 10 ms at N = 16 under load; no "
              "write past the documented cap (lease: 1.06 s); ≥ 1,000 writes/s with 8 writers."]
    for mode, verdict in results["verdict"].items():
        lines.append(f"- **{mode}**: " + "; ".join(f"{k} {'met' if v[0] else 'MISSED'} ({v[1]})"
                                                   for k, v in verdict.items()))
    lines += ["", f"![writes]({chart_rel})", ""]
    return "\n".join(lines)


def verdicts(results: dict, modes=tuple(MODES)) -> dict:
    out = {}
    for mode in modes:
        loaded = [r for r in results["scaling"] if r["mode"] == mode and r["load"]
                   and r["readers"] <= 16]
        r16 = max(loaded, key=lambda r: r["readers"])  # N = 16 in a full run
        w = next(r for r in results["writers"] if r["mode"] == mode)
        worst = max(r["max_ms"] for r in results["scaling"] if r["mode"] == mode)
        cap = 1060.0 if mode == "lease" else float("inf")
        out[mode] = {f"p99 at N={r16['readers']} under load ≤ 10 ms": (
                         r16["p99_ms"] <= GOALS["p99_ms_n16_load"], f"{r16['p99_ms']:.1f} ms"),
                     "no write past the cap": (worst <= cap, f"max {worst:.0f} ms"),
                     f"≥ 1,000 writes/s with {w['writers']} writers": (w["writes_per_s"] >= GOALS["writes_per_s_8_writers"],
                                                         f"{w['writes_per_s']:,}/s")}
    return out


def _replace_section(path: str, section: str) -> None:
    text = open(path).read() if os.path.exists(path) else ""
    pattern = re.compile(r"## Write scaling: .*?(?=\n## |\Z)", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section.rstrip() + "\n", text)
    else:
        anchor = text.find("\n## Notes")
        text = (text[:anchor] + "\n" + section + text[anchor:]) if anchor >= 0 \
            else text + "\n" + section
    with open(path, "w") as f:
        f.write(text)


def run(url: str, modes, counts: list[int], n: int, writers: int, seconds: float,
        label: str = "", record_backends: bool = False) -> dict:
    """The scaling rows (each count, mode, idle and under load) and the many-writer rows
    (one per mode, beside 4 loaded readers; none if ``writers`` is 0) on the Redis at
    ``url``; each printed."""
    out: dict = {"scaling": [], "writers": []}
    for count in counts:
        for mode in modes:
            for load in (False, True):
                r = measure(url, mode, count, load, n, record_backends)
                out["scaling"].append(r)
                print(f"{label}{mode:8s} readers={count:<3d} {'load' if load else 'idle'}: p50 "
                      f"{r['p50_ms']:.2f} p99 {r['p99_ms']:.2f} max {r['max_ms']:.2f} ms",
                      flush=True)
    for mode in modes if writers else ():
        r = measure_writers(url, mode, writers, 4, seconds, record_backends)
        out["writers"].append(r)
        print(f"{label}{mode:8s} {writers} writers + 4 loaded readers: {r['writes_per_s']} "
              f"writes/s, p50 {r['p50_ms']:.2f} p99 {r['p99_ms']:.2f} max {r['max_ms']:.2f} ms",
              flush=True)
    return out


#: the near-cache modes each topology has (read leases need a single Redis)
TOPOLOGY_MODES = {"single": ("lease", "barrier"), "sentinel": ("barrier",),
                  "cluster": ("barrier",)}


@contextmanager
def topology(name: str):
    """``(url, primaries' ports)`` of a private ``name`` topology (tests/topologies.py),
    stopped at the end."""
    if name == "single":
        with private_redis() as url:
            yield url, [int(url.rsplit(":", 1)[1].split("/")[0])]
        return
    from tests.topologies import PrivateCluster, PrivateSentinel

    server = PrivateSentinel() if name == "sentinel" else PrivateCluster()
    try:
        server.start()
        yield server.url, ([server.primary_port()] if name == "sentinel" else server.ports)
    finally:
        server.close()


def run_topologies(names: list[str], counts: list[int], n: int, writers: int,
                   seconds: float, command: str) -> dict:
    """:func:`run` on each topology (its own private servers, all up at once), side by side:
    each reader count on each topology in turn, then the many writers on each; each row
    with the machine's 1-minute load average after it; verdicts."""
    from contextlib import ExitStack

    started = time.monotonic()
    results: dict = {"command": command, "counts": counts, "topologies": {},
                     "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                     "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                                              capture_output=True, text=True).stdout.strip()}
    per = {name: {"scaling": [], "writers": []} for name in names}
    with ExitStack() as stack:
        urls = {name: stack.enter_context(topology(name))[0] for name in names}
        for count, many in [(c, False) for c in counts] + [(0, True)]:
            for name in names:
                r = run(urls[name], TOPOLOGY_MODES[name], [] if many else [count], n,
                        writers if many else 0, seconds, f"{name:8s} ", True)
                for row in r["scaling"] + r["writers"]:
                    row["loadavg_1m"] = round(os.getloadavg()[0], 1)
                    per[name]["writers" if many else "scaling"].append(row)
    for name, r in per.items():
        r["verdict"] = verdicts(r, TOPOLOGY_MODES[name])
        results["topologies"][name] = r
        for mode, v in r["verdict"].items():
            print(name, mode, {k: ("met" if ok else "MISSED", fig) for k, (ok, fig) in v.items()},
                  flush=True)
    results["took_s"] = round(time.monotonic() - started, 1)
    return results


def run_scenario(env, quick: bool = False, seconds: float | None = None) -> dict:
    """``python -m bench topology-writes``: :func:`run_topologies` on single, sentinel and
    cluster (:data:`SIZES` up to the goal's 16 readers: 32 would add minutes; ``seconds``:
    the many writers'; ``quick``: :data:`QUICK_SIZES`).  ``env`` is not used: each topology
    is a private one, as in the standalone run."""
    sizes = dict(QUICK_SIZES if quick else SIZES)
    sizes["counts"] = [c for c in sizes["counts"] if c <= 16]
    if seconds and not quick:
        sizes["seconds"] = seconds
    names = list(TOPOLOGY_MODES)
    results = run_topologies(names, command="python -m bench topology-writes"
                             + (" --quick" if quick else ""), **sizes)
    results["standalone"] = "python -m bench.lease_write " + shlex.join(
        ["--topologies", ",".join(names), "--counts", ",".join(map(str, sizes["counts"])),
         "-n", str(sizes["n"]), "--writers", str(sizes["writers"]),
         "--seconds", f"{sizes['seconds']:g}"])
    return results


def topology_chart(results: dict, path: str) -> str:
    fig, ax = pyplot().subplots(figsize=(7, 4.5))
    lines = [(name, mode) for name, r in results["topologies"].items()
             for mode in TOPOLOGY_MODES[name]]
    for color, (name, mode) in enumerate(lines):  # a colour per topology and mode
        r = results["topologies"][name]
        for load, style in ((False, "--"), (True, "-")):
            rows = [x for x in r["scaling"] if x["mode"] == mode and x["load"] == load]
            ax.plot([x["readers"] for x in rows], [x["p99_ms"] for x in rows], style,
                    color=f"C{color}", marker="o",
                    label=f"{name} {mode}, {'under load' if load else 'idle'}")
    _p99_axes(ax, "What a write costs per topology (goal: p99 ≤ 10 ms at 16 under load)")
    ax.legend(fontsize=7, loc="upper left", ncol=2)
    return save(fig, path, dpi=110)


def topology_report(results: dict) -> str:
    lines = ["# Write scaling per topology (`bench.lease_write --topologies`)", "",
             _topology_intro(results), ""]
    for name, r in results["topologies"].items():
        lines += _topology_section(name, r, results["counts"])
    lines += ["![writes](writes.png)", ""]
    return "\n".join(lines)


def bench_markdown(s: dict, chart_path: str | None, report_dir: str) -> list[str]:
    """The ``topology-writes`` section of ``python -m bench``'s report (none if it did not
    run): the goals per topology and mode, then :func:`topology_report`'s tables, the chart."""
    if "topology-writes" not in s:
        return []
    results = s["topology-writes"]
    lines = ["## Topologies: writes on one Redis, Sentinel and Cluster", "",
             _topology_intro(results) + f" The same as `{results['standalone']}`.", ""]
    lines += _topology_goals(results)
    for name, r in results["topologies"].items():
        lines += _topology_section(name, r, results["counts"], "###")
    if chart_path:
        lines += [f"![topology writes]({os.path.relpath(chart_path, report_dir)})", ""]
    return lines


def _topology_goals(results: dict) -> list[str]:
    """Per topology and mode: write p50 / p99 at the most loaded readers up to 16 (16 in a
    full run), the many writers' writes/s, and the goals (:data:`GOALS`) met or not."""
    lines = ["| topology | mode | loaded readers | write p50 / p99 ms | writes/s (writers) | "
             f"goal p99 ≤ {GOALS['p99_ms_n16_load']:g} ms | goal ≥ "
             f"{GOALS['writes_per_s_8_writers']:,.0f} writes/s |", "|---|---|---:|---|---:|---|---|"]
    for name, r in results["topologies"].items():
        for mode in TOPOLOGY_MODES[name]:
            r16 = max((x for x in r["scaling"] if x["mode"] == mode and x["load"]
                       and x["readers"] <= 16), key=lambda x: x["readers"])
            w = next(x for x in r["writers"] if x["mode"] == mode)
            p99_ok = r16["p99_ms"] <= GOALS["p99_ms_n16_load"]
            rate_ok = w["writes_per_s"] >= GOALS["writes_per_s_8_writers"]
            lines.append(f"| {name} | {mode} | {r16['readers']} | {r16['p50_ms']:.2f} / "
                         f"{r16['p99_ms']:.2f} | {w['writes_per_s']:,} ({w['writers']}) | "
                         f"{'met' if p99_ok else '**MISSED**'} | "
                         f"{'met' if rate_ok else '**MISSED**'} |")
    return lines + [""]


def _topology_intro(results: dict) -> str:
    return (f"`{results['command']}` on {results['when']} (commit {results['commit']}), in "
            f"{results['took_s']:.0f} s, one run; each topology is a private one started by the "
            "bench (one redis-server; Sentinel: a primary, a replica, 3 sentinels; Cluster: 3 "
            "primaries), all up at once and measured side by side (each reader count on each "
            "topology in turn, then the many writers on each). The measurement is `bench.lease_write`'s: "
            "`invalidate()` of one key and one tag timed in the writing process, N reader "
            "processes each serving one held key (idle: a read every 50 ms; under load: back "
            f"to back, ~150 µs of request CPU each), then {_writers(results)} writer processes "
            "beside 4 loaded readers. Readers and writers are each topology's backend with tracking on "
            "(`RedisBackend`, which builds the Sentinel backend for a `redis+sentinel://` URL; "
            "`ClusterBackend`); Sentinel and Cluster have the `barrier` mode only.")


def _writers(results: dict) -> int:
    """The many-writer rows' writer processes (8 unless ``--writers`` said otherwise)."""
    return next((w["writers"] for r in results["topologies"].values() for w in r["writers"]),
                SIZES["writers"])


def _topology_section(name: str, r: dict, counts: list[int], level: str = "##") -> list[str]:
    modes = TOPOLOGY_MODES[name]
    backends = sorted({b for x in r["scaling"] + r["writers"] for b in x.get("backends", ())})
    loads = [x["loadavg_1m"] for x in r["scaling"] + r["writers"]]
    lines = [f"{level} {name}", "", f"Backends built (class, near mode): {', '.join(backends)}; "
             f"the machine's 1-minute load average after each row: {min(loads):g} to "
             f"{max(loads):g}.", "",
             "| readers | " + " | ".join(f"{m} {s} p50 / p99 / max ms" for m in modes
                                        for s in ("idle", "under load")) + " |",
             "|---:|" + "---|" * (2 * len(modes))]
    by = {(x["mode"], x["readers"], x["load"]): x for x in r["scaling"]}
    for count in counts:
        cells = [by[(m, count, load)] for m in modes for load in (False, True)]
        lines.append(f"| {count} | " + " | ".join(
            f"{x['p50_ms']:.2f} / {x['p99_ms']:.2f} / {x['max_ms']:.1f}" for x in cells) + " |")
    w0 = r["writers"][0]
    lines += ["", f"{w0['writers']} writer processes for {w0['seconds']:g} s beside "
              f"{w0['readers']} loaded readers:", "",
              "| mode | writes/s (all writers) | p50 ms | p99 ms | max ms |",
              "|---|---:|---:|---:|---:|"]
    for x in r["writers"]:
        lines.append(f"| {x['mode']} | {x['writes_per_s']:,} | {x['p50_ms']:.2f} | "
                     f"{x['p99_ms']:.2f} | {x['max_ms']:.1f} |")
    lines.append("")
    for mode, verdict in r["verdict"].items():
        lines.append(f"- **{name} {mode}**: " + "; ".join(
            f"{k} {'met' if v[0] else 'MISSED'} ({v[1]})" for k, v in verdict.items()))
    return lines + [""]


def _commandstats(ports: list[int]) -> dict:
    """``{port: {command: calls}}`` of each data node (``INFO commandstats``)."""
    import redis

    out = {}
    for port in ports:
        with redis.Redis(host="127.0.0.1", port=port) as r:
            out[port] = {k.removeprefix("cmdstat_"): v["calls"]
                         for k, v in r.info("commandstats").items()}
    return out


def _nodes_per_write(ports: list[int], names_of) -> float:
    """The mean number of primaries one write's commands go to (the key's value and lease
    share a slot; the tag's version is wherever its slot is)."""
    import redis

    with redis.Redis(host="127.0.0.1", port=ports[0]) as r:
        slots = r.execute_command("CLUSTER SLOTS") if len(ports) > 1 else []

        def node(name: str) -> int:
            slot = r.cluster("keyslot", name)
            return next(int(s[2][1]) for s in slots if s[0] <= slot <= s[1])

        counts = [len({node(x) for x in names_of(i)}) if slots else 1 for i in range(5)]
    return statistics.mean(counts)


def _connections(ports: list[int]) -> list[int]:
    """Each primary's ``total_connections_received`` (a reader's stream reconnecting shows)."""
    import redis

    out = []
    for port in ports:
        with redis.Redis(host="127.0.0.1", port=port) as r:
            out.append(r.info("stats")["total_connections_received"])
    return out


def _node_cpu(ports: list[int]) -> dict:
    """``{port: CPU seconds so far}`` of each primary's redis-server (``/proc``)."""
    import redis

    out = {}
    for port in ports:
        with redis.Redis(host="127.0.0.1", port=port) as r:
            pid = r.info("server")["process_id"]
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        out[port] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def _machine() -> dict:
    """``/proc/stat``'s context switches so far and runnable tasks now (the whole machine)."""
    with open("/proc/stat") as f:
        fields = dict(line.split(None, 1) for line in f if " " in line)
    return {"ctxt": int(fields["ctxt"]), "running": int(fields["procs_running"])}


def profile_writes(name: str, n: int, readers: int = 0, tracked: bool = True) -> dict:
    """Where one write's time goes on ``name`` beside ``readers`` loaded readers (none:
    idle): wall and this thread's CPU per ``invalidate(keys=[k], tags=["t"])``, a ``PING``
    to each primary after each write (the queue a command meets there), the commands the
    primaries ran per write and per second, their redis-servers' CPU, the primaries per
    write (round trips: a pipeline writes to each, then reads each), and the Python
    functions that take the writer's CPU (cProfile, µs per write).  ``tracked`` False: the
    writer has no near cache (no tracking streams, no threads of its own)."""
    with topology(name) as (url, ports):
        prefix = f"lw-profile-{readers}:"
        _prime(url, prefix)
        procs = [_spawn(READER, url, prefix, "0", "1") for _ in range(readers)]
        try:
            _await_up(procs)
            return {"topology": name, "readers": readers, "n": n,
                    **_profile(name, url, ports, prefix, n, tracked)}
        finally:
            _stop_all(procs)


def _profile(name: str, url: str, ports: list[int], prefix: str, n: int,
             tracked: bool = True) -> dict:
    import cProfile
    import pstats

    import redis

    writer = make_backend(url, prefix, 0, near=tracked)
    nodes = [redis.Redis(port=p) for p in ports]
    for i in range(50):  # connections made
        writer.invalidate(keys=[f"k{i % 5}"], tags=["t"])
        nodes[i % len(nodes)].ping()
    before, cpu0 = _commandstats(ports), _node_cpu(ports)
    connections0, t0 = sum(_connections(ports)), time.monotonic()
    ms, cpu_ms, ping_ms, machine = [], [], [], [_machine()]
    for i in range(n):
        if i % 10 == 0:
            machine.append(_machine())
        t, c = time.perf_counter(), time.thread_time()
        writer.invalidate(keys=[f"k{i % 5}"], tags=["t"])
        ms.append((time.perf_counter() - t) * 1000)
        cpu_ms.append((time.thread_time() - c) * 1000)
        for node in nodes:
            t = time.perf_counter()
            node.ping()
            ping_ms.append((time.perf_counter() - t) * 1000)
    wall = time.monotonic() - t0
    conns = sum(_connections(ports)) - connections0 - len(ports)  # (not the INFO's own)
    after, cpu1 = _commandstats(ports), _node_cpu(ports)
    profiler = cProfile.Profile()
    profiler.runcall(lambda: [writer.invalidate(keys=[f"k{i % 5}"], tags=["t"])
                              for i in range(n)])
    spread = (_nodes_per_write(ports, lambda i: [writer._v(f"k{i}"), writer._t("t")])
              if name == "cluster" else 1.0)
    backend = f"{type(writer).__name__} {writer.near_mode}"
    writer.close()
    for node in nodes:
        node.close()
    running = statistics.mean(m["running"] for m in machine)  # (this process included)
    ctxt_per_s = (_machine()["ctxt"] - machine[0]["ctxt"]) / wall
    calls: dict = {}
    for port in ports:
        for cmd, count in after[port].items():
            calls[cmd] = calls.get(cmd, 0) + count - before[port].get(cmd, 0)
    calls["ping"] = calls.get("ping", 0) - n * len(ports)  # not this profile's own PINGs
    calls["info"] = calls.get("info", 0) - 3 * len(ports)  # nor its INFOs (cpu0, c0, c1)
    calls = {k: v for k, v in calls.items() if v >= 0.01 * n}
    stats = pstats.Stats(profiler).stats  # {(file, line, func): (cc, nc, tt, ct, callers)}
    top = sorted(stats.items(), key=lambda kv: -kv[1][2])[:8]
    return {"backend": backend, **_summary(ms), "cpu": _summary(cpu_ms),
            "ping": _summary(ping_ms), "writes_per_s": round(n / (sum(ms) / 1000)),
            "primaries_per_write": spread,
            "commands_per_write": {k: round(v / n, 2) for k, v in sorted(calls.items())},
            "commands_per_s": {k: round(v / wall) for k, v in sorted(calls.items())},
            "node_cpu_share": [round((cpu1[p] - cpu0[p]) / wall, 2) for p in ports],
            "runnable_tasks": round(running, 1), "context_switches_per_s": round(ctxt_per_s),
            "connections_made": conns,
            "top_tottime_us": [(f"{os.path.basename(f)}:{line} {func}",
                                round(v[2] / n * 1e6, 1)) for (f, line, func), v in top]}


def profile_markdown(rows: list[dict], command: str) -> str:
    lines = ["## Where a write's time goes (`--profile-writes`)", "",
             f"`{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: one "
             "writer thread, `invalidate(keys=[k], tags=[\"t\"])` back to back on each "
             "topology's backend (tracking on, barrier) beside that many loaded readers (as "
             "above): wall time and the writer thread's CPU per write; a `PING` to each "
             "primary after each write (a plain client: the queue and scheduling delay any "
             "command meets there); the primaries one write's pipeline goes to (one round trip "
             "each, written then read in turn); the commands all primaries ran per write and "
             "per second (`INFO commandstats`: the readers' barriers and probes included, the "
             "`PING`s above not); "
             "each primary's redis-server CPU (cores); the machine's runnable tasks (mean of "
             "`procs_running`, this process included) and context switches; the connections "
             "the primaries accepted meanwhile (beyond the profile's own: a reader's "
             "tracking stream reconnecting); the writer's Python functions by own "
             "time (cProfile, µs per write; profiling inflates them).", "",
             "| topology | loaded readers | write p50 / p99 ms | writer CPU p50 / p99 ms | "
             "PING p50 / p99 ms | writes/s (1 thread) | primaries/write | commands/write | "
             "commands/s (all primaries) | redis-server CPU | runnable tasks | context "
             "switches/s | connections made |",
             "|---|---:|---|---|---|---:|---:|---|---|---|---:|---:|---:|"]
    for r in rows:
        per_write = ", ".join(f"{k} {v:g}" for k, v in r["commands_per_write"].items()
                              if v >= 0.05)
        per_s = ", ".join(f"{k} {v:,}" for k, v in sorted(
            r["commands_per_s"].items(), key=lambda kv: -kv[1])[:4])
        writer = "" if r["backend"].endswith("barrier") else f" (writer: {r['backend']})"
        lines.append(f"| {r['topology']}{writer} | {r['readers']} | {r['p50_ms']:.2f} / "
                     f"{r['p99_ms']:.2f} | {r['cpu']['p50_ms']:.2f} / {r['cpu']['p99_ms']:.2f} | "
                     f"{r['ping']['p50_ms']:.2f} / {r['ping']['p99_ms']:.2f} | "
                     f"{r['writes_per_s']:,} | {r['primaries_per_write']:g} | {per_write} | "
                     f"{per_s} | {' + '.join(f'{c:.2f}' for c in r['node_cpu_share'])} | "
                     f"{r['runnable_tasks']:g} | {r['context_switches_per_s']:,} | "
                     f"{r['connections_made']} |")
    for r in rows:
        lines += ["", f"{r['topology']}, {r['readers']} readers, writer {r['backend']}: own "
                  "time per write, µs: "
                  + "; ".join(f"`{f}` {us:g}" for f, us in r["top_tottime_us"][:5])]
    return "\n".join(lines) + "\n"


def main_topologies(args, argv) -> None:
    names = [t for t in args.topologies.split(",") if t]
    unknown = set(names) - set(TOPOLOGY_MODES)
    if unknown:
        raise SystemExit(f"unknown topologies {sorted(unknown)}: choose from "
                         f"{', '.join(TOPOLOGY_MODES)}")
    out = args.out or "bench/results-lease-write-topologies"
    command = "python -m bench.lease_write " + shlex.join(
        sys.argv[1:] if argv is None else list(argv))
    if args.profile_writes:
        main_profile(names, [int(c) for c in args.counts.split(",")], args.profile_writes,
                     out, command, args.writer_tracking)
        return
    results = run_topologies(names, [int(c) for c in args.counts.split(",")], args.n,
                             args.writers, args.seconds, command)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    topology_chart(results, os.path.join(out, "writes.png"))
    _write_report(os.path.join(out, "RESULTS.md"), topology_report(results), "# ")


#: sections of OUT/RESULTS.md kept when the measurement reruns: the profile's, hand-written notes
KEPT = ("Where a write's time goes", "Notes")
KEPT_SECTIONS = re.compile(r"^## (Where a write's time goes|Notes)\b.*?(?=^#{1,2} |\Z)", re.S | re.M)


def _write_report(path: str, text: str, part: str) -> None:
    """``text`` as the report at ``path`` (``part`` "# ": the measurement) or as its
    profile section (``part`` "## "); the :data:`KEPT` sections found there follow."""
    old = open(path).read() if os.path.exists(path) else ""
    sections = {m.group(1): m.group(0).rstrip("\n") for m in KEPT_SECTIONS.finditer(old)}
    head = text if part == "# " else KEPT_SECTIONS.sub("", old)
    if part == "## ":
        sections[KEPT[0]] = text.rstrip("\n")
    with open(path, "w") as f:
        f.write(head.rstrip("\n") + "".join(f"\n\n{sections[k]}" for k in KEPT if k in sections)
                + "\n")


def main_profile(names: list[str], counts: list[int], n: int, out: str, command: str,
                 writer_tracking: str = "on") -> None:
    rows = []
    for name in names:
        for readers in counts:
            for tracked in {"on": [True], "off": [False], "both": [True, False]}[writer_tracking]:
                rows.append(profile_writes(name, n, readers, tracked))
                print(json.dumps(rows[-1]), flush=True)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "profile.json"), "w") as f:
        json.dump(rows, f, indent=1)
    _write_report(os.path.join(out, "RESULTS.md"), profile_markdown(rows, command), "## ")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.lease_write", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=SIZES["n"], help="writes per setting")
    parser.add_argument("--counts", default=",".join(map(str, SIZES["counts"])),
                        help="reader process counts")
    parser.add_argument("--writers", type=int, default=SIZES["writers"])
    parser.add_argument("--seconds", type=float, default=SIZES["seconds"],
                        help="of the many-writer run")
    parser.add_argument("--out", default=None, help="directory for results.json and writes.png")
    parser.add_argument("--report", default=None, help="Markdown file whose section to replace")
    parser.add_argument("--topologies", "--topology", default=None, metavar="LIST",
                        help="comma-separated, of single,sentinel,cluster: the same measurement "
                             "on each (private servers; Sentinel and Cluster: barrier only), "
                             "results.json, writes.png and RESULTS.md to --out (default "
                             "bench/results-lease-write-topologies); without it, one Redis as "
                             "before")
    parser.add_argument("--profile-writes", type=int, default=0, metavar="N",
                        help="with --topologies: instead, N writes by one thread beside each "
                             "--counts of loaded readers (0: none) on each, where their time "
                             "goes (profile.json and a section of OUT/RESULTS.md, kept when the "
                             "measurement reruns)")
    parser.add_argument("--writer-tracking", choices=("on", "off", "both"), default="on",
                        help="with --profile-writes: the writer's own near cache (tracking "
                             "streams) on, off, or each in turn")
    args = parser.parse_args(argv)
    if args.topologies is not None:
        if args.report:
            parser.error("--report is the single-Redis run's (--topologies writes OUT/RESULTS.md)")
        main_topologies(args, argv)
        return
    counts = [int(c) for c in args.counts.split(",")]
    started = time.monotonic()
    results: dict = {"counts": counts, "scaling": [], "writers": [], "out": args.out,
                     "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                     "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                                              capture_output=True, text=True).stdout.strip()}
    with private_redis() as url:
        results.update(run(url, tuple(MODES), counts, args.n, args.writers, args.seconds))
    results["took_s"] = time.monotonic() - started
    results["verdict"] = verdicts(results)
    for mode, v in results["verdict"].items():
        print(mode, {k: ("met" if ok else "MISSED", fig) for k, (ok, fig) in v.items()})
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump(results, f, indent=1)
        chart(results, os.path.join(args.out, "writes.png"))
    if args.report:
        rel = os.path.relpath(os.path.join(args.out or ".", "writes.png"),
                              os.path.dirname(os.path.abspath(args.report)))
        _replace_section(args.report, report(results, rel))


if __name__ == "__main__":
    main()
