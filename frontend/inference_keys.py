"""Inference keys in the front end: which requests to a model need one, and the 401 for those
that come without a valid one (mark/core/inference_keys.py holds the scopes and the hashing).

Each HTTP worker holds a `KeyRing`. It is loaded from the database before the worker serves
(so no request reaches a protected model before its keys are known) and re-read every
`batching.sync_interval_s`, as the fleet's models are, so that a key made or revoked through the
admin API is in force on every front end within one interval. The same sync writes back when
each key was last used. If the database cannot be read, the last keys read stay in force.

`guard` is the inference blueprint's request middleware: for every route that names a model it
runs before the handler, so a refused request is parsed no further, never queued and never
reaches an instance or the serverless pool. It is counted in `mark_inference_unauthorized_total`
(model and reason; a name no model has is counted as `(unknown)`, so that made-up names add no
series) and not in `mark_inference_requests_total`, from which the control loop reads demand.

A secret travels from the `Authorization: Bearer` or `x-api-key` header into `digest` and
nowhere else: the access log is off (frontend/app.py, mark serve), no log line carries a header,
the front end sends instances and the pool requests of its own (no client header is
forwarded), and neither error bodies nor metric labels hold any of it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Literal, Protocol

from sanic import Request, Sanic
from sanic.response import HTTPResponse, json

from frontend import metrics
from mark.core.config import Config
from mark.core.errors import NotFound
from mark.core.inference_keys import StoredKey, find

__all__ = ["KeyRing", "KeySource", "Refusal", "guard", "load_keys", "stop_keys", "UNKNOWN_MODEL"]

logger = logging.getLogger("mark.frontend.keys")

Refusal = Literal["missing", "wrong", "expired", "revoked"]
UNKNOWN_MODEL = "(unknown)"  # no model name can be this (MODEL_NAME_PATTERN)
_MEMO_MODELS = 4096  # names whose covering keys are remembered between syncs

_MESSAGES: Mapping[Refusal, str] = {
    "missing": "model {!r} needs an inference key: Authorization: Bearer <key> or x-api-key: <key>",
    "wrong": "the inference key is not valid for model {!r}",
    "expired": "the inference key has expired",
    "revoked": "the inference key was revoked",
}


class KeySource(Protocol):
    """Where the ring reads keys and writes their use (`mark.adapters.db.Database` is one)."""

    async def list_inference_keys(self) -> list[StoredKey]: ...

    async def record_key_use(self, used: Mapping[str, float]) -> None: ...


class KeyRing:
    """The keys one front end enforces. `required`: every model needs a key
    (`server.inference_keys_required`); else only the models some key covers."""

    def __init__(self, *, required: bool) -> None:
        self.required = required
        self._keys: tuple[StoredKey, ...] = ()
        self._covering: dict[str, tuple[StoredKey, ...]] = {}
        self._used: dict[str, float] = {}  # key id -> last accepted at, since the last sync
        self._sync: asyncio.Task[None] | None = None

    def set_keys(self, keys: Sequence[StoredKey]) -> None:
        self._keys = tuple(keys)
        self._covering = {}

    def _candidates(self, model: str) -> tuple[StoredKey, ...]:
        """The keys whose scope covers `model`, remembered per name until the next sync (a
        bounded memo: names come from the request line)."""
        found = self._covering.get(model)
        if found is None:
            if len(self._covering) >= _MEMO_MODELS:
                self._covering.clear()
            found = tuple(k for k in self._keys if k.key.scope.covers(model))
            self._covering[model] = found
        return found

    def check(self, model: str, secret: str | None, now_s: float) -> Refusal | None:
        """Why a request to `model` presenting `secret` (None: no key) is refused at `now_s`
        (epoch seconds), None when it may go on."""
        if not self._keys and not self.required:
            return None
        candidates = self._candidates(model)
        if not candidates and not self.required:
            return None
        if secret is None:
            return "missing"
        match = find(candidates, secret)
        if match is None:
            return "wrong"
        refusal = match.key.refusal(now_s)
        if refusal is None:
            self._used[match.key.id] = now_s
        return refusal

    async def refresh(self, source: KeySource) -> None:
        """Write the uses since the last refresh, then read every key."""
        used, self._used = self._used, {}
        try:
            await source.record_key_use(used)
        except Exception:
            for key_id, at_s in used.items():  # kept for the next try
                self._used[key_id] = max(at_s, self._used.get(key_id, at_s))
            raise
        self.set_keys(await source.list_inference_keys())

    def start_sync(self, source: KeySource, interval_s: float) -> None:
        self._sync = asyncio.create_task(self._sync_forever(source, interval_s))

    async def _sync_forever(self, source: KeySource, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.refresh(source)
            except Exception:  # the database may be briefly unavailable; keep the last keys
                logger.exception("inference key sync failed; keeping the previous keys")

    async def close(self, source: KeySource) -> None:
        """Stop syncing and write the last uses."""
        if self._sync is not None:
            self._sync.cancel()
        try:
            await source.record_key_use(self._used)
        except Exception:
            logger.exception("writing the inference keys' last use failed")
        self._used = {}


def presented(request: Request) -> str | None:
    """The key a request carries: `Authorization: Bearer <key>`, else `x-api-key: <key>`."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.headers.get("x-api-key", "").strip() or None


def _model_named(request: Request) -> str | None:
    """The model a route names: `<name>` on the v2 routes, `<target>` = `name:predict` on
    TF Serving's; None on a route that names none (`GET /v2`)."""
    params = request.match_info
    if "name" in params:
        return str(params["name"])
    if "target" in params:
        return str(params["target"]).rpartition(":")[0]
    return None


def _label(request: Request, name: str) -> str:
    try:
        request.app.ctx.fleet.model(name)
    except NotFound:
        return UNKNOWN_MODEL
    return name


async def guard(request: Request) -> HTTPResponse | None:
    """401 for a request to a protected model without a valid key; None lets it through."""
    name = _model_named(request)
    if name is None:
        return None
    ring: KeyRing = request.app.ctx.keys
    refusal = ring.check(name, presented(request), time.time())
    if refusal is None:
        return None
    metrics.add(metrics.child(metrics.UNAUTHORIZED, _label(request, name), refusal))
    response = json({"error": _MESSAGES[refusal].format(name)}, status=401)
    challenge = 'Bearer realm="mark-inference"'
    if refusal != "missing":  # RFC 6750 3.1: a key was given and is no good
        challenge += ', error="invalid_token"'
    response.headers["WWW-Authenticate"] = challenge
    return response


async def load_keys(app: Sanic) -> None:
    """Before the worker serves: read the keys once, then every sync interval."""
    config: Config = app.ctx.config
    ring = KeyRing(required=config.server.inference_keys_required)
    await ring.refresh(app.ctx.db)
    ring.start_sync(app.ctx.db, config.batching.sync_interval_s)
    app.ctx.keys = ring


async def stop_keys(app: Sanic) -> None:
    ring: KeyRing | None = getattr(app.ctx, "keys", None)
    if ring is not None:
        await ring.close(app.ctx.db)
