"""The trace format (../shared/DESIGN.md): CSV with a header, one row per time bucket,
`timestamp_s,requests`, and optionally a `model` column for many-model traces.

- The bucket width is the spacing of the timestamps; every bucket is present in a single-model
  trace. In a many-model trace the distinct timestamps form the grid and a (bucket, model) row that
  is missing means 0 requests: the writer leaves out zero rows there, because with Zipf
  popularity most models are idle in most buckets.
- `requests` is the number of requests in the bucket (a non-negative number; generators write
  integers). Arrivals within a bucket are a Poisson process, drawn by whoever replays the trace.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from mark.core.errors import InvalidValue

__all__ = ["Trace", "read_trace", "write_trace"]

_SPACING_TOLERANCE = 1e-6


@dataclass(frozen=True, eq=False)
class Trace:
    """Request counts per bucket. `models` is None for a single-model trace, else one model name
    per row (rows sorted by timestamp, then model; zero rows may be absent)."""

    timestamps_s: NDArray[np.float64]
    counts: NDArray[np.float64]
    bucket_s: float
    models: tuple[str, ...] | None = None
    source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.timestamps_s.shape != self.counts.shape or self.timestamps_s.ndim != 1:
            raise InvalidValue("trace", "timestamps_s and counts must be 1-D and of equal length")
        if self.models is not None and len(self.models) != self.counts.size:
            raise InvalidValue("trace", "models must name the model of every row")

    @property
    def model_names(self) -> list[str]:
        """The models of a many-model trace, most requests first ([] for a single model)."""
        if self.models is None:
            return []
        names = np.asarray(self.models)
        unique, inverse = np.unique(names, return_inverse=True)
        totals = np.bincount(inverse, weights=self.counts)
        order = np.lexsort((unique, -totals))
        return [str(unique[i]) for i in order]

    @property
    def grid_s(self) -> NDArray[np.float64]:
        """Start of every bucket from the first to the last, evenly spaced."""
        if self.timestamps_s.size == 0:
            return np.zeros(0)
        first, last = float(self.timestamps_s[0]), float(self.timestamps_s[-1])
        n = round((last - first) / self.bucket_s) + 1
        return first + self.bucket_s * np.arange(n, dtype=np.float64)

    @property
    def duration_s(self) -> float:
        return float(self.grid_s.size * self.bucket_s)

    def total(self) -> Trace:
        """All models summed per bucket, as a single-model trace on the full grid."""
        if self.models is None:
            return self
        grid = self.grid_s
        index = np.rint((self.timestamps_s - grid[0]) / self.bucket_s).astype(np.int64)
        counts = np.bincount(index, weights=self.counts, minlength=grid.size)
        return Trace(grid, counts.astype(np.float64), self.bucket_s, None, self.source)

    def for_model(self, name: str) -> Trace:
        """One model's counts on the full grid (zeros where it has no row)."""
        if self.models is None:
            raise InvalidValue("model", "this trace has no model column")
        mask = np.asarray(self.models) == name
        if not mask.any():
            raise InvalidValue("model", f"no model {name!r} in the trace")
        grid = self.grid_s
        counts = np.zeros(grid.size)
        index = np.rint((self.timestamps_s[mask] - grid[0]) / self.bucket_s).astype(np.int64)
        counts[index] = self.counts[mask]
        return Trace(grid, counts, self.bucket_s, None, self.source)

    @property
    def rates_rps(self) -> NDArray[np.float64]:
        return self.counts / self.bucket_s


def write_trace(path: str | Path, trace: Trace) -> None:
    """Write `trace` as CSV (zero rows of a many-model trace are left out)."""
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh, lineterminator="\n")
        if trace.models is None:
            out.writerow(["timestamp_s", "requests"])
            for t, c in zip(trace.timestamps_s.tolist(), trace.counts.tolist(), strict=True):
                out.writerow([_number(t), _number(c)])
            return
        out.writerow(["timestamp_s", "model", "requests"])
        rows = zip(trace.timestamps_s.tolist(), trace.models, trace.counts.tolist(), strict=True)
        for t, model, c in rows:
            if c:
                out.writerow([_number(t), model, _number(c)])


