"""The bench entry point runs one tiny scenario end to end (private Redis and
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


def test_bench_memory_quick(tmp_path):
    # the bench starts its own redis-server and records `wrk -v`: both must be installed
    # (Debian packages redis-server and wrk; .ci/run installs them)
    for tool in ("redis-server", "wrk"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (apt-get install {tool})", pytrace=False)
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "bench", "memory", "--quick", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (out / "RESULTS.md").read_text()
    row = re.search(r"\| \*\*ours\*\* \| `[^`]+` \| ([\d,]+) \| ([\d,]+) \|", report)
    assert row, report
    assert int(row.group(2).replace(",", "")) > 10_000  # a cached exam is ~47 kB
    results = json.loads((out / "results.json").read_text())
    assert results["scenarios"]["memory"]["keys"]["ours"]["memory_usage"] > 0
    assert results["machine"]["wrk"].startswith("wrk "), results["machine"]["wrk"]
