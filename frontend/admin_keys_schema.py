"""Bodies and routes of the admin API's inference keys (frontend/admin_keys.py serves them;
`openapi_document` writes them into the one document with the rest of the admin API)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from frontend.admin_schema import AdminRoute
from mark.core.inference_keys import KEY_ID_PATTERN, LABEL_PATTERN, InferenceKey, KeyScope

__all__ = ["KeyCreate", "KeyCreated", "KeyList", "KEY_ROUTES", "KEY_ID_PARAM"]


class KeyCreate(BaseModel):
    """A key to make: what it opens (`{"kind": "model", "name": "demo"}`, `{"kind": "group",
    "pattern": "resnet-*"}` (fnmatch on the model name) or `{"kind": "all"}`), for how long
    (`expires_in_s`; absent: until revoked) and a note to tell it by."""

    model_config = ConfigDict(extra="forbid")

    scope: KeyScope
    expires_in_s: Annotated[float, Field(gt=0)] | None = None
    label: Annotated[str, Field(pattern=LABEL_PATTERN)] | None = None


class KeyCreated(InferenceKey):
    """The key made, with its secret: shown this once, kept by the server only as a hash."""

    secret: str


class KeyList(BaseModel):
    """Every key, revoked and expired ones included (they keep their models protected)."""

    model_config = ConfigDict(extra="forbid")

    keys: list[InferenceKey]


KEY_ID_PARAM = {
    "name": "key_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": KEY_ID_PATTERN},
}

KEY_ROUTES: tuple[AdminRoute, ...] = (
    AdminRoute("GET", "/admin/v1/keys", "list_keys", "List inference keys", None, KeyList),
    AdminRoute(
        "POST",
        "/admin/v1/keys",
        "create_key",
        "Make an inference key; the answer holds its secret, shown only this once",
        KeyCreate,
        KeyCreated,
        201,
    ),
    AdminRoute(
        "DELETE",
        "/admin/v1/keys/{key_id}",
        "revoke_key",
        "Revoke an inference key (its models stay protected)",
        None,
        None,
        204,
        errors=((404, "no key of that id"),),
        path_params=(KEY_ID_PARAM,),
    ),
)
