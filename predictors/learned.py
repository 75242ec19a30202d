"""A small learned forecaster: direct multi-horizon ridge regression over lagged windows (numpy).

The MArk paper trained a vanilla LSTM on per-minute maxima to forecast the next hour; its released
code dropped it for a peak-hold. The issue allows a numpy or scikit-learn regressor over lagged
windows when it backtests at least as well; this one is a linear model, refitted on a schedule
in closed form (one ridge solve per lead time, milliseconds), which the backtests in
traces/README.md compare with the statistical models.

For each lead k = 1..`max_lead_buckets` a separate ridge model (the direct strategy: no error
feedback through recursive forecasts) predicts the change (y_{t+k} - y_t) / S from

- the recent shape, (y_{t-i} - y_t) / S for i = 1..`lags`;
- the level against the fit window's mean, (y_t - mean) / S, which lets it mean-revert;
- once the history holds a season, the same time one season earlier, (y_{t+k-m+j} - y_t) / S
  for j = -`seasonal_width`..`seasonal_width` (daily seasonality learned from data).

S is the fit window's mean rate, so the weights are scale-free. Differences rather than levels
make a step change or a new level look like the data it was trained on. Leads past
`max_lead_buckets` keep the last lead's forecast. Before the first fit the forecast is the last
value.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import NDArray

from predictors.checks import require_int, require_positive
from predictors.refit import RefittingForecaster

__all__ = ["Learned"]


class Learned(RefittingForecaster):
    """Direct ridge regression over lagged windows; see the module docstring.

    Parameters (besides those of `RefittingForecaster`):
        lags: recent buckets in the features.
        max_lead_buckets: lead times with their own model.
        seasonal_width: buckets either side of "one season ago" in the features.
        ridge: L2 penalty, relative to the mean feature variance.
    """

    name = "learned"

    def __init__(
        self,
        *,
        lags: int = 15,
        max_lead_buckets: int = 15,
        seasonal_width: int = 2,
        ridge: float = 1e-3,
        fit_window_buckets: int = 2 * 1440,
        **params: Any,
    ) -> None:
        require_int("lags", lags, 1)
        require_int("max_lead_buckets", max_lead_buckets, 1)
        require_int("seasonal_width", seasonal_width, 0)
        require_positive("ridge", ridge)
        params.setdefault("min_fit_buckets", lags + max_lead_buckets + 60)
        super().__init__(fit_window_buckets=fit_window_buckets, **params)
        self._lags = lags
        self._leads = max_lead_buckets
        self._width = seasonal_width
        self._ridge = ridge
        self._last_rps = 0.0
        # Fitted: per lead, intercept and weights; the scale and mean of the fit window.
        self._weights: NDArray[np.float64] | None = None  # (leads, 1 + features)
        self._seasonal = False
        self._scale = 1.0
        self._mean = 0.0

    @property
    def seasonal(self) -> bool:
        return self._seasonal

    def _roll(self, timestamp_s: float, rate_rps: float) -> None:
        self._last_rps = rate_rps

    def _mean_path(self, horizon_buckets: int) -> NDArray[np.float64]:
        if self._weights is None or len(self.history) <= self._needed(self._seasonal):
            return np.full(horizon_buckets, self._last_rps)
        y = self.history.values()
        t = y.size - 1
        features = self._features(y, np.array([t]), self._seasonal)  # (1, leads, f)
        change = self._weights[:, 0] + np.einsum("lf,lf->l", features[0], self._weights[:, 1:])
        path: NDArray[np.float64] = y[t] + self._scale * change
        if horizon_buckets <= self._leads:
            return path[:horizon_buckets]
        return np.concatenate([path, np.full(horizon_buckets - self._leads, path[-1])])

    def _refit(self, window_rps: NDArray[np.float64], last_timestamp_s: float) -> None:
        n_features = self._lags + 1 + (2 * self._width + 1)
        origins_with_season = window_rps.size - self._leads - self._needed(True)
        seasonal = origins_with_season >= 4 * n_features
        self._scale = max(float(window_rps.mean()), 1.0 / self.bucket_s)
        self._mean = float(window_rps.mean())
        first = self._needed(seasonal)
        origins = np.arange(first, window_rps.size - self._leads)
        if origins.size < 2:
            return
        x = self._features(window_rps, origins, seasonal)  # (n, leads, f)
        leads = np.arange(1, self._leads + 1)
        targets = (window_rps[origins[:, None] + leads] - window_rps[origins, None]) / self._scale
        weights = np.empty((self._leads, 1 + x.shape[2]))
        for k in range(self._leads):
            weights[k] = _ridge(x[:, k, :], targets[:, k], self._ridge)
        self._weights = weights
        self._seasonal = seasonal

    def _needed(self, seasonal: bool) -> int:
        """The first usable origin index: enough history behind it for every feature."""
        if seasonal:
            return max(self._lags, self.season_buckets + self._width - 1)
        return self._lags

    def _features(
        self, y: NDArray[np.float64], origins: NDArray[np.int64], seasonal: bool
    ) -> NDArray[np.float64]:
        """Features of each origin for each lead: (origins, leads, features)."""
        now = y[origins]
        windows = sliding_window_view(y, self._lags + 1)[origins - self._lags]  # y[t-L..t]
        recent = (windows[:, :-1][:, ::-1] - now[:, None]) / self._scale  # i = 1..L
        level = ((now - self._mean) / self._scale)[:, None]
        base = np.concatenate([recent, level], axis=1)
        tiled = np.repeat(base[:, None, :], self._leads, axis=1)
        if not seasonal:
            return tiled
        m = self.season_buckets
        offsets = (
            np.arange(1, self._leads + 1)[:, None] - m + np.arange(-self._width, self._width + 1)
        )
        past = y[origins[:, None, None] + offsets[None, :, :]]  # (n, leads, 2w+1)
        season = (past - now[:, None, None]) / self._scale
        return np.concatenate([tiled, season], axis=2)


def _ridge(x: NDArray[np.float64], y: NDArray[np.float64], ridge: float) -> NDArray[np.float64]:
    """Intercept and weights of a ridge regression with an unpenalised intercept; the penalty is
    `ridge` times the mean feature variance, so it means the same at every scale."""
    x_mean = x.mean(axis=0)
    y_mean = y.mean()
    xc = x - x_mean
    gram = xc.T @ xc
    penalty = ridge * max(float(np.trace(gram)) / gram.shape[0], 1e-12)
    w = np.linalg.solve(gram + penalty * np.eye(gram.shape[0]), xc.T @ (y - y_mean))
    return np.concatenate([[y_mean - x_mean @ w], w])
