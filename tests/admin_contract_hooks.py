"""Schemathesis hooks for the admin API (schemathesis.toml loads them; see test_admin_contract).

A model body has three rules JSON Schema cannot state (frontend/admin_schema.py says them in
the document): a profile's key is its instance type, a profile's max_batch covers its largest
batch, the SLO is not shorter than the fastest profile. Bodies that schemathesis generates as
*valid* are made to keep them, by the server's own types, so that "a schema-valid body is
accepted" is checked on bodies the document calls valid; invalid bodies are left as generated.
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


def _fastest_ms(body: dict[str, Any]) -> float | None:
    profiles: dict[str, Any] = {}
    source = body.get("profiles_from")
    if isinstance(source, str) and source in load_catalog().models:
        profiles.update(load_catalog().model(source).profiles)
    profiles.update(body.get("profiles") or {})
    fastest = None
    for profile in profiles.values():
        try:
            ms = Profile.model_validate(profile).fastest_ms
        except ValueError:
            continue
        fastest = ms if fastest is None else min(fastest, ms)
    return fastest


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
    if isinstance(body.get("profiles"), dict):
        body["profiles"] = _keep_profile_rules(body["profiles"])
    slo = body.get("slo")
    fastest = _fastest_ms(body)
    if isinstance(slo, dict) and _number(slo.get("latency_ms")) and fastest is not None:
        slo["latency_ms"] = max(slo["latency_ms"], fastest)
