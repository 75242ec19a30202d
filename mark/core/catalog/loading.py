"""Reading the catalog files into a Catalog, each entry validated where it is read."""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pydantic import ValidationError

from mark.core.catalog.catalog import Catalog
from mark.core.catalog.checks import (
    CatalogError,
    as_list,
    as_number,
    as_object,
    as_text,
    first_error,
    known_type,
    label_of,
    source_line,
    validated,
)
from mark.core.catalog.files import (
    DEFAULT_DIRECTORY,
    INSTANCE_TYPES_FILE,
    LAMBDA_FILE,
    PROFILES_FILE,
    SAGEMAKER_FILE,
    SPOT_ADVISOR_FILE,
)
from mark.core.catalog.spot_prices import load_spot_history
from mark.core.catalog.values import SPOT_ADVISOR_BANDS, LambdaPricing, ModelEntry
from mark.core.types import InstanceType, Profile, Slo

__all__ = [
    "load_catalog",
]


def load_catalog(directory: str | Path | None = None) -> Catalog:
    """Load and validate every catalog file in `directory` (default: the packaged catalog,
    loaded once and cached). Raises CatalogError naming the file and entry at fault."""
    if directory is None:
        return _default_catalog()
    return _load(Path(directory))


@lru_cache(maxsize=1)
def _default_catalog() -> Catalog:
    return _load(DEFAULT_DIRECTORY)


def _load(directory: Path) -> Catalog:
    sources: dict[str, str] = {}
    instance_types = _load_instance_types(directory, sources)
    sagemaker = _load_sagemaker(directory, sources, instance_types)
    lambda_pricing = _load_lambda(directory, sources)
    spot_history = load_spot_history(directory, sources, instance_types)
    models = _load_models(directory, sources, instance_types, lambda_pricing)
    bands = _load_spot_advisor(directory, sources, instance_types)
    return Catalog(
        instance_types=MappingProxyType(instance_types),
        models=MappingProxyType(models),
        lambda_pricing=lambda_pricing,
        spot_history=spot_history,
        sagemaker_price_per_hour=MappingProxyType(sagemaker),
        sources=MappingProxyType(sources),
        interruption_bands=MappingProxyType(bands),
    )


