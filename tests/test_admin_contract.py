"""The admin API against its own OpenAPI document: schemathesis, every check, every phase
(coverage, fuzzing, and the stateful phase that follows the document's links from a created
model to reading, replacing, changing and deleting it), against a real `mark serve --demo`.

Run as a user would run it: the schemathesis CLI in a subprocess, with the project's
schemathesis.toml. Its hooks (tests/admin_contract_hooks.py) keep generated *valid* bodies
within the three model rules JSON Schema cannot state (the document states them in words);
nothing else is bent.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.test_admin_api import call

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES_PER_OPERATION = 25  # ~1,000 requests over the phases: well under a minute here


@pytest.mark.slow
def test_schemathesis_finds_nothing(serve_factory: Any, tmp_path: Path) -> None:
    served = serve_factory(
        f"sqlite+aiosqlite:///{tmp_path / 'contract.db'}", extra_args=("--demo",)
    )
    # The hooks come from the project's schemathesis.toml, as they do for a user in the repo.
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "--config-file",
            str(ROOT / "schemathesis.toml"),
            "run",
            f"{served.base_url}/admin/openapi.json",
            "--url",
            served.base_url,
            "--checks",
            "all",
            "--phases",
            "coverage,fuzzing,stateful",
            "--max-examples",
            str(EXAMPLES_PER_OPERATION),
            "--seed",
            "18",
            "--no-color",
            "-H",
            f"Authorization: Bearer {served.token}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    report = done.stdout + done.stderr
    assert done.returncode == 0, report
    assert "No issues found" in report, report
    for phase in ("Coverage", "Fuzzing", "Stateful"):
        assert f"✅ {phase}" in report, report  # each phase ran and passed, none was skipped
    assert "Traceback" not in served.log()


def test_the_server_does_what_the_document_says(serve_factory: Any, tmp_path: Path) -> None:
    """The cases of issue #18 one by one, so that a failure names its rule."""
    served = serve_factory(f"sqlite+aiosqlite:///{tmp_path / 'cases.db'}", extra_args=("--demo",))
    doc = call(served, "GET", "/admin/openapi.json", auth=False)[1]
    decisions = doc["paths"]["/admin/v1/decisions"]["get"]
    limit = next(p for p in decisions["parameters"] if p["name"] == "limit")
    assert limit["schema"] == {"type": "integer", "default": 50, "minimum": 1, "maximum": 1000}
    assert "422" in decisions["responses"]
    status, body = call(served, "GET", "/admin/v1/decisions?limit=0")
    assert status == 422 and body["field"] == "limit"
    for query in ("all=null", "all=1", "all=true&all=false", "all="):
        status, body = call(served, "GET", f"/admin/v1/instances?{query}")
        assert status == 422 and body["field"] == "all", query
    assert call(served, "GET", "/admin/v1/instances?all=false")[0] == 200

    # PUT: the URL names the model, the body cannot name another one
    put = doc["paths"]["/admin/v1/models/{name}"]["put"]["requestBody"]
    assert put["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ModelSpec"
    }
    assert "name" not in doc["components"]["schemas"]["ModelSpec"]["properties"]
    spec = {"slo": {"latency_ms": 600, "percentile": 0.98}, "profiles_from": "demo"}
    status, body = call(served, "PUT", "/admin/v1/models/demo", {**spec, "max_batch": 8.0})
    assert status == 200 and body["name"] == "demo" and body["max_batch"] == 8  # 8.0 is an integer
    status, body = call(served, "PUT", "/admin/v1/models/demo", {**spec, "name": "other"})
    assert status == 422 and body["field"] == "name"

    # strict JSON: no number as a string, no boolean as an integer, batch sizes written plainly
    status, body = call(served, "PUT", "/admin/v1/models/demo", {**spec, "max_batch": "8"})
    assert status == 422 and body["field"] == "max_batch"
    status, body = call(served, "PUT", "/admin/v1/models/demo", {**spec, "max_batch": True})
    assert status == 422 and body["field"] == "max_batch"
    profile = {"instance_type": "c5.large", "latency_ms": {"01": 50.0}, "max_batch": 1}
    status, body = call(
        served, "PUT", "/admin/v1/models/demo", {**spec, "profiles": {"c5.large": profile}}
    )
    assert status == 422 and body["field"] == "profiles.c5.large.latency_ms"
    status, body = call(served, "PUT", "/admin/v1/models/demo", raw=b'{"slo": NaN}')
    assert status == 422 and body["field"] == "body"

    # a 422 lists every bad field, as ErrorBody declares
    status, body = call(served, "PATCH", "/admin/v1/models/demo", {"max_batch": 0, "slo": 1})
    assert status == 422 and {d["field"] for d in body["details"]} == {"max_batch", "slo"}
    assert set(body) <= set(doc["components"]["schemas"]["ErrorBody"]["properties"])

    # PATCH that breaks a rule only together with the stored model: a conflict, declared
    status, body = call(
        served, "PATCH", "/admin/v1/models/demo", {"slo": {"latency_ms": 0.001, "percentile": 0.9}}
    )
    assert status == 409 and "fastest profile" in body["error"]
    assert "409" in doc["paths"]["/admin/v1/models/{name}"]["patch"]["responses"]

    # a method a path does not have: 405 with the methods it has
    for path, methods in (
        ("/admin/v1/models", {"GET", "POST"}),
        ("/admin/v1/models/demo", {"GET", "PUT", "PATCH", "DELETE"}),
    ):
        status, allow = trace(served, path)
        assert status == 405 and set(allow.split(", ")) >= methods, (path, allow)


def trace(served: Any, path: str) -> tuple[int, str]:
    req = urllib.request.Request(served.base_url + path, method="TRACE", headers=served.auth)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers.get("Allow", "")
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Allow", "")
