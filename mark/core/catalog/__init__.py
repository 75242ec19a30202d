"""Catalogs as data: prices, limits and model profiles, each file stating its source and date.

The files beside this module are the only place Mark's numbers about the outside world live:

- `instance_types.json`: EC2 us-east-1 Linux on-demand prices and shapes (AWS pricing page).
- `sagemaker_prices.json`: SageMaker real-time endpoint prices, keyed by the EC2 type they run on
  (the MArk paper's baseline).
- `lambda_pricing.json`: AWS Lambda prices and limits, plus an estimated cold start.
- `spot_prices.csv`: a synthetic spot price sample (its `# source: ...; date: ...` header says how
  it was made), replayed cyclically so a simulation of any length has prices.
- `profiles.json`: per-model SLOs (the paper's) and per-type latency profiles T(b), anchored on
  the MArk slides and code where figures were published and marked `estimated` otherwise.

Every JSON file carries top-level `source` and `date`; a malformed entry raises `CatalogError`
naming the file and the entry. `load_catalog()` with no argument is cached.
"""

from __future__ import annotations

import bisect
import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from mark.core.errors import InvalidValue, NotFound
from mark.core.types import BackendSpec, InstanceType, Market, Model, Offering, Profile, Slo

__all__ = [
    "DEFAULT_DIRECTORY",
    "INSTANCE_TYPES_FILE",
    "SAGEMAKER_FILE",
    "LAMBDA_FILE",
    "SPOT_FILE",
    "PROFILES_FILE",
    "CatalogError",
    "LambdaPricing",
    "SpotPricePoint",
    "ModelEntry",
    "Catalog",
    "load_catalog",
]

DEFAULT_DIRECTORY = Path(__file__).resolve().parent
INSTANCE_TYPES_FILE = "instance_types.json"
SAGEMAKER_FILE = "sagemaker_prices.json"
LAMBDA_FILE = "lambda_pricing.json"
SPOT_FILE = "spot_prices.csv"
PROFILES_FILE = "profiles.json"

_SPOT_COLUMNS = ("timestamp_s", "instance_type", "zone", "price_per_hour")
_MB_PER_GB = 1024.0  # Lambda bills memory_mb / 1024 GB (3008 MB = 2.9375 GB)

_V = TypeVar("_V", bound=BaseModel)


class CatalogError(InvalidValue):
    """A catalog data file is missing or malformed; `file` and `entry` say where."""

    def __init__(self, file: str, entry: str, message: str) -> None:
        super().__init__(f"{file}: {entry}" if entry else file, message)
        self.file = file
        self.entry = entry


@dataclass(frozen=True, slots=True)
class LambdaPricing:
    """AWS Lambda's price list and limits (x86 and arm), from `lambda_pricing.json`."""

    per_gb_second_usd: float
    per_gb_second_arm_usd: float
    per_request_usd: float
    min_memory_mb: int
    max_memory_mb: int
    max_sync_payload_bytes: int
    timeout_s: float
    billing_granularity_ms: float
    cold_start_ms: float
    source: str
    cold_start_estimated: bool = True

    def charge_usd(self, duration_ms: float, memory_mb: int, arm: bool = False) -> float:
        """What one invocation costs: the request fee plus duration (rounded up to the billing
        granularity, cut at the timeout, where Lambda stops the function) times memory in GB
        (memory_mb / 1024) times the per GB-second price."""
        if not math.isfinite(duration_ms) or duration_ms < 0:
            raise InvalidValue("duration_ms", f"must be a finite number >= 0, got {duration_ms!r}")
        if not self.min_memory_mb <= memory_mb <= self.max_memory_mb:
            raise InvalidValue(
                "memory_mb",
                f"must be within {self.min_memory_mb}-{self.max_memory_mb}, got {memory_mb!r}",
            )
        ran_ms = min(duration_ms, self.timeout_s * 1000.0)
        steps = math.ceil(ran_ms / self.billing_granularity_ms - 1e-9)
        billed_ms = steps * self.billing_granularity_ms
        rate = self.per_gb_second_arm_usd if arm else self.per_gb_second_usd
        return billed_ms / 1000.0 * (memory_mb / _MB_PER_GB) * rate + self.per_request_usd


