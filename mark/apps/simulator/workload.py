"""The simulated workload: a trace's buckets replayed as a Poisson process (seeded), and the
market the instances are bought in (catalog prices and spot history, seeded interruptions; what
they cost is `provisioner.policy.billing`'s).

Arrivals: within each bucket, the bucket's request count (its fractional part drawn as a
Bernoulli) placed uniformly at random: a Poisson process conditioned on the trace's count, so
every policy sees the same arrivals for the same seed and the trace's totals are kept.

Interruptions: each spot instance's time until its interruption notice is exponential at its
type's rate (`SimSettings.interruption_rate`, drawn at launch from the run's own generator), and
the cloud reclaims it 2 minutes after the notice (EC2's; CloudConfig.interruption_notice_s).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from traces import Trace

__all__ = ["Arrivals"]


@dataclass
class Arrivals:
    """Arrival times bucket by bucket, generated lazily and identically for a given seed."""

    trace: Trace
    seed: int

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng([self.seed, 0])
        self._grid = self.trace.grid_s
        counts = np.zeros(self._grid.size)
        index = np.rint((self.trace.timestamps_s - self._grid[0]) / self.trace.bucket_s)
        counts[index.astype(np.int64)] = self.trace.counts
        self.counts = counts

    @property
    def start_s(self) -> float:
        return float(self._grid[0])

    @property
    def bucket_s(self) -> float:
        return self.trace.bucket_s

    @property
    def buckets(self) -> int:
        return int(self._grid.size)

    def bucket(self, index: int) -> np.ndarray:
        """Sorted arrival times of bucket `index` (call in order: the generator is shared)."""
        count = self.counts[index]
        whole = int(math.floor(count))
        n = whole + int(self._rng.random() < count - whole)
        start = float(self._grid[index])
        return np.sort(start + self.trace.bucket_s * self._rng.random(n))
