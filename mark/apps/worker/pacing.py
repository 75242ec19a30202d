"""Which service-time profile a worker paces each model to (`mark worker --instance-type T`).

An explicit profile (what the local cloud passes for a registered model) wins; otherwise the
catalog's profile of the model for that type (`mark/core/catalog/profiles.json`), `builtin:mlp`
standing for the catalog's `demo` model. A model with no profile for the type is refused, so a
fleet never silently runs at native speed while the planner assumes the catalog's.
"""

from __future__ import annotations

from collections.abc import Mapping

from mark.core.errors import InvalidValue, NotFound
from mark.core.types import Profile

__all__ = ["resolve_profiles", "DEMO_CATALOG_MODEL"]

DEMO_CATALOG_MODEL = "demo"


def resolve_profiles(
    models: Mapping[str, str],
    instance_type: str,
    explicit: Mapping[str, Profile],
) -> dict[str, Profile]:
    """Profile per served model name (`models`: name -> artifact) on `instance_type`."""
    missing = [name for name in models if name not in explicit]
    out = {name: explicit[name] for name in models if name in explicit}
    if not missing:
        return out
    from mark.core.catalog import load_catalog

    catalog = load_catalog()
    if instance_type not in catalog.instance_types:
        raise InvalidValue("instance-type", f"unknown instance type {instance_type!r}")
    for name in missing:
        entry = DEMO_CATALOG_MODEL if models[name] == "builtin:mlp" else name
        try:
            profiles = catalog.model(entry).profiles
        except (NotFound, KeyError) as exc:
            raise InvalidValue(
                "instance-type", f"the catalog has no model {entry!r} to pace {name!r} by"
            ) from exc
        profile = profiles.get(instance_type)
        if profile is None:
            raise InvalidValue(
                "instance-type",
                f"the catalog has no profile of {entry!r} on {instance_type!r} "
                f"(profiled types: {sorted(profiles)}); pass --profiles or pick another type",
            )
        out[name] = profile
    return out
