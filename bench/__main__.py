"""``python -m bench SCENARIO [SCENARIO ...] [--quick] --out DIR [--report FILE]``

Scenarios: ``throughput``, ``stampede``, ``consistency``, ``mail-enqueue``,
``mail-throughput``, ``memory``, ``write``, ``logged-in``, ``revalidate``, ``cluster``,
``scaling``, ``topology-hits`` (the demo's hits on one Redis, Sentinel and Cluster:
``bench/topology_hits.py``), ``topology-writes`` (write latency and throughput per topology
beside loaded readers: ``bench/lease_write.py --topologies``), or ``all`` (every one of
them).  Starts its own redis-server and PostgreSQL database (dropped at the end; the
topology scenarios start private Sentinel and Cluster servers too), runs, and writes
``DIR/results.json``, a chart per scenario that has one (``DIR/throughput.png``,
``DIR/scaling.png``, ``DIR/mail-priority.png``, ``DIR/topology-hits.png``,
``DIR/topology-writes.png``) and the Markdown report (``--report``, default
``DIR/RESULTS.md``).

The committed report was produced by::

    python -m bench all --out bench/results --report bench/RESULTS.md
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time

SCENARIOS = ("throughput", "stampede", "consistency", "mail-enqueue", "mail-throughput", "memory",
             "write", "logged-in", "revalidate", "cluster", "scaling", "topology-hits",
             "topology-writes")


def _runner(name: str):
    from . import lease_write, topology_hits
    from .scenarios import (cluster, consistency, http_cache, mail, memory, scaling, stampede,
                            throughput, write)

    return {"throughput": throughput.run, "stampede": stampede.run,
            "consistency": consistency.run, "mail-enqueue": mail.run_enqueue,
            "mail-throughput": mail.run_throughput, "memory": memory.run,
            "write": write.run, "logged-in": http_cache.run_logged_in,
            "revalidate": http_cache.run_revalidate, "cluster": cluster.run,
            "scaling": scaling.run, "topology-hits": topology_hits.run,
            "topology-writes": lease_write.run_scenario}[name]


def _charts(results: dict, out: str) -> str | None:
    """Each chart of the scenarios that ran, written to ``out`` (their paths recorded in
    ``results``); the throughput chart's path."""
    from . import report

    s, chart = results["scenarios"], None
    if "throughput" in s:
        chart = report.chart(s["throughput"], os.path.join(out, "throughput.png"))
    if "scaling" in s:
        from .scenarios import scaling

        results["scaling_chart"] = scaling.chart(s["scaling"], os.path.join(out, "scaling.png"))
    if "priority" in s.get("mail-throughput", {}):
        from .scenarios import mail_priority

        results["mail_priority_chart"] = mail_priority.chart(
            s["mail-throughput"]["priority"], os.path.join(out, "mail-priority.png"))
    if "topology-hits" in s:
        from . import topology_hits

        results["topology_hits_chart"] = topology_hits.chart(
            s["topology-hits"], os.path.join(out, "topology-hits.png"))
    if "topology-writes" in s:
        from . import lease_write

        results["topology_writes_chart"] = lease_write.topology_chart(
            s["topology-writes"], os.path.join(out, "topology-writes.png"))
    return chart


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", nargs="+", choices=(*SCENARIOS, "all"))
    parser.add_argument("--out", default="bench/results", help="directory for results.json and the charts")
    parser.add_argument("--report", default=None, help="Markdown report (default OUT/RESULTS.md)")
    parser.add_argument("--quick", action="store_true", help="tiny runs (smoke test), not results")
    parser.add_argument("--rounds", type=int, default=None,
                        help="throughput, scaling, topology-hits: alternating rounds (default "
                             "5, 3, 3)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="throughput, scaling, topology-hits: wrk duration of each run; "
                             "topology-writes: the many writers' run (default 5)")
    parser.add_argument("--targets", default=None,
                        help="throughput: comma-separated targets (default all: "
                             "ours,ours-tracking,ours-lease,ours-early,seed,dogpile,raw,fixed,orm,bare)")
    parser.add_argument("--deployments", default=None,
                        help="scaling: comma-separated deployments (default all: waitress-1p,"
                             "waitress-2p,waitress-4p,gunicorn-2w,gunicorn-4w,waitress-2p-lease,"
                             "gunicorn-2w-lease; --quick: waitress-2p,gunicorn-2w)")
    args = parser.parse_args(argv)
    throughput_options = {"rounds": args.rounds, "seconds": args.seconds,
                          "targets": args.targets.split(",") if args.targets else None}
    scaling_options = {"rounds": args.rounds, "seconds": args.seconds,
                       "targets": args.deployments.split(",") if args.deployments else None}
    options_by = {"throughput": throughput_options, "scaling": scaling_options,
                  "topology-hits": {"rounds": args.rounds, "seconds": args.seconds},
                  "topology-writes": {"seconds": args.seconds}}

    from . import report
    from .env import environment

    os.makedirs(args.out, exist_ok=True)
    names = SCENARIOS if "all" in args.scenario else tuple(dict.fromkeys(args.scenario))
    command = "python -m bench " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    results: dict = {"command": command, "quick": args.quick, "scenarios": {}}
    started = time.time()
    with environment() as env:
        results["machine"] = report.machine(env)
        for name in names:
            t0 = time.time()
            print(f"[bench] {name} ...", file=sys.stderr, flush=True)
            options = options_by.get(name, {})
            results["scenarios"][name] = _runner(name)(env, quick=args.quick, **options)
            results["scenarios"][name]["elapsed_s"] = round(time.time() - t0, 1)
            print(f"[bench] {name} done in {time.time() - t0:.1f}s", file=sys.stderr, flush=True)
    results["elapsed_s"] = round(time.time() - started, 1)
    with open(os.path.join(args.out, "results.json"), "w") as fh:
        json.dump(results, fh, indent=1, sort_keys=True)
    chart = _charts(results, args.out)
    path = args.report or os.path.join(args.out, "RESULTS.md")
    kept = report.kept_sections(path)  # sections other commands write into the same report
    with open(path, "w") as fh:
        fh.write(report.markdown(results, chart, os.path.dirname(os.path.abspath(path))))
    report.restore_sections(path, kept)
    print(f"[bench] wrote {path} in {results['elapsed_s']}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
