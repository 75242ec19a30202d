"""The fleet file of a many-model simulation (../shared/DESIGN.md, "Many-model simulation"):

    {"models": [{"name": "m-0001", "size_mb": 800, "slo_ms": 100, "percentile": 0.9,
                 "profile": "bert-base", "group": "en"}, ...]}

`profile` names a catalog model whose per-type profiles (service times, memory footprint per
type) and serverless latency the fleet model borrows: a fleet of thousands shares a few measured
models. `size_mb` is the artifact a load moves; `group` is optional: the model's route group,
over the config's `[[placement.groups]]` rules (mark/apps/simulator/many_model.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mark.core.catalog import Catalog
from mark.core.errors import InvalidValue
from mark.core.types import Slo

__all__ = ["FleetModel", "read_fleet", "write_fleet"]

_KEYS = {"name", "size_mb", "slo_ms", "percentile", "profile", "group"}


@dataclass(frozen=True, slots=True)
class FleetModel:
    name: str
    size_mb: float
    slo: Slo
    profile: str
    group: str | None = None


def _entry(path: Path, index: int, raw: Any, catalog: Catalog) -> FleetModel:
    where = f"{path}: models[{index}]"
    if not isinstance(raw, dict):
        raise InvalidValue("fleet", f"{where} must be a JSON object")
    missing = sorted(_KEYS - {"group"} - set(raw))
    extra = sorted(set(raw) - _KEYS)
    if missing or extra:
        problem = f"missing {', '.join(missing)}" if missing else f"unknown {', '.join(extra)}"
        raise InvalidValue("fleet", f"{where}: {problem}")
    name, profile, group = raw["name"], raw["profile"], raw.get("group")
    if not isinstance(name, str) or not name:
        raise InvalidValue("fleet", f"{where}: name must be a non-empty string")
    if not isinstance(profile, str):
        raise InvalidValue("fleet", f"{where}: profile must be a catalog model name")
    catalog.model(profile)
    if group is not None and not isinstance(group, str):
        raise InvalidValue("fleet", f"{where}: group must be a string")
    numbers = {}
    for key in ("size_mb", "slo_ms", "percentile"):
        value = raw[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise InvalidValue("fleet", f"{where}: {key} must be a number > 0, got {value!r}")
        numbers[key] = float(value)
    try:
        slo = Slo(latency_ms=numbers["slo_ms"], percentile=numbers["percentile"])
    except ValueError as exc:
        raise InvalidValue("fleet", f"{where}: {exc}") from None
    return FleetModel(name, numbers["size_mb"], slo, profile, group)


def read_fleet(path: str | Path, catalog: Catalog) -> tuple[FleetModel, ...]:
    """The fleet's models, checked: every key present, numbers positive, the profile a catalog
    model, no name twice. Raises InvalidValue naming the file and entry."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidValue("fleet", f"cannot open {path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise InvalidValue("fleet", f"{path}: not JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise InvalidValue("fleet", f"{path}: must be an object with a 'models' list")
    models = tuple(_entry(path, i, raw, catalog) for i, raw in enumerate(data["models"]))
    if not models:
        raise InvalidValue("fleet", f"{path}: no models")
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})[0]
        raise InvalidValue("fleet", f"{path}: model {twice!r} appears twice")
    return models


def write_fleet(path: str | Path, models: tuple[FleetModel, ...] | list[FleetModel]) -> None:
    """Write `models` in the fleet file's shape (what `read_fleet` reads back)."""
    rows = []
    for m in models:
        row: dict[str, Any] = {
            "name": m.name,
            "size_mb": m.size_mb,
            "slo_ms": m.slo.latency_ms,
            "percentile": m.slo.percentile,
            "profile": m.profile,
        }
        if m.group is not None:
            row["group"] = m.group
        rows.append(row)
    Path(path).write_text(json.dumps({"models": rows}, indent=1) + "\n", encoding="utf-8")