def read_trace(path: str | Path) -> Trace:
    """Read a trace CSV. Raises InvalidValue naming the file and line of the first problem:
    a missing column, a non-number, a negative or non-finite count, timestamps out of order or
    not on an even grid."""
    path = Path(path)
    try:
        fh = open(path, newline="")
    except OSError as exc:
        raise InvalidValue("trace", f"cannot open {path}: {exc.strerror}") from exc
    with fh:
        reader = csv.reader(fh)
        header = [h.strip() for h in next(reader, [])]
        if "timestamp_s" not in header or "requests" not in header:
            raise InvalidValue(
                "trace", f"{path}:1: header must name timestamp_s and requests, got {header!r}"
            )
        t_col, r_col = header.index("timestamp_s"), header.index("requests")
        m_col = header.index("model") if "model" in header else None
        times: list[float] = []
        counts: list[float] = []
        models: list[str] = []
        for line, row in enumerate(reader, start=2):
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise InvalidValue(
                    "trace", f"{path}:{line}: expected {len(header)} fields, got {len(row)}"
                )
            t = _parse(path, line, "timestamp_s", row[t_col])
            c = _parse(path, line, "requests", row[r_col])
            if c < 0:
                raise InvalidValue("trace", f"{path}:{line}: requests must be >= 0, got {c!r}")
            times.append(t)
            counts.append(c)
            if m_col is not None:
                name = row[m_col].strip()
                if not name:
                    raise InvalidValue("trace", f"{path}:{line}: empty model name")
                models.append(name)
    if not times:
        raise InvalidValue("trace", f"{path}: no rows")
    t_arr, c_arr = np.asarray(times), np.asarray(counts)
    bucket_s = _check_grid(path, t_arr, models if m_col is not None else None)
    if m_col is None:
        return Trace(t_arr, c_arr, bucket_s, None, str(path))
    order = np.lexsort((np.asarray(models), t_arr))
    return Trace(t_arr[order], c_arr[order], bucket_s, tuple(models[i] for i in order), str(path))


def _check_grid(path: Path, times: NDArray[np.float64], models: Sequence[str] | None) -> float:
    """The bucket width; every timestamp must lie on one even grid (every bucket present for a
    single-model trace, no model twice in one bucket otherwise)."""
    if models is None:
        steps = np.diff(times)
        if steps.size == 0:
            raise InvalidValue("trace", f"{path}: need at least two buckets to know their width")
        if np.any(steps <= 0):
            i = int(np.flatnonzero(steps <= 0)[0])
            raise InvalidValue(
                "trace",
                f"{path}:{i + 3}: timestamps must increase ({times[i + 1]!r} after {times[i]!r})",
            )
        bucket_s = float(steps[0])
        uneven = np.flatnonzero(np.abs(steps - bucket_s) > _SPACING_TOLERANCE * bucket_s)
        if uneven.size:
            i = int(uneven[0])
            raise InvalidValue(
                "trace",
                f"{path}:{i + 3}: uneven timestamps: {times[i + 1]!r} after "
                f"{times[i]!r}, but buckets are {bucket_s!r} s wide",
            )
        return bucket_s
    distinct = np.unique(times)
    if distinct.size < 2:
        raise InvalidValue("trace", f"{path}: need at least two buckets to know their width")
    bucket_s = float(np.diff(distinct).min())
    offsets = (distinct - distinct[0]) / bucket_s
    if np.any(np.abs(offsets - np.rint(offsets)) > _SPACING_TOLERANCE * max(1.0, offsets.max())):
        raise InvalidValue(
            "trace", f"{path}: timestamps are not on one grid of {bucket_s!r} s buckets"
        )
    pairs = set()
    for t, name in zip(times.tolist(), models, strict=True):
        if (t, name) in pairs:
            raise InvalidValue("trace", f"{path}: model {name!r} appears twice at {t!r}")
        pairs.add((t, name))
    return bucket_s


def _parse(path: Path, line: int, column: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InvalidValue("trace", f"{path}:{line}: {column} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise InvalidValue("trace", f"{path}:{line}: {column} must be finite, got {text!r}")
    return value


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
