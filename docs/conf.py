"""Sphinx configuration: narrative pages in Markdown (MyST, partly included from the
README so the two never disagree) and the API reference from the docstrings."""
import pathlib
import sys

project = "pyramid_examcache"
author = "the pyramid_examcache developers"
copyright = "2026, " + author
# docs/_ext/examcache_settings.py: the configuration reference, from the settings tables
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent / "_ext"))
extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.viewcode", "examcache_settings"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
# pypi.md is the long description on PyPI (pyproject.toml's readme), not a page of the site
exclude_patterns = ["_build", "pypi.md"]
myst_heading_anchors = 3
# the README links to files of the repository (demo_app/README.md, bench/RESULTS.md)
suppress_warnings = ["myst.xref_missing", "myst.header",
                     # README code blocks use "…" for what is left out
                     "misc.highlighting_failure"]
autodoc_member_order = "bysource"
# types in the text ("Parameters: key (str)"), shown by their short names (Session, not
# sqlalchemy.orm.session.Session); autodoc resolves the strings that the package's
# `from __future__ import annotations` leaves (tests/test_docs.py checks the rendered HTML)
autodoc_typehints = "description"
autodoc_typehints_format = "short"
python_use_unqualified_type_names = True
html_theme = "furo"
html_title = "pyramid_examcache"
html_static_path = ["_static"]
