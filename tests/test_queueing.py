"""M/D/c waiting time (provisioner/policy/queueing.py) against closed forms and a simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mark.core.errors import InvalidValue
from provisioner.policy.queueing import mdc_mean_wait, mdc_wait_prob

# Absolute tolerance of P(W <= t) against the simulation: 2M customers per case (the slowest,
# c=1 at rho=0.95, relaxes over ~1/(1-sqrt(rho))^2 service times, leaving a few hundred
# independent stretches: standard error ~0.005).
SIM_TOLERANCE = 0.02
SIM_CUSTOMERS = 2_000_000


def simulate_waits(rate: float, service: float, servers: int, customers: int, seed: int):
    """FCFS M/D/c by the exact recursion S_n = max(t_n, S_{n-c} + D): with equal service
    times customer n starts once customer n-c has left. Each of the c interleaved chains is a
    Lindley recursion, solved in closed form as a running maximum."""
    rng = np.random.default_rng(seed)
    customers -= customers % servers
    arrivals = np.cumsum(rng.exponential(1.0 / rate, customers)).reshape(-1, servers)
    steps = np.arange(arrivals.shape[0])[:, None] * service
    starts = np.maximum.accumulate(arrivals - steps, axis=0) + steps
    waits = (starts - arrivals).ravel()
    return waits[customers // 20 :]  # drop the start from empty


@pytest.mark.parametrize("rho", [0.1, 0.5, 0.9, 0.99])
def test_md1_mean_is_pollaczek_khinchine(rho: float) -> None:
    service = 0.25
    expected = rho * service / (2 * (1 - rho))
    assert mdc_mean_wait(rho / service, service, 1) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("rho", [0.1, 0.5, 0.95])
def test_md1_no_wait_probability_is_one_minus_rho(rho: float) -> None:
    assert mdc_wait_prob(rho, 1.0, 1, 0.0) == pytest.approx(1 - rho, abs=1e-9)


def test_md1_wait_below_one_service_matches_crommelin_closed_form() -> None:
    # For 0 <= t < D, P(W <= t) = (1 - rho) * exp(lambda * t) (Erlang, 1909).
    rho, service = 0.6, 2.0
    for t in (0.0, 0.5, 1.0, 1.9):
        expected = (1 - rho) * math.exp(rho / service * t)
        assert mdc_wait_prob(rho / service, service, 1, t) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("servers", [1, 4, 32, 64])
def test_light_load_never_waits(servers: int) -> None:
    assert mdc_wait_prob(1e-6, 1.0, servers, 0.0) == pytest.approx(1.0, abs=1e-5)
    assert mdc_mean_wait(1e-6, 1.0, servers) == pytest.approx(0.0, abs=1e-6)
    assert mdc_wait_prob(0.0, 1.0, servers, 0.0) == 1.0


def test_distribution_is_monotone_and_reaches_one() -> None:
    values = [mdc_wait_prob(60.0, 1.0, 64, t) for t in np.linspace(0, 20, 41)]
    assert all(b >= a - 1e-12 for a, b in zip(values, values[1:], strict=False))
    assert values[-1] == pytest.approx(1.0, abs=1e-6)


def test_heavy_load_is_stable_for_many_servers() -> None:
    p = mdc_wait_prob(0.99 * 64, 1.0, 64, 1.0)
    assert 0.0 < p < 1.0
    assert math.isfinite(mdc_mean_wait(0.99 * 64, 1.0, 64))


def test_unstable_queue() -> None:
    assert mdc_wait_prob(2.0, 1.0, 2, 100.0) == 0.0
    assert mdc_mean_wait(2.0, 1.0, 2) == math.inf
    assert mdc_wait_prob(1.0, 1.0, 2, -1.0) == 0.0


def test_rejects_bad_arguments() -> None:
    with pytest.raises(InvalidValue):
        mdc_wait_prob(-1.0, 1.0, 1, 0.0)
    with pytest.raises(InvalidValue):
        mdc_wait_prob(1.0, 0.0, 1, 0.0)
    with pytest.raises(InvalidValue):
        mdc_mean_wait(1.0, 1.0, 0)


@pytest.mark.parametrize("servers", [1, 2, 4, 8, 16, 32])
@pytest.mark.parametrize("rho", [0.1, 0.5, 0.8, 0.95])
def test_matches_simulation(servers: int, rho: float) -> None:
    service = 1.0
    rate = rho * servers / service
    waits = simulate_waits(
        rate, service, servers, SIM_CUSTOMERS, seed=servers * 100 + int(rho * 100)
    )
    for t in (0.0, 0.3, 1.0, 2.5, 5.0):
        exact = mdc_wait_prob(rate, service, servers, t)
        assert exact == pytest.approx(float(np.mean(waits <= t)), abs=SIM_TOLERANCE), t
