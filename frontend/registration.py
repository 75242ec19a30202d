"""Admin bodies to registered models: one at a time (POST, PUT, PATCH) or many at once
(`POST /admin/v1/models:bulk`), with the rules that need more than the body: the catalog's
profiles (`profiles_from`) and the workers' memory budget (`worker.memory_budget_bytes`).

A bulk registration is checked whole before anything is stored, so that one answer names every
fault, each by its entry's place and field (`models.3.slo.latency_ms`, or `store.en-a.memory_mb`
for a store's artifact that no entry changes), instead of the first fault of many: a client that
sends a thousand models fixes them in one round. A model's settings are layers, lowest first: the
request's template, the first group whose pattern fits the name, the artifact found in the store
(its `backend.artifact`), the model's own entry.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from frontend.admin_schema import BULK_MAX_MODELS, FieldError, ModelGroup, ModelsBulk
from frontend.errors import validation_details
from mark.core.catalog import load_catalog
from mark.core.types import Model, Profile

__all__ = ["BulkPlan", "settings_of", "build_model", "budget_faults", "artifact_fault",
           "named_artifacts", "plan_bulk"]  # fmt: skip

_SETTINGS = frozenset({"slo", "backend", "profiles", "profiles_from", "max_batch", "memory_mb"})
_MERGED_BY_KEY = frozenset({"backend", "profiles"})
_MIB = 2**20


def settings_of(body: BaseModel) -> dict[str, Any]:
    """The model settings a body gives, and only those: fields left out or null are absent, in
    nested values too, so that a layer's `backend: {"protocol": "tfserving"}` keeps the artifact
    of the layer below."""
    return body.model_dump(include=set(_SETTINGS), exclude_unset=True, exclude_none=True)


def _merge(layers: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Layers, lowest first: a field replaces the one below, `backend` and `profiles` key by
    key (a profile whole)."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            out[key] = {**out.get(key, {}), **value} if key in _MERGED_BY_KEY else value
    return out


def build_model(name: str, settings: Mapping[str, Any]) -> Model:
    """The model `settings` describe, the catalog's profiles of `profiles_from` (a catalog
    model: the bodies check it when read) under the explicit ones. Raises ValidationError (a
    field, or a rule of Model)."""
    fields = dict(settings)
    source = fields.pop("profiles_from", None)
    profiles: dict[str, Any] = dict(fields.pop("profiles", {}))
    if source is not None:
        profiles = {**load_catalog().model(source).profiles, **profiles}
    return Model.model_validate({**fields, "name": name, "profiles": profiles})


def budget_faults(
    memory_mb: float | None, profiles: Mapping[str, Profile], budget_bytes: int | None
) -> list[FieldError]:
    """The footprints larger than a worker's whole memory budget (None: unbounded): such a
    model could never be loaded, by any eviction (the worker would answer 422 at its first
    request), so it is refused when it is registered instead."""
    if budget_bytes is None:
        return []
    sizes = [("memory_mb", memory_mb)]
    sizes += [(f"profiles.{key}.memory_mb", p.memory_mb) for key, p in profiles.items()]
    return [
        FieldError(
            field=where,
            message=f"{mb:g} MiB is more than a worker's whole memory budget, "
            f"{budget_bytes / _MIB:g} MiB (worker.memory_budget_bytes = {budget_bytes})",
        )
        for where, mb in sizes
        if mb is not None and mb * _MIB > budget_bytes
    ]


def artifact_fault(artifact_bytes: int, budget_bytes: int | None) -> FieldError | None:
    """The fault of an artifact larger than a worker's whole memory budget (None: it fits, or
    the budget is unbounded): a worker charges a model at least its artifact's bytes
    (mark/apps/worker/loaders.py), so such a model is refused whatever footprint it declares
    (or none), as the worker would refuse it with 422 at its first request."""
    if budget_bytes is None or artifact_bytes <= budget_bytes:
        return None
    return FieldError(
        field="backend.artifact",
        message=f"the artifact is {artifact_bytes} bytes, more than a worker's whole memory "
        f"budget (worker.memory_budget_bytes = {budget_bytes})",
    )


@dataclass(frozen=True, slots=True)
class _Entry:
    """One model of a bulk request before it is built: where it is in the request, its name and
    its layers above the template and its group."""

    place: str
    name: str
    layers: tuple[Mapping[str, Any], ...]


@dataclass(slots=True)
class BulkPlan:
    """A bulk request checked whole: the models it registers (when `faults` is empty) and the
    place in the request of each name it gives, to report names already registered."""

    models: list[Model] = field(default_factory=list)
    places: dict[str, str] = field(default_factory=dict)
    faults: list[FieldError] = field(default_factory=list)

    def fault(self, where: str, message: str) -> None:
        self.faults.append(FieldError(field=where, message=message))


def _listed(body: ModelsBulk, plan: BulkPlan) -> list[_Entry]:
    entries = []
    for i, model in enumerate(body.models):
        if model.name in plan.places:
            plan.fault(f"models.{i}.name", f"is given again (first: {plan.places[model.name]})")
            continue
        plan.places[model.name] = f"models.{i}"
        entries.append(_Entry(f"models.{i}", model.name, (settings_of(model),)))
    return entries


def _from_store(
    body: ModelsBulk, prefix: str, found: Sequence[tuple[str, str]], plan: BulkPlan
) -> list[_Entry]:
    """An entry per artifact found; the request's `models` change the artifacts they name."""
    artifacts: dict[str, list[str]] = {}
    for name, artifact in found:
        artifacts.setdefault(name, []).append(artifact)
    if len(artifacts) > BULK_MAX_MODELS:
        plan.fault(
            "store.prefix",
            f"{len(artifacts)} models are stored under {prefix!r}, more than one request "
            f"registers ({BULK_MAX_MODELS}): register them under longer prefixes",
        )
        return []
    changes: dict[str, tuple[int, Mapping[str, Any]]] = {}
    for i, model in enumerate(body.models):
        if model.name not in artifacts:
            plan.fault(f"models.{i}.name", f"no artifact of this name is stored under {prefix!r}")
        elif model.name in changes:
            plan.fault(
                f"models.{i}.name", f"is given again (first: models.{changes[model.name][0]})"
            )
        else:
            changes[model.name] = (i, settings_of(model))
    entries = []
    for name, where in artifacts.items():
        index, change = changes.get(name, (None, {}))
        place = f"store.{name}" if index is None else f"models.{index}"
        plan.places[name] = place
        if len(where) > 1:
            stored = ", ".join(where)
            plan.fault(f"store.{name}", f"the store holds several artifacts of this name: {stored}")
            continue
        entries.append(_Entry(place, name, ({"backend": {"artifact": where[0]}}, change)))
    return entries


