"""contrib/grafana: the dashboard and the Prometheus alert rules name only metrics the package
exports.

The exported names come from the running code, never from a list kept here: a web app on
``memory://`` with ``examcache.metrics_path`` answers its ``/metrics`` (the outbox on SQLite),
the consumer's registry is built as ``examcache-consumer --metrics-port`` builds it, and the
``# TYPE`` lines of both expositions give each family and its type (a counter's series ends
in ``_total``, a histogram's are ``_bucket``/``_sum``/``_count``). Every PromQL expression of
the dashboard (panels and template variables) and of the rule file is reduced to the metric
names it selects, and each must be exported. PyYAML comes with the ``docs`` extra
(myst-parser needs it), which the ``test`` extra includes.
"""
from __future__ import annotations

import copy
import json
import pathlib
import re
import shutil

import pytest
import yaml

GRAFANA = pathlib.Path(__file__).resolve().parent.parent / "contrib" / "grafana"
DASHBOARD = GRAFANA / "examcache-dashboard.json"
ALERTS = GRAFANA / "alerts.yml"

SERIES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
          "summary": ("", "_sum", "_count"), "gauge": ("",), "untyped": ("",)}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
                "or", "unless", "offset", "inf", "nan"}


# -- the names the package exports --------------------------------------------------------

def _types(exposition: str) -> dict[str, str]:
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", exposition, re.MULTILINE))


def _web_exposition(tmp_path, redis_url: str) -> str:
    """``/metrics`` of a web app on ``redis_url`` (with a Redis, the durable invalidation
    log's table too: its relay runs)."""
    from pyramid.config import Configurator
    from sqlalchemy import create_engine
    from webtest import TestApp

    from pyramid_examcache.cache import get_policy, invalidation_log
    from pyramid_examcache.mail import outbox

    db_url = f"sqlite:///{tmp_path / 'app.sqlite'}"
    engine = create_engine(db_url)
    outbox.metadata.create_all(engine)
    invalidation_log.metadata.create_all(engine)
    engine.dispose()
    settings = {"sqlalchemy.url": db_url, "examcache.redis_url": redis_url,
                "examcache.metrics_path": "/metrics", "mail.transport": "file",
                "mail.file_dir": str(tmp_path / "mail"),
                "mail.queue_url": f"sqlite:///{tmp_path / 'huey.sqlite'}"}
    with Configurator(settings=settings) as config:
        config.include("pyramid_tm")
        config.include("pyramid_examcache")
    app = TestApp(config.make_wsgi_app())
    try:
        return app.get("/metrics", status=200).text
    finally:
        get_policy(app.app.registry).close()


def _consumer_exposition(tmp_path) -> str:
    """The registry of ``examcache-consumer --metrics-port`` (``serve_metrics``): the process
    metrics, the consumer's counters and the outbox collector."""
    from prometheus_client import generate_latest
    from sqlalchemy import create_engine

    from pyramid_examcache.metrics.exposition import scrape_registry
    from pyramid_examcache.metrics.mail import OutboxCollector

    engine = create_engine(f"sqlite:///{tmp_path / 'app.sqlite'}")
    try:
        return generate_latest(scrape_registry([OutboxCollector(lambda: engine)])).decode()
    finally:
        engine.dispose()


def _series(family: str, kind: str) -> set[str]:
    """The series names of one ``# TYPE`` line (prometheus_client names a counter's family
    with or without ``_total``, depending on its version)."""
    if kind == "counter" and family.endswith("_total"):
        return {family}
    return {family + suffix for suffix in SERIES[kind]}


@pytest.fixture(scope="module", params=["memory", "redis"])
def exported(request, tmp_path_factory) -> set[str]:
    """The names a web process on ``memory://``, or on a private redis-server, and the
    consumer export."""
    from .conftest import PrivateRedis

    tmp_path = tmp_path_factory.mktemp("grafana")
    server = PrivateRedis() if request.param == "redis" else None
    if server is not None:
        server.start()
        request.addfinalizer(lambda: (server.stop(), shutil.rmtree(server.dir, True)))
    types = _types(_web_exposition(tmp_path, server.url if server else "memory://"))
    types.update(_types(_consumer_exposition(tmp_path)))
    names = {series for family, kind in types.items() if family.startswith("examcache_")
             for series in _series(family, kind)}
    # the exposition itself is read: the families the package documents are all there
    assert {"examcache_cache_hits_total", "examcache_cache_breaker_open",
            "examcache_mail_jobs", "examcache_mail_delivery_latency_seconds_bucket"} <= names
    return names


