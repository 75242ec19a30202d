"""The spot price history (`spot_prices.csv`): its rows, per-pool series for bisecting, and the
period with which it is replayed, so that a simulation of any length has prices."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mark.core.catalog.checks import CatalogError, as_number, known_type, source_line
from mark.core.catalog.files import SPOT_FILE
from mark.core.types import InstanceType

__all__ = [
    "SpotPricePoint",
    "SpotPool",
    "load_spot_history",
    "history_span",
]

_SPOT_COLUMNS = ("timestamp_s", "instance_type", "zone", "price_per_hour")


@dataclass(frozen=True, slots=True)
class SpotPricePoint:
    """One row of the spot history: the price in force from `timestamp_s` in one pool."""

    timestamp_s: float
    instance_type: str
    zone: str
    price_per_hour: float


@dataclass(frozen=True, slots=True)
class SpotPool:
    """One (type, zone) spot pool's history, sorted by time, for bisecting."""

    times_s: tuple[float, ...]
    prices_per_hour: tuple[float, ...]


def load_spot_history(
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
    sources[file] = source_line(source.strip(), date.strip())
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
            timestamp_s=as_number(file, f"{label} timestamp_s", stamp),
            instance_type=itype,
            zone=zone,
            price_per_hour=as_number(file, f"{label} price_per_hour", price),
        )
        known_type(file, label, itype, instance_types)
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


def history_span(pools: Sequence[SpotPool]) -> tuple[float, float]:
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
