"""The schedule shared by forecasters whose parameters are fitted (Holt-Winters, ARIMA, learned).

Fitting is the expensive part (statsmodels optimisers, a least-squares solve), so it runs every
`refit_every_buckets` observed buckets on the newest `fit_window_buckets` rates, and in between the
fitted model is rolled forward one bucket at a time in O(1). The schedule counts buckets, never
wall time and never forecast calls, so a forecaster fed incrementally and one fed in bulk refit at
the same buckets and agree exactly; the amortised cost per bucket is fit time / refit_every.
"""

from __future__ import annotations

import math
import warnings
from abc import abstractmethod
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mark.core.errors import InvalidValue
from predictors.base import Forecaster
from predictors.checks import require_int

__all__ = ["RefittingForecaster", "season_buckets", "is_flat"]


class RefittingForecaster(Forecaster):
    """A forecaster refitted on a schedule.

    Parameters (besides the common ones of `Forecaster`):
        season_s: the seasonal period in seconds (a day by default: traffic follows people).
        refit_every_buckets: observed buckets between fits.
        fit_window_buckets: how many of the newest rates a fit sees.
        min_fit_buckets: no fit before this many buckets; until then `_roll` runs with the
            algorithm's starting parameters.
        refit_phase_buckets: shifts the schedule (a fit when observed + phase is a multiple of
            refit_every_buckets). A control loop serving many models gives each its own phase
            (say, its index modulo refit_every_buckets) so that their fits do not all land on
            the same tick: one Holt-Winters fit of three days of minutes takes ~0.5 s.
    """

    def __init__(
        self,
        *,
        season_s: float = 86_400.0,
        refit_every_buckets: int = 60,
        fit_window_buckets: int = 3 * 1440,
        min_fit_buckets: int = 30,
        refit_phase_buckets: int = 0,
        **common: Any,
    ) -> None:
        common.setdefault("history_limit_buckets", max(fit_window_buckets, 7 * 24 * 60))
        super().__init__(**common)
        require_int("refit_every_buckets", refit_every_buckets, 1)
        require_int("fit_window_buckets", fit_window_buckets, 2)
        require_int("min_fit_buckets", min_fit_buckets, 2)
        require_int("refit_phase_buckets", refit_phase_buckets, 0)
        if fit_window_buckets > self.history_limit_buckets:
            raise InvalidValue(
                "fit_window_buckets",
                f"{fit_window_buckets} exceeds history_limit_buckets {self.history_limit_buckets}",
            )
        self.season_buckets = season_buckets(season_s, self.bucket_s)
        self._refit_every = refit_every_buckets
        self._fit_window = fit_window_buckets
        self._min_fit = min_fit_buckets
        self._refit_phase = refit_phase_buckets
        self.fits = 0

    def _update(self, timestamp_s: float, count: float, rate_rps: float) -> None:
        self._roll(timestamp_s, rate_rps)
        seen = self.observed_buckets + 1
        if seen >= self._min_fit and (seen + self._refit_phase) % self._refit_every == 0:
            with warnings.catch_warnings():
                # statsmodels warns on every hard optimisation (convergence, start values); the
                # refit still returns its best parameters and the error band shows the quality.
                warnings.simplefilter("ignore")
                self._refit(self.history.last(self._fit_window), timestamp_s)
            self.fits += 1

    @abstractmethod
    def _roll(self, timestamp_s: float, rate_rps: float) -> None:
        """Advance the fitted model by one observed bucket (cheap)."""

    @abstractmethod
    def _refit(self, window_rps: NDArray[np.float64], last_timestamp_s: float) -> None:
        """Refit on `window_rps` (oldest first, the newest being the bucket at
        `last_timestamp_s`) and leave the model's state at the end of the window."""


def season_buckets(season_s: float, bucket_s: float) -> int:
    """The seasonal period in whole buckets (at least 2)."""
    if not (math.isfinite(season_s) and season_s >= 2 * bucket_s):
        raise InvalidValue(
            "season_s", f"must be at least two buckets ({2 * bucket_s} s), got {season_s!r}"
        )
    return max(2, round(season_s / bucket_s))


def is_flat(values: NDArray[np.float64]) -> bool:
    """True when a window has (numerically) no variation: nothing for an optimiser to fit."""
    return bool(np.ptp(values) <= 1e-9 * max(1.0, float(np.abs(values).max())))
