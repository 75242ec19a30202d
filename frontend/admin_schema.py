"""Request and response bodies of the admin API, and the OpenAPI document built from them.

The route table in frontend/admin.py, the query parsing and the OpenAPI document all come from
the same list (`ADMIN_ROUTES`), so the document says what the server does: every status a route
can answer, every constraint the server checks on a parameter or a body. Three rules of a model
cannot be written in JSON Schema; the document states them in words and the server answers 422
naming the field: a profile's key is its `instance_type`, a profile's `max_batch` covers its
largest profiled batch, and the SLO latency is not shorter than the fastest profile (through
PATCH, a change that breaks the last rule against the stored model is a 409).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mark.core.catalog import load_catalog
from mark.core.errors import InvalidValue, NotFound
from mark.core.types import (
    MODEL_NAME_PATTERN,
    BackendSpec,
    Decision,
    Instance,
    InstanceState,
    InstanceType,
    Market,
    Model,
    Offering,
    Profile,
    Slo,
)

__all__ = [
    "ModelSpec",
    "ModelCreate",
    "ModelPatch",
    "ModelDefaults",
    "ModelGroup",
    "BulkModel",
    "StoreSelection",
    "ModelsBulk",
    "BulkResult",
    "BULK_MAX_MODELS",
    "BULK_MAX_GROUPS",
    "ModelList",
    "InstanceTypeList",
    "OfferingList",
    "InstanceList",
    "DecisionPage",
    "Costs",
    "ModelStatus",
    "InstanceGroup",
    "Spend",
    "StatusPoint",
    "FleetStatus",
    "ErrorBody",
    "FieldError",
    "QueryParam",
    "INSTANCES_QUERY",
    "DECISIONS_QUERY",
    "STATUS_QUERY",
    "AdminRoute",
    "ADMIN_ROUTES",
    "BATCH_SIZE_PATTERN",
    "parse_query",
    "read_body",
    "openapi_document",
]

# A profiled batch size as a JSON object key: 1-4096 written plainly (pydantic alone would also
# take "01", " 1", "+1" or "1_0" for 1 or 10, which JSON Schema's integer cannot describe).
BATCH_SIZE_PATTERN = r"^(?:[1-9][0-9]{0,2}|[1-3][0-9]{3}|40[0-8][0-9]|409[0-6])$"
_BATCH_SIZE_RE = re.compile(BATCH_SIZE_PATTERN)

# Models one bulk registration may hold, listed or found in the store; groups it may give.
BULK_MAX_MODELS = 1000
BULK_MAX_GROUPS = 100

_CROSS_FIELD_RULES = (
    "Rules JSON Schema cannot state, answered with 422 naming the field: each key of `profiles` "
    "is that profile's `instance_type`; a profile's `max_batch` is at least its largest "
    "profiled batch size; `slo.latency_ms` is not shorter than the fastest profile (one request "
    "alone on the fastest type); where the server's configuration sets "
    "`worker.memory_budget_bytes`, `memory_mb` and each profile's `memory_mb` fit in it (a model "
    "larger than a worker's whole memory budget could never be loaded)."
)
_BULK_RULES = (
    "Rules JSON Schema cannot state, answered with 422 whose `details` name every fault by the "
    "entry's place and field (`models.3.slo.latency_ms`; a store's artifact that no entry "
    "changes by its name, `store.en-a.memory_mb`): every model gets an SLO from its entry, a "
    "group or the template; every model keeps the rules of one model (ModelSpec); names are "
    "unique within the request, and the store holds one artifact of each name; with `store`, "
    f"each entry names an artifact found, and at most {BULK_MAX_MODELS} are found. Names "
    "already registered are listed among the faults; when they are the only ones the answer is "
    "409, with the same `details`."
)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _batch_keys_plain(body: Any, path: str = "") -> None:
    """Each profile's batch sizes written as plain integers, in every `profiles` of the body (a
    bulk body has them in its template, groups and models). Checked on the parsed JSON after
    pydantic has accepted the body: pydantic reads the keys as int and would also take "01",
    " 1", "+1" or "1_0", which JSON Schema's pattern for them does not allow."""
    if isinstance(body, list):
        for i, item in enumerate(body):
            _batch_keys_plain(item, f"{path}{i}.")
    if not isinstance(body, Mapping):
        return
    for field, value in body.items():
        if field != "profiles" or not isinstance(value, Mapping):
            _batch_keys_plain(value, f"{path}{field}.")
            continue
        for key, profile in value.items():
            for size in profile.get("latency_ms", {}):
                if not _BATCH_SIZE_RE.match(size):
                    raise InvalidValue(
                        f"{path}profiles.{key}.latency_ms",
                        f"batch size {size!r} is not an integer from 1 to 4096 written plainly",
                    )