@dataclass(frozen=True, slots=True)
class SpotPricePoint:
    """One row of the spot history: the price in force from `timestamp_s` in one pool."""

    timestamp_s: float
    instance_type: str
    zone: str
    price_per_hour: float


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """A catalog model: its SLO, its profile per instance type and its serverless latency (the
    function's latency at `serverless_memory_mb`, for the spill rule)."""

    name: str
    slo: Slo
    profiles: Mapping[str, Profile]
    serverless_latency_ms: float
    serverless_estimated: bool
    source: str
    slo_source: str = ""
    serverless_memory_mb: int = 3008

    def to_model(self, backend: BackendSpec | None = None) -> Model:
        """The registrable Model; its max batch is the largest any profile allows."""
        return Model(
            name=self.name,
            slo=self.slo,
            backend=backend if backend is not None else BackendSpec(),
            profiles=dict(self.profiles),
            max_batch=max((p.max_batch for p in self.profiles.values()), default=1),
        )


@dataclass(frozen=True, slots=True)
class _Pool:
    """One (type, zone) spot pool's history, sorted by time, for bisecting."""

    times_s: tuple[float, ...]
    prices_per_hour: tuple[float, ...]


@dataclass(frozen=True)
class Catalog:
    """Everything the catalog files say, validated. Lookups raise NotFound for unknown names."""

    instance_types: Mapping[str, InstanceType]
    models: Mapping[str, ModelEntry]
    lambda_pricing: LambdaPricing
    spot_history: tuple[SpotPricePoint, ...]
    sagemaker_price_per_hour: Mapping[str, float]
    sources: Mapping[str, str]
    _pools: Mapping[tuple[str, str], _Pool] = field(init=False, repr=False, compare=False)
    _spot_start_s: float = field(init=False, repr=False, compare=False)
    _spot_span_s: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        grouped: dict[tuple[str, str], list[SpotPricePoint]] = {}
        for point in self.spot_history:
            grouped.setdefault((point.instance_type, point.zone), []).append(point)
        pools = {}
        for key, points in grouped.items():
            points.sort(key=lambda p: p.timestamp_s)
            pools[key] = _Pool(
                tuple(p.timestamp_s for p in points), tuple(p.price_per_hour for p in points)
            )
        start_s, span_s = _history_span(list(pools.values()))
        object.__setattr__(self, "_pools", MappingProxyType(pools))
        object.__setattr__(self, "_spot_start_s", start_s)
        object.__setattr__(self, "_spot_span_s", span_s)

    def instance_type(self, name: str) -> InstanceType:
        try:
            return self.instance_types[name]
        except KeyError:
            raise NotFound(_unknown("instance type", name, self.instance_types)) from None

    def model(self, name: str) -> ModelEntry:
        try:
            return self.models[name]
        except KeyError:
            raise NotFound(_unknown("model", name, self.models)) from None

    def spot_price(self, instance_type: str, zone: str, at_s: float) -> float | None:
        """The spot price in force at `at_s` in the pool, None where the history has no data for
        it. The history repeats with its own period (its span plus one step), so any `at_s`,
        before or after the sample, reads a price."""
        self.instance_type(instance_type)
        if not math.isfinite(at_s):
            raise InvalidValue("at_s", f"must be a finite time, got {at_s!r}")
        pool = self._pools.get((instance_type, zone))
        if pool is None:
            return None
        wrapped_s = self._spot_start_s + (at_s - self._spot_start_s) % self._spot_span_s
        index = bisect.bisect_right(pool.times_s, wrapped_s) - 1
        # index -1 (before the pool's first point): the previous cycle's last price holds.
        return pool.prices_per_hour[index]

    def offerings(
        self,
        zones: Sequence[str],
        at_s: float | None = None,
        spot: bool = True,
        types: Sequence[str] = (),
    ) -> list[Offering]:
        """Every (type, zone) on-demand offering at the list price, then, with `spot`, the spot
        offering at the price in force at `at_s` (the latest sample when None) where the
        history has that pool. Ordered by type (catalog order, or `types`' order), then zone,
        on-demand before spot. Unknown types raise NotFound."""
        names = list(types) if types else list(self.instance_types)
        on_demand_source = f"catalog/{INSTANCE_TYPES_FILE} {self._date(INSTANCE_TYPES_FILE)}"
        spot_source = f"catalog/{SPOT_FILE} (estimated sample) {self._date(SPOT_FILE)}"
        out: list[Offering] = []
        for name in names:
            itype = self.instance_type(name)
            for zone in dict.fromkeys(zones):
                out.append(
                    Offering(
                        instance_type=name,
                        zone=zone,
                        market=Market.ON_DEMAND,
                        price_per_hour=itype.on_demand_price_per_hour,
                        source=on_demand_source,
                    )
                )
                if not spot:
                    continue
                price = (
                    self._latest_spot(name, zone)
                    if at_s is None
                    else self.spot_price(name, zone, at_s)
                )
                if price is not None:
                    out.append(
                        Offering(
                            instance_type=name,
                            zone=zone,
                            market=Market.SPOT,
                            price_per_hour=price,
                            source=spot_source,
                        )
                    )
        return out

    def _date(self, file: str) -> str:
        """The date half of a `source; date` line."""
        return self.sources.get(file, "").rpartition("; ")[2]

    def _latest_spot(self, instance_type: str, zone: str) -> float | None:
        pool = self._pools.get((instance_type, zone))
        return None if pool is None else pool.prices_per_hour[-1]


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
    spot_history = _load_spot(directory, sources, instance_types)
    models = _load_models(directory, sources, instance_types, lambda_pricing)
    return Catalog(
        instance_types=MappingProxyType(instance_types),
        models=MappingProxyType(models),
        lambda_pricing=lambda_pricing,
        spot_history=spot_history,
        sagemaker_price_per_hour=MappingProxyType(sagemaker),
        sources=MappingProxyType(sources),
    )


