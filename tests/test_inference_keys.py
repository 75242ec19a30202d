"""Inference keys: the scopes and the hashing (mark/core/inference_keys.py), the front end's key
ring, the database on SQLite and PostgreSQL, and a real `mark serve` over loopback: 401 without
or with a wrong key, 200 with the right one in either header, an open model left open, a group
key, revocation and expiry picked up by the front ends' sync, and the secret in neither the
database, the log nor the metrics."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from frontend.inference_keys import KeyRing
from mark.adapters.db import Database
from mark.core.errors import NotFound
from mark.core.inference_keys import (
    AllScope,
    GroupScope,
    InferenceKey,
    ModelScope,
    StoredKey,
    find,
    issue,
)
from tests.conftest import Served
from tests.test_serve_inference import README_BODY, _metric, _wait_running

NOW_S = 1_800_000_000.0


def test_scopes_cover_their_models() -> None:
    assert ModelScope(kind="model", name="demo").covers("demo")
    assert not ModelScope(kind="model", name="demo").covers("demo2")
    group = GroupScope(kind="group", pattern="resnet-[ab]*")
    assert group.covers("resnet-a50") and group.covers("resnet-b")
    assert not group.covers("resnet-c") and not group.covers("Resnet-a")  # case-sensitive
    assert AllScope(kind="all").covers("anything")
    with pytest.raises(ValidationError):
        GroupScope(kind="group", pattern="a/b")  # only a name's characters and fnmatch's


def test_a_secret_is_kept_as_its_sha256_and_found_by_it() -> None:
    secret, stored = issue(ModelScope(kind="model", name="demo"), now_s=NOW_S, expires_in_s=60)
    assert secret.startswith("mk_") and len(secret) == 46
    assert stored.digest == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in stored.key.model_dump_json() and stored.key.prefix == secret[:8]
    assert stored.key.expires_at_s == NOW_S + 60
    other_secret, other = issue(AllScope(kind="all"), now_s=NOW_S)
    assert other_secret != secret and other.key.id != stored.key.id
    assert find([other, stored], secret) == stored
    assert find([other, stored], secret[:-1] + "x") is None
    assert find([stored], "mk_é\udcff") is None  # non-UTF-8 header bytes: no error


def test_the_ring_refuses_by_scope_expiry_and_revocation() -> None:
    demo_secret, demo = issue(ModelScope(kind="model", name="demo"), now_s=NOW_S, expires_in_s=10)
    group_secret, group = issue(GroupScope(kind="group", pattern="grp-*"), now_s=NOW_S)
    revoked_secret, revoked = issue(GroupScope(kind="group", pattern="old"), now_s=NOW_S)
    revoked = StoredKey(revoked.key.model_copy(update={"revoked_at_s": NOW_S}), revoked.digest)
    ring = KeyRing(required=False)
    assert ring.check("demo", None, NOW_S) is None  # no key anywhere: everything is open
    ring.set_keys([demo, group, revoked])
    assert ring.check("open", None, NOW_S) is None
    assert ring.check("demo", None, NOW_S) == "missing"
    assert ring.check("demo", group_secret, NOW_S) == "wrong"
    assert ring.check("demo", demo_secret, NOW_S + 1) is None
    assert ring.check("demo", demo_secret, NOW_S + 10) == "expired"
    assert ring.check("grp-a", group_secret, NOW_S) is None
    assert ring.check("old", revoked_secret, NOW_S) == "revoked"
    assert ring.check("old", None, NOW_S) == "missing"  # a revoked key keeps its model closed
    required = KeyRing(required=True)
    assert required.check("open", None, NOW_S) == "missing"
    required.set_keys([group])
    assert required.check("open", group_secret, NOW_S) == "wrong"


async def test_keys_round_trip_and_only_the_hash_is_stored(db_url: str) -> None:
    db = await Database.open(db_url)
    try:
        secret, stored = issue(
            GroupScope(kind="group", pattern="grp-*"), now_s=NOW_S, label="team a"
        )
        await db.add_inference_key(stored)
        assert await db.list_inference_keys() == [stored]
        await db.record_key_use({stored.key.id: NOW_S + 5})
        await db.record_key_use({stored.key.id: NOW_S + 2})  # an older use changes nothing
        revoked = await db.revoke_inference_key(stored.key.id, NOW_S + 9)
        assert (revoked.last_used_at_s, revoked.revoked_at_s) == (NOW_S + 5, NOW_S + 9)
        again = await db.revoke_inference_key(stored.key.id, NOW_S + 20)
        assert again.revoked_at_s == NOW_S + 9  # revoking twice keeps the first time
        assert [s.key for s in await db.list_inference_keys()] == [again]
        with pytest.raises(NotFound):
            await db.revoke_inference_key("0" * 16, NOW_S)
    finally:
        await db.close()
    assert await stored_rows(db_url) == [(stored.key.id, stored.digest)]
    assert secret not in await table_text(db_url)


async def stored_rows(db_url: str) -> list[tuple[str, str]]:
    engine = create_async_engine(db_url)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT id, digest FROM inference_keys"))).all()
    finally:
        await engine.dispose()
    return [(r[0], r[1]) for r in rows]


async def table_text(db_url: str) -> str:
    """Every column of every row of the keys table, as text."""
    engine = create_async_engine(db_url)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT * FROM inference_keys"))).all()
    finally:
        await engine.dispose()
    return "\n".join(repr(tuple(r)) for r in rows)


# --- a real `mark serve` ---------------------------------------------------------------------

CONFIG = """
[control]
enabled = false          # the demo instance only; other models are answered by the pool
"""
POOL_MODEL = {"slo": {"latency_ms": 20_000, "percentile": 0.98},
              "backend": {"protocol": "kserve-v2", "artifact": "builtin:mlp"}}  # fmt: skip


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 30.0) -> None:
    """Poll `check` until it holds (a sync interval is 0.5 s; the limit is only a backstop)."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.1)


