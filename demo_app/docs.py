"""``/docs/``: the Sphinx site, when it has been built (``demo.docs_dir``).

``development.ini`` points ``demo.docs_dir`` at ``docs/_build/html`` of the checkout:
build it with ``.venv/bin/python -m sphinx docs docs/_build/html`` (the ``docs`` extra)
and the landing page links to it. Unset, or not built: no route, no link.
"""
from __future__ import annotations

import os


def includeme(config) -> None:
    path = str(config.get_settings().get("demo.docs_dir") or "").strip()
    if path and os.path.isfile(os.path.join(path, "index.html")):
        config.add_static_view("docs", path)
        config.registry["demo.docs"] = True
