"""deploy/: the Prometheus config, alert rules and Grafana dashboard refer only to metrics Mark
exports, and parse as their tools expect."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

import frontend.metrics  # noqa: F401  (registers the inference metrics)
import frontend.observability  # noqa: F401
import mark.apps.control.metrics  # noqa: F401

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
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
    for rule in rules["groups"][0]["rules"]:
        assert rule["alert"] and rule["annotations"]["summary"]
        assert referenced(rule["expr"]) <= series, rule["expr"]
    for path in (DEPLOY / "grafana/provisioning").rglob("*.yml"):
        assert yaml.safe_load(path.read_text())["apiVersion"] == 1