class Client:
    def __init__(self, session: aiohttp.ClientSession, served: Served) -> None:
        self.s, self.served = session, served

    async def admin(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        url = self.served.base_url + path
        async with self.s.request(method, url, json=body, headers=self.served.auth) as r:
            return r.status, (await r.json() if r.content_length else None)

    async def key(self, scope: dict[str, Any], **extra: Any) -> dict[str, Any]:
        status, created = await self.admin("POST", "/admin/v1/keys", {"scope": scope, **extra})
        assert status == 201, created
        return dict(created)

    async def infer(self, model: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        url = f"{self.served.base_url}/v2/models/{model}/infer"
        async with self.s.post(url, json=README_BODY, headers=headers or {}) as r:
            return r.status, (await r.json(), r.headers.get("WWW-Authenticate"))

    async def get(self, path: str, headers: dict[str, str] | None = None) -> int:
        async with self.s.get(self.served.base_url + path, headers=headers or {}) as r:
            return r.status


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def test_keys_guard_models_over_http(serve_factory: Any, db_url: str) -> None:
    served: Served = serve_factory(db_url, extra_args=("--demo",), config_text=CONFIG)
    secrets: list[str] = []
    async with aiohttp.ClientSession() as s:
        c = Client(s, served)
        await _wait_running(s, served, "demo")
        for name in ("open-one", "grp-a"):
            assert (await c.admin("POST", "/admin/v1/models", {"name": name, **POOL_MODEL}))[
                0
            ] == 201
        demo = await c.key({"kind": "model", "name": "demo"}, label="demo clients")
        group = await c.key({"kind": "group", "pattern": "grp-*"})
        secrets += [demo["secret"], group["secret"]]
        assert demo["prefix"] == demo["secret"][:8] and demo["expires_at_s"] is None

        async def demo_protected() -> bool:
            return (await c.infer("demo"))[0] == 401

        await until(demo_protected, "the new key reached the front end")
        status, (body, challenge) = await c.infer("demo")
        assert "needs an inference key" in body["error"] and challenge.startswith("Bearer")
        status, (body, challenge) = await c.infer("demo", bearer(demo["secret"][:-1] + "x"))
        assert status == 401 and 'error="invalid_token"' in challenge
        assert (await c.infer("demo", {"x-api-key": group["secret"]}))[0] == 401  # other scope
        assert (await c.infer("demo", bearer(demo["secret"])))[0] == 200
        assert (await c.infer("demo", {"x-api-key": demo["secret"]}))[0] == 200
        # the other routes that name the model are guarded too; the server's own is not
        assert await c.get("/v2/models/demo") == 401
        assert await c.get("/v2/models/demo/ready", bearer(demo["secret"])) == 200
        assert await c.get("/v2") == 200
        async with s.post(f"{served.base_url}/v1/models/demo:predict", json={}) as r:
            assert r.status == 401

        # a model no key covers stays open; the group key opens its group only (the models'
        # sync is the keys' own: wait for the new model to reach the front end too)
        async def registered() -> bool:
            return (await c.infer("open-one"))[0] != 404

        await until(registered, "the new model reached the front end")
        assert (await c.infer("open-one"))[0] == 200
        assert (await c.infer("grp-a"))[0] == 401
        assert (await c.infer("grp-a", bearer(demo["secret"])))[0] == 401
        assert (await c.infer("grp-a", bearer(group["secret"])))[0] == 200
        assert (await c.infer("grp-unregistered"))[0] == 401  # covered before it exists

        # listed without the secret, with its last use (written back at a sync)
        async def used() -> bool:
            listed = (await c.admin("GET", "/admin/v1/keys"))[1]["keys"]
            return next(k for k in listed if k["id"] == demo["id"])["last_used_at_s"] is not None

        await until(used, "the last use was written")
        status, listed = await c.admin("GET", "/admin/v1/keys")
        assert "secret" not in str(listed) and demo["secret"] not in str(listed)
        assert {k["id"] for k in listed["keys"]} == {demo["id"], group["id"]}

        # revocation: refused within a sync; the model stays protected
        assert (await c.admin("DELETE", f"/admin/v1/keys/{demo['id']}"))[0] == 204
        assert (await c.admin("DELETE", "/admin/v1/keys/" + "0" * 16))[0] == 404

        async def revoked() -> bool:
            status, (body, _) = await c.infer("demo", bearer(demo["secret"]))
            return status == 401 and "revoked" in body["error"]

        await until(revoked, "the revocation reached the front end")
        assert (await c.infer("demo"))[0] == 401

        # an expired key is refused (seen by the front end first, then past its time)
        short = await c.key({"kind": "all"}, expires_in_s=2)
        secrets.append(short["secret"])

        async def expired() -> bool:
            status, (body, _) = await c.infer("demo", {"x-api-key": short["secret"]})
            return status == 401 and "expired" in body["error"]

        await asyncio.sleep(max(0.0, short["expires_at_s"] - time.time()))
        await until(expired, "the expired key was refused as expired")

        async with s.get(f"{served.base_url}/metrics") as r:
            metrics = await r.text()
    refused = {
        reason: _metric(metrics, "mark_inference_unauthorized_total", model="demo", reason=reason)
        for reason in ("missing", "wrong", "revoked", "expired")
    }
    assert all(n >= 1 for n in refused.values()), refused
    assert _metric(metrics, "mark_inference_unauthorized_total", model="(unknown)") == 1
    assert 'code="401"' not in metrics  # refusals are no demand for the planner
    stored = await table_text(db_url)
    log = served.log()
    for secret in secrets:
        assert hashlib.sha256(secret.encode()).hexdigest() in stored
        for where, body in (("database", stored), ("log", log), ("metrics", metrics)):
            assert secret not in body and secret[8:20] not in body, where
    assert "Traceback" not in log


async def test_every_model_needs_a_key_when_required(serve_factory: Any, tmp_path: Path) -> None:
    served: Served = serve_factory(
        f"sqlite+aiosqlite:///{tmp_path / 'required.db'}",
        config_text="[server]\ninference_keys_required = true\n" + CONFIG,
    )
    async with aiohttp.ClientSession() as s:
        c = Client(s, served)
        assert (await c.admin("POST", "/admin/v1/models", {"name": "m", **POOL_MODEL}))[0] == 201
        assert await c.get("/v2/models/m") == 401  # no key exists at all
        assert await c.get("/v2/models/not-registered") == 401  # names are not given away
        key = await c.key({"kind": "model", "name": "m"})

        async def opened() -> bool:
            return await c.get("/v2/models/m", bearer(key["secret"])) == 200

        await until(opened, "the key opened the model")
    assert key["secret"] not in served.log()


def test_a_listed_key_is_the_value_without_its_secret() -> None:
    fields = set(InferenceKey.model_fields)
    assert {"id", "prefix", "scope", "created_at_s", "expires_at_s", "last_used_at_s"} <= fields
    assert not fields & {"secret", "digest"}
