"""The admin REST API over real HTTP against a real `mark serve`, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.conftest import Served, stop_serve_process

MODEL = {
    "name": "inception",
    "slo": {"latency_ms": 600, "percentile": 0.98},
    "backend": {"protocol": "tfserving", "artifact": "builtin:mlp"},
    "profiles": {
        "c5.large": {"instance_type": "c5.large", "latency_ms": {"1": 210.0}, "max_batch": 1},
        "p2.xlarge": {
            "instance_type": "p2.xlarge",
            "latency_ms": {"1": 120.0, "8": 200.0},
            "max_batch": 16,
            "parallelism": 1,
        },
    },
    "max_batch": 16,
}


def call(
    served: Served,
    method: str,
    path: str,
    body: Any = None,
    *,
    auth: bool = True,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(served.base_url + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if auth:
        for k, v in served.auth.items():
            req.add_header(k, v)
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            payload = r.read()
            return r.status, json.loads(payload) if payload else None
    except urllib.error.HTTPError as e:
        payload = e.read()
        return e.code, json.loads(payload) if payload else None


def test_model_round_trip_survives_restart(serve_factory: Any, db_url: str) -> None:
    served = serve_factory(db_url)
    status, created = call(served, "POST", "/admin/v1/models", MODEL)
    assert status == 201, created
    assert created["profiles"]["p2.xlarge"]["latency_ms"] == {"1": 120.0, "8": 200.0}

    status, got = call(served, "GET", "/admin/v1/models/inception")
    assert status == 200 and got == created

    status, patched = call(
        served,
        "PATCH",
        "/admin/v1/models/inception",
        {"slo": {"latency_ms": 800, "percentile": 0.99}},
    )
    assert status == 200
    assert patched["slo"] == {"latency_ms": 800.0, "percentile": 0.99}
    assert patched["profiles"] == created["profiles"]

    assert stop_serve_process(served.process) == 0
    again = serve_factory(db_url)
    status, listed = call(again, "GET", "/admin/v1/models")
    assert status == 200
    assert [m["name"] for m in listed["models"]] == ["inception"]
    assert listed["models"][0]["slo"]["latency_ms"] == 800.0

    # PUT's body is the model without its name: the URL names it.
    replaced = {**MODEL, "slo": {"latency_ms": 700, "percentile": 0.95}}
    del replaced["name"]
    status, body = call(again, "PUT", "/admin/v1/models/inception", replaced)
    assert status == 200 and body["slo"]["percentile"] == 0.95
    status, _ = call(again, "DELETE", "/admin/v1/models/inception")
    assert status == 204
    status, body = call(again, "GET", "/admin/v1/models/inception")
    assert status == 404 and "inception" in body["error"]


def test_each_class_of_bad_input_gets_a_clear_4xx(serve_factory: Any, tmp_path: Any) -> None:
    served = serve_factory(
        f"sqlite+aiosqlite:///{tmp_path / 'bad.db'}",
        config_text="[server]\nmax_body_mb = 0.01\n",
    )
    # 401 without or with a wrong token
    status, body = call(served, "GET", "/admin/v1/models", auth=False)
    assert status == 401 and "token" in body["error"]
    status, _ = call(
        served, "GET", "/admin/v1/models", auth=False, headers={"Authorization": "Bearer nope"}
    )
    assert status == 401
    # 400 malformed JSON, and JSON that is not an object
    status, body = call(served, "POST", "/admin/v1/models", raw=b"{not json")
    assert status == 422 or status == 400
    assert body["field"] == "body"
    status, body = call(served, "POST", "/admin/v1/models", raw=b"[1, 2]")
    assert status in (400, 422) and body["field"] == "body"
    # 422 naming the field: percentile outside (0, 1), negative latency, bad name, unknown key
    cases = [
        ({**MODEL, "slo": {"latency_ms": 600, "percentile": 1.5}}, "slo.percentile"),
        ({**MODEL, "slo": {"latency_ms": -5, "percentile": 0.9}}, "slo.latency_ms"),
        ({**MODEL, "name": "Bad Name!"}, "name"),
        ({**MODEL, "colour": "red"}, "colour"),
        ({**MODEL, "slo": {"latency_ms": 50, "percentile": 0.9}}, "slo.latency_ms"),
        ({**MODEL, "profiles_from": "no-such-model"}, "profiles_from"),
    ]
    for body_in, field in cases:
        status, body = call(served, "POST", "/admin/v1/models", body_in)
        assert status == 422, (field, body)
        assert body["field"] == field, body
        assert body["error"]
    # 409 on a duplicate
    assert call(served, "POST", "/admin/v1/models", MODEL)[0] == 201
    status, body = call(served, "POST", "/admin/v1/models", MODEL)
    assert status == 409 and "already exists" in body["error"]
    # 404 unknown names, 422 URL/body mismatch, bad paging
    assert call(served, "PATCH", "/admin/v1/models/ghost", {"max_batch": 2})[0] == 404
    assert call(served, "DELETE", "/admin/v1/models/ghost")[0] == 404
    status, body = call(served, "PUT", "/admin/v1/models/inception", {**MODEL, "name": "other"})
    assert status == 422 and body["field"] == "name"
    status, body = call(served, "GET", "/admin/v1/decisions?limit=0")
    assert status == 422 and body["field"] == "limit"
    status, body = call(served, "GET", "/admin/v1/decisions?limit=abc")
    assert status == 422 and body["field"] == "limit"
    # 413 over server.max_body_mb, answered without a 500
    status, body = call(served, "POST", "/admin/v1/models", raw=b"x" * 50_000)
    assert status == 413 and "max_body_mb" in body["error"]
    assert "Traceback" not in served.log()
    with urllib.request.urlopen(served.base_url + "/metrics", timeout=30) as r:
        metrics = r.read().decode()
    assert 'mark_admin_requests_total{method="GET",route="list_models",status="401"}' in metrics
    assert 'route="create_model",status="422"' in metrics


def test_fleet_listings_decisions_and_costs(serve_factory: Any, db_url: str) -> None:
    served = serve_factory(db_url)
    status, types = call(served, "GET", "/admin/v1/instance-types")
    assert status == 200
    status, offerings = call(served, "GET", "/admin/v1/offerings")
    assert status == 200
    status, instances = call(served, "GET", "/admin/v1/instances?all=true")
    assert status == 200 and isinstance(instances["instances"], list)
    status, page = call(served, "GET", "/admin/v1/decisions?limit=5")
    assert status == 200 and page["limit"] == 5 and page["total"] >= 0
    status, costs = call(served, "GET", "/admin/v1/costs")
    assert status == 200
    assert costs["total_usd"] == pytest.approx(costs["instances_usd"] + costs["serverless_usd"])
    # the catalog is published by the control plane: wait for it
    import time

    deadline = time.monotonic() + 30
    while not types["instance_types"] and time.monotonic() < deadline:
        time.sleep(0.3)
        types = call(served, "GET", "/admin/v1/instance-types")[1]
    names = {t["name"] for t in types["instance_types"]}
    assert {"c5.large", "g4dn.xlarge", "inf1.xlarge"} <= names
    offerings = call(served, "GET", "/admin/v1/offerings")[1]["offerings"]
    assert {o["market"] for o in offerings} == {"on-demand", "spot"}


def test_openapi_matches_the_routes(serve_factory: Any, tmp_path: Any) -> None:
    served = serve_factory(f"sqlite+aiosqlite:///{tmp_path / 'o.db'}")
    status, doc = call(served, "GET", "/admin/openapi.json", auth=False)
    assert status == 200 and doc["openapi"].startswith("3.")
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    from frontend.app import create_app
    from mark.core.config import load_config

    app = create_app(load_config(environ={}, server={"admin_token": "x"}), name="openapi_check")
    routed = set()
    for route in app.router.routes:
        path = "/" + route.path.strip("/")
        if not path.startswith("/admin/v1"):
            continue
        path = re.sub(r"<(\w+):str>", r"{\1}", path)  # Sanic's <name:str> is OpenAPI's {name}
        for method in route.methods:
            routed.add((method, path))
    assert routed == documented
    schemas = doc["components"]["schemas"]
    assert "ModelCreate" in schemas and "Model" in schemas
