"""The admin REST API under /admin/v1: models with their SLOs, the fleet, decisions, costs.

Routes come from `frontend.admin_schema.ADMIN_ROUTES`, the same table the OpenAPI document is
built from. Every route needs `Authorization: Bearer <server.admin_token>`.
"""

from __future__ import annotations

import hmac
import json as jsonlib
import time
from typing import Any

from pydantic import BaseModel
from sanic import Blueprint, Request
from sanic.response import HTTPResponse, empty, json

from frontend import observability
from frontend.admin_schema import (
    ADMIN_ROUTES,
    Costs,
    DecisionPage,
    InstanceList,
    InstanceTypeList,
    ModelCreate,
    ModelList,
    ModelPatch,
    OfferingList,
    openapi_document,
)
from frontend.errors import error_response
from mark.adapters.db import Database
from mark.core.errors import InvalidValue, NotFound
from mark.core.types import Model

__all__ = ["bp", "openapi_bp"]

bp = Blueprint("admin")
openapi_bp = Blueprint("admin_openapi")


def _db(request: Request) -> Database:
    db: Database = request.app.ctx.db
    return db


def _body(request: Request) -> dict[str, Any]:
    try:
        data = jsonlib.loads(request.body or b"")
    except (UnicodeDecodeError, jsonlib.JSONDecodeError) as exc:
        raise InvalidValue("body", f"is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidValue("body", "must be a JSON object")
    return data


def _out(value: BaseModel, status: int = 200) -> HTTPResponse:
    return json(value.model_dump(mode="json"), status=status)


def _int_arg(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise InvalidValue(name, f"must be an integer, got {raw!r}") from exc
    if not lo <= value <= hi:
        raise InvalidValue(name, f"must be between {lo} and {hi}, got {value}")
    return value


@bp.on_request
async def _authenticate(request: Request) -> HTTPResponse | None:
    request.ctx.started_s = time.perf_counter()
    token: str = request.app.ctx.config.server.admin_token or request.app.ctx.admin_token
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip(), token):
        response = error_response(401, "missing or wrong bearer token (server.admin_token)")
        response.headers["WWW-Authenticate"] = 'Bearer realm="mark-admin"'
        return response
    return None


@bp.on_response
async def _count(request: Request, response: HTTPResponse) -> None:
    observability.observe_admin(request, response.status)


def _model_from_create(request: Request, spec: ModelCreate) -> Model:
    profiles = dict(spec.profiles)
    if spec.profiles_from is not None:
        from mark.core.catalog import load_catalog

        try:
            entry = load_catalog().model(spec.profiles_from)
        except NotFound as exc:
            raise InvalidValue("profiles_from", str(exc)) from exc
        profiles = {**entry.profiles, **profiles}
    return Model.model_validate(
        {
            "name": spec.name,
            "slo": spec.slo,
            "backend": spec.backend,
            "profiles": profiles,
            "max_batch": spec.max_batch,
        }
    )


async def list_models(request: Request) -> HTTPResponse:
    return _out(ModelList(models=await _db(request).list_models()))


async def create_model(request: Request) -> HTTPResponse:
    model = _model_from_create(request, ModelCreate.model_validate(_body(request)))
    return _out(await _db(request).create_model(model), 201)


async def get_model(request: Request, name: str) -> HTTPResponse:
    return _out(await _db(request).get_model(name))


async def replace_model(request: Request, name: str) -> HTTPResponse:
    body = _body(request)
    body.setdefault("name", name)
    if body["name"] != name:
        raise InvalidValue("name", f"body names {body['name']!r} but the URL names {name!r}")
    model = _model_from_create(request, ModelCreate.model_validate(body))
    return _out(await _db(request).update_model(model))


async def patch_model(request: Request, name: str) -> HTTPResponse:
    patch = ModelPatch.model_validate(_body(request))
    current = await _db(request).get_model(name)
    changed = {k: v for k, v in patch.model_dump(exclude_none=True).items()}
    model = Model.model_validate({**current.model_dump(), **changed})
    return _out(await _db(request).update_model(model))


async def delete_model(request: Request, name: str) -> HTTPResponse:
    await _db(request).delete_model(name)
    return empty(status=204)


async def list_instance_types(request: Request) -> HTTPResponse:
    types = await _db(request).list_instance_types()
    return _out(InstanceTypeList(instance_types=types))


async def list_offerings(request: Request) -> HTTPResponse:
    return _out(OfferingList(offerings=await _db(request).list_offerings()))


async def list_instances(request: Request) -> HTTPResponse:
    include_all = request.args.get("all", "false").lower() in {"1", "true", "yes"}
    instances = await _db(request).list_instances(
        live_only=not include_all, model=request.args.get("model")
    )
    return _out(InstanceList(instances=instances))


async def list_decisions(request: Request) -> HTTPResponse:
    limit = _int_arg(request, "limit", 50, 1, 1000)
    offset = _int_arg(request, "offset", 0, 0, 10**9)
    decisions, total = await _db(request).list_decisions(
        limit=limit, offset=offset, model=request.args.get("model")
    )
    return _out(DecisionPage(decisions=decisions, total=total, limit=limit, offset=offset))


async def get_costs(request: Request) -> HTTPResponse:
    c = await _db(request).costs()
    return _out(
        Costs(
            total_usd=c.total_usd,
            instances_usd=c.instances_usd,
            serverless_usd=c.serverless_usd,
            serverless_requests=c.serverless_requests,
            per_model_usd=c.per_model_usd,
            per_instance_type_usd=c.per_instance_type_usd,
        )
    )


for _route in ADMIN_ROUTES:
    bp.add_route(
        globals()[_route.handler],
        _route.path.replace("{name}", "<name:str>"),
        methods=[_route.method],
        name=f"{_route.handler}",
    )


@openapi_bp.get("/admin/openapi.json")
async def openapi(request: Request) -> HTTPResponse:
    return json(openapi_document())
