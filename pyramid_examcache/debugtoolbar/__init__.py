"""A pyramid_debugtoolbar panel: what this request did with the cache and the mailer.

Enable it the toolbar's way, in the .ini::

    pyramid.includes = pyramid_debugtoolbar
    debugtoolbar.includes = pyramid_examcache.debugtoolbar

or from code with ``config.include('pyramid_examcache.debugtoolbar')`` (which adds it to
``debugtoolbar.includes``). The panel lists every ``request.cache`` operation -- key, tags,
HIT / MISS / WAIT / BYPASS / stored / refused, bytes, milliseconds --, the invalidations
queued and then applied after the commit (or dropped by an abort), and the mails queued
(see :mod:`pyramid_examcache.trace`).
"""
from __future__ import annotations

from typing import Any

from pyramid_debugtoolbar.panels import DebugPanel

from ..trace import ENVIRON_KEY, Trace

_ = lambda text: text  # noqa: E731 -- the toolbar's own convention for translatable titles

MODULE = "pyramid_examcache.debugtoolbar"


class ExamcachePanel(DebugPanel):
    name = "examcache"
    template = "pyramid_examcache.debugtoolbar:templates/examcache.dbtmako"
    title = _("pyramid_examcache")
    nav_title = _("Cache & mail")

    def __init__(self, request: Any) -> None:
        self.trace = Trace()
        request.environ[ENVIRON_KEY] = self.trace

    @property
    def has_content(self) -> bool:
        t = self.trace
        return bool(t.operations or t.invalidations or t.mails)

    @property
    def nav_subtitle(self) -> str:
        ops = self.trace.operations
        hits = sum(1 for op in ops if "hits" in op.events)
        return f"{hits}/{len(ops)} hits" if ops else ""

    def process_response(self, response: Any) -> None:
        self.trace.settle()  # the transaction has ended (the toolbar's tween is over pyramid_tm)
        self.data = {"operations": self.trace.operations,
                     "invalidations": self.trace.invalidations,
                     "mails": self.trace.mails}


def includeme(config: Any) -> None:
    """Add the panel, in whichever configuration this runs: the toolbar's own (listed in
    ``debugtoolbar.includes``), or the application's, before or after
    ``config.include('pyramid_debugtoolbar')``."""
    if hasattr(config, "add_debugtoolbar_panel"):  # the toolbar's configuration
        config.add_debugtoolbar_panel(ExamcachePanel)
        return
    from pyramid_debugtoolbar.toolbar import IPanelMap, IToolbarWSGIApp

    toolbar_app = config.registry.queryUtility(IToolbarWSGIApp)
    if toolbar_app is not None:  # the toolbar is set up already: add the panel to it
        toolbar_app.registry.getUtility(IPanelMap)[(ExamcachePanel.name, False)] = ExamcachePanel
        return
    settings = config.registry.settings  # the toolbar reads its includes when it starts
    includes = settings.get("debugtoolbar.includes") or ()
    if isinstance(includes, str):
        includes = includes.split()
    if MODULE not in includes:
        settings["debugtoolbar.includes"] = [*includes, MODULE]
