"""The package as users get it: the sdist and the wheel built by ``python -m build`` pass
``twine check``, hold every file of the package and the metadata PyPI shows, and the wheel,
installed (not editable) with its extras in a fresh virtual environment, serves the debug
toolbar's panel, the admin page and the metrics, and loads every template
(tests/wheel_smoke.py, run by that environment's python outside the working tree).

Needs PyPI (the build's isolated environment and pip): a missing network fails these
tests, it never skips."""
from __future__ import annotations

import email.parser
import re
import shutil
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.version import Version

from .distributions import ROOT, clean_env, make_venv, run, wheel_requirement

PACKAGE = ROOT / "pyramid_examcache"
EXTRAS = ("admin", "metrics", "debugtoolbar")
LONG_DESCRIPTION = ROOT / "docs" / "pypi.md"
#: the classifiers a user filters PyPI by (the license is the SPDX License-Expression)
CLASSIFIERS = {"Framework :: Pyramid", "Typing :: Typed", "Programming Language :: Python :: 3.11",
               "Programming Language :: Python :: 3 :: Only"}


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def package_files() -> set[str]:
    """Every file of the source package (``admin/templates/jobs.examcache_admin``), bytecode
    left out."""
    return {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}


def templates() -> list[str]:
    return sorted(name for name in package_files() if "/templates/" in f"/{name}")


@pytest.fixture(scope="module")
def wheel_python(built_dists, tmp_path_factory):
    """A fresh virtual environment with the wheel and its extras; its python."""
    venv = tmp_path_factory.mktemp("wheel") / "venv"
    yield make_venv(venv, wheel_requirement(built_dists.wheel, EXTRAS))
    shutil.rmtree(venv, ignore_errors=True)


def test_twine_check_passes_on_the_sdist_and_the_wheel(built_dists):
    checked = run([sys.executable, "-m", "twine", "check", "--strict",
                   str(built_dists.sdist), str(built_dists.wheel)], 300, env=clean_env())
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.count("PASSED") == 2, checked.stdout


def test_the_sdist_and_the_wheel_hold_every_file_of_the_package(built_dists):
    expected = package_files()
    assert {"py.typed", "debugtoolbar/templates/examcache.dbtmako"} <= expected
    with zipfile.ZipFile(built_dists.wheel) as wheel:
        names = set(wheel.namelist())
    in_wheel = {n.removeprefix("pyramid_examcache/") for n in names
                if n.startswith("pyramid_examcache/")}
    assert expected - in_wheel == set(), "missing from the wheel"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), sorted(names)
    with tarfile.open(built_dists.sdist) as sdist:
        members = {m.name.split("/", 1)[1] for m in sdist.getmembers() if "/" in m.name}
    in_sdist = {m.removeprefix("pyramid_examcache/") for m in members
                if m.startswith("pyramid_examcache/")}
    assert expected - in_sdist == set(), "missing from the sdist"
    assert {"LICENSE", "docs/pypi.md", "pyproject.toml"} <= members


def wheel_metadata(wheel: Path):
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return email.parser.Parser().parsestr(archive.read(name).decode())


def test_the_wheel_metadata_is_what_pypi_shows(built_dists):
    meta = wheel_metadata(built_dists.wheel)
    assert meta["Name"] == "pyramid_examcache" and meta["Version"] == project()["version"]
    assert meta["License-Expression"] == "MIT" and meta.get_all("License-File") == ["LICENSE"]
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    assert CLASSIFIERS <= set(meta.get_all("Classifier"))
    assert any(c.startswith("Development Status :: ") for c in meta.get_all("Classifier"))
    assert meta["Requires-Python"] == ">=3.11" and meta["Author"]
    assert set(EXTRAS) <= set(meta.get_all("Provides-Extra"))
    assert meta["Description-Content-Type"] == "text/markdown"
    assert meta.get_payload().strip() == LONG_DESCRIPTION.read_text().strip()


def test_smoke_on_the_wheel_installed_with_its_extras(built_dists, wheel_python, tmp_path):
    shutil.copy2(ROOT / "tests" / "wheel_smoke.py", tmp_path / "wheel_smoke.py")
    names = templates()
    smoke = run([str(wheel_python), "wheel_smoke.py", project()["version"], *names], 300,
                cwd=tmp_path, env=clean_env(wheel_python.parent.parent))
    output = smoke.stdout + smoke.stderr
    assert smoke.returncode == 0, output[-8000:]
    done = set(smoke.stdout.splitlines())
    assert {f"ok template {name}" for name in names} <= done, output
    assert {"ok debugtoolbar panel", "ok admin page", "ok metrics", "ok entry points",
            "SMOKE OK"} <= done, output
    editable = run([str(wheel_python), "-m", "pip", "show", "-f", "pyramid_examcache"], 120,
                   env=clean_env(wheel_python.parent.parent))
    assert "Editable project location" not in editable.stdout and editable.returncode == 0


# -- the long description (docs/pypi.md) and the changelog -----------------------------------

def links(markdown: str) -> list[str]:
    """Every link target of a Markdown text: inline links and images, reference
    definitions, autolinks and HTML ``href``/``src`` attributes."""
    return (re.findall(r"\]\(\s*<?([^)\s>]+)", markdown)
            + re.findall(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", markdown, re.M)
            + re.findall(r"<([a-z][a-z0-9+.-]*:[^>\s]+)>", markdown)
            + re.findall(r"""(?:href|src)\s*=\s*["']([^"']+)""", markdown))


def test_the_link_finder_finds_relative_links():
    planted = ("[a](docs/a.md) ![b](b.png)\n[c]: ../c.md\n<a href='d.html'>d</a> "
               "<https://e.example/> [f](https://f.example/x)")
    assert sorted(links(planted)) == ["../c.md", "b.png", "d.html", "docs/a.md",
                                      "https://e.example/", "https://f.example/x"]


def test_the_long_description_has_no_relative_links():
    targets = links(LONG_DESCRIPTION.read_text())
    relative = [t for t in targets if not re.match(r"https://", t)]
    assert relative == [], f"{LONG_DESCRIPTION.name}: links PyPI cannot follow"


def test_the_long_description_installs_with_pip_first():
    text = LONG_DESCRIPTION.read_text()
    commands = re.findall(r"```sh\n(.*?)```", text, re.S)
    assert commands and commands[0].strip() == "pip install pyramid_examcache"
    assert text.index("pip install pyramid_examcache") < text.index("```python")
    assert "-e ." not in text and "demo_app" not in text
    assert project()["readme"] == "docs/pypi.md"


def test_the_changelog_starts_with_this_version():
    headings = re.findall(r"^(\S[^\n]*)\n-{3,}$", (ROOT / "CHANGES.rst").read_text(), re.M)
    current = Version(project()["version"])
    assert headings[0] == f"{current.base_version} (unreleased)", headings
    assert current.is_prerelease  # an unreleased version is never published as the release
    released = re.fullmatch(r"(\S+) \((\d{4}-\d\d-\d\d)\)", headings[1])
    assert released and Version(released.group(1)) < current, headings


def test_the_package_version_is_the_distribution_version():
    import importlib.metadata

    import pyramid_examcache

    assert pyramid_examcache.__version__ == importlib.metadata.version("pyramid_examcache")
    assert pyramid_examcache.__version__ == project()["version"]
