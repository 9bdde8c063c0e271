"""The package as users get it: build the sdist and the wheel from a copy of the sources, and
make fresh virtual environments that install the wheel (never the working tree, never
editable). Shared by tests/test_wheel.py and tests/test_minimal_install.py through the
session fixture ``built_dists`` (tests/conftest.py), so the wheel is built once per run;
tests/compat_matrix.py makes its environments with the same pip index (``uv_env``).

uv (the test extra) installs, in the build's isolated environments too, from the registry
pip is configured with (``pip config list``, PIP_* variables; every index searched for the
best version, as pip does): seconds where pip took minutes. pip stays in each environment
(``pip check``, ``pip show``). Needs PyPI: a missing network fails these tests, never skips."""
from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: what the sdist is built from: pyproject.toml names the rest (readme, license-files)
SOURCES = ("pyproject.toml", "setup.cfg", "README.md", "LICENSE", "docs/pypi.md",
           "pyramid_examcache")


@dataclass(frozen=True)
class Dists:
    sdist: Path
    wheel: Path


def run(cmd: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


def clean_env(venv: Path | None = None) -> dict[str, str]:
    """The environment of a child process that must not see the suite's venv or pytest's
    settings; with ``venv``, its ``bin`` first on PATH."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTEST_ADDOPTS")
           and not k.startswith("PYTEST_")}
    if venv is not None:
        env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


@functools.cache
def pip_index() -> dict[str, str]:
    """pip's index configuration (``pip config list`` shows PIP_* variables too, last) as
    uv's variables; uv then looks at every index for the best version, as pip does."""
    listed = run([sys.executable, "-m", "pip", "config", "list"], 60)
    assert listed.returncode == 0, listed.stderr
    values: dict[str, str] = {}
    for line in listed.stdout.splitlines():
        match = re.fullmatch(r"[^.]*\.([\w-]+)='(.*)'", line.strip())
        if match:
            values[match.group(1)] = match.group(2)  # later lines (env) win, as in pip
    env = {"UV_INDEX_STRATEGY": "unsafe-best-match"}
    for option, variable, sep in (("index-url", "UV_DEFAULT_INDEX", " "),
                                  ("extra-index-url", "UV_INDEX", " "),
                                  ("find-links", "UV_FIND_LINKS", ","),
                                  ("constraint", "UV_CONSTRAINT", " ")):
        if values.get(option):
            env[variable] = sep.join(values[option].split())
    cert = os.environ.get("PIP_CERT") or values.get("cert")
    if cert:
        env["SSL_CERT_FILE"] = cert
    return env


def uv_env(venv: Path | None = None) -> dict[str, str]:
    """``clean_env`` with pip's indexes for uv."""
    return {**clean_env(venv), **pip_index()}


def uv_bin() -> str:
    import uv

    return uv.find_uv_bin()


def copy_sources(dest: Path) -> Path:
    """The project's sources in ``dest`` (so that no build/ or egg-info lands in the tree)."""
    dest.mkdir(parents=True)
    for name in SOURCES:
        src = ROOT / name
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, target,
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, target)
    return dest


def build_dists(tmp: Path) -> Dists:
    """``python -m build``: the sdist, then the wheel built from that sdist (so a file the
    sdist leaves out is missing from the wheel too)."""
    src = copy_sources(tmp / "src")
    out = tmp / "dist"
    built = run([sys.executable, "-m", "build", "--installer", "uv", "--outdir", str(out),
                 str(src)], 600, env=uv_env())
    assert built.returncode == 0, \
        f"python -m build failed:\n{built.stdout[-4000:]}\n{built.stderr[-4000:]}"
    sdists, wheels = sorted(out.glob("*.tar.gz")), sorted(out.glob("*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, list(out.iterdir())
    return Dists(sdist=sdists[0], wheel=wheels[0])


def make_venv(path: Path, *requirements: str) -> Path:
    """A fresh virtual environment with ``requirements`` installed; its python."""
    made = run([uv_bin(), "venv", "-q", "--seed", "--python", sys.executable, str(path)], 120,
               env=uv_env(path))  # --seed: with pip
    assert made.returncode == 0, made.stdout + made.stderr
    py = path / "bin" / "python"
    pip = run([uv_bin(), "pip", "install", "-q", "--python", str(py), *requirements], 600,
              env=uv_env(path))
    assert pip.returncode == 0, f"pip install failed (PyPI reachable?):\n{pip.stderr[-6000:]}"
    checked = run([str(py), "-m", "pip", "check"], 120, env=clean_env(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    return py


def wheel_requirement(wheel: Path, extras: tuple[str, ...] = ()) -> str:
    """A pip requirement installing ``wheel`` (with ``extras``) by its path."""
    names = f"[{','.join(extras)}]" if extras else ""
    return f"pyramid_examcache{names} @ {wheel.resolve().as_uri()}"
