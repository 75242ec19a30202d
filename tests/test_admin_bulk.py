"""Registering models in bulk (`POST /admin/v1/models:bulk`) over real HTTP against a real
`mark serve`: a thousand at once, every artifact under a store prefix (a local directory, and S3
through moto's server), and all-or-none refusals that name every bad entry."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.aws import FAKE_ENV
from tests.conftest import Served
from tests.test_admin_api import call

BULK = "/admin/v1/models:bulk"
SLO = {"latency_ms": 500, "percentile": 0.95}
PROFILE = {"instance_type": "c5.large", "latency_ms": {"1": 40.0, "4": 100.0}, "max_batch": 4}
BUDGET_MIB = 512
WORKER = f"[worker]\nmemory_budget_bytes = {BUDGET_MIB * 2**20}\n"


def names(served: Served) -> list[str]:
    status, listed = call(served, "GET", "/admin/v1/models")
    assert status == 200
    return [m["name"] for m in listed["models"]]


def models_by_name(served: Served) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in call(served, "GET", "/admin/v1/models")[1]["models"]}


def test_a_thousand_models_in_one_request(serve_factory: Any, db_url: str) -> None:
    # database.echo logs each statement, to count the INSERTs the request costs
    served = serve_factory(db_url, config_text=WORKER + "[database]\necho = true\n")
    body = {
        "template": {"slo": SLO, "profiles": {"c5.large": PROFILE}, "memory_mb": 64},
        "groups": [
            {"match": "en-*", "slo": {"latency_ms": 200, "percentile": 0.99}, "memory_mb": 128},
            {"match": "*-large", "memory_mb": 500},
        ],
        "models": [
            {"name": f"{('en', 'de')[i % 2]}-{i:04d}{'-large' if i % 10 >= 8 else ''}"}
            for i in range(1000)
        ],
    }
    body["models"][4] = {"name": "en-0004", "max_batch": 4, "memory_mb": 1.5}
    status, result = call(served, "POST", BULK, body)
    assert status == 201, result
    assert result["registered"] == 1000
    assert result["names"] == [m["name"] for m in body["models"]]

    got = models_by_name(served)
    assert sorted(got) == sorted(result["names"])
    # the first group that fits wins: en-0008-large is an en- model, de-0019-large is large
    assert got["en-0000"]["slo"] == {"latency_ms": 200.0, "percentile": 0.99}
    assert got["en-0000"]["memory_mb"] == 128.0
    assert got["en-0008-large"]["memory_mb"] == 128.0
    assert got["de-0019-large"]["slo"] == {"latency_ms": 500.0, "percentile": 0.95}
    assert got["de-0019-large"]["memory_mb"] == 500.0
    assert got["de-0001"]["memory_mb"] == 64.0
    assert got["de-0001"]["profiles"]["c5.large"]["latency_ms"] == {"1": 40.0, "4": 100.0}
    assert got["en-0004"]["max_batch"] == 4 and got["en-0004"]["memory_mb"] == 1.5
    assert call(served, "GET", "/admin/v1/models/de-0999-large")[1]["memory_mb"] == 500.0

    # batched: the thousand rows of each table went in a handful of statements, not a thousand
    inserts = re.findall(r"INSERT INTO (models|profiles) ", served.log())
    assert 1 <= inserts.count("models") <= 5, inserts.count("models")
    assert 1 <= inserts.count("profiles") <= 5, inserts.count("profiles")

    # past the limit of one request: refused by the schema, nothing stored
    status, body = call(served, "POST", BULK, {"models": [{"name": f"x-{i}"} for i in range(1001)]})
    assert status == 422 and body["field"] == "models"
    assert len(names(served)) == 1000


def _local_store(root: Path) -> str:
    root.mkdir()
    for key in ("en-a.onnx", "en-b.joblib", "en-c.pt", "de-a.onnx", "fr-a.onnx", "README.txt"):
        (root / key).write_bytes(b"weights")
    return str(root.resolve())


def _s3_store(moto_url: str) -> str:
    client: Any = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1")
    bucket = f"bulk-{time.monotonic_ns()}"
    client.create_bucket(Bucket=bucket)
    for key in (
        "en-a.onnx",
        "en-b.joblib",
        "en-c.pt",
        "de-a.onnx",
        "fr-a.onnx",
        "nested/en-d.onnx",
    ):
        client.put_object(Bucket=bucket, Key=f"models/{key}", Body=b"weights")
    client.put_object(Bucket=bucket, Key="elsewhere/en-e.onnx", Body=b"weights")
    return f"s3://{bucket}/models"


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_a_store_prefix_registers_each_artifact_with_its_groups_slo(
    serve_factory: Any, tmp_path: Path, request: pytest.FixtureRequest, kind: str
) -> None:
    if kind == "local":
        store, endpoint = _local_store(tmp_path / "store"), ""
        where = f"{store}/"
    else:
        moto_url = request.getfixturevalue("moto_url")
        store, endpoint = _s3_store(moto_url), f'store_endpoint_url = "{moto_url}"\n'
        where = f"{store}/"
    served = serve_factory(
        f"sqlite+aiosqlite:///{tmp_path / 'store.db'}",
        config_text=f'{WORKER}store = "{store}"\n{endpoint}',
        env=FAKE_ENV,
    )
    en_slo = {"latency_ms": 150.0, "percentile": 0.99}
    request_body = {
        "store": {"prefix": "en-"},
        "template": {"slo": SLO, "backend": {"protocol": "kserve-v2"}},
        "groups": [{"match": "en-*", "slo": en_slo, "memory_mb": 256}],
        "models": [{"name": "en-b", "max_batch": 8, "backend": {"protocol": "tfserving"}}],
    }
    status, result = call(served, "POST", BULK, request_body)
    assert status == 201, result
    # nested/en-d.onnx is no model of this store (the worker could not load it by name)
    assert result == {"registered": 3, "names": ["en-a", "en-b", "en-c"]}
    got = models_by_name(served)
    assert set(got) == {"en-a", "en-b", "en-c"}
    for name in got:
        assert got[name]["slo"] == en_slo and got[name]["memory_mb"] == 256.0
    assert got["en-a"]["backend"]["artifact"] == f"onnx:{where}en-a.onnx"
    assert got["en-c"]["backend"]["artifact"] == f"torchscript:{where}en-c.pt"
    assert got["en-b"]["backend"] == {
        "protocol": "tfserving",
        "artifact": f"sklearn:{where}en-b.joblib",
        "backend_model_name": None,
    }
    assert got["en-b"]["max_batch"] == 8 and got["en-a"]["max_batch"] == 32

    # the rest of the store, each group with its SLO: en-* registered already refuses all
    rest = {
        "store": {"prefix": ""},
        "template": {"slo": SLO},
        "groups": [{"match": "fr-*", "slo": {"latency_ms": 300, "percentile": 0.9}}],
    }
    status, body = call(served, "POST", BULK, rest)
    assert status == 409, body
    taken = {d["field"] for d in body["details"]}
    assert taken == {"store.en-a.name", "store.en-b.name", "store.en-c.name"}
    for prefix in ("de-", "fr-"):
        status, result = call(served, "POST", BULK, {**rest, "store": {"prefix": prefix}})
        assert status == 201 and result["names"] == [f"{prefix}a"], result
    got = models_by_name(served)
    assert got["fr-a"]["slo"] == {"latency_ms": 300.0, "percentile": 0.9}
    assert got["de-a"]["slo"] == {"latency_ms": 500.0, "percentile": 0.95}

    # an entry must name an artifact found under the prefix; nothing found registers nothing
    status, body = call(
        served, "POST", BULK, {**rest, "store": {"prefix": "it-"}, "models": [{"name": "it-a"}]}
    )
    assert status == 422 and body["field"] == "models.0.name" and "no artifact" in body["error"]
    status, result = call(served, "POST", BULK, {**rest, "store": {"prefix": "it-"}})
    assert status == 201 and result == {"registered": 0, "names": []}
    assert "Traceback" not in served.log()


def test_one_bad_entry_refuses_the_whole_request_naming_each(
    serve_factory: Any, tmp_path: Path
) -> None:
    served = serve_factory(f"sqlite+aiosqlite:///{tmp_path / 'bad.db'}", config_text=WORKER)
    assert call(served, "POST", "/admin/v1/models", {"name": "m-0000", "slo": SLO})[0] == 201
    good = [{"name": f"m-{i:04d}"} for i in range(200)]
    body = {"groups": [{"match": "m-*", "slo": SLO}], "models": good}

    # faults the schema states: every one named by its entry's index and field
    broken = [dict(m) for m in good]
    broken[57] = {"name": "m-0057", "slo": {"latency_ms": 100, "percentile": 1.5}}
    broken[58] = {"name": "Not A Name"}
    broken[59] = {"name": "m-0059", "profiles": {"c5.large": {**PROFILE, "latency_ms": {"01": 5}}}}
    broken[60] = {"name": "m-0060", "profiles": {"c5.large": {**PROFILE, "instance_type": "x"}}}
    broken[61] = {"name": "m-0061", "profiles_from": "no-such-model"}
    status, refused = call(served, "POST", BULK, {**body, "models": broken})
    assert status == 422, refused
    fields = {d["field"] for d in refused["details"]}
    assert fields == {
        "models.57.slo.percentile",
        "models.58.name",
        "models.60.profiles.c5.large.instance_type",
        "models.61.profiles_from",
    }, fields
    broken[57], broken[58], broken[60], broken[61] = good[57], good[58], good[60], good[61]
    status, refused = call(served, "POST", BULK, {**body, "models": broken})
    assert status == 422 and refused["field"] == "models.59.profiles.c5.large.latency_ms"
    # a template's or group's fault is its own, even where no model would take it up
    status, refused = call(served, "POST", BULK, {"groups": [{"match": "z", "profiles_from": "x"}]})
    assert status == 422 and refused["field"] == "groups.0.profiles_from"

    # faults only the server can find, all named in one answer, the registered name among them
    broken = [dict(m) for m in good]
    fast = {"latency_ms": 10, "percentile": 0.9}
    broken[100] = {"name": "m-0100", "profiles": {"c5.large": PROFILE}, "slo": fast}
    broken[110] = {"name": "x-0110"}  # no group fits it, no template: no SLO
    broken[120] = {"name": "m-0001"}  # given twice
    broken[140] = {"name": "m-0140", "memory_mb": BUDGET_MIB + 1}
    broken[150] = {"name": "m-0150", "profiles": {"c5.large": {**PROFILE, "memory_mb": 4096}}}
    status, refused = call(served, "POST", BULK, {**body, "models": broken})
    assert status == 422, refused
    by_field = {d["field"]: d["message"] for d in refused["details"]}
    assert set(by_field) == {
        "models.0.name",
        "models.100.slo.latency_ms",
        "models.110.slo",
        "models.120.name",
        "models.140.memory_mb",
        "models.150.profiles.c5.large.memory_mb",
    }, by_field
    assert "registered already" in by_field["models.0.name"]
    assert (
        "given again" in by_field["models.120.name"] and "models.1" in by_field["models.120.name"]
    )
    assert "fastest profile" in by_field["models.100.slo.latency_ms"]
    assert "memory budget" in by_field["models.140.memory_mb"]
    assert refused["field"] in by_field and "nothing was registered" in refused["error"]
    assert names(served) == ["m-0000"]  # nothing half-registered

    # the same request without the faults registers every model but the one registered before
    status, result = call(served, "POST", BULK, {**body, "models": good[1:]})
    assert status == 201 and result["registered"] == 199
    assert len(names(served)) == 200
    # names already registered, and nothing else wrong: 409, each named
    status, refused = call(served, "POST", BULK, {**body, "models": good[10:12]})
    assert status == 409 and [d["field"] for d in refused["details"]] == [
        "models.0.name",
        "models.1.name",
    ]
    # a store prefix on a server with no store configured
    status, refused = call(served, "POST", BULK, {"store": {"prefix": "m-"}})
    assert status == 404 and "worker.store" in refused["error"]
    assert "Traceback" not in served.log()


def test_a_model_larger_than_the_worker_budget_is_refused(
    serve_factory: Any, tmp_path: Path
) -> None:
    served = serve_factory(f"sqlite+aiosqlite:///{tmp_path / 'budget.db'}", config_text=WORKER)
    too_big = BUDGET_MIB + 0.5
    for body, field in [
        ({"name": "big", "slo": SLO, "memory_mb": too_big}, "memory_mb"),
        (
            {
                "name": "big",
                "slo": SLO,
                "profiles": {"c5.large": {**PROFILE, "memory_mb": too_big}},
            },
            "profiles.c5.large.memory_mb",
        ),
    ]:
        status, refused = call(served, "POST", "/admin/v1/models", body)
        assert status == 422 and refused["field"] == field, refused
        assert f"{BUDGET_MIB:g} MiB" in refused["error"]
    status, created = call(
        served, "POST", "/admin/v1/models", {"name": "fits", "slo": SLO, "memory_mb": BUDGET_MIB}
    )
    assert status == 201 and created["memory_mb"] == BUDGET_MIB
    status, refused = call(served, "PATCH", "/admin/v1/models/fits", {"memory_mb": too_big})
    assert status == 422 and refused["field"] == "memory_mb"
    status, refused = call(
        served, "PUT", "/admin/v1/models/fits", {"slo": SLO, "memory_mb": too_big}
    )
    assert status == 422 and refused["field"] == "memory_mb"
    assert call(served, "GET", "/admin/v1/models/fits")[1]["memory_mb"] == BUDGET_MIB

    # a group's footprint over the budget refuses each of its models, and so all
    status, refused = call(
        served,
        "POST",
        BULK,
        {
            "template": {"slo": SLO},
            "groups": [{"match": "big-*", "memory_mb": too_big}],
            "models": [{"name": "small-1"}, {"name": "big-1"}, {"name": "big-2"}],
        },
    )
    assert status == 422
    assert [d["field"] for d in refused["details"]] == ["models.1.memory_mb", "models.2.memory_mb"]
    assert names(served) == ["fits"]


def test_two_artifacts_of_one_name_in_the_store_refuse_the_prefix(
    serve_factory: Any, tmp_path: Path
) -> None:
    root = tmp_path / "store"
    root.mkdir()
    for key in ("a.onnx", "a.pt", "b.onnx"):
        (root / key).write_bytes(b"weights")
    served = serve_factory(
        f"sqlite+aiosqlite:///{tmp_path / 'twice.db'}", config_text=f'[worker]\nstore = "{root}"\n'
    )
    status, refused = call(served, "POST", BULK, {"store": {}, "template": {"slo": SLO}})
    assert status == 422 and [d["field"] for d in refused["details"]] == ["store.a"]
    assert "a.onnx" in refused["error"] and "a.pt" in refused["error"]
    assert names(served) == []
