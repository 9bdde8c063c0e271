"""The bench entry point runs four tiny scenarios end to end (private Redis and
database, the demo and the peers under waitress; for the topology scenarios private
Sentinel and Cluster servers too) and writes its report and charts.
Benchmarks themselves are not run here: they are not timed tests."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEPT = "## Write scaling: written by bench.lease_write\n\nkept row\n"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One tiny ``python -m bench memory scaling topology-hits topology-writes --quick`` run
    (one set of services), into a report that already holds a section another command
    wrote (``bench.lease_write``'s "Write scaling"): the run must keep it."""
    # the bench starts its own redis-server and records `wrk -v`: both must be installed
    # (Debian packages redis-server and wrk; .ci/run installs them)
    for tool in ("redis-server", "wrk"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (apt-get install {tool})", pytrace=False)
    out = tmp_path_factory.mktemp("bench") / "results"
    out.mkdir()
    (out / "RESULTS.md").write_text(f"# old\n\n{KEPT}\n## Notes\n\nold notes\n")
    proc = subprocess.run([sys.executable, "-m", "bench", "memory", "scaling", "topology-hits",
                           "topology-writes", "--quick", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_bench_memory_quick(quick_run):
    out = quick_run
    report = (out / "RESULTS.md").read_text()
    row = re.search(r"\| \*\*ours\*\* \| `[^`]+` \| ([\d,]+) \| ([\d,]+) \|", report)
    assert row, report
    assert int(row.group(2).replace(",", "")) > 10_000  # a cached exam is ~47 kB
    results = json.loads((out / "results.json").read_text())
    assert results["scenarios"]["memory"]["keys"]["ours"]["memory_usage"] > 0
    assert results["machine"]["wrk"].startswith("wrk "), results["machine"]["wrk"]


def test_bench_scaling_quick(quick_run):
    # the scaling scenario end to end, tiny: waitress x2 on one port (SO_REUSEPORT) and
    # gunicorn --preload x2, wrk for 1 s each, then 10 writes raced by checking readers
    out = quick_run
    results = json.loads((out / "results.json").read_text())["scenarios"]["scaling"]
    assert set(results["deployments"]) == {"waitress-2p", "gunicorn-2w"}
    for name, x in results["deployments"].items():
        assert x["rps"] > 0 and x["errors"] == 0, (name, x)
        assert len(x["hits"][0]["cpu_share"]) == 2, (name, x["hits"])  # both processes served
        assert x["reads"] > 0 and x["stale"] == 0 and x["fresh_after_all"], (name, x)
    report = (out / "RESULTS.md").read_text()
    assert "## Scaling out" in report and "| **gunicorn-2w** | 2 | barrier |" in report, report
    assert (out / "scaling.png").stat().st_size > 0


def test_bench_all_has_the_topology_scenarios():
    from bench.__main__ import SCENARIOS

    assert {"topology-hits", "topology-writes"} <= set(SCENARIOS)  # `all` runs SCENARIOS


def test_bench_topologies_quick(quick_run):
    # topology-hits: the demo on one Redis, Sentinel, Cluster and Cluster `check`, wrk 1 s
    # each; topology-writes: bench.lease_write's measurement on the three topologies, tiny
    out = quick_run
    results = json.loads((out / "results.json").read_text())["scenarios"]
    hits = results["topology-hits"]
    assert set(hits["summary"]) == {"single", "sentinel", "cluster", "cluster-check"}, hits
    for name, x in hits["summary"].items():
        assert x["rps"] > 0 and x["non2xx"] == 0, (name, x)
    writes = results["topology-writes"]["topologies"]
    built = {"single": {"RedisBackend lease", "RedisBackend barrier"},
             "sentinel": {"SentinelBackend barrier"}, "cluster": {"ClusterBackend barrier"}}
    assert {n: {b for x in r["scaling"] + r["writers"] for b in x["backends"]}
            for n, r in writes.items()} == built, writes
    report = (out / "RESULTS.md").read_text()
    hits_at = report.index("## Topologies: hits on Sentinel and Cluster beside one Redis")
    writes_at = report.index("## Topologies: writes on one Redis, Sentinel and Cluster")
    assert hits_at < writes_at < report.index(KEPT) < report.index("## Notes"), report
    assert report.count(KEPT) == 1 and "old notes" not in report, report
    assert re.search(r"\| cluster-check \| [\d,]+ \|", report), report
    assert "- goal cluster p99 <= 2x: **" in report, report
    for name in ("single", "sentinel", "cluster"):
        assert f"\n### {name}\n" in report, report
        assert re.search(rf"\| {name} \| barrier \| 1 \| [\d.]+ / [\d.]+ \| [\d,]+ \(2\) \| "
                         r"(met|\*\*MISSED\*\*) \|", report), report
    for chart in ("topology-hits.png", "topology-writes.png"):
        assert f"]({chart})" in report and (out / chart).read_bytes()[:4] == b"\x89PNG", chart
