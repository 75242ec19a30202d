"""Holt-Winters (additive damped trend, additive season), fitted by statsmodels on a schedule.

The model (Hyndman & Athanasopoulos, FPP3 section 8.3; statsmodels `ExponentialSmoothing`):

    level_t  = alpha (y_t - s_{t-m}) + (1 - alpha)(level_{t-1} + phi trend_{t-1})
    trend_t  = beta (level_t - level_{t-1}) + (1 - beta) phi trend_{t-1}
    s_t      = gamma (y_t - level_{t-1} - phi trend_{t-1}) + (1 - gamma) s_{t-m}
    y_{t+h}  = level_t + (phi + ... + phi^h) trend_t + s_{t+h-m(floor((h-1)/m)+1)}

statsmodels estimates alpha, beta, gamma and phi every `refit_every_buckets`; between fits the
recursion above rolls the state forward in O(1) per bucket (it reproduces statsmodels' filter
exactly, which the tests check). A daily season of minutes has m = 1440 initial seasonal values,
too many to optimise: the first season of the fit window seeds them (deviations from the level,
lightly smoothed; the trend comes from the first two seasons' means) and the parameters are
fitted on the rest of the window. Until the history holds
one season plus `refit_every_buckets`, the season is off and this is a fitted Holt's linear method.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray
from statsmodels.tsa.holtwinters import ExponentialSmoothing

from predictors.refit import RefittingForecaster, is_flat
from predictors.simple import damped_steps

__all__ = ["HoltWinters"]


class HoltWinters(RefittingForecaster):
    """Triple exponential smoothing with a daily season; see the module docstring."""

    name = "holt-winters"

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        m = self.season_buckets
        self._fit_window = max(self._fit_window, m + self._refit_every)
        self.history_limit_buckets = max(self.history_limit_buckets, self._fit_window)
        # Starting parameters (used until the first fit): a plain damped Holt.
        self.alpha, self.beta, self.gamma, self.phi = 0.5, 0.1, 0.0, 0.95
        self._level: float | None = None
        self._trend = 0.0
        # _season[i % m] = the newest seasonal term of phase i (bucket index i).
        self._season = np.zeros(m)
        self.seasonal = False

    def _roll(self, timestamp_s: float, rate_rps: float) -> None:
        if self._level is None:
            self._level = rate_rps
            return
        phase = self.observed_buckets % self.season_buckets
        level, trend, season = self._level, self._trend, self._season[phase]
        damped = level + self.phi * trend
        self._level = self.alpha * (rate_rps - season) + (1 - self.alpha) * damped
        self._trend = self.beta * (self._level - level) + (1 - self.beta) * self.phi * trend
        self._season[phase] = self.gamma * (rate_rps - damped) + (1 - self.gamma) * season

    def _mean_path(self, horizon_buckets: int) -> NDArray[np.float64]:
        assert self._level is not None
        m = self.season_buckets
        phases = (self.observed_buckets + np.arange(horizon_buckets)) % m
        return (
            self._level
            + damped_steps(self.phi, horizon_buckets) * self._trend
            + (self._season[phases])
        )

    def _refit(self, window_rps: NDArray[np.float64], last_timestamp_s: float) -> None:
        m = self.season_buckets
        end = self.observed_buckets + 1  # bucket index one past the window's newest
        if window_rps.size >= m + self._refit_every:
            seed, fit_on = window_rps[:m], window_rps[m:]
            # Classical initialisation (Hyndman & Athanasopoulos, FPP2 section 7.6): the trend
            # from the means of the first two seasons (0 with one season: the slope of a line
            # through part of a wave is not a trend), the level at the seed's end, the seasonal
            # terms as deviations from that level line.
            level_mean = float(seed.mean())
            trend0 = 0.0
            if window_rps.size >= 2 * m + self._refit_every:
                trend0 = (float(window_rps[m : 2 * m].mean()) - level_mean) / m
            line = level_mean + trend0 * (np.arange(m) - (m - 1) / 2)
            level0 = float(line[-1])
            season0 = _circular_smooth(seed - line, width=max(1, m // 96) | 1)
            seasonal = True
        else:
            fit_on = window_rps
            level0, trend0, season0 = float(window_rps[0]), 0.0, np.zeros(m)
            seasonal = False
        if is_flat(fit_on):
            self._level, self._trend = float(fit_on[-1]), 0.0
            self._season = np.zeros(m)
            self.seasonal = False
            return
        model = ExponentialSmoothing(
            fit_on,
            trend="add",
            damped_trend=True,
            seasonal="add" if seasonal else None,
            seasonal_periods=m if seasonal else None,
            initialization_method="known",
            initial_level=level0,
            initial_trend=trend0,
            initial_seasonal=season0 if seasonal else None,
        )
        result = model.fit()
        p = result.params
        self.alpha = float(p["smoothing_level"])
        self.beta = float(p["smoothing_trend"])
        self.phi = float(p["damping_trend"])
        self._level = float(result.level[-1])
        self._trend = float(result.trend[-1])
        if seasonal:
            self.gamma = float(p["smoothing_seasonal"])
            # Phases not seen again since the seed keep their seeded value.
            seasons = np.concatenate([season0, np.asarray(result.season, dtype=np.float64)])
            newest = seasons[-m:]
            self._season[(end - m + np.arange(m)) % m] = newest
        else:
            self.gamma = 0.0
            self._season = np.zeros(m)
        self.seasonal = seasonal


def _circular_smooth(values: NDArray[np.float64], width: int) -> NDArray[np.float64]:
    """Centred moving average of odd `width`, wrapping around (a season is a circle)."""
    if width <= 1:
        return values.copy()
    half = width // 2
    padded = np.concatenate([values[-half:], values, values[:half]])
    return np.convolve(padded, np.ones(width) / width, mode="valid")
