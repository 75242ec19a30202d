"""Seeded workload generators, each returning a `Trace` of Poisson request counts per bucket.

The shapes follow the MArk evaluation (ATC'19, section 6): a Twitter-like diurnal trace (their
trace was abstracted from the ArchiveTeam 2017 tweet stream, about 4x peak to valley), a
Markov-modulated Poisson process (bursty, "unpredictable"), and unexpected surges of +75% and
+100% for a stretch. Two more serve the many-model fleets Mark targets: Zipf popularity over many
models, and a function population calibrated to published statistics of the Azure Functions 2019
trace (Shahrad et al., USENIX ATC 2020). Every generator draws from `numpy.random.default_rng(seed)`
only, so a seed names a trace exactly.

Rates are built first (requests per second, per bucket) and counts drawn last as
Poisson(rate * bucket_s): the `*_rates` helpers expose the noiseless means for tests and plots.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from mark.core.errors import InvalidValue
from mark.core.types import require_finite
from traces.format import Trace

__all__ = [
    "diurnal",
    "diurnal_rates",
    "mmpp",
    "surge",
    "zipf_models",
    "azure_functions",
    "AZURE_2019_LOG10_RATE_MEAN",
    "AZURE_2019_LOG10_RATE_STD",
]

_DAY_S = 86_400.0


def _grid(duration_s: float, bucket_s: float, start_s: float) -> NDArray[np.float64]:
    require_finite("bucket_s", bucket_s, minimum=1e-3)
    require_finite("duration_s", duration_s, minimum=bucket_s)
    require_finite("start_s", start_s)
    return start_s + bucket_s * np.arange(int(round(duration_s / bucket_s)), dtype=np.float64)


def _poisson(
    rng: np.random.Generator, rates_rps: NDArray[np.float64], bucket_s: float
) -> NDArray[np.float64]:
    return rng.poisson(np.maximum(rates_rps, 0.0) * bucket_s).astype(np.float64)


def _daily_profile(times_s: NDArray[np.float64], peak_hour: float) -> NDArray[np.float64]:
    """A day's shape in [0, 1]: a main wave peaking at `peak_hour` plus a second harmonic that
    flattens the afternoon and sharpens the night valley, as in daily web and tweet volumes."""
    hours = (times_s % _DAY_S) / 3600.0
    phase = 2 * math.pi * (hours - peak_hour) / 24.0
    wave = np.cos(phase) + 0.35 * np.cos(2 * phase)
    # cos(x) + 0.35 cos(2x) peaks at 1.35 (x = 0) and bottoms out at cos(x) = -1 / 1.4.
    lo, hi = -1.0 / (8 * 0.35) - 0.35, 1.35
    return (wave - lo) / (hi - lo)


def diurnal_rates(
    times_s: NDArray[np.float64],
    *,
    peak_rps: float,
    peak_to_valley: float,
    peak_hour: float = 20.0,
) -> NDArray[np.float64]:
    """The noiseless daily rate at each time: `peak_rps` at the peak, `peak_rps /
    peak_to_valley` at the valley."""
    require_finite("peak_rps", peak_rps, minimum=0.0)
    require_finite("peak_to_valley", peak_to_valley, minimum=1.0)
    valley = peak_rps / peak_to_valley
    return valley + (peak_rps - valley) * _daily_profile(times_s, peak_hour)


def _correlated_noise(
    rng: np.random.Generator, n: int, sigma: float, corr_buckets: float
) -> NDArray[np.float64]:
    """Multiplicative noise with mean 1: exp of a stationary AR(1) with standard deviation
    `sigma` and correlation time `corr_buckets` (bursts that last minutes, not one bucket)."""
    if sigma == 0.0:
        return np.ones(n)
    rho = math.exp(-1.0 / max(corr_buckets, 1e-9))
    shocks = rng.standard_normal(n) * sigma * math.sqrt(1 - rho * rho)
    x = np.empty(n)
    x[0] = rng.standard_normal() * sigma
    for i in range(1, n):
        x[i] = rho * x[i - 1] + shocks[i]
    return np.exp(x - sigma * sigma / 2)


def _diurnal_mean(
    rng: np.random.Generator,
    times_s: NDArray[np.float64],
    *,
    peak_rps: float,
    peak_to_valley: float,
    noise: float,
    noise_corr_s: float,
    day_variation: float,
    bucket_s: float,
) -> NDArray[np.float64]:
    require_finite("noise", noise, minimum=0.0)
    require_finite("day_variation", day_variation, minimum=0.0)
    base = diurnal_rates(times_s, peak_rps=peak_rps, peak_to_valley=peak_to_valley)
    days = np.floor(times_s / _DAY_S).astype(np.int64)
    day_scale = 1.0 + day_variation * rng.standard_normal(days.max() - days.min() + 1)
    scale: NDArray[np.float64] = np.maximum(day_scale[days - days.min()], 0.1)
    wobble = _correlated_noise(rng, times_s.size, noise, noise_corr_s / bucket_s)
    return base * scale * wobble


def diurnal(
    *,
    days: float = 2.0,
    bucket_s: float = 60.0,
    peak_rps: float = 150.0,
    peak_to_valley: float = 4.0,
    noise: float = 0.08,
    noise_corr_s: float = 600.0,
    day_variation: float = 0.05,
    start_s: float = 0.0,
    seed: int = 0,
) -> Trace:
    """Twitter-like diurnal load: a daily wave (peak at 20:00, valley before dawn, `peak_to_valley`
    apart), days that differ by `day_variation`, multiplicative bursts of `noise` (log-scale
    standard deviation) lasting about `noise_corr_s`, and Poisson counts."""
    rng = np.random.default_rng(seed)
    times = _grid(days * _DAY_S, bucket_s, start_s)
    mean = _diurnal_mean(
        rng,
        times,
        peak_rps=peak_rps,
        peak_to_valley=peak_to_valley,
        noise=noise,
        noise_corr_s=noise_corr_s,
        day_variation=day_variation,
        bucket_s=bucket_s,
    )
    return Trace(times, _poisson(rng, mean, bucket_s), bucket_s, None, f"diurnal(seed={seed})")


def mmpp(
    *,
    hours: float = 4.0,
    bucket_s: float = 60.0,
    rates_rps: tuple[float, ...] = (40.0, 100.0, 180.0),
    mean_sojourn_s: float = 600.0,
    start_s: float = 0.0,
    seed: int = 0,
) -> Trace:
    """Markov-modulated Poisson process: a hidden state jumps among `rates_rps` (to any other
    state, uniformly) after exponential sojourns of mean `mean_sojourn_s`; the count of a bucket is
    Poisson with the rate integrated over the bucket, exactly, including mid-bucket switches."""
    if len(rates_rps) < 2:
        raise InvalidValue("rates_rps", "an MMPP needs at least two states")
    for rate in rates_rps:
        require_finite("rates_rps", rate, minimum=0.0)
    require_finite("mean_sojourn_s", mean_sojourn_s, minimum=1e-3)
    rng = np.random.default_rng(seed)
    times = _grid(hours * 3600.0, bucket_s, start_s)
    end = times[-1] + bucket_s
    switches = [float(times[0])]
    states = [int(rng.integers(len(rates_rps)))]
    while switches[-1] < end:
        switches.append(switches[-1] + float(rng.exponential(mean_sojourn_s)))
        step = int(rng.integers(1, len(rates_rps)))
        states.append((states[-1] + step) % len(rates_rps))
    edges = np.asarray(switches)
    levels = np.asarray(rates_rps)[np.asarray(states[:-1])]
    # Cumulative expected requests at each switch; interpolate at bucket edges.
    cumulative = np.concatenate([[0.0], np.cumsum(levels * np.diff(edges))])
    at = np.interp(np.append(times, end), edges, cumulative)
    mean_rps = np.diff(at) / bucket_s
    return Trace(times, _poisson(rng, mean_rps, bucket_s), bucket_s, None, f"mmpp(seed={seed})")


def surge(
    *,
    surge_fraction: float = 0.75,
    surge_start_s: float = _DAY_S + 16 * 3600.0,
    surge_duration_s: float = 3600.0,
    ramp_s: float = 120.0,
    days: float = 2.0,
    bucket_s: float = 60.0,
    peak_rps: float = 150.0,
    peak_to_valley: float = 4.0,
    noise: float = 0.08,
    noise_corr_s: float = 600.0,
    day_variation: float = 0.05,
    start_s: float = 0.0,
    seed: int = 0,
) -> Trace:
    """The diurnal trace with an unexpected surge: from `surge_start_s` the rate rises by
    `surge_fraction` (0.75 = +75%) over `ramp_s`, holds for `surge_duration_s`, and falls back
    over `ramp_s` (MArk section 6, "unexpected load surge")."""
    require_finite("surge_fraction", surge_fraction, minimum=0.0)
    require_finite("surge_duration_s", surge_duration_s, minimum=0.0)
    require_finite("ramp_s", ramp_s, minimum=0.0)
    rng = np.random.default_rng(seed)
    times = _grid(days * _DAY_S, bucket_s, start_s)
    mean = _diurnal_mean(
        rng,
        times,
        peak_rps=peak_rps,
        peak_to_valley=peak_to_valley,
        noise=noise,
        noise_corr_s=noise_corr_s,
        day_variation=day_variation,
        bucket_s=bucket_s,
    )
    mid = times + bucket_s / 2
    rise = np.clip((mid - surge_start_s) / max(ramp_s, 1e-9), 0.0, 1.0)
    fall = np.clip((surge_start_s + surge_duration_s + ramp_s - mid) / max(ramp_s, 1e-9), 0, 1)
    mean = mean * (1.0 + surge_fraction * np.minimum(rise, fall))
    label = f"surge(+{surge_fraction:.0%}, seed={seed})"
    return Trace(times, _poisson(rng, mean, bucket_s), bucket_s, None, label)


def _many_model_trace(
    rng: np.random.Generator,
    times: NDArray[np.float64],
    mean_rps: NDArray[np.float64],
    names: list[str],
    bucket_s: float,
    label: str,
) -> Trace:
    """Rows (timestamp, model) from a (buckets, models) matrix of mean rates."""
    counts = _poisson(rng, mean_rps, bucket_s)
    n_buckets, n_models = counts.shape
    return Trace(
        np.repeat(times, n_models),
        counts.reshape(-1),
        bucket_s,
        tuple(names) * n_buckets,
        label,
    )


def zipf_models(
    *,
    n_models: int = 50,
    exponent: float = 1.1,
    hours: float = 4.0,
    bucket_s: float = 60.0,
    total_peak_rps: float = 150.0,
    peak_to_valley: float = 4.0,
    noise: float = 0.15,
    noise_corr_s: float = 600.0,
    start_s: float = 16 * 3600.0,
    seed: int = 0,
    drift: float = 0.0,
    drift_corr_s: float = 6 * 3600.0,
) -> Trace:
    """Many models with Zipf popularity: model i (1-based) gets a share proportional to
    i^-exponent of a diurnal total, with its own bursts (`noise`) so models do not move in lock
    step. Names are `model-0001`, ... in popularity order (at the start, with drift).

    `drift` > 0 lets popularity move over the day (issue 16: the popular models change): each
    share is also multiplied by a slow log-normal walk of standard deviation `drift` (in log
    units) and correlation time `drift_corr_s`, and the shares renormalised per bucket, so the
    total stays the diurnal one while ranks trade places. 0 (the default) draws nothing more, so
    a seed names the same trace as before the option existed."""
    if isinstance(n_models, bool) or not isinstance(n_models, int) or n_models < 1:
        raise InvalidValue("n_models", f"must be an integer >= 1, got {n_models!r}")
    require_finite("exponent", exponent, minimum=0.0)
    require_finite("drift", drift, minimum=0.0)
    require_finite("drift_corr_s", drift_corr_s, minimum=bucket_s)
    rng = np.random.default_rng(seed)
    times = _grid(hours * 3600.0, bucket_s, start_s)
    total = diurnal_rates(times, peak_rps=total_peak_rps, peak_to_valley=peak_to_valley)
    base = np.arange(1, n_models + 1, dtype=np.float64) ** -exponent
    shares = np.broadcast_to(base / base.sum(), (times.size, n_models))
    if drift > 0:
        walk = np.column_stack(
            [_correlated_noise(rng, times.size, drift, drift_corr_s / bucket_s) for _ in base]
        )
        shares = base[None, :] * walk
        shares = shares / shares.sum(axis=1, keepdims=True)
    wobble = np.column_stack(
        [_correlated_noise(rng, times.size, noise, noise_corr_s / bucket_s) for _ in base]
    )
    names = [f"model-{i:04d}" for i in range(1, n_models + 1)]
    label = f"zipf_models(n={n_models}, s={exponent}, seed={seed}"
    return _many_model_trace(
        rng,
        times,
        total[:, None] * shares * wobble,
        names,
        bucket_s,
        label + (f", drift={drift})" if drift > 0 else ")"),
    )


# Azure Functions 2019 (Shahrad et al., ATC'20, section 3.3, Figure 5a): 45% of applications are
# invoked at most once per hour on average and 81% at most once per minute. A log-normal rate fits
# both exactly: log10(rate/s) ~ N(mu, sigma) with
#   mu + sigma * z(0.45) = log10(1/3600) and mu + sigma * z(0.81) = log10(1/60).
_Z45, _Z81 = -0.12566134685507402, 0.8778962950512288
AZURE_2019_LOG10_RATE_STD = (math.log10(1 / 60) - math.log10(1 / 3600)) / (_Z81 - _Z45)
AZURE_2019_LOG10_RATE_MEAN = math.log10(1 / 3600) - AZURE_2019_LOG10_RATE_STD * _Z45
# Share of functions triggered by timers (ibid., section 3.2, trigger breakdown: 16% of functions,
# 2% of invocations); timers fire on fixed periods, everything else follows the day. The paper's
# rate statistics are per application; here they are applied per function.
_AZURE_TIMER_SHARE = 0.16
_TIMER_PERIODS_S = (60.0, 300.0, 900.0, 3600.0)


def azure_functions(
    *,
    n_functions: int = 2000,
    keep: int = 20,
    days: float = 2.0,
    bucket_s: float = 60.0,
    scale_to_peak_rps: float | None = 150.0,
    peak_to_valley_range: tuple[float, float] = (1.5, 4.0),
    noise: float = 0.1,
    start_s: float = 0.0,
    seed: int = 0,
) -> Trace:
    """A function population calibrated to the Azure Functions 2019 statistics above: mean rates
    log-normal (45% <= 1/hour, 81% <= 1/minute), 16% timer-triggered (fixed periods), the
    rest diurnal with per-function peak-to-valley ratios in `peak_to_valley_range` and peak hours
    spread over the working day. The `keep` busiest functions become the models of the trace
    (with this spread they carry nearly all requests; the rest is noise for the planner); when
    `scale_to_peak_rps` is set their total is rescaled to peak there, so that a paper-scale fleet
    serves it (shares and shapes are kept, absolute per-function rates are not)."""
    for field, value in (("n_functions", n_functions), ("keep", keep)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidValue(field, f"must be an integer >= 1, got {value!r}")
    if keep > n_functions:
        raise InvalidValue("keep", f"cannot keep {keep} of {n_functions} functions")
    rng = np.random.default_rng(seed)
    times = _grid(days * _DAY_S, bucket_s, start_s)
    log10_rates = rng.normal(AZURE_2019_LOG10_RATE_MEAN, AZURE_2019_LOG10_RATE_STD, n_functions)
    busiest = np.argsort(log10_rates)[::-1][:keep]
    mean_rates = 10.0 ** log10_rates[busiest]
    timer = rng.random(keep) < _AZURE_TIMER_SHARE
    columns = []
    for rate, is_timer in zip(mean_rates, timer, strict=True):
        if is_timer:
            period = float(rng.choice(_TIMER_PERIODS_S))
            phase = float(rng.uniform(0, period))
            fires = np.floor((times + bucket_s - phase) / period) - np.floor(
                (times - phase) / period
            )
            # A timer fires `rate * period` invocations each time (fan-out), on its period.
            columns.append(fires * max(rate * period, 1.0) / bucket_s)
            continue
        ratio = float(rng.uniform(*peak_to_valley_range))
        shape = diurnal_rates(
            times, peak_rps=1.0, peak_to_valley=ratio, peak_hour=float(rng.uniform(10, 20))
        )
        wobble = _correlated_noise(rng, times.size, noise, 600.0 / bucket_s)
        columns.append(rate * shape / shape.mean() * wobble)
    mean = np.column_stack(columns)
    if scale_to_peak_rps is not None:
        require_finite("scale_to_peak_rps", scale_to_peak_rps, minimum=0.0)
        mean *= scale_to_peak_rps / mean.sum(axis=1).max()
    names = [f"fn-{i:04d}" for i in range(1, keep + 1)]
    return _many_model_trace(
        rng, times, mean, names, bucket_s, f"azure_functions(n={n_functions}, seed={seed})"
    )