# --- JSON files -------------------------------------------------------------------------------


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
    sources[file] = _source_line(
        _text(file, "source", data.get("source")), _text(file, "date", data.get("date"))
    )
    return data


def _load_instance_types(directory: Path, sources: dict[str, str]) -> dict[str, InstanceType]:
    file = INSTANCE_TYPES_FILE
    data = _read_json(directory, file, sources)
    out: dict[str, InstanceType] = {}
    for index, entry in enumerate(_list(file, "instance_types", data.get("instance_types"))):
        label = _label(entry, "name", index)
        itype = _validated(InstanceType, entry, file, label)
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
    for ec2_type, entry in _object(file, "prices", data.get("prices")).items():
        _known_type(file, ec2_type, ec2_type, instance_types)
        fields = _object(file, ec2_type, entry)
        out[ec2_type] = _number(file, f"{ec2_type}.price_per_hour", fields.get("price_per_hour"))
        if out[ec2_type] <= 0:
            raise CatalogError(file, ec2_type, "price_per_hour must be > 0")
    return out


def _load_lambda(directory: Path, sources: dict[str, str]) -> LambdaPricing:
    file = LAMBDA_FILE
    data = _read_json(directory, file, sources)

    def num(key: str) -> float:
        value = _number(file, key, data.get(key))
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
    for name, raw in _object(file, "models", data.get("models")).items():
        spec = _object(file, name, raw)
        profiles: dict[str, Profile] = {}
        for index, entry in enumerate(_list(file, f"{name}.profiles", spec.get("profiles"))):
            label = f"{name}/{_label(entry, 'instance_type', index)}"
            profile = _validated(Profile, entry, file, label)
            _known_type(file, label, profile.instance_type, instance_types)
            if profile.instance_type in profiles:
                raise CatalogError(file, label, "profiled twice")
            profiles[profile.instance_type] = profile
        serverless = _object(file, f"{name}.serverless", spec.get("serverless"))
        memory_mb = _number(file, f"{name}.serverless.memory_mb", serverless.get("memory_mb"))
        if not lambda_pricing.min_memory_mb <= memory_mb <= lambda_pricing.max_memory_mb:
            raise CatalogError(file, f"{name}.serverless.memory_mb", "outside Lambda's range")
        latency_ms = _number(file, f"{name}.serverless.latency_ms", serverless.get("latency_ms"))
        if latency_ms <= 0:
            raise CatalogError(file, f"{name}.serverless.latency_ms", "must be > 0")
        estimated = serverless.get("estimated")
        if not isinstance(estimated, bool):
            raise CatalogError(file, f"{name}.serverless.estimated", "must be true or false")
        entry = ModelEntry(
            name=name,
            slo=_validated(Slo, spec.get("slo"), file, f"{name}.slo"),
            profiles=MappingProxyType(profiles),
            serverless_latency_ms=latency_ms,
            serverless_estimated=estimated,
            source=_text(file, f"{name}.source", spec.get("source")),
            slo_source=_text(file, f"{name}.slo_source", spec.get("slo_source")),
            serverless_memory_mb=int(memory_mb),
        )
        try:
            entry.to_model()
        except ValidationError as exc:
            raise CatalogError(file, name, _first_error(exc)) from None
        out[name] = entry
    return out


# --- the spot CSV -----------------------------------------------------------------------------