_B = TypeVar("_B", bound=BaseModel)


def _number(text: str) -> float | int:
    """A JSON number with a fraction or exponent; whole ones become int, as JSON Schema counts
    2588.0 an integer (pydantic's strict mode would not). One past a double's range (1e400) is
    refused rather than read as infinity, which no JSON answer could carry back."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return int(value) if value.is_integer() and abs(value) <= 2**53 else value


def _not_json(text: str) -> None:
    raise ValueError(f"{text} is not a JSON number")


def read_body(spec: type[_B], raw: bytes) -> _B:
    """A request body as `spec`, read as the document describes it: JSON numbers, strings and
    booleans each only where the schema has them (pydantic's lax mode would quietly take "5" or
    true for a number) and batch sizes written plainly."""
    try:
        data = json.loads(raw or b"", parse_float=_number, parse_constant=_not_json)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, NaN or Infinity
        raise InvalidValue("body", f"is not valid JSON: {exc}") from exc
    value = spec.model_validate_json(json.dumps(data), strict=True)
    _batch_keys_plain(data)
    return value


def _check_profiles_named(profiles: Mapping[str, Profile] | None) -> None:
    for key, profile in (profiles or {}).items():
        if key != profile.instance_type:
            raise InvalidValue(
                f"profiles.{key}.instance_type",
                f"profiles[{key!r}] describes instance type {profile.instance_type!r}",
            )


def _check_profiles_from(source: str | None) -> None:
    """`profiles_from` names a model of the catalog."""
    if source is None:
        return
    try:
        load_catalog().model(source)
    except NotFound as exc:
        raise InvalidValue("profiles_from", str(exc)) from exc


class ModelSpec(_Body):
    """A model's settings, as PUT takes them (the URL names the model). `profiles_from` copies
    the catalog's profiles of that model (e.g. "inception-v3", "demo") so that a user need not
    measure before the first deployment; explicit `profiles` override them per type."""

    slo: Slo
    backend: BackendSpec = BackendSpec()
    profiles: dict[str, Profile] = Field(default_factory=dict)
    profiles_from: str | None = None
    max_batch: Annotated[int, Field(ge=1, le=4096)] = 32
    memory_mb: Annotated[float, Field(gt=0)] | None = None

    @model_validator(mode="after")
    def _profiles_named(self) -> ModelSpec:
        _check_profiles_named(self.profiles)
        _check_profiles_from(self.profiles_from)
        return self


class ModelCreate(ModelSpec):
    """A model to register: its settings and its name."""

    name: Annotated[str, Field(pattern=MODEL_NAME_PATTERN)]


class ModelPatch(_Body):
    """Fields to change; absent fields keep their value."""

    slo: Slo | None = None
    backend: BackendSpec | None = None
    profiles: dict[str, Profile] | None = None
    max_batch: Annotated[int, Field(ge=1, le=4096)] | None = None
    memory_mb: Annotated[float, Field(gt=0)] | None = None

    @model_validator(mode="after")
    def _profiles_named(self) -> ModelPatch:
        _check_profiles_named(self.profiles)
        return self


class ModelDefaults(_Body):
    """Settings for many models at once (a bulk registration's `template`, and what each of its
    groups and models may give), any of them. A model's settings are the template's, then those
    of the first group whose `match` fits its name, then its own entry's: each field given (not
    null) replaces the one below, except `backend` and `profiles`, which merge key by key (a
    profile whole); the catalog's profiles of the topmost `profiles_from` lie under all of them.
    `memory_mb` (MiB) is the model's footprint in a worker's memory."""

    slo: Slo | None = None
    backend: BackendSpec | None = None
    profiles: dict[str, Profile] | None = None
    profiles_from: str | None = None
    max_batch: Annotated[int, Field(ge=1, le=4096)] | None = None
    memory_mb: Annotated[float, Field(gt=0)] | None = None

    @model_validator(mode="after")
    def _profiles_named(self) -> ModelDefaults:
        _check_profiles_named(self.profiles)
        _check_profiles_from(self.profiles_from)
        return self


class ModelGroup(ModelDefaults):
    """Settings for the models whose name fits `match`, a shell pattern (`en-*`, `*-large`,
    `[ab]*`; Python's fnmatch, case-sensitive)."""

    match: Annotated[str, Field(min_length=1, max_length=200)]


class BulkModel(ModelDefaults):
    """One model of a bulk registration: its name and what it sets over its group and the
    template. With `store`, the entry changes the artifact of that name found in the store."""

    name: Annotated[str, Field(pattern=MODEL_NAME_PATTERN)]


class StoreSelection(_Body):
    """The artifacts of the fleet's model store (`worker.store`, the one `mark worker` loads
    from) whose model name starts with `prefix`: each becomes a model named for its file
    (`en-a.onnx`: `en-a`), served by what its suffix names (`backend.artifact`
    `onnx:/models/en-a.onnx`, or `onnx:s3://bucket/models/en-a.onnx`)."""

    prefix: Annotated[str, Field(pattern=r"^[a-z0-9._-]{0,63}$")] = ""


class ModelsBulk(_Body):
    """Many models registered in one request, all or none, in one transaction: the `models`
    listed, or with `store` every artifact found under its prefix (`models` then change some of
    them by name). Settings come from `template`, then the first of `groups` whose `match` fits
    the name, then the model's entry (see ModelDefaults)."""

    template: ModelDefaults = Field(default_factory=ModelDefaults)
    groups: list[ModelGroup] = Field(default_factory=list, max_length=BULK_MAX_GROUPS)
    models: list[BulkModel] = Field(default_factory=list, max_length=BULK_MAX_MODELS)
    store: StoreSelection | None = None


class BulkResult(_Body):
    """What a bulk registration registered: how many, and their names in the order of the
    request (with `store`, the store's order: by name). `GET /admin/v1/models` lists them."""

    registered: Annotated[int, Field(ge=0)]
    names: list[str]


class ModelList(_Body):
    models: list[Model]


class InstanceTypeList(_Body):
    instance_types: list[InstanceType]


class OfferingList(_Body):
    offerings: list[Offering]


class InstanceList(_Body):
    instances: list[Instance]


class DecisionPage(_Body):
    decisions: list[Decision]
    total: int
    limit: int
    offset: int


class Costs(_Body):
    total_usd: float
    instances_usd: float
    serverless_usd: float
    serverless_requests: int
    per_model_usd: dict[str, float]
    per_instance_type_usd: dict[str, float]


class ModelStatus(_Body):
    """One model as `mark status` and the console show it. `requests` and `slo_attainment`
    count since the metrics began (the server's start); `rate_rps` and
    `slo_attainment_recent` cover the last `FleetStatus.window_s` (null until the process has
    sampled for a while, or without answers); `forecast_upper_rps` is the peak the control loop
    last planned for (null before its first tick); `capacity_rps` adds up the capacity at the
    SLO of the running instances that hold the model (an instance shared by several models
    counts whole for each)."""

    name: str
    slo: Slo
    requests: Annotated[int, Field(ge=0)]
    rate_rps: Annotated[float, Field(ge=0)] | None
    forecast_upper_rps: Annotated[float, Field(ge=0)] | None
    capacity_rps: Annotated[float, Field(ge=0)]
    slo_attainment: Annotated[float, Field(ge=0, le=1)] | None
    slo_attainment_recent: Annotated[float, Field(ge=0, le=1)] | None
    instances: Annotated[int, Field(ge=0)]
    cost_usd: Annotated[float, Field(ge=0)]


class InstanceGroup(_Body):
    """Live instances of one type, market and state, and what they cost per hour now."""

    instance_type: str
    market: Market
    state: InstanceState
    count: Annotated[int, Field(ge=1)]
    usd_per_hour: Annotated[float, Field(ge=0)]


class Spend(_Body):
    """The fleet's price per hour now (spot at its pool's current price), the planner's cap,
    and what the ledger has charged so far."""

    usd_per_hour: Annotated[float, Field(ge=0)]
    budget_usd_per_hour: float | None
    total_usd: Annotated[float, Field(ge=0)]
    instances_usd: Annotated[float, Field(ge=0)]
    serverless_usd: Annotated[float, Field(ge=0)]


class StatusPoint(_Body):
    """One sample of the fleet (every `FleetStatus.sample_s`): requests per second over the
    models since the previous sample, the running capacity at the SLO, the sum of the
    forecast peaks (null before the control loop's first tick), the price per hour and the
    cost so far."""

    at_s: float
    demand_rps: Annotated[float, Field(ge=0)]
    capacity_rps: Annotated[float, Field(ge=0)]
    forecast_upper_rps: Annotated[float, Field(ge=0)] | None
    usd_per_hour: Annotated[float, Field(ge=0)]
    cost_usd: Annotated[float, Field(ge=0)]


class FleetStatus(_Body):
    """The fleet at a glance (`mark status`, `/console`): models, instances by type, market
    and state, spend, the newest decisions, and the time series this server process keeps in
    memory (the last `len(history)` samples, oldest first; each HTTP worker keeps its own, all
    read from the same metrics and database)."""

    at_s: float
    window_s: float
    sample_s: float
    models: list[ModelStatus]
    instances: list[InstanceGroup]
    spend: Spend
    decisions: list[Decision]
    history: list[StatusPoint]


class FieldError(_Body):
    field: str
    message: str


class ErrorBody(_Body):
    """Every error of the admin API; a 422 names the first bad `field` and lists all in
    `details`."""

    error: str
    field: str | None = None
    details: list[FieldError] | None = None


@dataclass(frozen=True, slots=True)
class QueryParam:
    """One query parameter: its JSON Schema type and bounds, and how the server reads it (one
    value, written as the schema says; anything else is a 422 naming the parameter)."""

    name: str
    kind: type[bool] | type[int] | type[str]
    description: str
    default: bool | int | None = None
    minimum: int | None = None
    maximum: int | None = None

    def schema(self) -> dict[str, Any]:
        kind = {bool: "boolean", int: "integer", str: "string"}[self.kind]
        out: dict[str, Any] = {"type": kind}
        if self.default is not None:
            out["default"] = self.default
        if self.minimum is not None:
            out["minimum"] = self.minimum
        if self.maximum is not None:
            out["maximum"] = self.maximum
        return out

    def parse(self, values: Sequence[str]) -> bool | int | str | None:
        if not values:
            return self.default
        if len(values) > 1:
            raise InvalidValue(self.name, f"is given {len(values)} times; give it once")
        raw = values[0]
        if self.kind is str:
            return raw
        if self.kind is bool:
            if raw not in ("true", "false"):
                raise InvalidValue(self.name, f"must be true or false, got {raw!r}")
            return raw == "true"
        if not re.fullmatch(r"-?[0-9]+", raw):
            raise InvalidValue(self.name, f"must be an integer, got {raw!r}")
        value = int(raw)
        if self.minimum is not None and value < self.minimum:
            raise InvalidValue(self.name, f"must be >= {self.minimum}, got {value}")
        if self.maximum is not None and value > self.maximum:
            raise InvalidValue(self.name, f"must be <= {self.maximum}, got {value}")
        return value


def parse_query(params: Sequence[QueryParam], args: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """{name: value} for each declared parameter; undeclared ones are ignored."""
    return {p.name: p.parse(args[p.name] if p.name in args else ()) for p in params}


INSTANCES_QUERY = (
    QueryParam("all", bool, "include terminated instances", default=False),
    QueryParam("model", str, "only instances serving this model"),
)
DECISIONS_QUERY = (
    QueryParam("limit", int, "page size", default=50, minimum=1, maximum=1000),
    QueryParam("offset", int, "rows to skip", default=0, minimum=0, maximum=10**9),
    QueryParam("model", str, "only decisions about this model"),
)
STATUS_QUERY = (
    QueryParam("decisions", int, "newest decisions to include", default=10, minimum=0, maximum=100),
)


@dataclass(frozen=True, slots=True)
class AdminRoute:
    """One admin operation. The error statuses it can answer follow from its shape (see
    `_error_responses`); `errors` adds the ones particular to it."""

    method: str
    path: str  # OpenAPI style, {name}
    handler: str  # attribute of the module serving it (frontend.admin, frontend.admin_keys)
    summary: str
    request: type[BaseModel] | None
    response: type[BaseModel] | None
    status: int = 200
    query: tuple[QueryParam, ...] = ()
    errors: tuple[tuple[int, str], ...] = ()
    path_params: tuple[Mapping[str, Any], ...] = ()  # OpenAPI parameters other than {name}


ADMIN_ROUTES: tuple[AdminRoute, ...] = (
    AdminRoute("GET", "/admin/v1/models", "list_models", "List registered models", None, ModelList),
    AdminRoute(
        "POST",
        "/admin/v1/models",
        "create_model",
        "Register a model",
        ModelCreate,
        Model,
        201,
        errors=((409, "a model of that name exists"),),
    ),
    AdminRoute(
        "POST",
        "/admin/v1/models:bulk",
        "create_models",
        "Register many models at once, all or none",
        ModelsBulk,
        BulkResult,
        201,
        errors=(
            (404, "`store` is given but no model store is configured (worker.store)"),
            (
                409,
                "names already registered and nothing else wrong (`details` names each), or "
                "registered by another request meanwhile",
            ),
            (503, "the model store could not be listed"),
        ),
    ),
    AdminRoute("GET", "/admin/v1/models/{name}", "get_model", "Read one model", None, Model),
    AdminRoute(
        "PUT", "/admin/v1/models/{name}", "replace_model", "Replace a model", ModelSpec, Model
    ),
    AdminRoute(
        "PATCH",
        "/admin/v1/models/{name}",
        "patch_model",
        "Change some fields",
        ModelPatch,
        Model,
        errors=((409, "the change and the stored model together break a model rule"),),
    ),
    AdminRoute(
        "DELETE", "/admin/v1/models/{name}", "delete_model", "Unregister a model", None, None, 204
    ),
    AdminRoute(
        "GET",
        "/admin/v1/instance-types",
        "list_instance_types",
        "Instance types Mark can buy",
        None,
        InstanceTypeList,
    ),
    AdminRoute(
        "GET", "/admin/v1/offerings", "list_offerings", "Offerings and prices", None, OfferingList
    ),
    AdminRoute(
        "GET",
        "/admin/v1/instances",
        "list_instances",
        "Instances and their state",
        None,
        InstanceList,
        query=INSTANCES_QUERY,
    ),
    AdminRoute(
        "GET",
        "/admin/v1/decisions",
        "list_decisions",
        "The decision log, newest first",
        None,
        DecisionPage,
        query=DECISIONS_QUERY,
    ),
    AdminRoute("GET", "/admin/v1/costs", "get_costs", "Money spent so far", None, Costs),
    AdminRoute(
        "GET",
        "/admin/v1/status",
        "get_status",
        "The fleet at a glance: models, instances, spend, decisions, recent history",
        None,
        FleetStatus,
        query=STATUS_QUERY,
    ),
)


def _error_responses(route: AdminRoute) -> dict[int, str]:
    """Every error status `route` can answer, with why."""
    errors = {
        400: "malformed HTTP request",
        401: "missing or wrong bearer token",
    }
    if "{name}" in route.path:
        errors[404] = "no model of that name is registered"
    if route.request is not None:
        errors[413] = "body larger than server.max_body_mb"
        errors[422] = "the body is not JSON or breaks a rule; `field` names where"
    if route.query:
        errors[422] = "a query parameter breaks its schema; `field` names it"
    errors.update(route.errors)
    return dict(sorted(errors.items()))


def _tighten(schemas: dict[str, Any]) -> None:
    """What pydantic's schemas leave out but the server checks: the form of batch-size keys, at
    least one profiled point, `profiles_from` among the catalog's models; and the rules no schema
    can hold, in words."""
    points = schemas["Profile"]["properties"]["latency_ms"]
    points["propertyNames"] = {"pattern": BATCH_SIZE_PATTERN}
    points["minProperties"] = 1
    catalog_models = sorted(load_catalog().models)
    for name in ("ModelSpec", "ModelCreate", "ModelDefaults", "ModelGroup", "BulkModel"):
        props = schemas[name]["properties"]
        props["profiles_from"]["anyOf"] = [{"enum": catalog_models}, {"type": "null"}]
    for name in ("ModelSpec", "ModelCreate", "ModelPatch"):
        schemas[name]["description"] += "\n\n" + _CROSS_FIELD_RULES
    schemas["ModelsBulk"]["description"] += "\n\n" + _BULK_RULES


def openapi_document(routes: Sequence[AdminRoute]) -> dict[str, Any]:
    """The document of `routes`: `ADMIN_ROUTES` and those of the modules beside frontend.admin
    (frontend/admin_keys_schema.py)."""
    schemas: dict[str, Any] = {}
    paths: dict[str, Any] = {}

    def ref(model: type[BaseModel]) -> dict[str, str]:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in schema.pop("$defs", {}).items():
            schemas.setdefault(name, sub)
        schemas[model.__name__] = schema
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    error = {"application/json": {"schema": ref(ErrorBody)}}
    name_param = {
        "name": "name",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": MODEL_NAME_PATTERN},
    }
    model_ops = [r for r in routes if "{name}" in r.path]
    for route in routes:
        responses: dict[str, Any] = {
            str(status): {"description": why, "content": error}
            for status, why in _error_responses(route).items()
        }
        op: dict[str, Any] = {
            "summary": route.summary,
            "operationId": route.handler,
            "security": [{"bearer": []}],
            "responses": responses,
        }
        params = [
            {
                "name": p.name,
                "in": "query",
                "required": False,
                "schema": p.schema(),
                "description": p.description,
            }
            for p in route.query
        ]
        if "{name}" in route.path:
            params.append(name_param)
        params += [dict(p) for p in route.path_params]
        if params:
            op["parameters"] = params
        if route.request is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": ref(route.request)}},
            }
        ok: dict[str, Any] = {"description": "success"}
        if route.response is not None:
            ok["content"] = {"application/json": {"schema": ref(route.response)}}
        if route.response is Model:
            # What a client does next with the model it got back (and schemathesis's stateful
            # phase follows): read, replace, change or remove it by its name.
            ok["links"] = {
                r.handler: {
                    "operationId": r.handler,
                    "parameters": {"name": "$response.body#/name"},
                }
                for r in model_ops
            }
        responses[str(route.status)] = ok
        op["responses"] = dict(sorted(responses.items()))
        paths.setdefault(route.path, {})[route.method.lower()] = op
    _tighten(schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Mark admin API", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
