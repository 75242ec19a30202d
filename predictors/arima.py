"""ARIMA(p, 1, q) with drift and Fourier terms for the daily season, refitted on a schedule.

A seasonal ARIMA with m = 1440 (a day of minutes) has a state vector in the thousands and cannot
be fitted every hour; the usual answer for long seasons is dynamic harmonic regression (Hyndman &
Athanasopoulos, FPP3 section 10.5): K sine/cosine pairs of the daily period as regressors, ARMA
errors for what they leave. The series is differenced once (level shifts such as surges are then
absorbed at once), so the model fitted on w_t = y_t - y_{t-1} is

    w_t = c + sum_j beta_j (x_j(t) - x_j(t-1)) + u_t,
    u_t = phi_1 u_{t-1} + ... + phi_p u_{t-p} + e_t + theta_1 e_{t-1} + ... + theta_q e_{t-q}

with x_j the Fourier terms of the bucket's timestamp (so the season follows the clock, not the
bucket count) and c a drift. Every `refit_every_buckets` the regression part (c, beta) is fitted
by least squares and the ARMA part by statsmodels' Hannan-Rissanen estimator on its residuals (a
long AR for the shocks, then least squares). We tried statsmodels' state-space maximum likelihood
(SARIMAX) first: 2-20 s per fit of a day of minutes on the development machine, often without
converging, against ~5 ms here. Roots are pulled inside the unit circle where an estimate is not
stationary or invertible, so the recursion cannot explode. Between fits the ARMA recursion rolls
u and e forward, and the forecast is y_t plus the cumulated forecast differences (future e = 0).
The fit sees the differences clipped to 5 robust standard deviations (median absolute
deviation) around their median: one level shift is a single huge difference, which d = 1 already
absorbs and which would otherwise be read as a day's drift and a season. The Fourier terms join
once the history covers a whole season; before the first fit the forecast
is the last value.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.signal import lfilter
from statsmodels.tsa.arima.estimators.hannan_rissanen import hannan_rissanen

from predictors.checks import require_int
from predictors.refit import RefittingForecaster, is_flat

__all__ = ["Arima"]


class Arima(RefittingForecaster):
    """Regression on daily Fourier terms with ARIMA(p, 1, q) errors; see the module docstring.

    Parameters (besides those of `RefittingForecaster`):
        ar_order, ma_order: p and q.
        harmonics: K, the number of sine/cosine pairs of the daily period.
    """

    name = "arima"

    def __init__(
        self,
        *,
        ar_order: int = 2,
        ma_order: int = 1,
        harmonics: int = 3,
        fit_window_buckets: int = 1440,
        **params: Any,
    ) -> None:
        super().__init__(fit_window_buckets=fit_window_buckets, **params)
        require_int("ar_order", ar_order, 0)
        require_int("ma_order", ma_order, 0)
        require_int("harmonics", harmonics, 0)
        self._p, self._q = ar_order, ma_order
        self._season_s = self.season_buckets * self.bucket_s
        self._harmonics = np.arange(1, harmonics + 1, dtype=np.float64)
        self._last_rps: float | None = None
        self._drift = 0.0
        self._beta = np.zeros(0)
        self._ar = np.zeros(ar_order)
        self._ma = np.zeros(ma_order)
        # Newest first: u_{t}, u_{t-1}, ... and e_{t}, e_{t-1}, ...
        self._u: deque[float] = deque([0.0] * ar_order, maxlen=ar_order)
        self._e: deque[float] = deque([0.0] * ma_order, maxlen=ma_order)
        self._newest_timestamp_s = 0.0

    # -- the model ---------------------------------------------------------------------------

    def _fourier_diff(self, timestamps_s: NDArray[np.float64], k: int) -> NDArray[np.float64]:
        """x(t) - x(t - bucket) for the first k harmonics, one row per timestamp."""
        if k == 0:
            return np.zeros((timestamps_s.size, 0))
        angle = 2 * np.pi * np.outer(timestamps_s, self._harmonics[:k]) / self._season_s
        before = angle - 2 * np.pi * self.bucket_s * self._harmonics[:k] / self._season_s
        return np.hstack([np.sin(angle) - np.sin(before), np.cos(angle) - np.cos(before)])

    def _regression(self, timestamps_s: NDArray[np.float64]) -> NDArray[np.float64]:
        k = self._beta.size // 2
        return self._drift + self._fourier_diff(timestamps_s, k) @ self._beta

    def _roll(self, timestamp_s: float, rate_rps: float) -> None:
        if self._last_rps is not None:
            w = rate_rps - self._last_rps
            u = w - float(self._regression(np.array([timestamp_s]))[0])
            e = u - float(np.dot(self._ar, list(self._u))) - float(np.dot(self._ma, list(self._e)))
            if self._p:
                self._u.appendleft(u)
            if self._q:
                self._e.appendleft(e)
        self._last_rps = rate_rps
        self._newest_timestamp_s = timestamp_s

    def _mean_path(self, horizon_buckets: int) -> NDArray[np.float64]:
        assert self._last_rps is not None
        u_hist = list(self._u)
        e_hist = list(self._e)
        u_hat = np.empty(horizon_buckets)
        for h in range(horizon_buckets):
            # Future shocks are 0: only e_t, e_{t-1}, ... (known) enter, and only for h < q.
            ar_part = float(np.dot(self._ar, u_hist)) if self._p else 0.0
            ma_part = float(np.dot(self._ma[h:], e_hist[: self._q - h])) if h < self._q else 0.0
            u_hat[h] = ar_part + ma_part
            if self._p:
                u_hist = [u_hat[h], *u_hist[:-1]]
        future = self._newest_timestamp_s + self.bucket_s * np.arange(
            1, horizon_buckets + 1, dtype=np.float64
        )
        return self._last_rps + np.cumsum(self._regression(future) + u_hat)

    def _refit(self, window_rps: NDArray[np.float64], last_timestamp_s: float) -> None:
        w = np.diff(window_rps)
        if is_flat(w):
            # A constant or exactly linear window: the drift is the whole story.
            self._set(
                drift=float(w.mean()) if w.size else 0.0,
                beta=np.zeros(0),
                ar=np.zeros(self._p),
                ma=np.zeros(self._q),
            )
            self._replay(window_rps, last_timestamp_s)
            return
        times = last_timestamp_s - self.bucket_s * np.arange(w.size - 1, -1, -1, dtype=np.float64)
        k = self._harmonics.size if window_rps.size >= self.season_buckets else 0
        exog = self._fourier_diff(times, k)
        design = np.hstack([np.ones((w.size, 1)), exog])
        robust_w = _clip_outliers(w)
        coefs, *_ = np.linalg.lstsq(design, robust_w, rcond=None)
        residuals = robust_w - design @ coefs
        arma, _ = hannan_rissanen(
            residuals, ar_order=self._p, ma_order=self._q, demean=False, unbiased=False
        )
        self._set(
            drift=float(coefs[0]),
            beta=np.asarray(coefs[1:], dtype=np.float64),
            ar=-_inside_unit_circle(-np.asarray(arma.ar_params, dtype=np.float64)),
            ma=_inside_unit_circle(np.asarray(arma.ma_params, dtype=np.float64)),
        )
        self._replay(window_rps, last_timestamp_s)

    def _set(
        self,
        *,
        drift: float,
        beta: NDArray[np.float64],
        ar: NDArray[np.float64],
        ma: NDArray[np.float64],
    ) -> None:
        self._drift, self._beta, self._ar, self._ma = drift, beta, ar, ma

    def _replay(self, window_rps: NDArray[np.float64], last_timestamp_s: float) -> None:
        """Recompute u and e over the window with the new parameters (e starts at 0 at the
        window's start; the MA part is invertible, so that start washes out)."""
        w = np.diff(window_rps)
        times = last_timestamp_s - self.bucket_s * np.arange(w.size - 1, -1, -1, dtype=np.float64)
        u = w - self._regression(times)
        e = lfilter(np.r_[1.0, -self._ar], np.r_[1.0, self._ma], u)
        newest_u = u[::-1][: self._p]
        newest_e = e[::-1][: self._q]
        self._u = deque([*newest_u, *[0.0] * (self._p - newest_u.size)], maxlen=self._p)
        self._e = deque([*newest_e, *[0.0] * (self._q - newest_e.size)], maxlen=self._q)


def _inside_unit_circle(coefs: NDArray[np.float64], limit: float = 0.99) -> NDArray[np.float64]:
    """Coefficients c of the lag polynomial 1 + c_1 L + ... + c_n L^n, shrunk (c_j * r^j) so
    that every inverse root lies within `limit` of the origin: an invertible MA part (pass AR
    coefficients negated for a stationary AR part)."""
    if coefs.size == 0:
        return coefs
    largest = float(np.abs(np.roots(np.r_[1.0, coefs])).max())
    if largest < limit:
        return coefs
    shrink = limit / largest
    return coefs * shrink ** np.arange(1, coefs.size + 1)


def _clip_outliers(values: NDArray[np.float64], width: float = 5.0) -> NDArray[np.float64]:
    """`values` clipped to median +- width * 1.4826 * MAD (a robust standard deviation)."""
    center = float(np.median(values))
    spread = 1.4826 * float(np.median(np.abs(values - center)))
    return np.clip(values, center - width * spread, center + width * spread)
