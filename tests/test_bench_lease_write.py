"""``python -m bench.lease_write --topologies`` end to end, tiny: a private Sentinel and a
private Cluster started by the bench, one reader, a few writes, two writers for half a second.
The figures are not checked (not a timed test): that each topology's own backend read and
wrote in barrier mode, and that the results, chart and report were written."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_lease_write_topologies_quick(tmp_path):
    for tool in ("redis-server", "redis-cli"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (apt-get install redis-server redis-tools)",
                        pytrace=False)
    out = tmp_path / "lw"
    proc = subprocess.run([sys.executable, "-m", "bench.lease_write", "--topologies",
                           "sentinel,cluster", "--counts", "1", "-n", "20", "--writers", "2",
                           "--seconds", "0.5", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    built = {"sentinel": ["SentinelBackend barrier"], "cluster": ["ClusterBackend barrier"]}
    assert list(results["topologies"]) == list(built)
    for name, r in results["topologies"].items():
        assert [(x["mode"], x["readers"], x["load"], x["n"]) for x in r["scaling"]] == [
            ("barrier", 1, False, 20), ("barrier", 1, True, 20)], (name, r["scaling"])
        (writers,) = r["writers"]
        assert writers["writers"] == 2 and writers["n"] > 0, (name, writers)
        for row in r["scaling"] + r["writers"]:  # readers and writers alike
            assert row["backends"] == built[name], (name, row)
        assert list(r["verdict"]) == ["barrier"], (name, r["verdict"])
    report = (out / "RESULTS.md").read_text()
    assert "## sentinel" in report and "## cluster" in report, report
    assert results["command"] in report and "--topologies sentinel,cluster" in report, report
    assert (out / "writes.png").stat().st_size > 0