def _group(groups: Sequence[ModelGroup], name: str) -> int | None:
    return next((i for i, g in enumerate(groups) if fnmatch.fnmatchcase(name, g.match)), None)


def named_artifacts(body: ModelsBulk) -> set[str]:
    """Every artifact spec a bulk body gives, in its template, groups or entries (the admin
    API learns their sizes before `plan_bulk`, which does no I/O)."""
    layers = [body.template, *body.groups, *body.models]
    return {a for layer in layers if (a := settings_of(layer).get("backend", {}).get("artifact"))}


def plan_bulk(
    body: ModelsBulk,
    budget_bytes: int | None,
    found: Sequence[tuple[str, str]] = (),
    artifact_bytes: Mapping[str, int] | None = None,
) -> BulkPlan:
    """Every model of `body` built and checked, or the faults that keep it from being built.
    `budget_bytes` is the workers' memory budget (None: unbounded); with `body.store`, `found`
    holds the (name, artifact) of each artifact under its prefix, in the store's order;
    `artifact_bytes` the size of each artifact known (a local file's, a store listing's)."""
    sizes = artifact_bytes or {}
    plan = BulkPlan()
    if body.store is None:
        entries = _listed(body, plan)
    else:
        entries = _from_store(body, body.store.prefix, found, plan)
    template = settings_of(body.template)
    groups = [settings_of(g) for g in body.groups]
    for entry in entries:
        group = _group(body.groups, entry.name)
        layers = [template, groups[group] if group is not None else {}, *entry.layers]
        settings = _merge(layers)
        if "slo" not in settings:
            plan.fault(
                f"{entry.place}.slo",
                "no SLO: give one in the entry, in a group whose match fits the name, or in "
                "the template",
            )
            continue
        try:
            model = build_model(entry.name, settings)
        except ValidationError as exc:
            for d in validation_details(exc):
                plan.fault(f"{entry.place}.{d['field']}", d["message"])
            continue
        over = budget_faults(model.memory_mb, model.profiles, budget_bytes)
        too_big = artifact_fault(sizes.get(model.backend.artifact, 0), budget_bytes)
        over += [too_big] if too_big is not None else []
        for f in over:
            plan.fault(f"{entry.place}.{f.field}", f.message)
        if not over:
            plan.models.append(model)
    return plan
