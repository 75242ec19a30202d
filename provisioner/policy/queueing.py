"""Two queues solved numerically: the M/D/c queue (waiting-time distribution and mean wait), and
the batch queue of one server that batches what waits (`batch_within_prob`, below).

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

The batch queue: one server, Poisson arrivals at lambda, and a batch that leaves whenever the
server is free and a request waits, taking min(waiting, take(age)) of them, age being how long the
oldest has waited; a batch of k is served in T(k) = a + c*k. This is the data plane's batcher on
one server (`batching.backlog_take`: the batch leaves at once, since nothing is in flight). Its
exact embedded chain, at batch starts, has one continuous state, the age u of the oldest request:
- Whether the oldest is taken, and when its batch starts, depends only on the requests before it,
  so the requests behind it are a Poisson process over its age, independent of u: N(u) ~
  Poisson(lambda*u) wait behind it.
- With K = take(u): when N(u) < K the batch takes all N(u) + 1, and the next oldest is the first
  arrival during T(N(u) + 1) (age T - E, E ~ Exp(lambda)), or none (the server idles, and the next
  batch starts at the next arrival, age 0). When N(u) >= K the batch takes K and the next oldest
  is the K-th arrival behind, at offset G_K ~ Erlang(K, lambda), G_K < u: its age at the next
  start is u + T(K) - G_K.
- A request at offset x behind the oldest is in the batch when fewer than K - 1 came between
  them, and finishes u - x + T(k) after it arrived, k the batch size; by Campbell's formula the
  expected number of those within the bound is an integral over x of Poisson probabilities,
  which splits where the largest k that still fits, floor((bound - u + x - a) / c), reaches K.
  The fraction within the bound is E[on time per batch] / E[batch size] under the chain's
  stationary law (renewal-reward over batches).
Ages are binned on a grid to 1.5 times the bound (mass beyond sits in the last bin, whose
requests count as late); T(k) falls between two grid steps and is split between them, so the
mean age is kept. Near the SLO (a few percent late) the result is a little pessimistic (against
Crommelin's M/D/1, by up to ~5e-4); with ~10% late and more the lumped last bin makes it
optimistic, and the capacity never needs it there. The stationary law comes from state
reduction (Grassmann, Taksar and Heyman 1985) by blocks of states; the matrices stay below the
sizes at which BLAS starts threads, which on a busy machine cost more than the work.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.linalg import solve_banded
from scipy.optimize import brentq
from scipy.special import gammaln

from mark.core.errors import InvalidValue

__all__ = ["mdc_wait_prob", "mdc_mean_wait", "batch_within_prob"]

# Probability mass below which Poisson terms and the stationary tail are dropped.
_TAIL_EPS = 1e-14
_MAX_SERVERS = 4096
# The batch queue's age grid: this many states from 0 to _AGE_TOP times the latency bound.
_AGE_STATES = 97
_AGE_TOP = 1.5
# States folded into the rest at once by the stationary solve.
_BLOCK = 32


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


def batch_within_prob(
    rate_rps: float,
    a_ms: float,
    c_ms: float,
    take: Callable[[float], int],
    latency_ms: float,
) -> float:
    """Fraction of requests that finish within `latency_ms` of arriving on one server that
    batches what waits (module docstring): Poisson arrivals at `rate_rps`, a batch of k served
    in a_ms + c_ms*k, and a batch leaving with its oldest request `u` ms old takes up to
    `take(u)` requests (at least 1). 0.0 when even the largest batch cannot keep up."""
    if not (math.isfinite(rate_rps) and rate_rps >= 0):
        raise InvalidValue("rate_rps", f"must be finite and >= 0, got {rate_rps!r}")
    if not (math.isfinite(a_ms) and a_ms >= 0 and math.isfinite(c_ms) and c_ms >= 0):
        raise InvalidValue("service", f"a_ms and c_ms must be finite and >= 0, got {a_ms, c_ms}")
    if not (math.isfinite(latency_ms) and latency_ms > 0):
        raise InvalidValue("latency_ms", f"must be finite and > 0, got {latency_ms!r}")
    if a_ms + c_ms <= 0:
        raise InvalidValue("service", "a batch of one must take some time")
    lam = rate_rps / 1000.0  # per ms
    n = _AGE_STATES
    step = _AGE_TOP * latency_ms / (n - 1)
    ages = np.arange(n) * step
    caps = np.array([take(float(u)) for u in ages], dtype=np.int64)
    if int(caps.min()) < 1:
        raise InvalidValue("take", "a batch takes at least one request")
    top = int(caps.max())
    if lam * (a_ms + c_ms * top) >= top:
        return 0.0
    if lam == 0.0:
        return 1.0 if a_ms + c_ms <= latency_ms else 0.0
    behind = _poisson_cdf(lam * ages, top + 1)  # P(N(u_i) <= m), m = 0..top
    moves, band = _batch_moves(lam, a_ms, c_ms, step, caps, behind)
    law = _stationary(moves, band)
    served, on_time = _batch_rewards(lam, a_ms, c_ms, latency_ms, ages, caps, behind)
    on_time[-1] = 0.0  # the last bin stands for every age beyond the grid
    return float(min(max(np.dot(law, on_time) / np.dot(law, served), 0.0), 1.0))


def _poisson_cdf(means: np.ndarray, upto: int) -> np.ndarray:
    """cdf[r, m] = P(Poisson(means[r]) <= m) for m = 0..upto-1."""
    m = np.arange(upto, dtype=float)[None, :]
    mu = means[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        log_pmf = m * np.log(mu) - mu - gammaln(m + 1.0)
    log_pmf = np.where(mu > 0, log_pmf, np.where(m == 0, 0.0, -np.inf))
    cdf: np.ndarray = np.minimum(np.cumsum(np.exp(log_pmf), axis=1), 1.0)
    return cdf


def _batch_moves(
    lam: float,
    a_ms: float,
    c_ms: float,
    step: float,
    caps: np.ndarray,
    behind: np.ndarray,
) -> tuple[np.ndarray, int]:
    """Transition matrix of the binned age chain (bin j holds ages within step/2 of j*step, the
    last one everything above) and its band: no move goes more than `band` bins up."""
    n = caps.size
    top = int(caps.max())
    rows = np.arange(n)
    shift = (a_ms + c_ms * caps) / step  # T(K) in steps, split between floor and floor + 1
    base = np.floor(shift).astype(np.int64)
    band = int(base.max()) + 1
    moves = np.zeros((n, n))
    # Batches that take all N(u) + 1 = m + 1: the next oldest arrives during T(m + 1) (age
    # T - E, E ~ Exp(lam)), or none (age 0). T <= T(top) keeps these within `reach` bins.
    reach = min(band + 1, n)
    service = a_ms + c_ms * np.arange(1, top + 1, dtype=float)
    low = (rows[:reach] - 0.5) * step
    high = (rows[:reach] + 0.5) * step
    low[0] = -np.inf
    if reach == n:
        high[-1] = np.inf
    e_high = np.clip(service[:, None] - low[None, :], 0.0, service[:, None])
    e_low = np.clip(service[:, None] - high[None, :], 0.0, service[:, None])
    after = np.exp(-lam * e_low) - np.exp(-lam * e_high)
    after[:, 0] += np.exp(-lam * service)
    pmf = np.diff(behind, axis=1, prepend=0.0)[:, :top]
    pmf = np.where(np.arange(top)[None, :] < caps[:, None], pmf, 0.0)
    moves[:, :reach] = np.einsum("im,mj->ij", pmf, after)
    # Batches of K = caps[i]: the next oldest is the K-th arrival behind, at G_K < u_i; its age
    # is u_i + T(K) - G_K. With G_K binned like the ages (the bin that u_i cuts holds G_K in
    # ((i - 1/2) step, i step)), row i is its G_K bins reversed and moved up by T(K).
    erlang = np.maximum(1.0 - _poisson_cdf(np.arange(2 * n) * (step / 2.0) * lam, top), 0.0)
    below = erlang[:, caps - 1].T  # row i: P(G_K <= h * step / 2), h = 0..2n-1
    bins = np.diff(below[:, 1::2], axis=1, prepend=0.0)
    cut = np.maximum(below[:, 0::2] - np.concatenate([below[:, :1], below[:, 1:-1:2]], 1), 0.0)
    bins = np.where(rows[None, :] < rows[:, None], np.maximum(bins, 0.0), 0.0)
    bins[rows, rows] = cut[rows, rows]
    # split T(K) between its two neighbouring steps: by lag l = i + base_i - j
    frac = (shift - base)[:, None]
    padded = np.concatenate([np.zeros((n, 1)), bins, np.zeros((n, 1))], axis=1)  # l = -1..n
    by_lag = (1.0 - frac) * padded[:, :-1] + frac * padded[:, 1:]  # l = -1..n-1, at l + 1
    by_lag = np.concatenate([np.zeros((n, n)), by_lag, np.zeros((n, n))], axis=1)  # at l + n + 1
    lag = (rows + base)[:, None] - np.arange(n - 1)[None, :]  # columns 0..n-2; the last below
    full = np.take_along_axis(by_lag, np.clip(lag + n + 1, 0, 3 * n), axis=1)
    moves[:, :-1] += full
    landed = below[rows, 2 * rows] - full.sum(axis=1)  # P(G_K < u_i) less what stayed inside
    moves[:, -1] += np.where(rows + base + 1 >= n - 1, np.maximum(landed, 0.0), 0.0)
    return moves, band


def _stationary(moves: np.ndarray, band: int) -> np.ndarray:
    """Stationary law of the chain by block state reduction, from the last state down: the
    block's states are folded into the rest through (I - P_BB)^-1 (an M-matrix: no pivoting
    trouble), and only the `band` states below a block can move up into it."""
    p = moves.copy()
    n = p.shape[0]
    blocks: list[tuple[int, int, int]] = []
    k = n
    while k > 1:
        lo = max(k - _BLOCK, 1)
        first = max(lo - band, 0)
        inner = np.eye(k - lo) - p[lo:k, lo:k]
        p[first:lo, :lo] += p[first:lo, lo:k] @ np.linalg.solve(inner, p[lo:k, :lo])
        blocks.append((lo, k, first))
        k = lo
    law = np.zeros(n)
    law[0] = 1.0
    for lo, k, first in reversed(blocks):
        inner = np.eye(k - lo) - p[lo:k, lo:k]
        law[lo:k] = np.linalg.solve(inner.T, law[first:lo] @ p[first:lo, lo:k])
    law = np.maximum(law, 0.0)
    total: np.ndarray = law / law.sum()
    return total


def _batch_rewards(
    lam: float,
    a_ms: float,
    c_ms: float,
    latency_ms: float,
    ages: np.ndarray,
    caps: np.ndarray,
    behind: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Per age bin: the expected batch size, and the expected number of its requests that finish
    within `latency_ms` (module docstring)."""
    n = ages.size
    top = int(caps.max())
    at_least = np.concatenate([np.ones((n, 1)), 1.0 - behind[:, :-1]], axis=1)  # P(N >= m)
    sizes = np.arange(top)[None, :]
    served = np.where(sizes < caps[:, None], at_least[:, :top], 0.0).sum(axis=1)

    def largest_fitting(slack_ms: np.ndarray) -> np.ndarray:
        """The largest batch served within `slack_ms` (inf: any; below 1: none)."""
        if c_ms > 0:
            return np.floor((slack_ms - a_ms) / c_ms)
        return np.where(slack_ms >= a_ms, np.inf, 0.0)

    # The oldest: on time when its batch, min(N + 1, K), fits what is left of the bound.
    fit = largest_fitting(latency_ms - ages)
    index = np.clip(fit - 1, 0, top).astype(np.int64)[:, None]
    oldest = np.where(
        caps <= fit, 1.0, np.where(fit >= 1, np.take_along_axis(behind, index, 1)[:, 0], 0.0)
    )
    # Behind it, at offset x: where the fit reaches K (x >= x_full), in the batch and on time
    # iff fewer than K - 1 came between; integral = E[min(N(u), K-1)] - E[min(N(x0), K-1)].
    x_full = np.clip(ages - latency_ms + a_ms + c_ms * caps, 0.0, ages)
    at_least_x = 1.0 - _poisson_cdf(lam * x_full, top)
    ranks = np.arange(1, top)[None, :]
    below_cap = ranks < caps[:, None]
    full_part = np.where(below_cap, at_least[:, 1:top] - at_least_x[:, : top - 1], 0.0).sum(axis=1)
    # Below x_full the fit is j < K on [u - bound + a + c*j, ... + c): on time iff N(u) <= j - 2.
    partial = np.zeros(n)
    if c_ms > 0 and top > 2:
        fits = np.arange(2, top)[None, :]
        start = ages[:, None] - latency_ms + a_ms + c_ms * fits
        length = np.minimum(start + c_ms, x_full[:, None]) - np.maximum(start, 0.0)
        length = np.where(fits < caps[:, None], np.maximum(length, 0.0), 0.0)
        partial = lam * (length * behind[:, : top - 2]).sum(axis=1)
    return served, oldest + full_part + partial