def _read_json(directory: Path, file: str, sources: dict[str, str]) -> dict[str, Any]:
    """The file's top-level object, after recording its `source; date` in `sources`."""
    try:
        data = json.loads((directory / file).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CatalogError(file, "", f"not found in {directory}") from None
    except json.JSONDecodeError as exc:
        raise CatalogError(file, f"line {exc.lineno}", f"not valid JSON: {exc.msg}") from None
    except UnicodeDecodeError as exc:
        raise CatalogError(file, "", f"not UTF-8 text: {exc.reason}") from None
    if not isinstance(data, dict):
        raise CatalogError(file, "", "must hold a JSON object at the top level")
    sources[file] = source_line(
        as_text(file, "source", data.get("source")), as_text(file, "date", data.get("date"))
    )
    return data


def _load_instance_types(directory: Path, sources: dict[str, str]) -> dict[str, InstanceType]:
    file = INSTANCE_TYPES_FILE
    data = _read_json(directory, file, sources)
    out: dict[str, InstanceType] = {}
    for index, entry in enumerate(as_list(file, "instance_types", data.get("instance_types"))):
        label = label_of(entry, "name", index)
        itype = validated(InstanceType, entry, file, label)
        if itype.name in out:
            raise CatalogError(file, label, "listed twice")
        out[itype.name] = itype
    return out


def _load_sagemaker(
    directory: Path, sources: dict[str, str], instance_types: Mapping[str, InstanceType]
) -> dict[str, float]:
    file = SAGEMAKER_FILE
    data = _read_json(directory, file, sources)
    out: dict[str, float] = {}
    for ec2_type, entry in as_object(file, "prices", data.get("prices")).items():
        known_type(file, ec2_type, ec2_type, instance_types)
        fields = as_object(file, ec2_type, entry)
        out[ec2_type] = as_number(file, f"{ec2_type}.price_per_hour", fields.get("price_per_hour"))
        if out[ec2_type] <= 0:
            raise CatalogError(file, ec2_type, "price_per_hour must be > 0")
    return out


def _load_spot_advisor(
    directory: Path, sources: dict[str, str], instance_types: Mapping[str, InstanceType]
) -> dict[str, str]:
    """Every instance type's Spot Advisor band: a type without one would have no rate under
    `--interruption-rate advisor`, so each catalog type must be listed."""
    file = SPOT_ADVISOR_FILE
    data = _read_json(directory, file, sources)
    out: dict[str, str] = {}
    for type_name, band in as_object(file, "bands", data.get("bands")).items():
        known_type(file, type_name, type_name, instance_types)
        if band not in SPOT_ADVISOR_BANDS:
            raise CatalogError(
                file, type_name, f"unknown band {band!r}; bands: {', '.join(SPOT_ADVISOR_BANDS)}"
            )
        out[type_name] = band
    missing = [name for name in instance_types if name not in out]
    if missing:
        raise CatalogError(file, "bands", f"no band for {', '.join(missing)}")
    return out


def _load_lambda(directory: Path, sources: dict[str, str]) -> LambdaPricing:
    file = LAMBDA_FILE
    data = _read_json(directory, file, sources)

    def num(key: str) -> float:
        value = as_number(file, key, data.get(key))
        if value <= 0:
            raise CatalogError(file, key, f"must be > 0, got {value!r}")
        return value

    def whole(key: str) -> int:
        value = num(key)
        if value != int(value):
            raise CatalogError(file, key, f"must be a whole number, got {value!r}")
        return int(value)

    estimated = data.get("cold_start_estimated", True)
    if not isinstance(estimated, bool):
        raise CatalogError(file, "cold_start_estimated", "must be true or false")
    pricing = LambdaPricing(
        per_gb_second_usd=num("per_gb_second_usd"),
        per_gb_second_arm_usd=num("per_gb_second_arm_usd"),
        per_request_usd=num("per_million_requests_usd") / 1e6,
        min_memory_mb=whole("min_memory_mb"),
        max_memory_mb=whole("max_memory_mb"),
        max_sync_payload_bytes=whole("max_sync_payload_bytes"),
        timeout_s=num("timeout_s"),
        billing_granularity_ms=num("billing_granularity_ms"),
        cold_start_ms=num("cold_start_ms"),
        source=sources[file],
        cold_start_estimated=estimated,
    )
    if pricing.min_memory_mb > pricing.max_memory_mb:
        raise CatalogError(file, "min_memory_mb", "must not exceed max_memory_mb")
    return pricing


def _load_models(
    directory: Path,
    sources: dict[str, str],
    instance_types: Mapping[str, InstanceType],
    lambda_pricing: LambdaPricing,
) -> dict[str, ModelEntry]:
    file = PROFILES_FILE
    data = _read_json(directory, file, sources)
    out: dict[str, ModelEntry] = {}
    for name, raw in as_object(file, "models", data.get("models")).items():
        spec = as_object(file, name, raw)
        profiles: dict[str, Profile] = {}
        for index, entry in enumerate(as_list(file, f"{name}.profiles", spec.get("profiles"))):
            label = f"{name}/{label_of(entry, 'instance_type', index)}"
            profile = validated(Profile, entry, file, label)
            known_type(file, label, profile.instance_type, instance_types)
            if profile.instance_type in profiles:
                raise CatalogError(file, label, "profiled twice")
            profiles[profile.instance_type] = profile
        serverless = as_object(file, f"{name}.serverless", spec.get("serverless"))
        memory_mb = as_number(file, f"{name}.serverless.memory_mb", serverless.get("memory_mb"))
        if not lambda_pricing.min_memory_mb <= memory_mb <= lambda_pricing.max_memory_mb:
            raise CatalogError(file, f"{name}.serverless.memory_mb", "outside Lambda's range")
        latency_ms = as_number(file, f"{name}.serverless.latency_ms", serverless.get("latency_ms"))
        if latency_ms <= 0:
            raise CatalogError(file, f"{name}.serverless.latency_ms", "must be > 0")
        estimated = serverless.get("estimated")
        if not isinstance(estimated, bool):
            raise CatalogError(file, f"{name}.serverless.estimated", "must be true or false")
        entry = ModelEntry(
            name=name,
            slo=validated(Slo, spec.get("slo"), file, f"{name}.slo"),
            profiles=MappingProxyType(profiles),
            serverless_latency_ms=latency_ms,
            serverless_estimated=estimated,
            source=as_text(file, f"{name}.source", spec.get("source")),
            slo_source=as_text(file, f"{name}.slo_source", spec.get("slo_source")),
            serverless_memory_mb=int(memory_mb),
        )
        try:
            entry.to_model()
        except ValidationError as exc:
            raise CatalogError(file, name, first_error(exc)) from None
        out[name] = entry
    return out
