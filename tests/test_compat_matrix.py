"""The compatibility matrix (issue 23): the built wheel, installed by uv into one fresh
virtual environment per combination (tests/compat_matrix.py: every allowed Python on the
machine x the floor and the newest versions of the dependencies, redis-py with and without
hiredis), runs the fast subset tests/compat_smoke.py against a private Redis; all
combinations install and run at once. docs/testing.md#compatibility-matrix says which run.

A failing combination fails this test, naming it and what failed (an interpreter that
cannot install the floor versions says so); so does an install that reaches no registry.
Only a Python newer than the classifiers claim (and not the suite's own) is reported
without failing."""
from __future__ import annotations

import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from uv import find_uv_bin

from .compat_matrix import (Combination, combinations, installed_versions, interpreters,
                            make_env, project, version_problems)
from .distributions import ROOT, clean_env, pip_index, run


def run_combination(uv: str, combo: Combination, wheel: Path, redis_url: str, tmp: Path) -> dict:
    """Install, then run the smoke; ``{'combo', 'versions', 'failure', 'output'}``."""
    venv, work = tmp / combo.name / "venv", tmp / combo.name / "work"
    result = {"combo": combo, "versions": {}, "failure": "", "output": ""}
    started = time.monotonic()
    failure = make_env(uv, combo, wheel, venv)
    result["install_s"] = round(time.monotonic() - started, 1)
    if failure:
        result["failure"] = f"cannot install: {failure}"
        return result
    python = venv / "bin" / "python"
    result["versions"] = installed_versions(python)
    problems = version_problems(combo, result["versions"])
    if problems:
        result["failure"] = "wrong versions: " + "; ".join(problems)
        return result
    work.mkdir(parents=True)
    shutil.copy2(ROOT / "tests" / "compat_smoke.py", work / "compat_smoke.py")
    smoke = run([str(python), "compat_smoke.py", redis_url, f"compat:{combo.name}:",
                 str(work / "data")], 900, cwd=work, env=clean_env(venv))
    result["output"] = smoke.stdout + smoke.stderr
    result["smoke_s"] = round(time.monotonic() - started - result["install_s"], 1)
    if smoke.returncode != 0 or "COMPAT OK" not in smoke.stdout:
        result["failure"] = f"smoke failed (exit {smoke.returncode})"
    return result


def must_pass(combo: Combination) -> bool:
    """The suite's own Python and every version the classifiers claim."""
    claimed = {c.rsplit(" :: ", 1)[-1] for c in project()["classifiers"]
               if c.startswith("Programming Language :: Python :: 3.")}
    own = f"{sys.version_info.major}.{sys.version_info.minor}"
    return combo.python.minor == own or combo.python.minor in claimed


def report(results: list[dict], excluded) -> str:
    lines = [f"{'combination':<26} {'versions':<62} {'time':<28} result"]
    for r in results:
        versions = " ".join(f"{k} {v}" for k, v in r["versions"].items())
        took = f"install {r.get('install_s', '-')} s, smoke {r.get('smoke_s', '-')} s"
        lines.append(f"{r['combo'].name:<26} {versions:<62} {took:<28} {r['failure'] or 'ok'}")
    lines += [f"python{minor}: not run, requires-python {project()['requires-python']}"
              for minor in excluded]
    return "\n".join(lines)


def test_the_wheel_works_on_every_python_with_the_oldest_and_newest_dependencies(
        built_dists, private_redis):
    allowed, excluded = interpreters()
    combos = combinations(allowed)
    tmp = Path(tempfile.mkdtemp(prefix="examcache-compat-"))
    uv = find_uv_bin()  # once: it reads sysconfig, which is not thread-safe
    pip_index()  # once (pip config list), before the threads ask for it
    try:
        with ThreadPoolExecutor(len(combos)) as pool:
            results = list(pool.map(
                lambda c: run_combination(uv, c, built_dists.wheel, private_redis.url, tmp), combos))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    table = report(results, excluded)
    print(f"\ncompatibility matrix:\n{table}")
    failed = [r for r in results if r["failure"] and must_pass(r["combo"])]
    details = "\n\n".join(f"== {r['combo'].name}: {r['failure']}\n{r['output'][-4000:]}"
                          for r in failed)
    assert not failed, f"{table}\n\n{details}"
    assert {(c.floor, c.hiredis) for c in combos} == {(True, False), (True, True),
                                                      (False, False), (False, True)}
    assert any(c.python.path == allowed[0].path for c in combos)
