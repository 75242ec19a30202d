"""deploy/: the Prometheus config, alert rules and Grafana dashboard refer only to metrics Mark
exports, and parse as their tools expect; docs/metrics.md lists exactly the metrics the code
defines. (tests/test_prometheus.py evaluates the rules and the dashboard on a real Prometheus.)"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import yaml
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

import frontend.metrics  # noqa: F401  (registers the inference metrics)
import frontend.observability  # noqa: F401
import mark.apps.control.metrics  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exported_series() -> set[str]:
    names: set[str] = set()
    for family in REGISTRY.collect():
        if family.name.startswith("mark_"):
            names.update(family.name + s for s in SUFFIXES.get(family.type, ("",)))
    return names


def referenced(expr: str) -> set[str]:
    return set(re.findall(r"\bmark_[a-z_]+", expr))


def test_dashboard_queries_use_exported_metrics() -> None:
    dashboard = json.loads((DEPLOY / "grafana/dashboards/mark.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 10
    series = exported_series()
    for expr in exprs:
        assert referenced(expr), expr
        assert referenced(expr) <= series, (expr, referenced(expr) - series)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_prometheus_config_and_rules_parse_and_use_exported_metrics() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    job = config["scrape_configs"][0]
    assert job["metrics_path"] == "/metrics"
    rules = yaml.safe_load((DEPLOY / "prometheus/mark-rules.yml").read_text())
    series = exported_series()
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    assert len(alerts) >= 6
    for rule in alerts:
        assert rule["alert"] and rule["annotations"]["summary"]
        assert referenced(rule["expr"]) <= series, rule["expr"]
    for path in (DEPLOY / "grafana/provisioning").rglob("*.yml"):
        assert yaml.safe_load(path.read_text())["apiVersion"] == 1


def defined_metrics() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Every metric the code defines, found in each module of Mark's packages that imports
    prometheus_client at its top: the name as stored (a counter's with `_total`) -> its type and
    label names."""
    found: dict[str, tuple[str, tuple[str, ...]]] = {}
    for package in ("frontend", "mark", "provisioner", "predictors", "traces"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if not re.search(r"^from prometheus_client import", path.read_text(), re.M):
                continue
            module = importlib.import_module(".".join(path.relative_to(ROOT).with_suffix("").parts))
            for value in vars(module).values():
                if isinstance(value, MetricWrapperBase):
                    kind = value._type
                    name = value._name + ("_total" if kind == "counter" else "")
                    found[name] = (kind, tuple(value._labelnames))
    return found


def documented_metrics() -> dict[str, tuple[str, tuple[str, ...]]]:
    """The rows of docs/metrics.md's metric tables: | `name` | type | `label`, ... | meaning |."""
    found: dict[str, tuple[str, tuple[str, ...]]] = {}
    for line in (ROOT / "docs/metrics.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        name = re.fullmatch(r"`(mark_[a-z_]+)`", cells[0])
        if name:
            assert len(cells) == 4 and name.group(1) not in found, line
            found[name.group(1)] = (cells[1], tuple(re.findall(r"`(\w+)`", cells[2])))
    return found


def test_docs_list_every_metric_with_its_type_and_labels() -> None:
    defined = defined_metrics()
    assert len(defined) >= 20 and {"counter", "gauge", "histogram"} == {
        kind for kind, _ in defined.values()
    }
    assert documented_metrics() == defined
    series = exported_series()
    assert {n for n, (kind, _) in defined.items() if kind != "histogram"} <= series
