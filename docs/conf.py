"""Sphinx configuration: narrative pages in Markdown (MyST, partly included from the
README so the two never disagree) and the API reference from the docstrings."""
project = "pyramid_examcache"
author = "the pyramid_examcache developers"
copyright = "2026, " + author
extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.viewcode"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3
# the README links to files of the repository (demo_app/README.md, bench/RESULTS.md)
suppress_warnings = ["myst.xref_missing", "myst.header",
                     # README code blocks use "…" for what is left out
                     "misc.highlighting_failure"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
html_theme = "alabaster"
html_static_path: list[str] = []
