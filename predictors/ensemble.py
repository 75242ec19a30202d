"""An ensemble that weights its members by their recent error.

Every member sees every bucket. After each bucket, the squared errors (in the base class's
relative units) of everything each member had forecast for that bucket, at every tracked lead, are
averaged and folded into an exponentially weighted mean with a half-life of `halflife_buckets`.
In `weighted` mode the ensemble's mean is the members' means weighted by 1 / that error (inverse
mean squared error weighting, Bates & Granger 1969); in `best` mode it is the member with the
smallest error alone. Recent errors rather than a fit over all history let it switch when the
workload changes character (a surge favours the fast-adapting members, a quiet diurnal day the
seasonal ones). The ensemble's own quantile band comes from its own errors, like any forecaster.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from mark.core.errors import InvalidValue
from predictors.base import Forecaster
from predictors.checks import require_positive

__all__ = ["Ensemble", "DEFAULT_MEMBERS"]

DEFAULT_MEMBERS: tuple[str, ...] = ("last", "ewma", "holt-winters", "arima", "learned")


class Ensemble(Forecaster):
    """Members chosen by name from the registry; see the module docstring.

    Parameters (besides the common ones of `Forecaster`, which members share):
        members: registry names of the members (not "ensemble").
        mode: "weighted" (inverse-error weights) or "best" (the lowest recent error).
        halflife_buckets: half-life of the members' error averages.
        member_params: extra parameters per member name.
    """

    name = "ensemble"

    def __init__(
        self,
        *,
        members: Sequence[str] | str = DEFAULT_MEMBERS,
        mode: Literal["weighted", "best"] = "weighted",
        halflife_buckets: float = 60.0,
        member_params: Mapping[str, Mapping[str, Any]] | None = None,
        **common: Any,
    ) -> None:
        super().__init__(**common)
        from predictors.registry import create_forecaster

        names = (
            [n.strip() for n in members.split(",")] if isinstance(members, str) else list(members)
        )
        if not names or self.name in names or len(set(names)) != len(names):
            raise InvalidValue(
                "members", f"need distinct member names other than {self.name!r}, got {names!r}"
            )
        if mode not in ("weighted", "best"):
            raise InvalidValue("mode", f"must be 'weighted' or 'best', got {mode!r}")
        require_positive("halflife_buckets", halflife_buckets)
        extra = dict(member_params or {})
        unknown = set(extra) - set(names)
        if unknown:
            raise InvalidValue("member_params", f"names no member: {sorted(unknown)!r}")
        self.members: tuple[Forecaster, ...] = tuple(
            create_forecaster(
                name,
                bucket_s=self.bucket_s,
                error_window_buckets=self._window,
                error_horizon_buckets=self._tracked,
                min_errors=self._min_errors,
                **extra.get(name, {}),
            )
            for name in names
        )
        self._mode = mode
        self._decay = 0.5 ** (1.0 / halflife_buckets)
        self._mse = np.zeros(len(self.members))
        self._mse_weight = 0.0

    @property
    def weights(self) -> NDArray[np.float64]:
        """Each member's share of the mean forecast now (sums to 1)."""
        if self._mse_weight == 0.0:
            return np.full(len(self.members), 1.0 / len(self.members))
        mse = self._mse / self._mse_weight
        if self._mode == "best":
            chosen = np.zeros(len(self.members))
            chosen[int(np.argmin(mse))] = 1.0
            return chosen
        inverse: NDArray[np.float64] = 1.0 / np.maximum(mse, 1e-12)
        return inverse / float(inverse.sum())

    def _update(self, timestamp_s: float, count: float, rate_rps: float) -> None:
        for member in self.members:
            member.observe(timestamp_s, count)
        errors = [member.latest_errors for member in self.members]
        if np.isnan(errors[0]).all():
            return
        squared = np.array([float(np.nanmean(e**2)) for e in errors])
        self._mse = self._decay * self._mse + (1 - self._decay) * squared
        self._mse_weight = self._decay * self._mse_weight + (1 - self._decay)

    def _mean_path(self, horizon_buckets: int) -> NDArray[np.float64]:
        paths = np.array(
            [np.maximum(member._mean_path(horizon_buckets), 0.0) for member in self.members]
        )
        blended: NDArray[np.float64] = self.weights @ paths
        return blended
