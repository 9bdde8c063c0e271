"""The compatibility matrix's combinations and their virtual environments (issue 23), for
tests/test_compat_matrix.py. What runs and why: docs/testing.md#compatibility-matrix.

- the interpreters: every ``python3.X`` on PATH and under pyenv's versions, one per minor
  version (the suite's own first), those ``requires-python`` allows;
- per interpreter two environments: ``floor`` (uv ``--resolution lowest-direct``: the oldest
  version each of ``[project] dependencies`` allows) and ``newest`` (the newest allowed);
  hiredis alternates between them so that redis-py's floor and newest each run with and
  without it (the suite's interpreter makes up the cases the others did not cover);
- uv makes the environments, from its cache when it can (``--offline`` for the floor, whose
  versions are pinned), else from the registry pip is configured with (``pip config list``,
  PIP_* variables): an install that reaches no registry fails, never skips.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from .distributions import ROOT, clean_env, run, uv_env, wheel_requirement

#: the dependencies whose floor and newest version the matrix pins down and reports
AXES = ("redis", "hiredis", "sqlalchemy", "pyramid", "huey")


@dataclass(frozen=True)
class Interpreter:
    path: str
    version: Version

    @property
    def minor(self) -> str:
        return f"{self.version.major}.{self.version.minor}"


@dataclass(frozen=True)
class Combination:
    python: Interpreter
    floor: bool  # True: the oldest allowed versions; False: the newest
    hiredis: bool

    @property
    def name(self) -> str:
        return (f"py{self.python.minor}-{'floor' if self.floor else 'newest'}"
                f"-{'hiredis' if self.hiredis else 'no-hiredis'}")


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def floors(python: Version) -> dict[str, Version]:
    """The lowest version each ``[project] dependencies`` entry allows on ``python`` (its
    ``>=`` bound; an entry whose marker leaves ``python`` out does not count)."""
    environment = {"python_version": f"{python.major}.{python.minor}",
                   "python_full_version": str(python)}
    found = {}
    for line in project()["dependencies"]:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate(environment):
            continue
        lows = [Version(s.version) for s in req.specifier if s.operator in (">=", "==")]
        assert lows, f"{line}: no lower bound, so no floor to test"
        found[req.name.lower()] = max(lows)
    return found


def probe(candidate: str) -> Interpreter | None:
    """The interpreter ``candidate`` runs (a pyenv shim may run none), by its real path."""
    try:
        done = run([candidate, "-c", "import sys; print(sys.executable); "
                    "print('.'.join(map(str, sys.version_info[:3])))"], 30, env=clean_env())
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = done.stdout.split()
    if done.returncode != 0 or len(lines) != 2:
        return None
    return Interpreter(os.path.realpath(lines[0]), Version(lines[1]))


def candidates() -> dict[str, list[str]]:
    """``python3.X`` executables by minor version: on PATH (pyenv's shims, slow and maybe
    running nothing, last) and under pyenv's versions."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    found: dict[str, list[str]] = {}
    for directory in [*os.environ.get("PATH", "").split(os.pathsep), *map(str, sorted(
            pyenv.glob("3.*/bin")))]:
        for path in sorted(Path(directory or ".").glob("python3.*")):
            if re.fullmatch(r"python3\.\d+", path.name) and os.access(path, os.X_OK):
                found.setdefault(path.name.removeprefix("python"), []).append(str(path))
    for paths in found.values():
        paths.sort(key=lambda p: "/shims/" in p)
    return found


def first_working(paths: list[str]) -> Interpreter | None:
    return next((i for i in map(probe, paths) if i is not None), None)


def interpreters() -> tuple[list[Interpreter], list[str]]:
    """(allowed: one per minor version, the suite's own first; the minor versions
    requires-python excludes)."""
    allowed_spec = SpecifierSet(project()["requires-python"])
    own = probe(sys.executable)
    assert own is not None
    found = candidates()
    found.pop(own.minor, None)
    excluded = sorted((m for m in found if Version(m) not in allowed_spec), key=Version)
    wanted = [m for m in found if m not in excluded]
    with ThreadPoolExecutor(max(1, len(wanted))) as pool:
        others = [i for i in pool.map(lambda m: first_working(found[m]), wanted) if i]
    others.sort(key=lambda i: i.version)
    return [own, *(i for i in others if i.version in allowed_spec)], excluded


def combinations(allowed: list[Interpreter]) -> list[Combination]:
    """Two per interpreter (floor and newest, hiredis alternating); then the suite's
    interpreter makes up the redis-py x hiredis cases no one covered."""
    combos = []
    for index, python in enumerate(allowed):
        combos += [Combination(python, True, index % 2 == 1),
                   Combination(python, False, index % 2 == 0)]
    covered = {(c.floor, c.hiredis) for c in combos}
    combos += [Combination(allowed[0], floor, hiredis)
               for floor in (True, False) for hiredis in (False, True)
               if (floor, hiredis) not in covered]
    return combos


def requirements(combo: Combination, wheel: Path) -> list[str]:
    reqs = [wheel_requirement(wheel, ("hiredis",) if combo.hiredis else ())]
    if combo.floor:  # pinned: an --offline install from uv's cache gets them or fails
        # (a range let it settle for a newer release the cache held: SQLAlchemy 2.0.54)
        reqs += [f"{name}=={low}" for name, low in floors(combo.python.version).items()]
    return reqs


def make_env(uv: str, combo: Combination, wheel: Path, venv: Path) -> str:
    """The combination's virtual environment with the wheel installed; '' or what failed."""
    made = run([uv, "venv", "-q", "--python", combo.python.path, str(venv)], 120,
               env=uv_env(venv))
    if made.returncode != 0:
        return f"uv venv failed:\n{made.stderr[-3000:]}"
    install = [uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python"),
               *requirements(combo, wheel)]
    if combo.floor:
        install[3:3] = ["--resolution", "lowest-direct"]
        cached = run([*install, "--offline"], 300, env=uv_env(venv))
        if cached.returncode == 0:
            return ""
    done = run(install, 600, env=uv_env(venv))
    if done.returncode != 0:
        return f"uv pip install failed (registry reachable?):\n{done.stderr[-3000:]}"
    return ""


VERSIONS = ("import importlib.metadata as m\n"
            "for name in %r:\n"
            "    try: print(name, m.version(name))\n"
            "    except m.PackageNotFoundError: print(name, '-')\n" % (AXES,))


def installed_versions(python: Path) -> dict[str, str]:
    done = run([str(python), "-c", VERSIONS], 60, env=clean_env(python.parent.parent))
    assert done.returncode == 0, done.stderr
    return dict(line.split(" ", 1) for line in done.stdout.splitlines())


def version_problems(combo: Combination, versions: dict[str, str]) -> list[str]:
    """What the environment has that the combination did not ask for."""
    problems = []
    if (versions["hiredis"] != "-") != combo.hiredis:
        problems.append(f"hiredis {versions['hiredis']}, expected hiredis={combo.hiredis}")
    if combo.floor:
        for name, low in floors(combo.python.version).items():
            if name in AXES and Version(versions[name]) != low:
                problems.append(f"{name} {versions[name]} is not the floor {low}")
    return problems
