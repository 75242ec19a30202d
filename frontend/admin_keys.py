"""The admin API's inference keys: `GET /admin/v1/keys`, `POST /admin/v1/keys`,
`DELETE /admin/v1/keys/{key_id}` (routes and bodies: frontend/admin_keys_schema.py), behind the
admin token like the rest of /admin/v1.

The secret is in the answer to the POST alone, with `Cache-Control: no-store`; the database
keeps its SHA-256 (mark/core/inference_keys.py says why that hash). Revoking keeps the key
listed, with `revoked_at_s`, and the models it covered protected. Front ends pick up a change
within one `batching.sync_interval_s` (frontend/inference_keys.py).
"""

from __future__ import annotations

import time

from sanic import Blueprint, Request
from sanic.response import HTTPResponse, empty, json

from frontend import admin
from frontend.admin_keys_schema import KEY_ROUTES, KeyCreate, KeyCreated, KeyList
from frontend.admin_schema import read_body
from mark.adapters.db import Database
from mark.core.inference_keys import issue

__all__ = ["bp"]

bp = Blueprint("admin_keys")
bp.on_request(admin.authenticate)
bp.on_response(admin.count_request)


def _db(request: Request) -> Database:
    db: Database = request.app.ctx.db
    return db


async def list_keys(request: Request) -> HTTPResponse:
    keys = [stored.key for stored in await _db(request).list_inference_keys()]
    return json(KeyList(keys=keys).model_dump(mode="json"))


async def create_key(request: Request) -> HTTPResponse:
    spec = read_body(KeyCreate, request.body)
    secret, stored = issue(
        spec.scope, now_s=time.time(), expires_in_s=spec.expires_in_s, label=spec.label
    )
    await _db(request).add_inference_key(stored)
    created = KeyCreated(**stored.key.model_dump(), secret=secret)
    return json(created.model_dump(mode="json"), status=201, headers={"Cache-Control": "no-store"})


async def revoke_key(request: Request, key_id: str) -> HTTPResponse:
    await _db(request).revoke_inference_key(key_id, time.time())
    return empty(status=204)


for _route in KEY_ROUTES:
    bp.add_route(
        globals()[_route.handler],
        admin.sanic_path(_route.path),
        methods=[_route.method],
        name=_route.handler,
    )
