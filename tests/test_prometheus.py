"""deploy/prometheus and the Grafana dashboard checked by a real Prometheus (Debian's
`prometheus` package, 2.42 in bookworm): `promtool check` passes on the config and the rules,
`promtool test rules` shows each alert firing when it should and not otherwise, and on a live
`mark serve --demo` under a little load (answers, spills, a budget) every dashboard expression
and every alert's quantity returns data through the HTTP query API.

An alert's expression is empty while it does not fire, so each is evaluated twice: as written (it
must parse and evaluate) and with its comparisons made `bool` (`a > 0.9` -> `a > bool 0.9`), which
returns 0 or 1 for every series the comparison sees: empty there means a quantity is missing, the
alert could never fire. The rules make that possible by giving rare events a 0 (`or total * 0`,
`or vector(0)`) instead of no series (deploy/prometheus/mark-rules.yml).

Prometheus missing: the set-up installs it with apt-get when it may (root; tests/apt.py), else
the tests skip with the reason; MARK_REQUIRE_PROMETHEUS=1 (CI, `.ci/run`) turns the skip into a
failure, as MARK_REQUIRE_PG does for PostgreSQL (tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import aiohttp
import pytest
import yaml

from tests.apt import apt_install, skip_or_fail
from tests.conftest import Served, free_port
from tests.test_deploy import DEPLOY
from tests.test_serve_inference import README_BODY

REQUIRE_ENV = "MARK_REQUIRE_PROMETHEUS"
RULES = DEPLOY / "prometheus/mark-rules.yml"
CONFIG = DEPLOY / "prometheus/prometheus.yml"
DASHBOARD = DEPLOY / "grafana/dashboards/mark.json"

# A comparison between two spaces (label matchers such as {met="true"} have none): made `bool`.
_COMPARISON = re.compile(r"(\s)(==|!=|>=|<=|>|<)(\s+)(?!bool\b)")


def _skip_or_fail(reason: str) -> NoReturn:
    skip_or_fail(reason, REQUIRE_ENV)


def _install_with_apt() -> str | None:
    """apt-get install Debian's prometheus; None when done, else why not. The package starts
    its service (on :9090) where an init system allows: stopped again, the tests run their own."""
    why = apt_install("prometheus")
    if why is not None:
        return why
    for stop in (["systemctl", "stop", "prometheus"], ["service", "prometheus", "stop"]):
        if shutil.which(stop[0]):
            subprocess.run(stop, capture_output=True, timeout=60)
    return None


@pytest.fixture(scope="module")
def binaries() -> tuple[str, str]:
    """(prometheus, promtool), installed when missing and allowed."""
    if not (shutil.which("prometheus") and shutil.which("promtool")):
        why = _install_with_apt()
        if why is not None:
            _skip_or_fail(f"Prometheus is not installed and {why}")
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if prometheus is None or promtool is None:
        _skip_or_fail("the prometheus package put no prometheus and promtool on PATH")
    return prometheus, promtool


def _promtool(promtool: str, *args: str | Path) -> str:
    done = subprocess.run([promtool, *map(str, args)], capture_output=True, text=True, timeout=120)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    return out


def _local_config(target: str, rules: Path) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml pointed at one local target and the repository's rules,
    scraping and evaluating every second."""
    config = yaml.safe_load(CONFIG.read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(rules)]
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [target]}]
    return config


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _as_bool(expr: str) -> str:
    return _COMPARISON.sub(r"\1\2 bool\3", expr)


def test_the_bool_rewrite_turns_comparisons_not_label_matchers() -> None:
    expr = 'sum(rate(x{met="true",a!="b"}[5m]))\n  > clamp_min(y, 3) and on (m) z >= bool 1'
    assert _as_bool(expr) == (
        'sum(rate(x{met="true",a!="b"}[5m]))\n  > bool clamp_min(y, 3) and on (m) z >= bool 1'
    )


