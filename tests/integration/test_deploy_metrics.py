"""Every metric and label that deploy/'s dashboard and alerts query, a real daemon exports.

A query naming a metric that does not exist is not an error in Prometheus or Grafana: it is
an empty panel, or an alert that can never fire. So a real ``mirror run`` copies from the
Hub-like registry, behind a proxy that sends Docker Hub's rate-limit headers (so the
ratelimit and reserve gauges exist), into a local registry; once its job has run, its /metrics
is scraped, and every PromQL expression in ``deploy/grafana/mirror.json``,
``deploy/prometheus/mirror.rules.yml`` and the PrometheusRule is taken apart: each metric
name must be a series there, each label it matches, groups by or templates on must be one of
that metric's labels, and each ``label="value"`` matcher must match a series.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.helpers import HUB_USER, Daemon, metric
from tests.support.images import Pusher, build_image
from tests.support.proxy import RegistryProxy
from tests.support.ratelimit import PullLimit
from tests.support.registry import RegistryProcess, free_port
from tests.support.tokenserver import HubRegistry

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "mirror.json"
RULES = ROOT / "deploy" / "prometheus" / "mirror.rules.yml"
OPERATOR_RULES = ROOT / "deploy" / "kubernetes" / "monitoring" / "prometheusrule.yaml"

PULL_LIMIT, PULL_RESERVE, INTERVAL_S = 100, 5, 3600

# PromQL's words that are not metric names: functions (followed by "(") and keywords.
FUNCTIONS = {
    "abs", "absent", "absent_over_time", "avg", "avg_over_time", "bottomk", "ceil",
    "changes", "clamp", "clamp_max", "clamp_min", "count", "count_over_time", "count_values",
    "day_of_month", "day_of_week", "delta", "deriv", "exp", "floor", "group",
    "histogram_quantile", "holt_winters", "hour", "idelta", "increase", "irate",
    "label_join", "label_replace", "last_over_time", "ln", "log2", "log10", "max",
    "max_over_time", "min", "min_over_time", "minute", "month", "predict_linear",
    "present_over_time", "quantile", "quantile_over_time", "rate", "resets", "round",
    "scalar", "sgn", "sort", "sort_desc", "sqrt", "stddev", "stddev_over_time", "stdvar",
    "stdvar_over_time", "sum", "sum_over_time", "time", "timestamp", "topk", "vector", "year",
}  # fmt: skip
KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}
KEYWORDS |= {"group_left", "group_right"}
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)?\s*\{([^}]*)\}")
MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
WORD = re.compile(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*")


@dataclass
class Query:
    """What one PromQL expression asks of the exporter."""

    expr: str
    metrics: set[str] = field(default_factory=set)
    labels: dict[str, set[str]] = field(default_factory=dict)  # metric -> labels it matches
    grouping: set[str] = field(default_factory=set)  # by/on/... labels: of any metric in it
    equal: set[tuple[str, str, str]] = field(default_factory=set)  # (metric, label, value)


def parse_query(expr: str) -> Query:
    """Metric names, matcher and grouping labels of a PromQL expression (as mirror's deploy
    files write them: no string literals outside selectors, no metric names in braces)."""
    query = Query(expr)
    text = re.sub(r"\[[^\]]*\]", " ", expr)  # ranges: [6h], [$__rate_interval]
    for match in SELECTOR.finditer(text):
        name, body = match.group(1), match.group(2)
        assert name, f"a selector without a metric name in {expr!r}"
        labels = query.labels.setdefault(name, set())
        for label, op, value in MATCHER.findall(body):
            labels.add(label)
            if op == "=" and "$" not in value:
                query.equal.add((name, label, value))
    text = SELECTOR.sub(lambda m: f" {m.group(1)} ", text)
    for match in GROUPING.finditer(text):
        query.grouping |= {label.strip() for label in match.group(1).split(",") if label.strip()}
    text = GROUPING.sub(" ", text)
    for match in WORD.finditer(text):
        word = match.group()
        if text[match.end() :].lstrip().startswith("("):
            assert word in FUNCTIONS, f"{word}() is not a PromQL function ({expr!r})"
        elif word not in KEYWORDS:
            query.metrics.add(word)
    query.metrics |= set(query.labels)
    assert query.metrics, f"no metric in {expr!r}"
    return query


def test_the_query_parser_finds_metrics_and_labels() -> None:
    query = parse_query(
        'histogram_quantile(0.9, sum by (entry, le) (increase(m_bucket{entry=~"$entry"}[1d])))'
        ' / on (entry) group_left max(x_total{result="failed"}) or time() - y'
    )

    assert query.metrics == {"m_bucket", "x_total", "y"}
    assert query.labels == {"m_bucket": {"entry"}, "x_total": {"result"}}
    assert query.grouping == {"entry", "le"}
    assert query.equal == {("x_total", "result", "failed")}


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, expression) of every panel query of the dashboard."""
    board = json.loads(DASHBOARD.read_text())
    return [
        (f"panel {panel['title']!r}", target["expr"])
        for panel in board["panels"]
        for target in panel.get("targets", [])
    ]


