"""The linter and the type checker, as configured in pyproject.toml ([tool.ruff],
[tool.mypy]), report no finding.

Both run from the test environment's bin directory (the `test` extra installs them), from
the repository root, with no arguments: what they check is the configuration's business.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    exe = BIN / tool
    assert exe.exists(), f"{exe} is missing: install the project's `test` extra"
    env = {k: v for k, v in os.environ.items() if k not in ("MYPYPATH", "RUFF_CACHE_DIR")}
    return subprocess.run([str(exe), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def test_ruff_reports_no_finding():
    done = _run("ruff", "check", "--no-cache", "--output-format", "concise")
    assert done.returncode == 0, f"ruff check found:\n{done.stdout}{done.stderr}"


def test_mypy_reports_no_finding():
    done = _run("mypy")
    assert done.returncode == 0, f"mypy found:\n{done.stdout}{done.stderr}"
    assert "Success: no issues found" in done.stdout, done.stdout
