"""Schemathesis hooks for the admin API (schemathesis.toml loads them; see test_admin_contract).

A model body has three rules JSON Schema cannot state (frontend/admin_schema.py says them in
the document): a profile's key is its instance type, a profile's max_batch covers its largest
batch, the SLO is not shorter than the fastest profile. A bulk body adds two: every model gets
an SLO (from its entry, a group or the template) and names are unique within the request.
Bodies that schemathesis generates as *valid* are made to keep them, by the server's own types,
so that "a schema-valid body is accepted" is checked on bodies the document calls valid;
invalid bodies are left as generated.
"""

from __future__ import annotations

import re
from typing import Any

import schemathesis
from schemathesis.core.parameters import ParameterLocation
from schemathesis.generation.modes import GenerationMode

from frontend.admin_schema import BATCH_SIZE_PATTERN
from mark.core.catalog import load_catalog
from mark.core.types import Profile

_LONGEST_POINT_MS = 1_000_000.0  # under the SLO's 3,600,000 ms ceiling, so an SLO can cover it


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _keep_profile_rules(profiles: dict[str, Any]) -> dict[str, Any]:
    named: dict[str, Any] = {}
    for key, profile in profiles.items():
        if not isinstance(profile, dict):
            named[key] = profile
            continue
        points = profile.get("latency_ms")
        if isinstance(points, dict):
            profile["latency_ms"] = {
                size: min(ms, _LONGEST_POINT_MS) if _number(ms) else ms
                for size, ms in points.items()
            }
            sizes = [int(s) for s in points if re.match(BATCH_SIZE_PATTERN, s)]
            if sizes and _number(profile.get("max_batch", 1)):
                profile["max_batch"] = max(int(profile.get("max_batch", 1)), *sizes)
        instance_type = profile.get("instance_type")
        named[instance_type if isinstance(instance_type, str) else key] = profile
    return named


def _fastests_ms(body: dict[str, Any]) -> list[float]:
    """The fastest time of each profile a body gives or copies from the catalog."""
    profiles: dict[str, Any] = {}
    source = body.get("profiles_from")
    if isinstance(source, str) and source in load_catalog().models:
        profiles.update(load_catalog().model(source).profiles)
    profiles.update(body.get("profiles") or {})
    fastests = []
    for profile in profiles.values():
        try:
            fastests.append(Profile.model_validate(profile).fastest_ms)
        except ValueError:
            continue
    return fastests


def _keep_slo_over(body: dict[str, Any], floor_ms: float) -> None:
    slo = body.get("slo")
    if isinstance(slo, dict) and _number(slo.get("latency_ms")):
        slo["latency_ms"] = max(slo["latency_ms"], floor_ms)


def _keep_model_rules(body: dict[str, Any]) -> None:
    if isinstance(body.get("profiles"), dict):
        body["profiles"] = _keep_profile_rules(body["profiles"])
    fastests = _fastests_ms(body)
    if fastests:
        _keep_slo_over(body, min(fastests))


def _keep_bulk_rules(body: dict[str, Any]) -> None:
    """Every layer within the profile rules; every SLO at least the slowest profile's fastest
    time anywhere in the body (so at least the fastest of whatever a model's layers merge to);
    an SLO in the template where none is; names made unique."""
    template = body.get("template")
    if not isinstance(template, dict):
        template = body["template"] = {}
    groups, models = body.get("groups"), body.get("models")
    layers = [template, *(groups if isinstance(groups, list) else [])]
    layers += models if isinstance(models, list) else []
    layers = [layer for layer in layers if isinstance(layer, dict)]
    for layer in layers:
        if isinstance(layer.get("profiles"), dict):
            layer["profiles"] = _keep_profile_rules(layer["profiles"])
    floor_ms = max((ms for layer in layers for ms in _fastests_ms(layer)), default=1.0)
    if not isinstance(template.get("slo"), dict):
        template["slo"] = {"latency_ms": floor_ms, "percentile": 0.5}
    for layer in layers:
        _keep_slo_over(layer, floor_ms)
    seen: set[Any] = set()
    for i, model in enumerate(models if isinstance(models, list) else []):
        name = model.get("name") if isinstance(model, dict) else None
        while isinstance(name, str) and name in seen:
            name = f"{name[:48]}-{i}-{len(seen)}"  # still a model name: [a-z0-9._-], <= 63
        seen.add(name)
        if isinstance(model, dict) and "name" in model:
            model["name"] = name


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    # Just before sending, not at generation: the stateful phase fills bodies from values that
    # earlier responses held, after generation hooks have run.
    meta = case.meta
    body_info = meta.components.get(ParameterLocation.BODY) if meta is not None else None
    if body_info is None or body_info.mode != GenerationMode.POSITIVE:
        return
    body = case.body
    if not isinstance(body, dict):
        return
    if case.operation.path.endswith(":bulk"):
        _keep_bulk_rules(body)
    else:
        _keep_model_rules(body)
