"""Every forecaster on series with known answers, incremental == bulk, and bad input."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from mark.core.errors import InvalidValue
from predictors import available_forecasters, create_forecaster
from predictors.backtest import backtest
from traces import Trace

BUCKET_S = 60.0
ALL = ["last", "moving-max", "ewma", "holt-winters", "arima", "learned", "ensemble"]
# A one-hour season keeps the seasonal machinery quick and exercised in tests.
HOURLY = {"season_s": 3600.0}
PARAMS: dict[str, dict[str, Any]] = {
    "holt-winters": HOURLY,
    "arima": {**HOURLY, "harmonics": 2},
    "learned": HOURLY,
    "ensemble": {
        "member_params": {"holt-winters": HOURLY, "arima": HOURLY, "learned": HOURLY},
    },
}
TRENDED = ["ewma", "holt-winters", "arima", "learned", "ensemble"]
SEASONAL = ["holt-winters", "arima", "learned"]


def make(name: str, **extra: Any) -> Any:
    return create_forecaster(name, bucket_s=BUCKET_S, **{**PARAMS.get(name, {}), **extra})


def feed(name: str, rates_rps: np.ndarray, **extra: Any) -> Any:
    forecaster = make(name, **extra)
    forecaster.observe_many(BUCKET_S * np.arange(rates_rps.size), rates_rps * BUCKET_S)
    return forecaster


def test_registry_lists_the_builtins_in_order() -> None:
    assert available_forecasters()[: len(ALL)] == ALL


@pytest.mark.parametrize("name", ALL)
def test_constant_series_is_forecast_exactly(name: str) -> None:
    f = feed(name, np.full(300, 12.5))
    result = f.forecast(10)
    assert result.mean_rps == pytest.approx([12.5] * 10, rel=1e-9)
    # No error has ever been seen: the band collapses onto the mean.
    assert result.upper_rps == pytest.approx([12.5] * 10, rel=1e-9)
    assert result.start_s == 300 * BUCKET_S
    assert result.bucket_s == BUCKET_S


@pytest.mark.parametrize("name", ALL)
def test_linear_trend(name: str) -> None:
    t = np.arange(600)
    # ewma's default damping (phi = 0.95) is meant to flatten long horizons; undamped, Holt's
    # method tracks a line exactly.
    f = feed(name, 10.0 + 0.02 * t, **({"phi": 1.0} if name == "ewma" else {}))
    truth = 10.0 + 0.02 * np.arange(600, 610)
    mean = np.array(f.forecast(10).mean_rps)
    if name in TRENDED:
        assert mean == pytest.approx(truth, rel=3e-3)
    else:
        assert mean == pytest.approx([10.0 + 0.02 * 599] * 10)


@pytest.mark.parametrize("name", [*SEASONAL, "ensemble"])
def test_sinusoid_is_followed_by_the_seasonal_forecasters(name: str) -> None:
    period = 60  # buckets: the one-hour season
    t = np.arange(8 * period)
    rates = 20.0 + 5.0 * np.sin(2 * np.pi * t / period)
    f = feed(name, rates)
    future = np.arange(t.size, t.size + 10)
    truth = 20.0 + 5.0 * np.sin(2 * np.pi * future / period)
    assert np.array(f.forecast(10).mean_rps) == pytest.approx(truth, abs=0.05 * 5.0)


def test_sinusoid_known_answers_of_the_non_seasonal_forecasters() -> None:
    t = np.arange(200)
    rates = 20.0 + 5.0 * np.sin(2 * np.pi * t / 60)
    assert feed("last", rates).forecast(3).mean_rps == pytest.approx([rates[-1]] * 3)
    window = feed("moving-max", rates, window_buckets=7)
    assert window.forecast(3).mean_rps == pytest.approx([rates[-7:].max()] * 3)
    # Holt's equations by hand.
    alpha, beta, phi = 0.5, 0.1, 0.95
    level, trend = rates[0], 0.0
    for y in rates[1:]:
        previous = level
        level = alpha * y + (1 - alpha) * (previous + phi * trend)
        trend = beta * (level - previous) + (1 - beta) * phi * trend
    expected = [level + sum(phi**j for j in range(1, h + 1)) * trend for h in (1, 2, 3)]
    assert feed("ewma", rates).forecast(3).mean_rps == pytest.approx(expected)


@pytest.mark.parametrize("name", ALL)
def test_step_change_is_followed(name: str) -> None:
    rates = np.concatenate([np.full(240, 10.0), np.full(120, 20.0)])
    f = feed(name, rates)
    assert f.forecast(5).mean_rps == pytest.approx([20.0] * 5, rel=0.02)


def test_last_and_moving_max_on_a_step_down() -> None:
    rates = np.concatenate([np.full(50, 20.0), np.full(3, 10.0)])
    assert feed("last", rates).forecast(2).mean_rps == pytest.approx([10.0, 10.0])
    assert feed("moving-max", rates, window_buckets=5).forecast(2).mean_rps == pytest.approx(
        [20.0, 20.0]
    )
    longer = np.concatenate([rates, np.full(2, 10.0)])
    assert feed("moving-max", longer, window_buckets=5).forecast(1).mean_rps == pytest.approx(
        [10.0]
    )


@pytest.mark.parametrize("name", ALL)
def test_the_observed_rate_and_the_peak_of_the_scale_in_window(name: str) -> None:
    rates = np.concatenate([np.full(50, 20.0), np.full(3, 10.0)])
    fc = feed(name, rates).forecast(2)
    assert fc.observed_rps == pytest.approx(10.0) and fc.observed_peak_rps == pytest.approx(10.0)
    assert feed(name, rates).forecast(2, peak_buckets=3).observed_peak_rps == pytest.approx(10.0)
    assert feed(name, rates).forecast(2, peak_buckets=4).observed_peak_rps == pytest.approx(20.0)
    with pytest.raises(InvalidValue, match="peak_buckets"):
        feed(name, rates).forecast(2, peak_buckets=0)


@pytest.mark.parametrize("name", ALL)
def test_an_uncalibrated_upper_rate_is_not_below_the_highest_seen(name: str) -> None:
    """Ten busy buckets, then a quiet state: with fewer errors than `min_errors` the forecaster
    has not shown it can tell a dip from a drop, so the upper rate keeps the busy level; once its
    errors are known (min_errors quiet buckets later), the band is the calibrated one."""
    busy, quiet = np.full(10, 400.0), np.full(5, 100.0)
    cold = feed(name, np.concatenate([busy, quiet]), min_errors=30).forecast(5)
    assert min(cold.upper_rps) >= 400.0 - 1e-9
    assert cold.mean_rps[0] < 400.0  # the mean is the algorithm's own
    warm = feed(name, np.concatenate([busy, np.full(80, 100.0)]), min_errors=30).forecast(5)
    assert max(warm.upper_rps) < 200.0
    assert feed(name, np.concatenate([busy, quiet])).forecast(5, band=False).upper_rps == (
        feed(name, np.concatenate([busy, quiet])).forecast(5, band=False).mean_rps
    )


def _noisy_series(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    rates = 30.0 + 10.0 * np.sin(2 * np.pi * t / 60) + 0.01 * t
    return rng.poisson(rates * BUCKET_S).astype(float)


@pytest.mark.parametrize("name", ALL)
def test_incremental_and_bulk_agree(name: str) -> None:
    counts = _noisy_series(330, seed=7)
    times = BUCKET_S * np.arange(counts.size)
    bulk = make(name)
    bulk.observe_many(times, counts)
    incremental = make(name)
    for t, c in zip(times, counts, strict=True):
        incremental.observe(float(t), float(c))
        incremental.forecast(3)  # forecasting must not change the state
    a, b = bulk.forecast(12, 0.9), incremental.forecast(12, 0.9)
    assert a.mean_rps == b.mean_rps
    assert a.upper_rps == b.upper_rps
    assert all(u >= m for u, m in zip(a.upper_rps, a.mean_rps, strict=True))


@pytest.mark.parametrize("name", ALL)
def test_bad_input_is_rejected_clearly(name: str) -> None:
    f = make(name)
    with pytest.raises(InvalidValue, match="before any bucket"):
        f.forecast(5)
    with pytest.raises(InvalidValue, match="count: must be >= 0"):
        f.observe(0.0, -1.0)
    with pytest.raises(InvalidValue, match="count: must be a finite"):
        f.observe(0.0, math.nan)
    with pytest.raises(InvalidValue, match="timestamp_s: must be finite"):
        f.observe(math.inf, 1.0)
    f.observe(0.0, 60.0)
    with pytest.raises(InvalidValue, match="not increasing"):
        f.observe(0.0, 60.0)
    with pytest.raises(InvalidValue, match="uneven: expected 60.0"):
        f.observe(90.0, 60.0)
    with pytest.raises(InvalidValue, match=r"uneven.*\(row 2\)"):
        f.observe_many([60.0, 120.0, 200.0], [1.0, 2.0, 3.0])
    with pytest.raises(InvalidValue, match=r"must be >= 0 requests.*\(row 1\)"):
        f.observe_many([60.0, 120.0], [1.0, -2.0])
    assert f.observed_buckets == 1  # rejected batches leave no trace
    with pytest.raises(InvalidValue, match="horizon_buckets"):
        f.forecast(0)
    with pytest.raises(InvalidValue, match="quantile"):
        f.forecast(5, quantile=1.0)
    assert f.forecast(5).start_s == 60.0


def test_unknown_names_and_parameters() -> None:
    with pytest.raises(InvalidValue, match="unknown forecaster 'prophet'; available: last"):
        create_forecaster("prophet")
    with pytest.raises(InvalidValue, match="unexpected keyword argument 'alhpa'; it takes alpha"):
        create_forecaster("ewma", alhpa=0.3)
    with pytest.raises(InvalidValue, match="'window'; it takes .*error_window_buckets"):
        create_forecaster("arima", window=3)  # a base's parameter is named too
    with pytest.raises(InvalidValue, match="alpha"):
        create_forecaster("ewma", alpha=1.5)
    with pytest.raises(InvalidValue, match="bucket_s"):
        create_forecaster("last", bucket_s=0.0)
    with pytest.raises(InvalidValue, match="members"):
        create_forecaster("ensemble", members=["last", "ensemble"])


# Coverage: on a stationary Poisson series the upper quantile must be exceeded at about 1 - q of
# the (origin, lead) pairs. Tolerance: +-2.5 points around the nominal 5% (the binomial standard
# error over ~9,000 correlated pairs is about 0.5 point; the rest covers the error of estimating a
# 95th percentile from a 360-bucket window). moving-max forecasts a peak, so it may only cover
# more, never less.
@pytest.mark.parametrize("name", ALL)
def test_upper_quantile_covers_at_its_nominal_rate(name: str) -> None:
    rng = np.random.default_rng(2024)
    n = 1500
    counts = rng.poisson(20.0 * BUCKET_S, n).astype(float)
    trace = Trace(BUCKET_S * np.arange(n), counts, BUCKET_S)
    result = backtest(
        trace,
        name,
        horizon_buckets=5,
        quantile=0.95,
        warmup_buckets=120,
        params=PARAMS.get(name),
    )
    assert result.scored_pairs > 6000
    if name == "moving-max":
        assert result.under_rate <= 0.075
    else:
        assert 0.025 <= result.under_rate <= 0.075, result.under_rate


def test_band_is_calibrated_per_level_on_regime_switching_traffic() -> None:
    """MMPP-like traffic: a quiet state (2 rps) and a busy one (10 rps). Errors made in the quiet
    state include the jump to the busy one (4x the level); scaled to the busy level they would
    predict a second jump to ~50 rps that the traffic never makes. Calibrated per level, the busy
    state's band stays near its own spread, and the band still covers about 95% there."""
    rng = np.random.default_rng(7)
    levels = np.repeat(np.tile([2.0, 10.0], 20), 30)  # 40 regimes of 30 buckets
    counts = rng.poisson(levels * BUCKET_S).astype(float)
    forecaster = make("last")
    busy_upper: list[float] = []
    busy_actual: list[float] = []
    for i, c in enumerate(counts):
        if i >= 600 and levels[i] == 10.0 and levels[i - 1] == 10.0:
            busy_upper.append(forecaster.forecast(1, 0.95).upper_rps[0])
            busy_actual.append(c / BUCKET_S)
        forecaster.observe(BUCKET_S * i, c)
    assert max(busy_upper) < 13.0  # not 10 * (1 + the quiet state's 4x jump)
    covered = np.mean(np.array(busy_actual) <= np.array(busy_upper))
    assert covered >= 0.9
    # In the quiet state the band keeps room for the jump it has seen (more than Poisson's).
    quiet = forecaster.forecast(1, 0.95)
    assert forecaster.history.last(1)[0] < 3.0 or levels[-1] == 10.0
    assert quiet.upper_rps[0] > quiet.mean_rps[0]


@pytest.mark.parametrize("name", ["last", "holt-winters"])
def test_a_level_never_seen_is_banded_by_all_errors_not_by_the_rise_to_it(name: str) -> None:
    """A surge doubles the rate over three buckets. The forecasts made on the way up missed the
    rise by about the surge's size, and they are the errors nearest in level to the new one:
    sized on them, the band predicted a second doubling for as long as the new level had fewer
    than `min_errors` errors (the planner bought twice the fleet the surge needed). With too
    few errors at the new level, the band is the whole window's."""
    rng = np.random.default_rng(3)
    levels = np.concatenate([np.full(400, 100.0), [140.0, 170.0], np.full(10, 200.0)])
    counts = rng.poisson(levels * BUCKET_S).astype(float)
    forecaster = make(name)
    for i, c in enumerate(counts):
        forecaster.observe(BUCKET_S * i, c)
    forecast = forecaster.forecast(5, 0.95)
    assert max(forecast.upper_rps) < 1.3 * max(forecast.mean_rps)
