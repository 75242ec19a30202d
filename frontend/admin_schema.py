"""Request and response bodies of the admin API, and the OpenAPI document built from them.

The route table in frontend/admin.py and the OpenAPI document are generated from the same list
(`ADMIN_ROUTES`), so the document always matches the routes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from mark.core.types import (
    MODEL_NAME_PATTERN,
    BackendSpec,
    Decision,
    Instance,
    InstanceType,
    Model,
    Offering,
    Profile,
    Slo,
)

__all__ = [
    "ModelCreate",
    "ModelPatch",
    "ModelList",
    "InstanceTypeList",
    "OfferingList",
    "InstanceList",
    "DecisionPage",
    "Costs",
    "ErrorBody",
    "AdminRoute",
    "ADMIN_ROUTES",
    "openapi_document",
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelCreate(_Body):
    """A model to register. `profiles_from` copies the catalog's profiles of that model name
    (e.g. "inception-v3", "demo") so a user need not measure before the first deployment."""

    name: Annotated[str, Field(pattern=MODEL_NAME_PATTERN)]
    slo: Slo
    backend: BackendSpec = BackendSpec()
    profiles: dict[str, Profile] = Field(default_factory=dict)
    profiles_from: str | None = None
    max_batch: Annotated[int, Field(ge=1, le=4096)] = 32


class ModelPatch(_Body):
    """Fields to change; absent fields keep their value."""

    slo: Slo | None = None
    backend: BackendSpec | None = None
    profiles: dict[str, Profile] | None = None
    max_batch: Annotated[int, Field(ge=1, le=4096)] | None = None


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


class ErrorBody(_Body):
    error: str
    field: str | None = None


@dataclass(frozen=True, slots=True)
class AdminRoute:
    method: str
    path: str  # OpenAPI style, {name}
    handler: str  # attribute of frontend.admin
    summary: str
    request: type[BaseModel] | None
    response: type[BaseModel] | None
    status: int = 200
    query: tuple[tuple[str, str, str], ...] = ()  # (name, type, description)


ADMIN_ROUTES: tuple[AdminRoute, ...] = (
    AdminRoute("GET", "/admin/v1/models", "list_models", "List registered models", None, ModelList),
    AdminRoute(
        "POST", "/admin/v1/models", "create_model", "Register a model", ModelCreate, Model, 201
    ),
    AdminRoute("GET", "/admin/v1/models/{name}", "get_model", "Read one model", None, Model),
    AdminRoute(
        "PUT", "/admin/v1/models/{name}", "replace_model", "Replace a model", ModelCreate, Model
    ),
    AdminRoute(
        "PATCH", "/admin/v1/models/{name}", "patch_model", "Change some fields", ModelPatch, Model
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
        query=(
            ("all", "boolean", "include terminated instances"),
            ("model", "string", "only instances serving this model"),
        ),
    ),
    AdminRoute(
        "GET",
        "/admin/v1/decisions",
        "list_decisions",
        "The decision log, newest first",
        None,
        DecisionPage,
        query=(
            ("limit", "integer", "page size, 1-1000 (default 50)"),
            ("offset", "integer", "rows to skip"),
            ("model", "string", "only decisions about this model"),
        ),
    ),
    AdminRoute("GET", "/admin/v1/costs", "get_costs", "Money spent so far", None, Costs),
)


def openapi_document() -> dict[str, Any]:
    schemas: dict[str, Any] = {"ErrorBody": ErrorBody.model_json_schema()}
    paths: dict[str, Any] = {}

    def ref(model: type[BaseModel]) -> dict[str, str]:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in schema.pop("$defs", {}).items():
            schemas.setdefault(name, sub)
        schemas[model.__name__] = schema
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    for route in ADMIN_ROUTES:
        op: dict[str, Any] = {
            "summary": route.summary,
            "operationId": route.handler,
            "security": [{"bearer": []}],
            "responses": {
                "401": {"description": "missing or wrong bearer token", "content": error},
                "400": {"description": "malformed request", "content": error},
            },
        }
        params = [
            {"name": n, "in": "query", "required": False, "schema": {"type": t}, "description": d}
            for n, t, d in route.query
        ]
        if "{name}" in route.path:
            params.append(
                {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
            )
            op["responses"]["404"] = {"description": "unknown model", "content": error}
        if params:
            op["parameters"] = params
        if route.request is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": ref(route.request)}},
            }
            op["responses"]["422"] = {"description": "invalid field", "content": error}
        if route.method == "POST":
            op["responses"]["409"] = {"description": "already exists", "content": error}
        ok: dict[str, Any] = {"description": "success"}
        if route.response is not None:
            ok["content"] = {"application/json": {"schema": ref(route.response)}}
        op["responses"][str(route.status)] = ok
        paths.setdefault(route.path, {})[route.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "Mark admin API", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
