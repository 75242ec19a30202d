"""The cheap forecasters: last value and moving maximum (baselines), and EWMA with trend.

`moving-max` is the peak-hold that MArk's released code uses in place of the paper's LSTM; `last`
is the naive forecast every other method must beat; `ewma` is Holt's linear exponential smoothing
(level + damped trend, Gardner & McKenzie 1985), O(1) per bucket.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mark.core.errors import InvalidValue
from predictors.base import Forecaster
from predictors.checks import require_int, require_positive

__all__ = ["LastValue", "MovingMax", "Ewma"]


class LastValue(Forecaster):
    """Every future bucket gets the newest observed rate."""

    name = "last"

    def __init__(self, **common: Any) -> None:
        super().__init__(**common)
        self._last_rps = 0.0

    def _update(self, timestamp_s: float, count: float, rate_rps: float) -> None:
        self._last_rps = rate_rps

    def _mean_path(self, horizon_buckets: int) -> NDArray[np.float64]:
        return np.full(horizon_buckets, self._last_rps)


class MovingMax(Forecaster):
    """Every future bucket gets the largest rate of the last `window_buckets` buckets, times
    `factor` (MArk's code holds the recent peak and multiplies it by 1.2)."""

    name = "moving-max"

    def __init__(self, *, window_buckets: int = 5, factor: float = 1.0, **common: Any) -> None:
        super().__init__(**common)
        require_int("window_buckets", window_buckets, 1)
        require_positive("factor", factor)
        self._recent: deque[float] = deque(maxlen=window_buckets)
        self._factor = factor

    def _update(self, timestamp_s: float, count: float, rate_rps: float) -> None:
        self._recent.append(rate_rps)

    def _mean_path(self, horizon_buckets: int) -> NDArray[np.float64]:
        return np.full(horizon_buckets, max(self._recent) * self._factor)


class Ewma(Forecaster):
    """Holt's linear method with a damped trend:

        level_t = alpha * y_t + (1 - alpha) * (level_{t-1} + phi * trend_{t-1})
        trend_t = beta * (level_t - level_{t-1}) + (1 - beta) * phi * trend_{t-1}
        forecast_{t+h} = level_t + (phi + phi^2 + ... + phi^h) * trend_t

    `alpha` weighs the newest bucket against the smoothed level, `beta` the newest slope, and
    `phi` (<= 1) damps the trend so that long horizons do not run away.
    """

    name = "ewma"

    def __init__(
        self,
        *,
        alpha: float = 0.5,
        beta: float = 0.1,
        phi: float = 0.95,
        **common: Any,
    ) -> None:
        super().__init__(**common)
        for field, value in (("alpha", alpha), ("beta", beta), ("phi", phi)):
            if not (math.isfinite(value) and 0.0 < value <= 1.0):
                raise InvalidValue(field, f"must be in (0, 1], got {value!r}")
        self._alpha, self._beta, self._phi = alpha, beta, phi
        self._level: float | None = None
        self._trend = 0.0

    def _update(self, timestamp_s: float, count: float, rate_rps: float) -> None:
        if self._level is None:
            self._level = rate_rps
            return
        previous = self._level
        self._level = self._alpha * rate_rps + (1 - self._alpha) * (
            previous + self._phi * self._trend
        )
        self._trend = self._beta * (self._level - previous) + (1 - self._beta) * (
            self._phi * self._trend
        )

    def _mean_path(self, horizon_buckets: int) -> NDArray[np.float64]:
        assert self._level is not None
        return self._level + damped_steps(self._phi, horizon_buckets) * self._trend


def damped_steps(phi: float, horizon_buckets: int) -> NDArray[np.float64]:
    """phi + phi^2 + ... + phi^h for h = 1..horizon: how far a damped trend carries."""
    return np.cumsum(phi ** np.arange(1, horizon_buckets + 1, dtype=np.float64))