def _load_spot(
    directory: Path, sources: dict[str, str], instance_types: Mapping[str, InstanceType]
) -> tuple[SpotPricePoint, ...]:
    """Rows of `timestamp_s,instance_type,zone,price_per_hour` under a `# source: ...; date:
    ...` comment line."""
    file = SPOT_FILE
    try:
        lines = (directory / file).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise CatalogError(file, "", f"not found in {directory}") from None
    except UnicodeDecodeError as exc:
        raise CatalogError(file, "", f"not UTF-8 text: {exc.reason}") from None
    first = lines[0] if lines else ""
    source, sep, date = first.removeprefix("# source:").rpartition("; date:")
    if not first.startswith("# source:") or not sep or not source.strip() or not date.strip():
        raise CatalogError(file, "line 1", "must be '# source: ...; date: ...'")
    sources[file] = _source_line(source.strip(), date.strip())
    reader = csv.reader(lines[1:])
    header = tuple(next(reader, ()))
    if header != _SPOT_COLUMNS:
        raise CatalogError(file, "line 2", f"header must be {','.join(_SPOT_COLUMNS)}")
    points: list[SpotPricePoint] = []
    seen: set[tuple[str, str, float]] = set()
    for line_no, row in enumerate(reader, start=3):
        label = f"line {line_no}"
        if len(row) != len(_SPOT_COLUMNS):
            raise CatalogError(file, label, f"needs {len(_SPOT_COLUMNS)} columns, got {len(row)}")
        stamp, itype, zone, price = row
        point = SpotPricePoint(
            timestamp_s=_number(file, f"{label} timestamp_s", stamp),
            instance_type=itype,
            zone=zone,
            price_per_hour=_number(file, f"{label} price_per_hour", price),
        )
        _known_type(file, label, itype, instance_types)
        if not zone:
            raise CatalogError(file, label, "zone is empty")
        if point.price_per_hour <= 0:
            raise CatalogError(file, label, "price_per_hour must be > 0")
        key = (itype, zone, point.timestamp_s)
        if key in seen:
            raise CatalogError(file, label, "repeats a (type, zone, timestamp)")
        seen.add(key)
        points.append(point)
    if not points:
        raise CatalogError(file, "", "has no price rows")
    return tuple(points)


def _history_span(pools: Sequence[_Pool]) -> tuple[float, float]:
    """(start, period) of the cyclic replay: the sample's span plus one sampling step (the
    smallest gap in any pool), so that the last sample holds for one step before the first
    comes round again."""
    if not pools:
        return 0.0, 1.0
    start_s = min(p.times_s[0] for p in pools)
    end_s = max(p.times_s[-1] for p in pools)
    gaps = [b - a for p in pools for a, b in zip(p.times_s, p.times_s[1:], strict=False)]
    step_s = min(gaps, default=3600.0)
    return start_s, end_s - start_s + step_s


# --- small validators, each naming the file and entry -----------------------------------------


def _validated(model: type[_V], data: Any, file: str, entry: str) -> _V:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise CatalogError(file, entry, _first_error(exc)) from None


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"{where}: {first['msg']}" if where else first["msg"]


def _object(file: str, entry: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise CatalogError(file, entry, "must be a JSON object")
    return value


def _list(file: str, entry: str, value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise CatalogError(file, entry, "must be a JSON list")
    return value


def _text(file: str, entry: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise CatalogError(file, entry, "must be a non-empty string")
    return value


def _number(file: str, entry: str, value: Any) -> float:
    if isinstance(value, bool):
        raise CatalogError(file, entry, f"must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise CatalogError(file, entry, f"must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise CatalogError(file, entry, f"must be finite, got {value!r}")
    return number


def _label(entry: Any, key: str, index: int) -> str:
    """How an error names a list entry: by its name field when it has one, else by position."""
    if isinstance(entry, dict) and isinstance(entry.get(key), str):
        return str(entry[key])
    return f"entry {index}"


def _known_type(
    file: str, entry: str, name: str, instance_types: Mapping[str, InstanceType]
) -> None:
    if name not in instance_types:
        raise CatalogError(file, entry, f"instance type {name!r} is not in {INSTANCE_TYPES_FILE}")


def _source_line(source: str, date: str) -> str:
    return f"{source}; {date}"


def _unknown(kind: str, name: str, known: Mapping[str, Any]) -> str:
    return f"unknown {kind} {name!r}; the catalog has: {', '.join(sorted(known))}"
