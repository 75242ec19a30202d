"""The admin REST API under /admin/v1: models with their SLOs, the fleet, decisions, costs,
and the fleet at a glance (`/admin/v1/status`, frontend/status.py).

Routes come from `frontend.admin_schema.ADMIN_ROUTES`, the same table the OpenAPI document is
built from, and bodies and query parameters are read by that module's `read_body` and
`parse_query`, so what the document allows is what a handler gets (tests/test_admin_contract.py
holds the server to it with schemathesis). Every route needs
`Authorization: Bearer <server.admin_token>`. The inference keys' routes live in
frontend/admin_keys.py behind the same `authenticate`, and the document covers them too.
"""

from __future__ import annotations

import hmac
import time
from typing import Any

from pydantic import BaseModel, ValidationError
from sanic import Blueprint, Request
from sanic.response import HTTPResponse, empty, json

from frontend import observability
from frontend import status as fleet_status
from frontend.admin_keys_schema import KEY_ROUTES
from frontend.admin_schema import (
    ADMIN_ROUTES,
    DECISIONS_QUERY,
    INSTANCES_QUERY,
    STATUS_QUERY,
    Costs,
    DecisionPage,
    InstanceList,
    InstanceTypeList,
    ModelCreate,
    ModelList,
    ModelPatch,
    ModelSpec,
    OfferingList,
    QueryParam,
    openapi_document,
    parse_query,
    read_body,
)
from frontend.errors import error_response, validation_details
from mark.adapters.db import Database
from mark.core.catalog import load_catalog
from mark.core.errors import Conflict, InvalidValue, NotFound
from mark.core.types import Model

__all__ = ["bp", "openapi_bp", "token_matches", "bearer_matches", "authenticate", "count_request"]

bp = Blueprint("admin")
openapi_bp = Blueprint("admin_openapi")


def _db(request: Request) -> Database:
    db: Database = request.app.ctx.db
    return db


def _query(request: Request, params: tuple[QueryParam, ...]) -> dict[str, Any]:
    # Blank values kept: `limit=` is a bad integer, not an absent one.
    return parse_query(params, request.get_args(keep_blank_values=True))


def _out(value: BaseModel, status: int = 200) -> HTTPResponse:
    return json(value.model_dump(mode="json"), status=status)


def token_matches(request: Request, given: str) -> bool:
    """`given` is the admin token, compared in constant time (an early-exit comparison would
    tell a caller how much of a guess was right), on bytes: compare_digest refuses non-ASCII
    str, and Sanic hands a header's non-UTF-8 bytes over as surrogates, which only
    surrogateescape turns back into bytes."""
    token: str = request.app.ctx.config.server.admin_token or request.app.ctx.admin_token
    return hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), token.encode())


def bearer_matches(request: Request) -> bool:
    """`Authorization: Bearer <admin token>`."""
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and token_matches(request, given)


@bp.on_request
async def authenticate(request: Request) -> HTTPResponse | None:
    request.ctx.started_s = time.perf_counter()
    if not bearer_matches(request):
        response = error_response(401, "missing or wrong bearer token (server.admin_token)")
        response.headers["WWW-Authenticate"] = 'Bearer realm="mark-admin"'
        return response
    return None


@bp.on_response
async def count_request(request: Request, response: HTTPResponse) -> None:
    observability.observe_admin(request, response.status)


def _model_from_spec(name: str, spec: ModelSpec) -> Model:
    profiles = dict(spec.profiles)
    if spec.profiles_from is not None:
        try:
            entry = load_catalog().model(spec.profiles_from)
        except NotFound as exc:
            raise InvalidValue("profiles_from", str(exc)) from exc
        profiles = {**entry.profiles, **profiles}
    return Model.model_validate(
        {
            "name": name,
            "slo": spec.slo,
            "backend": spec.backend,
            "profiles": profiles,
            "max_batch": spec.max_batch,
        }
    )


async def list_models(request: Request) -> HTTPResponse:
    return _out(ModelList(models=await _db(request).list_models()))


async def create_model(request: Request) -> HTTPResponse:
    spec = read_body(ModelCreate, request.body)
    return _out(await _db(request).create_model(_model_from_spec(spec.name, spec)), 201)


async def get_model(request: Request, name: str) -> HTTPResponse:
    return _out(await _db(request).get_model(name))


async def replace_model(request: Request, name: str) -> HTTPResponse:
    """The URL names the model; the body holds everything else, so the two cannot disagree."""
    model = _model_from_spec(name, read_body(ModelSpec, request.body))
    return _out(await _db(request).update_model(model))


async def patch_model(request: Request, name: str) -> HTTPResponse:
    """The patch is checked on its own first (422); what is left to fail is the patch against
    the stored model (an SLO shorter than a kept profile, or kept SLO against new profiles),
    which is a conflict with the model's state: 409."""
    patch = read_body(ModelPatch, request.body)
    current = await _db(request).get_model(name)
    changed = patch.model_dump(exclude_none=True)
    try:
        model = Model.model_validate({**current.model_dump(), **changed})
    except ValidationError as exc:
        raise Conflict(f"model {name!r}: {validation_details(exc)[0]['message']}") from exc
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
    args = _query(request, INSTANCES_QUERY)
    instances = await _db(request).list_instances(live_only=not args["all"], model=args["model"])
    return _out(InstanceList(instances=instances))


async def list_decisions(request: Request) -> HTTPResponse:
    args = _query(request, DECISIONS_QUERY)
    decisions, total = await _db(request).list_decisions(**args)
    page = DecisionPage(
        decisions=decisions, total=total, limit=args["limit"], offset=args["offset"]
    )
    return _out(page)


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


async def get_status(request: Request) -> HTTPResponse:
    args = _query(request, STATUS_QUERY)
    db = _db(request)
    reading = await fleet_status.read(db)
    decisions = (await db.list_decisions(limit=args["decisions"]))[0] if args["decisions"] else []
    return _out(request.app.ctx.sampler.status(reading, decisions))


for _route in ADMIN_ROUTES:
    bp.add_route(
        globals()[_route.handler],
        _route.path.replace("{name}", "<name:str>"),
        methods=[_route.method],
        name=f"{_route.handler}",
    )


@openapi_bp.get("/admin/openapi.json")
async def openapi(request: Request) -> HTTPResponse:
    return json(openapi_document((*ADMIN_ROUTES, *KEY_ROUTES)))