# -- the names the files use ----------------------------------------------------------------

def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (label matchers, grouping labels,
    strings, range durations, functions, keywords and Grafana variables left out)."""
    text = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'', "", expr)
    text = re.sub(r"\{[^{}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", text):
        word, call = match.groups()
        if not call and word.lower() not in PROMQL_WORDS:
            names.add(word)
    return names


def dashboard_queries(dashboard: dict) -> list[tuple[str, str]]:
    """``(where, expr)`` for every panel target (rows' nested panels too) and every query
    variable of the dashboard."""
    queries = []

    def walk(panels):
        for panel in panels:
            for target in panel.get("targets", ()):
                queries.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
            walk(panel.get("panels", ()))

    walk(dashboard["panels"])
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            query = query["query"] if isinstance(query, dict) else query
            inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", query)
            queries.append((f"variable {variable['name']}", inner.group(1) if inner else query))
    return queries


def alert_queries(rules: dict) -> list[tuple[str, str]]:
    return [(f"rule {rule.get('alert') or rule.get('record')}", rule["expr"])
            for group in rules["groups"] for rule in group["rules"]]


def unknown_metrics(queries: list[tuple[str, str]], exported: set[str]) -> list[str]:
    """Every query names at least one metric, and only exported ones."""
    problems = []
    for where, expr in queries:
        names = metric_names(expr)
        if not names:
            problems.append(f"{where}: no metric in {expr!r}")
        problems += [f"{where}: {name} is not exported" for name in sorted(names - exported)]
    return problems


def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def load_alerts() -> dict:
    return yaml.safe_load(ALERTS.read_text())


# -- the tests -------------------------------------------------------------------------------

def test_dashboard_is_grafana_10_with_a_prometheus_datasource_variable():
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] >= 36  # Grafana 9.x/10.x dashboards
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert all(p["datasource"]["uid"] == "${datasource}" for p in panels)
    assert all(t["datasource"]["uid"] == "${datasource}" for p in panels for t in p["targets"])
    titles = {p["title"] for p in panels}
    assert {"Hits and misses", "Hit ratio", "Early hits", "Near-cache bytes",
            "Mail jobs by state", "Breaker open", "Oldest waiting mail"} <= titles
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_alert_rules_are_a_prometheus_rule_file():
    rules = load_alerts()
    alerts = {rule["alert"]: rule for group in rules["groups"] for rule in group["rules"]}
    assert set(alerts) == {"ExamcacheBreakerOpen", "ExamcacheLeaseTimeouts",
                           "ExamcacheDurableInvalidationsPending",
                           "ExamcacheMailOldestWaiting", "ExamcacheMailFailureRate"}
    for name, rule in alerts.items():
        assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels",
                             "annotations"}, name
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        assert rule["expr"].count("(") == rule["expr"].count(")"), name
        if "for" in rule:
            assert re.fullmatch(r"\d+[smhd]", rule["for"]), name


def test_every_dashboard_query_names_an_exported_metric(exported):
    queries = dashboard_queries(load_dashboard())
    assert len(queries) >= 20
    assert unknown_metrics(queries, exported) == []


def test_every_alert_names_an_exported_metric(exported):
    queries = alert_queries(load_alerts())
    assert len(queries) == 5
    assert unknown_metrics(queries, exported) == []


def test_a_misspelled_metric_is_caught(exported):
    """The check itself can fail: one misspelled name in a copy of each file is reported."""
    dashboard = copy.deepcopy(load_dashboard())
    target = next(p for p in dashboard["panels"] if p["title"] == "Hit ratio")["targets"][0]
    target["expr"] = target["expr"].replace("examcache_cache_misses_total",
                                            "examcache_cache_miss_total", 1)
    assert unknown_metrics(dashboard_queries(dashboard), exported) == [
        "panel 'Hit ratio' A: examcache_cache_miss_total is not exported"]
    rules = load_alerts()
    rules["groups"][0]["rules"][0]["expr"] = "max(examcache_cache_breaker_opened) > 0"
    assert unknown_metrics(alert_queries(rules), exported) == [
        "rule ExamcacheBreakerOpen: examcache_cache_breaker_opened is not exported"]
    assert metric_names('sum by (le) (rate(x_bucket{a="b{c}"}[5m])) / on(job) y offset 5m') \
        == {"x_bucket", "y"}
