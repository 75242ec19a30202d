"""Small validators of catalog data, each raising CatalogError that names the file and entry."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from mark.core.catalog.files import INSTANCE_TYPES_FILE
from mark.core.errors import InvalidValue
from mark.core.types import InstanceType

__all__ = [
    "CatalogError",
    "validated",
    "first_error",
    "as_object",
    "as_list",
    "as_text",
    "as_number",
    "label_of",
    "known_type",
    "source_line",
    "unknown",
]

_V = TypeVar("_V", bound=BaseModel)


class CatalogError(InvalidValue):
    """A catalog data file is missing or malformed; `file` and `entry` say where."""

    def __init__(self, file: str, entry: str, message: str) -> None:
        super().__init__(f"{file}: {entry}" if entry else file, message)
        self.file = file
        self.entry = entry


def validated(model: type[_V], data: Any, file: str, entry: str) -> _V:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise CatalogError(file, entry, first_error(exc)) from None


def first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"{where}: {first['msg']}" if where else first["msg"]


def as_object(file: str, entry: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise CatalogError(file, entry, "must be a JSON object")
    return value


def as_list(file: str, entry: str, value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise CatalogError(file, entry, "must be a JSON list")
    return value


def as_text(file: str, entry: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise CatalogError(file, entry, "must be a non-empty string")
    return value


def as_number(file: str, entry: str, value: Any) -> float:
    if isinstance(value, bool):
        raise CatalogError(file, entry, f"must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise CatalogError(file, entry, f"must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise CatalogError(file, entry, f"must be finite, got {value!r}")
    return number


def label_of(entry: Any, key: str, index: int) -> str:
    """How an error names a list entry: by its name field when it has one, else by position."""
    if isinstance(entry, dict) and isinstance(entry.get(key), str):
        return str(entry[key])
    return f"entry {index}"


def known_type(
    file: str, entry: str, name: str, instance_types: Mapping[str, InstanceType]
) -> None:
    if name not in instance_types:
        raise CatalogError(file, entry, f"instance type {name!r} is not in {INSTANCE_TYPES_FILE}")


def source_line(source: str, date: str) -> str:
    return f"{source}; {date}"


def unknown(kind: str, name: str, known: Mapping[str, Any]) -> str:
    return f"unknown {kind} {name!r}; the catalog has: {', '.join(sorted(known))}"
