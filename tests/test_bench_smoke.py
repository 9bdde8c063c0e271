"""The bench entry point runs two tiny scenarios end to end (private Redis and
database, the demo and the peers under waitress) and writes its report.
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


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One tiny ``python -m bench memory scaling --quick`` run (one set of services)."""
    # the bench starts its own redis-server and records `wrk -v`: both must be installed
    # (Debian packages redis-server and wrk; .ci/run installs them)
    for tool in ("redis-server", "wrk"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (apt-get install {tool})", pytrace=False)
    out = tmp_path_factory.mktemp("bench") / "results"
    proc = subprocess.run([sys.executable, "-m", "bench", "memory", "scaling", "--quick",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
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
