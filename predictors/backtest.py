"""Backtesting: replay a trace through a forecaster as the control loop would (observe a bucket,
forecast the horizon) and score every forecast against what came.

Each bucket t after the warm-up is a forecast origin; its forecast covers buckets t+1..t+H and
each (origin, lead) pair whose bucket is in the trace is scored:

- MAPE: mean |actual - mean forecast| / actual, over pairs with actual > 0 (percent);
- under-forecast rate: share of pairs whose actual rate exceeded the upper quantile (nominal
  1 - q; above it the provisioner under-buys);
- over-forecast: sum of (upper - actual) where upper > actual, over the sum of actuals (percent
  of the demand that is bought as spare capacity);
- pinball loss of the upper quantile at q, over the mean actual rate (percent): the proper
  scoring rule for a quantile (Gneiting 2011), one number that weighs under- against
  over-forecasting the way the quantile asks; `best_forecaster` ranks by it;
- time per bucket: wall time of observe + forecast (milliseconds).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mark.core.errors import InvalidValue
from predictors.checks import require_int
from predictors.registry import create_forecaster
from traces.format import Trace

__all__ = ["BacktestResult", "backtest", "best_forecaster"]


@dataclass(frozen=True, eq=False)
class BacktestResult:
    """Scores of one forecaster on one trace, and the lead-H forecasts for plotting."""

    predictor: str
    horizon_buckets: int
    quantile: float
    scored_pairs: int
    mape_pct: float
    under_rate: float
    over_pct: float
    pinball_pct: float
    ms_per_bucket: float
    mape_by_lead_pct: tuple[float, ...]
    under_rate_by_lead: tuple[float, ...]
    # For plots: target bucket times and the forecasts made H buckets before them.
    times_s: NDArray[np.float64] = field(repr=False)
    actual_rps: NDArray[np.float64] = field(repr=False)
    mean_rps: NDArray[np.float64] = field(repr=False)
    upper_rps: NDArray[np.float64] = field(repr=False)

    def summary(self) -> dict[str, Any]:
        """The scores as JSON-ready values (no series)."""
        return {
            "predictor": self.predictor,
            "horizon_buckets": self.horizon_buckets,
            "quantile": self.quantile,
            "scored_pairs": self.scored_pairs,
            "mape_pct": self.mape_pct,
            "under_rate": self.under_rate,
            "over_pct": self.over_pct,
            "pinball_pct": self.pinball_pct,
            "ms_per_bucket": self.ms_per_bucket,
            "mape_by_lead_pct": list(self.mape_by_lead_pct),
            "under_rate_by_lead": list(self.under_rate_by_lead),
        }


def backtest(
    trace: Trace,
    predictor: str,
    *,
    horizon_buckets: int,
    quantile: float = 0.95,
    warmup_buckets: int = 60,
    params: Mapping[str, Any] | None = None,
    progress: Callable[[int], None] | None = None,
) -> BacktestResult:
    """Replay a single-model `trace` through a new `predictor` (see the module docstring).
    `progress`, when given, is called with the number of buckets done after each bucket."""
    require_int("horizon_buckets", horizon_buckets, 1)
    require_int("warmup_buckets", warmup_buckets, 1)
    if trace.models is not None:
        raise InvalidValue(
            "trace", "backtest one model at a time: use trace.total() or trace.for_model(name)"
        )
    n = trace.counts.size
    if n <= warmup_buckets:
        raise InvalidValue(
            "warmup_buckets",
            f"the trace has {n} buckets, not more than the warm-up {warmup_buckets}",
        )
    forecaster = create_forecaster(predictor, bucket_s=trace.bucket_s, **dict(params or {}))
    means = np.full((n, horizon_buckets), np.nan)
    uppers = np.full((n, horizon_buckets), np.nan)
    elapsed_s = 0.0
    times = trace.timestamps_s.tolist()
    counts = trace.counts.tolist()
    for t in range(n):
        started = time.perf_counter()
        forecaster.observe(times[t], counts[t])
        result = forecaster.forecast(horizon_buckets, quantile)
        elapsed_s += time.perf_counter() - started
        means[t] = result.mean_rps
        uppers[t] = result.upper_rps
        if progress is not None:
            progress(t + 1)
    return _score(trace, predictor, means, uppers, quantile, warmup_buckets, elapsed_s / n)


def _score(
    trace: Trace,
    predictor: str,
    means: NDArray[np.float64],
    uppers: NDArray[np.float64],
    quantile: float,
    warmup_buckets: int,
    seconds_per_bucket: float,
) -> BacktestResult:
    n, horizon = means.shape
    actual = trace.rates_rps
    origins = np.arange(warmup_buckets - 1, n)
    leads = np.arange(1, horizon + 1)
    targets = origins[:, None] + leads[None, :]
    valid = targets < n
    a = np.where(valid, actual[np.minimum(targets, n - 1)], np.nan)
    f = np.where(valid, means[origins], np.nan)
    u = np.where(valid, uppers[origins], np.nan)
    if not valid.any():
        raise InvalidValue("horizon_buckets", "no forecast falls inside the trace")
    positive = valid & (a > 0)
    ape = np.where(positive, np.abs(a - f) / np.where(positive, a, 1.0), np.nan)
    under = np.where(valid, (a > u).astype(np.float64), np.nan)
    over = np.where(valid, np.maximum(u - a, 0.0), np.nan)
    pinball = np.where(valid, np.maximum(quantile * (a - u), (quantile - 1.0) * (a - u)), np.nan)
    actual_sum = float(np.nansum(a))
    mean_actual = float(np.nanmean(a))
    last = horizon - 1
    target_idx = targets[:, last][valid[:, last]]
    return BacktestResult(
        predictor=predictor,
        horizon_buckets=horizon,
        quantile=quantile,
        scored_pairs=int(valid.sum()),
        mape_pct=100.0 * float(np.nanmean(ape)) if positive.any() else float("nan"),
        under_rate=float(np.nanmean(under)),
        over_pct=100.0 * float(np.nansum(over)) / actual_sum if actual_sum else float("nan"),
        pinball_pct=100.0 * float(np.nanmean(pinball)) / mean_actual if mean_actual else 0.0,
        ms_per_bucket=1000.0 * seconds_per_bucket,
        mape_by_lead_pct=tuple(
            100.0 * float(np.nanmean(ape[:, k])) if positive[:, k].any() else float("nan")
            for k in range(horizon)
        ),
        under_rate_by_lead=tuple(float(np.nanmean(under[:, k])) for k in range(horizon)),
        times_s=trace.timestamps_s[target_idx],
        actual_rps=actual[target_idx],
        mean_rps=means[origins][valid[:, last], last],
        upper_rps=uppers[origins][valid[:, last], last],
    )


def best_forecaster(results: list[BacktestResult]) -> BacktestResult:
    """The result with the lowest pinball loss of the upper quantile."""
    if not results:
        raise InvalidValue("predictors", "no results to choose from")
    return min(results, key=lambda r: r.pinball_pct)
