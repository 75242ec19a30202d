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

import asyncio
import hmac
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ValidationError
from sanic import Blueprint, Request
from sanic.exceptions import ServiceUnavailable
from sanic.response import HTTPResponse, empty, json

from frontend import observability
from frontend import status as fleet_status
from frontend.admin_keys_schema import KEY_ROUTES
from frontend.admin_schema import (
    ADMIN_ROUTES,
    DECISIONS_QUERY,
    INSTANCES_QUERY,
    STATUS_QUERY,
    BulkResult,
    Costs,
    DecisionPage,
    FieldError,
    InstanceList,
    InstanceTypeList,
    ModelCreate,
    ModelList,
    ModelPatch,
    ModelsBulk,
    ModelSpec,
    OfferingList,
    QueryParam,
    openapi_document,
    parse_query,
    read_body,
)
from frontend.errors import error_response, validation_details
from frontend.registration import (
    artifact_fault,
    budget_faults,
    build_model,
    named_artifacts,
    plan_bulk,
    settings_of,
)
from mark.adapters.artifacts import spec_entry
from mark.adapters.db import Database
from mark.adapters.model_store import open_store
from mark.core.errors import Conflict, InvalidValue, NotFound
from mark.core.types import Model, Profile

__all__ = [
    "bp",
    "openapi_bp",
    "token_matches",
    "bearer_matches",
    "sanic_path",
    "authenticate",
    "count_request",
]

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


def _budget_bytes(request: Request) -> int | None:
    """The memory budget of the fleet's workers, from the `[worker]` section of the config
    `mark serve` reads (the same file the workers are started with)."""
    budget: int | None = request.app.ctx.config.worker.memory_budget_bytes
    return budget


def _within_budget(
    request: Request, memory_mb: float | None, profiles: Mapping[str, Profile]
) -> None:
    faults = budget_faults(memory_mb, profiles, _budget_bytes(request))
    if faults:
        raise InvalidValue(faults[0].field, faults[0].message)


async def _artifact_bytes(artifacts: Iterable[str]) -> dict[str, int]:
    """The size of each artifact that is a local file (a stat each, in a thread); 0 for one
    that is not (`builtin:mlp`, an S3 object, an external server's name, a missing file)."""
    wanted = set(artifacts)
    return await asyncio.to_thread(lambda: {a: spec_entry("", a).size_bytes for a in wanted})


async def _artifact_within_budget(request: Request, model: Model) -> None:
    sizes = await _artifact_bytes([model.backend.artifact])
    fault = artifact_fault(sizes[model.backend.artifact], _budget_bytes(request))
    if fault is not None:
        raise InvalidValue(fault.field, fault.message)


async def _model_from_spec(request: Request, name: str, spec: ModelSpec) -> Model:
    model = build_model(name, settings_of(spec))
    _within_budget(request, model.memory_mb, model.profiles)
    await _artifact_within_budget(request, model)
    return model


async def list_models(request: Request) -> HTTPResponse:
    return _out(ModelList(models=await _db(request).list_models()))


async def create_model(request: Request) -> HTTPResponse:
    spec = read_body(ModelCreate, request.body)
    model = await _model_from_spec(request, spec.name, spec)
    return _out(await _db(request).create_model(model), 201)


async def _stored(request: Request, prefix: str) -> list[tuple[str, str, int]]:
    """(name, artifact, bytes) of each model in the fleet's store whose name starts with
    `prefix`."""
    worker = request.app.ctx.config.worker
    if worker.store is None:
        raise NotFound("no model store is configured (worker.store) to register models from")

    def listing() -> list[tuple[str, str, int]]:
        store = open_store(worker.store, endpoint_url=worker.store_endpoint_url)
        return [(m.name, store.artifact(m), m.size_bytes) for m in store.list(prefix)]

    try:
        return await asyncio.to_thread(listing)  # boto3 and the filesystem block
    except Exception as exc:  # boto3's errors or a directory gone: the store can't be read now
        raise ServiceUnavailable(f"model store {worker.store} could not be listed: {exc}") from exc


def _refused(status: int, faults: list[FieldError]) -> HTTPResponse:
    first = faults[0]
    more = f" (and {len(faults) - 1} more)" if len(faults) > 1 else ""
    return error_response(
        status,
        f"{first.field}: {first.message}{more}; nothing was registered",
        field=first.field,
        details=[f.model_dump() for f in faults],
    )


async def create_models(request: Request, verb: str) -> HTTPResponse:
    """All or none: every fault is found before anything is stored (frontend/registration.py),
    names already registered among them; then one transaction stores every model. A name
    registered by another request in between refuses all with 409. (`verb` is the path's
    `models:bulk`, see `sanic_path`.)"""
    body = read_body(ModelsBulk, request.body)
    stored = await _stored(request, body.store.prefix) if body.store is not None else []
    sizes = await _artifact_bytes(named_artifacts(body))
    sizes.update((artifact, size) for _, artifact, size in stored)
    found = [(name, artifact) for name, artifact, _ in stored]
    plan = plan_bulk(body, _budget_bytes(request), found, sizes)
    db = _db(request)
    taken = await db.registered_names(plan.places)
    registered = [
        FieldError(field=f"{place}.name", message="a model of this name is registered already")
        for name, place in plan.places.items()
        if name in taken
    ]
    if plan.faults:
        return _refused(422, plan.faults + registered)
    if registered:
        return _refused(409, registered)
    await db.create_models(plan.models)
    return _out(BulkResult(registered=len(plan.models), names=[m.name for m in plan.models]), 201)


async def get_model(request: Request, name: str) -> HTTPResponse:
    return _out(await _db(request).get_model(name))


async def replace_model(request: Request, name: str) -> HTTPResponse:
    """The URL names the model; the body holds everything else, so the two cannot disagree."""
    model = await _model_from_spec(request, name, read_body(ModelSpec, request.body))
    return _out(await _db(request).update_model(model))


async def patch_model(request: Request, name: str) -> HTTPResponse:
    """The patch is checked on its own first (422, a footprint over the workers' memory budget
    among it); what is left to fail is the patch against the stored model (an SLO shorter than
    a kept profile, or kept SLO against new profiles), which is a conflict with the model's
    state: 409."""
    patch = read_body(ModelPatch, request.body)
    _within_budget(request, patch.memory_mb, patch.profiles or {})
    current = await _db(request).get_model(name)
    changed = patch.model_dump(exclude_none=True)
    try:
        model = Model.model_validate({**current.model_dump(), **changed})
    except ValidationError as exc:
        raise Conflict(f"model {name!r}: {validation_details(exc)[0]['message']}") from exc
    await _artifact_within_budget(request, model)
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


def sanic_path(path: str) -> str:
    """Sanic's form of a route table path: `{param}` a string parameter, and a custom method's
    segment (`models:bulk`, the colon as Google's API design guide writes them) a one-value
    pattern, since Sanic percent-encodes a colon in a static segment and would then not match a
    client's plain `:`. Its value reaches the handler as the `verb` keyword."""
    path = re.sub(r"\{(\w+)\}", r"<\1:str>", path)
    return re.sub(r"/([a-z-]+):([a-z]+)$", r"/<verb:\1\\:\2>", path)


for _route in ADMIN_ROUTES:
    bp.add_route(
        globals()[_route.handler],
        sanic_path(_route.path),
        methods=[_route.method],
        name=f"{_route.handler}",
    )


@openapi_bp.get("/admin/openapi.json")
async def openapi(request: Request) -> HTTPResponse:
    return json(openapi_document((*ADMIN_ROUTES, *KEY_ROUTES)))
