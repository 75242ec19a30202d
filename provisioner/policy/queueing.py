"""The M/D/c queue, solved numerically: waiting-time distribution and mean wait.

MArk models each instance as an M/D/c queue (Poisson arrivals, deterministic service, c parallel
servers) and notes that it has no closed form. We compute it exactly up to a truncation of
~1e-13 using the embedded chain of Crommelin (1932), as written down by Franx (2001, "A simple
solution for the M/D/c waiting time distribution", Oper. Res. Letters 29):

- Every customer in service at time t has left by t + D, and nobody who starts after t has, so
  the number waiting M(t) = max(N(t) - c, 0) obeys M(t + D) = max(M(t) + A - c, 0) with A ~
  Poisson(lambda*D), at any t. Its stationary law q is the solution of a banded linear system;
  beyond a truncation point the tail is continued geometrically with ratio 1/z0, z0 > 1 being the
  real root of z**c = exp(lambda*D*(z - 1)) (the exact asymptotic decay of q).
- A customer arriving at t waits at most x = k*D + r (0 <= r < D) iff fewer than c of the
  customers ahead of it remain at t + x. Looking back to t + r - D and running the chain forward
  (k + 1) steps with arrivals stopped at t gives Franx's formula
      P(W <= x) = sum_m q_m * P(Poisson(lambda*(D - r)) <= (k + 1)*c - 1 - m).
- The mean wait follows from Little's law on the waiting room: E[W] = E[M] / lambda.

q is cached per (lambda*D, c), so after the first call each t costs one short dot product.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.linalg import solve_banded
from scipy.optimize import brentq
from scipy.special import gammaln

from mark.core.errors import InvalidValue

__all__ = ["mdc_wait_prob", "mdc_mean_wait"]

# Probability mass below which Poisson terms and the stationary tail are dropped.
_TAIL_EPS = 1e-14
_MAX_SERVERS = 4096


@dataclass(frozen=True, slots=True)
class _WaitingRoom:
    """Stationary law of M = max(N - c, 0) for offered load a = lambda*D on c servers.

    `cdf[m]` is P(M <= m) for m < len(cdf); beyond, P(M > m) = tail_mass * ratio**(m - last).
    """

    offered_load: float
    servers: int
    cdf: np.ndarray
    ratio: float
    tail_mass: float
    mean: float

    def cdf_at(self, m: np.ndarray) -> np.ndarray:
        """P(M <= m) for integer m (negative m gives 0)."""
        last = len(self.cdf) - 1
        inside = np.clip(m, 0, last)
        out = self.cdf[inside]
        beyond = m > last
        if beyond.any():
            out = np.where(beyond, 1.0 - self.tail_mass * self.ratio ** (m - last), out)
        return np.where(m < 0, 0.0, out)


def _poisson_pmf(mean: float, upto: int) -> np.ndarray:
    j = np.arange(upto + 1, dtype=float)
    if mean <= 0.0:
        out = np.zeros(upto + 1)
        out[0] = 1.0
        return out
    pmf: np.ndarray = np.exp(j * math.log(mean) - mean - gammaln(j + 1.0))
    return pmf


def _poisson_cutoff(mean: float) -> int:
    """An index past which Poisson(mean) holds less than ~1e-16 of its mass."""
    return int(math.ceil(mean + 12.0 * math.sqrt(mean) + 30.0))


def _decay_root(offered_load: float, servers: int) -> float:
    """The real root z0 > 1 of z**c = exp(a*(z - 1)), i.e. of c*ln z - a*(z - 1) = 0."""

    def gap(z: float) -> float:
        return servers * math.log(z) - offered_load * (z - 1.0)

    rho = offered_load / servers
    low = 1.0 + (1.0 - rho)  # gap > 0 there: c*ln(1+d) - a*d > d*(c - a - c*d/2) for d < 2(1-rho)
    high = 2.0 * low
    while gap(high) > 0.0:
        high *= 2.0
    return float(brentq(gap, low, high, xtol=1e-15, rtol=1e-15))


@lru_cache(maxsize=8192)
def _waiting_room(offered_load: float, servers: int) -> _WaitingRoom:
    """Solve q = q P for the chain m -> max(m + A - c, 0), A ~ Poisson(a), truncated at n_top
    with the geometric tail folded into the last column. The row of m = 0 is replaced by
    q_0 = 1 (the system is singular by one), then q is normalised."""
    c = servers
    a = offered_load
    if a == 0.0:
        return _WaitingRoom(a, c, np.ones(1), 0.0, 0.0, 0.0)
    ratio = 1.0 / _decay_root(a, c)
    k_top = _poisson_cutoff(a)
    pmf = _poisson_pmf(a, k_top + c)
    # Enough states that the geometric continuation starts well inside the asymptotic regime.
    n_top = c + k_top + int(math.ceil(math.log(_TAIL_EPS) / math.log(ratio)))
    lower = max(k_top - c, 0)
    upper = c
    ab = np.zeros((lower + upper + 1, n_top + 1))
    # Row m (1..n_top): q_m - sum_i pmf[m + c - i] * q_i = 0, i in [m + c - k_top, m + c].
    rows = np.arange(1, n_top + 1)
    for shift in range(-lower, upper + 1):  # column i = m + shift
        cols = rows + shift
        coef = (1.0 if shift == 0 else 0.0) - float(pmf[c - shift])
        ok = (cols >= 0) & (cols <= n_top)
        ab[upper + rows[ok] - cols[ok], cols[ok]] += coef
    # Columns past n_top are q_{n_top} * ratio**j: fold them into column n_top.
    for m in range(max(1, n_top - c + 1), n_top + 1):
        j = np.arange(1, m + c - n_top + 1)
        ab[upper + m - n_top, n_top] -= float(np.dot(pmf[m + c - n_top - j], ratio**j))
    ab[upper, 0] = 1.0
    rhs = np.zeros(n_top + 1)
    rhs[0] = 1.0
    q = solve_banded((lower, upper), ab, rhs, check_finite=False)
    q = np.maximum(q, 0.0)
    tail_after = q[-1] * ratio / (1.0 - ratio)
    total = float(q.sum()) + tail_after
    q /= total
    tail_after /= total
    m_idx = np.arange(n_top + 1)
    tail_mean = q[-1] * (n_top * ratio / (1.0 - ratio) + ratio / (1.0 - ratio) ** 2)
    mean = float(np.dot(m_idx, q)) + tail_mean
    cdf = np.minimum(np.cumsum(q), 1.0)
    return _WaitingRoom(a, c, cdf, ratio, tail_after, mean)


def _check(arrival_rate: float, service_time: float, servers: int) -> None:
    if not (math.isfinite(arrival_rate) and arrival_rate >= 0):
        raise InvalidValue("arrival_rate", f"must be finite and >= 0, got {arrival_rate!r}")
    if not (math.isfinite(service_time) and service_time > 0):
        raise InvalidValue("service_time", f"must be finite and > 0, got {service_time!r}")
    if not (1 <= servers <= _MAX_SERVERS):
        raise InvalidValue("servers", f"must be in 1..{_MAX_SERVERS}, got {servers!r}")


def mdc_wait_prob(arrival_rate: float, service_time: float, servers: int, t: float) -> float:
    """P(W <= t) for the FCFS M/D/c queue: Poisson arrivals at `arrival_rate` per second,
    deterministic service of `service_time` seconds, `servers` servers, t in seconds.

    0.0 when the queue is unstable (arrival_rate * service_time >= servers)."""
    _check(arrival_rate, service_time, servers)
    if t < 0:
        return 0.0
    offered = arrival_rate * service_time
    if offered >= servers:
        return 0.0
    if offered == 0.0:
        return 1.0
    room = _waiting_room(offered, servers)
    k = int(t // service_time)
    r = t - k * service_time
    if r >= service_time:  # float edge of the floor division
        k, r = k + 1, 0.0
    mean = arrival_rate * (service_time - r)
    top = (k + 1) * servers - 1
    j = np.arange(min(top, _poisson_cutoff(mean)) + 1)
    terms = _poisson_pmf(mean, int(j[-1])) * room.cdf_at(top - j)
    return float(min(max(terms.sum(), 0.0), 1.0))


def mdc_mean_wait(arrival_rate: float, service_time: float, servers: int) -> float:
    """E[W] in seconds (inf when unstable): E[number waiting] / lambda by Little's law."""
    _check(arrival_rate, service_time, servers)
    offered = arrival_rate * service_time
    if offered >= servers:
        return math.inf
    if offered == 0.0:
        return 0.0
    return _waiting_room(offered, servers).mean / arrival_rate