def test_promtool_passes_the_config_and_the_rules(
    binaries: tuple[str, str], tmp_path: Path
) -> None:
    _, promtool = binaries
    # As deployed, the rules sit where compose mounts them (/etc/prometheus): syntax only.
    _promtool(promtool, "check", "config", "--syntax-only", CONFIG)
    local = tmp_path / "prometheus.yml"
    local.write_text(yaml.safe_dump(_local_config("127.0.0.1:8000", RULES)))
    out = _promtool(promtool, "check", "config", "--lint-fatal", local)
    assert f"SUCCESS: {len(_rules())} rules found" in out, out
    out = _promtool(promtool, "check", "rules", "--lint-fatal", RULES)
    assert f"SUCCESS: {len(_rules())} rules found" in out, out


def _summary(alert: str, **labels: str) -> str:
    (rule,) = [r for r in _rules() if r["alert"] == alert]
    text = str(rule["annotations"]["summary"])
    for key, value in labels.items():
        text = text.replace(f"{{{{ $labels.{key} }}}}", value)
    assert "{{" not in text, text
    return text


def _fires(alert: str, eval_time: str, labels: dict[str, str], severity: str) -> dict[str, Any]:
    return {
        "eval_time": eval_time,
        "alertname": alert,
        "exp_alerts": [
            {
                "exp_labels": {**labels, "severity": severity},
                "exp_annotations": {"summary": _summary(alert, **labels)},
            }
        ],
    }


def _quiet(alert: str, eval_time: str) -> dict[str, Any]:
    return {"eval_time": eval_time, "alertname": alert, "exp_alerts": []}


def _series(name: str, per_minute: float) -> dict[str, str]:
    """A counter rising `per_minute` for 8 hours (1-minute samples)."""
    return {"series": name, "values": f"0+{per_minute}x480"}


# What each alert should do, on synthetic series (`promtool test rules`): model `hot` misses
# 15% of its p99 SLO (burn 15: both burn-rate alerts) and spills 30%; model `ok` misses 0.5%
# (burn 0.5) and never spills (its spill ratio is the `or total * 0` fallback).
RULE_TESTS: list[dict[str, Any]] = [
    {
        "interval": "1m",
        "input_series": [
            _series('mark_inference_slo_total{model="hot",met="true"}', 85),
            _series('mark_inference_slo_total{model="hot",met="false"}', 15),
            _series('mark_inference_slo_total{model="ok",met="true"}', 199),
            _series('mark_inference_slo_total{model="ok",met="false"}', 1),
            {"series": 'mark_slo_objective_ratio{model="hot"}', "values": "0.99x480"},
            {"series": 'mark_slo_objective_ratio{model="ok"}', "values": "0.99x480"},
            _series('mark_inference_requests_total{model="hot",path="instance",code="200"}', 70),
            _series('mark_inference_requests_total{model="hot",path="serverless",code="200"}', 30),
            _series('mark_inference_requests_total{model="ok",path="instance",code="200"}', 200),
            _series('mark_spill_total{model="hot",reason="deadline"}', 30),
        ],
        "alert_rule_test": [
            _fires("MarkSloBurnRateFast", "70m", {"model": "hot"}, "page"),
            _fires("MarkSloBurnRateSlow", "7h", {"model": "hot"}, "page"),
            _fires("MarkSpillingHeavily", "40m", {"model": "hot"}, "ticket"),
            _quiet("MarkBudgetHeadroomLow", "1h"),  # no budget series: no budget, no alert
            _quiet("MarkInterruptionStorm", "1h"),  # no interruption series at all
            _quiet("MarkControlLoopErrors", "1h"),
        ],
    },
    {
        # 95% of a 10 USD/h budget, 5 of 10 spot instances taken back in half an hour, and
        # control-loop errors: each fires. Then at 4 h the spend drops, the interruptions and
        # errors stop: each is quiet again.
        "interval": "1m",
        "input_series": [
            {"series": "mark_spend_usd_per_hour", "values": "9.5x180 5x120"},
            {"series": "mark_budget_usd_per_hour", "values": "10x300"},
            {
                "series": 'mark_instances{model="m",instance_type="c5.large",market="spot",'
                'state="running"}',
                "values": "10x300",
            },
            {"series": 'mark_interruptions_total{kind="notice"}', "values": "0x30 0+1x5 5x265"},
            {"series": 'mark_interruptions_total{kind="vanished"}', "values": "0x300"},
            {
                "series": 'mark_control_actions_total{action="error"}',
                "values": "0x30 0+1x5 5x265",
            },
        ],
        "alert_rule_test": [
            _fires("MarkBudgetHeadroomLow", "1h", {}, "ticket"),
            _quiet("MarkBudgetHeadroomLow", "4h"),
            _fires("MarkInterruptionStorm", "40m", {}, "ticket"),
            _quiet("MarkInterruptionStorm", "4h"),
            _fires("MarkControlLoopErrors", "40m", {}, "ticket"),
            _quiet("MarkControlLoopErrors", "4h"),
        ],
    },
    {
        # 2 interruptions in 30 minutes is under the floor of 3; spend at 80% of the budget.
        "interval": "1m",
        "input_series": [
            {"series": "mark_spend_usd_per_hour", "values": "8x120"},
            {"series": "mark_budget_usd_per_hour", "values": "10x120"},
            {"series": 'mark_interruptions_total{kind="notice"}', "values": "0x30 0+1x2 2x88"},
        ],
        "alert_rule_test": [
            _quiet("MarkBudgetHeadroomLow", "1h"),
            _quiet("MarkInterruptionStorm", "40m"),
        ],
    },
]


