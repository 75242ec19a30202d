"""The one forecaster interface: fed request counts per time bucket, it forecasts the arrival rate
of each bucket of a horizon, with an upper quantile that the provisioner buys capacity for.

MArk (ATC'19, section 4.2) provisions ahead of demand because instances take minutes to start,
and lets its users "plug any predictive algorithm that best suits the workload". Every algorithm
here shares this base class, which owns what they all need and must agree on:

- input checks (counts finite and >= 0, timestamps finite and exactly one bucket apart), so a bad
  sample fails loudly with `InvalidValue` instead of poisoning a model;
- the history of observed rates (requests per second = count / bucket_s);
- the upper quantile. Each algorithm only supplies a mean path. After every observed bucket the
  base class records the mean path the algorithm forecast from there, and when the actual rate of
  a later bucket arrives it stores the error of every earlier forecast of that bucket, per lead
  time (1..`error_horizon_buckets` buckets ahead), with the level that forecast predicted. The
  upper quantile at lead k is the mean plus the empirical q-quantile of the recent lead-k errors
  made at a similar level (a split-conformal band over a sliding window, calibrated per level:
  Mondrian conformal prediction, Vovk et al. 2005, ch. 4). Errors are relative to the forecast
  level, with a floor of one request per bucket, because both model error and burstiness grow
  with the rate; the band therefore follows the day-night cycle instead of being sized for the
  peak. Calibrating per level matters for regime-switching traffic (MMPP): a forecast made in
  the quiet state misses the jump to the busy one by several times its level, and applied to a
  forecast made in the busy state that relative error would predict a second jump of the same
  size, which the traffic never makes. "Similar" is within a factor `LEVEL_FACTOR` of the
  current level; with fewer than `min_errors` such errors, the `min_errors` errors nearest in
  level among those that are not a move to this level (a forecast made farther away whose
  actual rate was within the factor): at a level the traffic has not been at before, the
  nearest forecasts are the ones made on the way there, which missed the rise itself, and a
  move that happened once is no evidence of a second one from its end, as on MMPP. Counted
  in, on a surge that doubled the rate they widened the band by up to another 100% for as long
  as the new level had fewer than `min_errors` errors, and the planner bought twice the fleet
  the surge needed. Fewer than `min_errors` such errors: the whole window's. Leads past the
  tracked horizon widen as sqrt(lead). Until `min_errors` errors exist for a lead the band is
  the Poisson one, mean + z_q * sqrt(mean / bucket_s), and the upper rate is at least the
  highest rate observed so far: a forecaster that has not yet shown how far off it is (a model
  registered minutes ago, a service started without history) cannot rule out that the traffic
  goes back where it has already been, and the Poisson band alone claims exactly that (on
  regime-switching traffic a cold forecaster released capacity in a low state that lasted five
  minutes and spilled the return to the busy one).

`observe_many` is exactly a loop of `observe` (same checks, same state), so the incremental path
and the bulk path agree bit for bit; the refitting forecasters refit on a fixed schedule of
bucket counts, never at forecast time, for the same reason.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from statistics import NormalDist
from typing import ClassVar

import numpy as np
from numpy.typing import NDArray

from mark.core.errors import InvalidValue
from mark.core.types import Forecast
from predictors.checks import require_int, require_positive

__all__ = ["Forecaster", "RateHistory"]

# Timestamps may carry float noise from whoever produces them (virtual clocks, CSV round trips).
_SPACING_TOLERANCE = 1e-6
# Errors of forecasts whose level was within this factor of the current one size its band.
LEVEL_FACTOR = 1.25


class RateHistory:
    """The observed rates (requests per second), oldest first, bounded to `limit_buckets`.

    Kept in a numpy buffer that doubles as it fills and is trimmed to the newest `limit_buckets`
    values when it reaches twice that, so appends are amortised O(1) and windows are views.
    """

    def __init__(self, limit_buckets: int) -> None:
        self._limit = limit_buckets
        self._buffer: NDArray[np.float64] = np.empty(min(limit_buckets, 1024))
        self._size = 0

    def append(self, rate_rps: float) -> None:
        if self._size == self._buffer.size:
            if self._size >= 2 * self._limit:
                self._buffer[: self._limit] = self._buffer[self._size - self._limit : self._size]
                self._size = self._limit
            else:
                grown = np.empty(min(2 * self._buffer.size, 2 * self._limit))
                grown[: self._size] = self._buffer[: self._size]
                self._buffer = grown
        self._buffer[self._size] = rate_rps
        self._size += 1

    def __len__(self) -> int:
        return self._size

    def values(self) -> NDArray[np.float64]:
        """A read-only view of the retained rates, oldest first."""
        view = self._buffer[: self._size]
        view.flags.writeable = False
        return view

    def last(self, n: int) -> NDArray[np.float64]:
        """The newest `n` rates (fewer when fewer are retained)."""
        return self.values()[max(self._size - n, 0) :]


class Forecaster(ABC):
    """Base of every forecaster: one per model, fed one bucket at a time, in order.

    Subclasses implement `_update` (take one observed rate) and `_mean_path` (the mean rate of
    each of the next buckets); everything else, including the quantile band, lives here.

    Parameters (keyword-only, shared by all forecasters):
        bucket_s: width of one bucket in seconds; observations must be exactly this far apart.
        error_window_buckets: how many recent errors per lead time size the quantile band.
        error_horizon_buckets: the lead times whose errors are tracked (1..this).
        min_errors: errors needed at a lead before the empirical band replaces the Poisson one.
        history_limit_buckets: the most observed rates kept (a week of minutes by default).
    """

    name: ClassVar[str]

    def __init__(
        self,
        *,
        bucket_s: float = 60.0,
        error_window_buckets: int = 360,
        error_horizon_buckets: int = 10,
        min_errors: int = 30,
        history_limit_buckets: int = 7 * 24 * 60,
    ) -> None:
        require_positive("bucket_s", bucket_s)
        for field, value, least in (
            ("error_window_buckets", error_window_buckets, 2),
            ("error_horizon_buckets", error_horizon_buckets, 1),
            ("min_errors", min_errors, 1),
            ("history_limit_buckets", history_limit_buckets, 2),
        ):
            require_int(field, value, least)
        self.bucket_s = float(bucket_s)
        self._window = error_window_buckets
        self._tracked = error_horizon_buckets
        self._min_errors = min_errors
        self.history_limit_buckets = history_limit_buckets
        self.history = RateHistory(history_limit_buckets)
        self._last_timestamp_s: float | None = None
        self._observed = 0
        # _paths[i % tracked] is the mean path forecast after observation i (tracked leads).
        self._paths = np.zeros((self._tracked, self._tracked))
        # _errors[k - 1] holds scaled lead-k errors in a ring; _error_counts[k - 1] how many.
        self._errors = np.zeros((self._tracked, self._window))
        # _log_levels[k - 1]: log of the error unit (forecast level) each error was scaled by.
        self._log_levels = np.zeros((self._tracked, self._window))
        # _log_actuals[k - 1]: log of the actual rate (same floor) each error was scored on.
        self._log_actuals = np.zeros((self._tracked, self._window))
        self._error_counts = np.zeros(self._tracked, dtype=np.int64)
        self._lead_index = np.arange(self._tracked)
        self.latest_errors: NDArray[np.float64] = np.full(self._tracked, np.nan)

    # -- the interface -------------------------------------------------------------------------

    @property
    def observed_buckets(self) -> int:
        """How many buckets have been observed since creation."""
        return self._observed

    @property
    def last_timestamp_s(self) -> float | None:
        """Start of the newest observed bucket, or None before the first one."""
        return self._last_timestamp_s

    def observe(self, timestamp_s: float, count: float) -> None:
        """Take the request count of the bucket starting at `timestamp_s` (one bucket after the
        previous one). Raises InvalidValue for NaN, negative counts or uneven timestamps."""
        self._check(timestamp_s, count)
        self._accept(float(timestamp_s), float(count))

    def observe_many(self, timestamps_s: Sequence[float], counts: Sequence[float]) -> None:
        """Take many consecutive buckets at once: exactly `observe` on each, in order. The whole
        batch is checked before any of it is taken, so a bad row leaves the state untouched."""
        times = np.asarray(timestamps_s, dtype=np.float64)
        values = np.asarray(counts, dtype=np.float64)
        if times.ndim != 1 or times.shape != values.shape:
            raise InvalidValue(
                "counts",
                f"need one count per timestamp, got {times.size} timestamps and "
                f"{values.size} counts",
            )
        if times.size == 0:
            return
        bad = np.flatnonzero(~np.isfinite(values) | (values < 0))
        if bad.size:
            i = int(bad[0])
            self._check_count(float(values[i]), where=f" (row {i})")
        if not np.all(np.isfinite(times)):
            i = int(np.flatnonzero(~np.isfinite(times))[0])
            raise InvalidValue("timestamp_s", f"must be finite, got {times[i]!r} (row {i})")
        self._check_timestamp(float(times[0]), where=" (row 0)")
        gaps = np.diff(times)
        uneven = np.flatnonzero(np.abs(gaps - self.bucket_s) > _SPACING_TOLERANCE * self.bucket_s)
        if uneven.size:
            i = int(uneven[0]) + 1
            raise InvalidValue("timestamp_s", self._spacing_message(times[i - 1], times[i], i))
        for t, c in zip(times.tolist(), values.tolist(), strict=True):
            self._accept(t, c)

    def forecast(
        self,
        horizon_buckets: int,
        quantile: float = 0.95,
        *,
        band: bool = True,
        peak_buckets: int = 1,
    ) -> Forecast:
        """Mean and upper-quantile rates (requests per second) of the next `horizon_buckets`
        buckets; `start_s` is the start of the next bucket. `band` False: the upper rates are
        the mean (`ForecastConfig.upper_band`, what the planner covers without a band).
        `observed_peak_rps` is the highest of the newest `peak_buckets` observed rates (the
        planner's scale-in window)."""
        require_int("horizon_buckets", horizon_buckets, 1)
        require_int("peak_buckets", peak_buckets, 1)
        if not (0.0 < quantile < 1.0):
            raise InvalidValue("quantile", f"must be in (0, 1), got {quantile!r}")
        if self._last_timestamp_s is None:
            raise InvalidValue(
                "history", f"{self.name}: cannot forecast before any bucket has been observed"
            )
        mean = np.maximum(self._mean_path(horizon_buckets), 0.0)
        upper = mean
        if band:
            lead = np.minimum(np.arange(horizon_buckets), self._tracked - 1)
            uncalibrated = np.minimum(self._error_counts[lead], self._window) < self._min_errors
            seen = float(self.history.values().max())
            upper = mean + self._band(mean, quantile)
            upper = np.where(uncalibrated, np.maximum(upper, seen), upper)
        return Forecast(
            start_s=self._last_timestamp_s + self.bucket_s,
            bucket_s=self.bucket_s,
            mean_rps=tuple(mean.tolist()),
            upper_rps=tuple(upper.tolist()),
            quantile=quantile,
            observed_rps=float(self.history.last(1)[0]),
            observed_peak_rps=float(self.history.last(peak_buckets).max()),
        )

    def mean_abs_error(self) -> float | None:
        """Mean absolute scaled error over all tracked leads and the error window (None before
        any error exists): the ensemble weighs members by it."""
        filled = np.minimum(self._error_counts, self._window)
        if not filled.any():
            return None
        total = sum(float(np.abs(self._errors[k, : filled[k]]).sum()) for k in range(self._tracked))
        return total / float(filled.sum())

    # -- hooks for the algorithms --------------------------------------------------------------

    @abstractmethod
    def _update(self, timestamp_s: float, count: float, rate_rps: float) -> None:
        """Take one observed bucket; `self.history` already holds its rate as the newest."""

    @abstractmethod
    def _mean_path(self, horizon_buckets: int) -> NDArray[np.float64]:
        """Mean rate (requests per second) of each of the next `horizon_buckets` buckets (bucket
        indices `observed_buckets`, `observed_buckets + 1`, ...); only called after at least one
        `_update`. May return values < 0 (they are clipped)."""

    # -- the machinery -------------------------------------------------------------------------

    def _error_unit(self, mean_rps: NDArray[np.float64]) -> NDArray[np.float64]:
        """Errors are measured in units of the forecast level, floored at one request/bucket."""
        return np.maximum(mean_rps, 1.0 / self.bucket_s)

    def _accept(self, timestamp_s: float, count: float) -> None:
        rate = count / self.bucket_s
        n = self._observed
        if n:
            self._record_errors(n, rate)
        self.history.append(rate)
        self._update(timestamp_s, count, rate)  # sees observed_buckets == n, this bucket's index
        self._observed = n + 1
        self._last_timestamp_s = timestamp_s
        self._paths[n % self._tracked] = np.maximum(self._mean_path(self._tracked), 0.0)

    def _record_errors(self, n: int, actual_rps: float) -> None:
        """Bucket n has arrived: score the forecasts of it made 1..tracked buckets earlier."""
        leads = self._lead_index[: min(self._tracked, n)]  # lead - 1
        predicted = self._paths[(n - 1 - leads) % self._tracked, leads]
        unit = self._error_unit(predicted)
        errors = (actual_rps - predicted) / unit
        slots = self._error_counts[leads] % self._window
        self._errors[leads, slots] = errors
        self._log_levels[leads, slots] = np.log(unit)
        self._log_actuals[leads, slots] = math.log(max(actual_rps, 1.0 / self.bucket_s))
        self._error_counts[leads] += 1
        self.latest_errors = np.full(self._tracked, np.nan)
        self.latest_errors[leads] = errors

    def _band(self, mean: NDArray[np.float64], quantile: float) -> NDArray[np.float64]:
        """Width of the upper band above `mean` for each lead (see the module docstring)."""
        horizon = mean.size
        z = NormalDist().inv_cdf(quantile)
        poisson = z * np.sqrt(np.maximum(mean, 1.0 / self.bucket_s) / self.bucket_s)
        width = poisson.copy()
        last_k = self._tracked - 1
        leads = self._lead_index[(self._lead_index < horizon) | (self._lead_index == last_k)]
        leads = leads[np.minimum(self._error_counts[leads], self._window) >= self._min_errors]
        scale = self._error_unit(mean)
        scaled_q = np.full(self._tracked, np.nan)
        if leads.size:
            at = np.log(scale[np.minimum(leads, horizon - 1)])
            scaled_q[leads] = self._level_quantiles(leads, at, quantile)
        for k in range(horizon):
            if k < self._tracked:
                q = scaled_q[k]
                growth = 1.0
            else:
                q = scaled_q[last_k]
                growth = math.sqrt((k + 1) / self._tracked)
            if not np.isnan(q):
                width[k] = max(q, 0.0) * growth * scale[k]
        return width

    def _level_quantiles(
        self, leads: NDArray[np.int64], log_level: NDArray[np.float64], quantile: float
    ) -> NDArray[np.float64]:
        """The q-quantile of each lead's errors made at a level like `log_level` (one per lead):
        within LEVEL_FACTOR of it, or else the `min_errors` nearest that are not a move to this
        level (module docstring). One sort for all leads: the band is computed every tick for
        every model."""
        filled = np.minimum(self._error_counts[leads], self._window)
        valid = np.arange(self._window)[None, :] < filled[:, None]
        near = math.log(LEVEL_FACTOR)
        distance = np.where(valid, np.abs(self._log_levels[leads] - log_level[:, None]), np.inf)
        chosen = distance <= near
        few = np.count_nonzero(chosen, axis=1) < self._min_errors
        if few.any():
            # Forecasts made elsewhere that missed the move to this level are no evidence of
            # a move from it: the nearest of the others fill the set up to `min_errors`.
            moved_here = np.abs(self._log_actuals[leads[few]] - log_level[few, None]) <= near
            others = np.where(moved_here & ~chosen[few], np.inf, distance[few])
            enough = np.count_nonzero(np.isfinite(others), axis=1) >= self._min_errors
            nearest = np.argpartition(others, self._min_errors - 1, axis=1)
            fallback = np.zeros((int(few.sum()), self._window), dtype=bool)
            np.put_along_axis(fallback, nearest[:, : self._min_errors], True, axis=1)
            chosen[few] = np.where(enough[:, None], fallback, valid[few])
        ordered = np.sort(np.where(chosen, self._errors[leads], np.inf), axis=1)
        count = np.count_nonzero(chosen, axis=1)
        # The split-conformal rank, ceil((n + 1) q): covers at least q for exchangeable errors
        # whatever n (interpolating at q (n - 1) under-covers the few errors of one level).
        rank = np.minimum(np.ceil((count + 1) * quantile).astype(np.int64), count) - 1
        per_lead: NDArray[np.float64] = ordered[np.arange(leads.size), rank]
        return per_lead

    def _check(self, timestamp_s: float, count: float) -> None:
        self._check_count(count, where="")
        if not math.isfinite(timestamp_s):
            raise InvalidValue("timestamp_s", f"must be finite, got {timestamp_s!r}")
        self._check_timestamp(timestamp_s, where="")

    def _check_count(self, count: float, *, where: str) -> None:
        if not math.isfinite(count):
            raise InvalidValue("count", f"must be a finite number, got {count!r}{where}")
        if count < 0:
            raise InvalidValue("count", f"must be >= 0 requests, got {count!r}{where}")

    def _check_timestamp(self, timestamp_s: float, *, where: str) -> None:
        previous = self._last_timestamp_s
        if previous is None:
            return
        if abs(timestamp_s - previous - self.bucket_s) > _SPACING_TOLERANCE * self.bucket_s:
            raise InvalidValue("timestamp_s", self._spacing_message(previous, timestamp_s, None))

    def _spacing_message(self, previous: float, got: float, row: int | None) -> str:
        where = "" if row is None else f" (row {row})"
        kind = "not increasing" if got <= previous else "uneven"
        return (
            f"timestamps are {kind}: expected {previous + self.bucket_s!r} (previous bucket "
            f"{previous!r} + bucket_s {self.bucket_s!r}), got {got!r}{where}; observe every "
            f"bucket in order, with a count of 0 for buckets without requests"
        )