def dashboard_variables() -> list[tuple[str, str, str]]:
    """(name, metric, label) of every label_values(METRIC, LABEL) template variable."""
    board = json.loads(DASHBOARD.read_text())
    found = []
    for variable in board["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        match = re.fullmatch(r"label_values\(\s*(\w+)\s*,\s*(\w+)\s*\)", text)
        assert match, f"variable {variable['name']}: {text!r}"
        found.append((variable["name"], match.group(1), match.group(2)))
    return found


def alert_rules() -> list[tuple[str, dict[str, Any]]]:
    """(where, rule) of every rule in the plain rules file and the PrometheusRule."""
    found = []
    for path, groups in (
        (RULES, yaml.safe_load(RULES.read_text())["groups"]),
        (OPERATOR_RULES, yaml.safe_load(OPERATOR_RULES.read_text())["spec"]["groups"]),
    ):
        for group in groups:
            for rule in group["rules"]:
                name = rule.get("alert") or rule.get("record")
                found.append((f"{path.name}: {name}", rule))
    return found


@dataclass
class Exported:
    """The series of a /metrics page: per series name, its label names and label values."""

    labels: dict[str, set[str]]
    values: dict[str, set[tuple[str, str]]]

    @classmethod
    def parse(cls, text: str) -> Exported:
        labels: dict[str, set[str]] = {}
        values: dict[str, set[tuple[str, str]]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels.setdefault(sample.name, set()).update(sample.labels)
                values.setdefault(sample.name, set()).update(sample.labels.items())
        return cls(labels, values)

    def check(self, where: str, query: Query) -> list[str]:
        """What ``query`` asks for that is not here, one line each."""
        problems = []
        for name in sorted(query.metrics):
            if name not in self.labels:
                problems.append(f"{where}: no series {name}")
        known = [n for n in query.metrics if n in self.labels]
        for name, labels in query.labels.items():
            for label in sorted(labels - self.labels.get(name, set())):
                problems.append(f"{where}: {name} has no label {label}")
        in_any = set().union(*(self.labels[n] for n in known)) if known else set()
        for label in sorted(query.grouping - in_any):
            problems.append(f"{where}: no metric of {sorted(query.metrics)} has label {label}")
        for name, label, value in sorted(query.equal):
            if (label, value) not in self.values.get(name, set()):
                problems.append(f'{where}: no series {name}{{{label}="{value}"}}')
        return problems


@pytest.fixture
def scraped(
    tmp_path: Path,
    hub: HubRegistry,
    hub_pusher: Pusher,
    local: RegistryProcess,
    unique_repo: str,
    make_proxy: Callable[..., RegistryProxy],
    start_daemon: Callable[..., Daemon],
) -> tuple[str, str, str]:
    """A daemon's /metrics after one good run of its one entry: (text, entry, registry)."""
    hub_pusher.push(unique_repo, build_image("docker", seed=f"{unique_repo}:1"), "1.0")
    hub_pusher.push(unique_repo, build_image("oci", seed=f"{unique_repo}:2"), "2.0")
    proxy = make_proxy(hub.url, rules=[PullLimit(PULL_LIMIT)])
    port = free_port()
    config = tmp_path / "mirror.toml"
    config.write_text(
        f'target = "{local.host}"\n'
        f'[daemon]\nlisten = "127.0.0.1:{port}"\njitter = "0s"\n'
        f'[registries."{proxy.host}"]\nusername = "{HUB_USER}"\npassword_env = "HUB_PW"\n'
        f"pull_reserve = {PULL_RESERVE}\n"
        f'[defaults]\ninterval = "{INTERVAL_S}s"\n'
        f'[[mirrors]]\nsource = "{proxy.host}/{unique_repo}"\n'
    )
    daemon = start_daemon(config, port)
    entry = f"{proxy.host}/{unique_repo} -> {local.host}/{unique_repo}"
    daemon.wait_for("the first run", lambda: daemon.events("job run", job=entry))
    text: str = daemon.wait_for(
        "the run in /metrics",
        lambda: (
            (t := daemon.get("/metrics").text)
            and metric(t, "mirror_job_runs_total", entry=entry, outcome="success") >= 1
            and t
        ),
    )
    assert daemon.stop() == 0
    return text, entry, proxy.host


def test_the_daemon_exports_what_the_alerts_compare(scraped: tuple[str, str, str]) -> None:
    """The alerts compare gauges with each other: they must be in the units assumed."""
    text, entry, registry = scraped

    assert metric(text, "mirror_job_interval_seconds", entry=entry) == INTERVAL_S
    assert metric(text, "mirror_job_added_timestamp_seconds", entry=entry) > 0
    assert metric(text, "mirror_last_success_timestamp_seconds", entry=entry) >= metric(
        text, "mirror_job_added_timestamp_seconds", entry=entry
    )
    assert metric(text, "mirror_upstream_pull_reserve", registry=registry) == PULL_RESERVE
    assert metric(text, "mirror_upstream_ratelimit_limit", registry=registry) == PULL_LIMIT
    remaining = metric(text, "mirror_upstream_ratelimit_remaining", registry=registry)
    assert PULL_RESERVE < remaining < PULL_LIMIT


def test_every_dashboard_query_finds_its_metrics_and_labels(
    scraped: tuple[str, str, str],
) -> None:
    exported = Exported.parse(scraped[0])
    problems = []

    for where, expr in dashboard_queries():
        problems += exported.check(where, parse_query(expr))
    for name, metric_name, label in dashboard_variables():
        problems += exported.check(
            f"variable {name}", Query("", {metric_name}, {metric_name: {label}})
        )

    assert problems == []


def test_every_alert_finds_its_metrics_and_labels(scraped: tuple[str, str, str]) -> None:
    exported = Exported.parse(scraped[0])
    problems = []

    for where, rule in alert_rules():
        query = parse_query(rule["expr"])
        problems += exported.check(where, query)
        # The annotations' {{ $labels.X }} must be labels the alert's series carry.
        known = [n for n in query.metrics if n in exported.labels]
        carried = set().union(*(exported.labels[n] for n in known)) if known else set()
        for text in rule.get("annotations", {}).values():
            for label in re.findall(r"\$labels\.(\w+)", text):
                if label not in carried:
                    problems.append(f"{where}: the annotations use $labels.{label}")

    assert problems == []