def test_each_alert_fires_when_it_should(binaries: tuple[str, str], tmp_path: Path) -> None:
    _, promtool = binaries
    tested = {t["alertname"] for case in RULE_TESTS for t in case["alert_rule_test"]}
    assert tested == {r["alert"] for r in _rules()}
    spec = tmp_path / "mark-rules-test.yml"
    spec.write_text(
        yaml.safe_dump(
            {"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": RULE_TESTS}
        )
    )
    out = _promtool(promtool, "test", "rules", spec)
    assert "SUCCESS" in out, out


# ---- a live `mark serve --demo` ----------------------------------------------------------------

# A tick every 3 s (forecast, objectives and decisions are exported by ticks) with the cheap
# EWMA forecaster, a budget for the headroom alert, and a small local serverless pool.
SERVE_CONFIG = """
[control]
tick_s = 3
[forecast]
predictor = "ewma"
[planner]
budget_per_hour = 5.0
[serverless]
provider = "local"
concurrency = 2
memory_mb = 1024
[spill]
ledger_flush_s = 0.2
"""


class Prometheus:
    """A Prometheus on a free loopback port with its own storage, stopped by the fixture."""

    def __init__(self, binary: str, config: dict[str, Any], workdir: Path) -> None:
        workdir.mkdir()
        config_path = workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        self.base_url = f"http://127.0.0.1:{free_port()}"
        self.log_path = workdir / "prometheus.log"
        with open(self.log_path, "wb") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address={self.base_url.removeprefix('http://')}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def get(self, path: str, **params: str) -> dict[str, Any]:
        url = f"{self.base_url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return dict(json.load(r))
        except urllib.error.HTTPError as exc:  # a bad query: 400 with a JSON error
            with exc:
                return dict(json.load(exc))

    def query(self, expr: str) -> dict[str, Any]:
        return self.get("/api/v1/query", query=expr)

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited:\n{self.log_path.read_text()}")
            try:
                with urllib.request.urlopen(self.base_url + "/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"prometheus did not become ready:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def scraped(
    binaries: tuple[str, str], serve_factory: Any, tmp_path: Path
) -> Iterator[tuple[Served, Prometheus]]:
    served: Served = serve_factory(
        f"sqlite+aiosqlite:///{tmp_path / 'mark.db'}",
        extra_args=("--demo",),
        config_text=SERVE_CONFIG,
    )
    target = served.base_url.removeprefix("http://")
    prometheus = Prometheus(binaries[0], _local_config(target, RULES), tmp_path / "prometheus")
    try:
        prometheus.wait_ready()
        yield served, prometheus
    finally:
        prometheus.stop()


async def _load(served: Served) -> dict[str, int]:
    """A few hundred answers from the demo instance, eight at a time over several seconds (so that
    several scrapes see the counters rise), and a burst to a model registered just before, which
    has no instance yet: it spills (cold fleet)."""
    cold = {"name": "cold", "slo": {"latency_ms": 20_000, "percentile": 0.99},
            "backend": {"protocol": "kserve-v2", "artifact": "builtin:mlp"}}  # fmt: skip
    statuses: dict[str, int] = {}
    async with aiohttp.ClientSession() as s:
        async with asyncio.timeout(60):
            while True:  # the demo instance is running
                url = f"{served.base_url}/admin/v1/instances?model=demo"
                async with s.get(url, headers=served.auth) as r:
                    doc = await r.json()
                if any(i["state"] == "running" for i in doc["instances"]):
                    break
                await asyncio.sleep(0.2)
        url = f"{served.base_url}/admin/v1/models"
        async with s.post(url, json=cold, headers=served.auth) as r:
            assert r.status == 201, await r.text()
        await asyncio.sleep(1.0)  # the HTTP workers poll the database every 0.5 s

        async def infer(model: str) -> None:
            async with s.post(f"{served.base_url}/v2/models/{model}/infer", json=README_BODY) as r:
                await r.read()
                key = f"{model} {r.status}"
                statuses[key] = statuses.get(key, 0) + 1

        spilled = asyncio.gather(*(infer("cold") for _ in range(12)))
        for _ in range(40):
            await asyncio.gather(*(infer("demo") for _ in range(8)))
            await asyncio.sleep(0.1)
        await spilled
    return statuses


def _has_data(answer: dict[str, Any]) -> bool:
    """At least one sample with a number: NaN is what 0 / 0 gives, a rate over a window in which
    no counter rose."""
    if answer.get("status") != "success":
        return False
    return any(sample["value"][1] != "NaN" for sample in answer["data"]["result"])


async def test_every_dashboard_and_alert_expression_returns_data_from_a_live_mark(
    scraped: tuple[Served, Prometheus],
) -> None:
    served, prometheus = scraped
    async with asyncio.timeout(30):  # scraped before the load, so that every rate has a start
        while not _has_data(prometheus.query('up{job="mark"} == 1')):
            await asyncio.sleep(0.2)
    statuses = await _load(served)
    assert statuses.get("demo 200", 0) >= 300 and statuses.get("cold 200") == 12, statuses

    dashboard = json.loads(DASHBOARD.read_text())
    panels = {
        f"panel {p['title']!r} {t['refId']}": t["expr"] for p in dashboard["panels"]
        for t in p["targets"]
    }  # fmt: skip
    alerts = {f"alert {r['alert']}": r["expr"] for r in _rules()}
    quantities = {f"{name} (bool)": _as_bool(expr) for name, expr in alerts.items()}
    checks = {**panels, **quantities, "spilled": 'sum(mark_spill_total{model="cold"})'}
    # Prometheus scrapes every second: wait until it has scraped the load's rise.
    answers: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        answers = {name: prometheus.query(expr) for name, expr in checks.items()}
        if all(_has_data(a) for a in answers.values()):
            break
        await asyncio.sleep(1.0)
    missing = {name: (checks[name], a) for name, a in answers.items() if not _has_data(a)}
    assert not missing, (missing, prometheus.get("/api/v1/targets"))
    for name, expr in alerts.items():  # as written: parses and evaluates (empty: not firing)
        answer = prometheus.query(expr)
        assert answer["status"] == "success", (name, answer)
    # ...and the rule manager evaluates every rule without error.
    groups = prometheus.get("/api/v1/rules")["data"]["groups"]
    loaded = {rule["name"]: rule for group in groups for rule in group["rules"]}
    assert set(loaded) == {r["alert"] for r in _rules()}
    for name, rule in loaded.items():
        assert rule["health"] == "ok" and not rule.get("lastError"), (name, rule)
