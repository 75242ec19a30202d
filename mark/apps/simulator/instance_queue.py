"""One instance's request queue in virtual time: SLO-sized batches, FCFS over its parallel
servers, deterministic service T(b) = a + c*b (MArk's model; DESIGN.md "Batching").

The batch rule is the front end's (frontend/batcher.py): a batch leaves when `plan.size`
requests wait or the oldest has waited `plan.timeout_ms`, and only when a server is free (the
backlog fills the batch while the servers are busy, the model `provisioner.policy.capacity`
assumes; a backlog larger than `plan.size` leaves in one batch of up to `backlog_take`, which
capacity does not count on); and at once, with what waits, when every server is idle (the front
end is work-conserving: an instance with nothing in flight never waits for a batch to fill).
`plan` comes from `provisioner.policy.dataplane.batch_plan` at the rate routed to the instance.

Two paths compute the same thing:
- `_batches`: a loop over batches (not requests), no spill. Its result is accepted when no new
  request found more than `spill_position` requests ahead of it on arrival, i.e. when the spill
  rule would have kept every request queued.
- `_requests`: a loop over requests that asks the spill gate, in arrival order, for each request
  whose position passes that bound (the gate applies `provisioner.policy.dataplane.select_spills`),
  and sheds requests whose deadline passed before their batch left (the front end's `_shed`).
Batches that would start after `until_s` are not formed: their requests wait in the queue for the
next call, so arrivals of the next segment can still join them.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from provisioner.policy.batching import BatchPlan, backlog_take

__all__ = ["ServedBatch", "SpillGate", "InstanceQueue"]

# Called with (arrival_s, now_s, position ahead); True when the request went to the pool.
SpillGate = Callable[[float, float, int], bool]
# Called with the arrival times of requests shed at `now_s` (deadline passed while queued).
ShedSink = Callable[[list[float], float], None]


@dataclass(frozen=True, slots=True)
class ServedBatch:
    """Requests that left in batches during one call: arrival and completion times."""

    arrival_s: np.ndarray
    completion_s: np.ndarray

    @property
    def latency_ms(self) -> np.ndarray:
        return (self.completion_s - self.arrival_s) * 1000.0


@dataclass
class InstanceQueue:
    """FCFS queue of one instance with `servers` parallel servers."""

    servers: int
    a_ms: float
    c_ms: float
    free_s: list[float] = field(default_factory=list)
    waiting: list[float] = field(default_factory=list)  # arrival times, oldest first

    def __post_init__(self) -> None:
        if not self.free_s:
            self.free_s = [-math.inf] * self.servers
        heapq.heapify(self.free_s)

    @property
    def backlog(self) -> int:
        return len(self.waiting)

    def busy_until_s(self) -> float:
        return max(self.free_s)

    def service_s(self, batch: int) -> float:
        return (self.a_ms + self.c_ms * batch) / 1000.0

    def offer(
        self,
        arrivals_s: np.ndarray,
        plan: BatchPlan,
        until_s: float,
        *,
        spill_position: float = math.inf,
        gate: SpillGate | None = None,
        deadline_s: float = math.inf,
        shed: ShedSink | None = None,
    ) -> ServedBatch:
        """Queue `arrivals_s` (sorted, all >= the previous call's) and form every batch that
        starts before `until_s`. `deadline_s` is the SLO latency in seconds (for shedding)."""
        carried = len(self.waiting)
        times = self.waiting + arrivals_s.tolist()
        free = list(self.free_s)
        served = self._batches(times, plan, until_s, free)
        if gate is None or not arrivals_s.size:
            self.free_s = free
            return self._finish(times, served)
        starts = np.repeat(served[1], served[2]) if served[0] else np.zeros(0)
        arr = np.asarray(times)
        new_idx = np.arange(carried, len(times))
        started = np.minimum(np.searchsorted(starts, arr[carried:], side="right"), new_idx)
        position = new_idx - started
        if not position.size or int(position.max()) <= spill_position:
            self.free_s = free
            return self._finish(times, served)
        return self._requests(
            arrivals_s.tolist(), plan, until_s, spill_position, gate, deadline_s, shed
        )

    def flush(self, plan: BatchPlan) -> ServedBatch:
        """Serve everything still waiting (no new arrivals will come)."""
        return self.flush_after(np.zeros(0), plan)

    def flush_after(self, arrivals_s: np.ndarray, plan: BatchPlan) -> ServedBatch:
        """Queue `arrivals_s`, the last arrivals this instance gets, and serve them all."""
        return self.offer(arrivals_s, plan, math.inf)

    # -- the batch loop ------------------------------------------------------------------------

    def _batches(
        self, times: list[float], plan: BatchPlan, until_s: float, free: list[float]
    ) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        """Form batches over `times`; returns (served count, batch starts, sizes, ends)."""
        size = plan.size
        timeout_s = plan.timeout_ms / 1000.0
        n = len(times)
        head = 0
        starts: list[float] = []
        sizes: list[int] = []
        ends: list[float] = []
        a_s, c_s = self.a_ms / 1000.0, self.c_ms / 1000.0
        # Unbatched (size 1): once every server has taken a request of this call, the server
        # free first is the one of the request `servers` places back, and the rest is a Lindley
        # recursion per residue class, vectorised below (the baselines do not batch; a
        # request-by-request loop made them the simulator's slowest policies).
        settled_at = max(free) if size == 1 and plan.backlog_size <= 1 else math.inf
        taken = 0
        while head < n:
            server_free = free[0]
            if taken >= len(free) and server_free >= settled_at:
                return self._singles(times, head, until_s, free, starts, ends)
            taken += 1
            full_at = times[head + size - 1] if head + size <= n else math.inf
            start = max(server_free, min(full_at, times[head] + timeout_s), times[head])
            idle_at = max(max(free), times[head])  # work-conserving: nothing in flight
            if idle_at < start:
                start = idle_at
            if start >= until_s:
                break
            ready = bisect.bisect_right(times, start, head) - head
            count = min(backlog_take(plan, ready, (start - times[head]) * 1000.0), ready)
            end = start + a_s + c_s * count
            heapq.heapreplace(free, end)
            starts.append(start)
            sizes.append(count)
            ends.append(end)
            head += count
        return head, np.asarray(starts), np.asarray(sizes, dtype=np.int64), np.asarray(ends)

    def _singles(
        self,
        times: list[float],
        head: int,
        until_s: float,
        free: list[float],
        starts: list[float],
        ends: list[float],
    ) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        """Requests `head:` one per batch, with `free` holding the ends of the last `servers`
        requests: request k starts at max(arrival_k, end_{k - servers}). Per residue class
        r = k mod servers that is end_i = s + max(x_i, end_{i-1}) from end_{-1} = p, whose
        closed form is end_i = (i + 1) s + max(p, max_{j <= i} (x_j - j s))."""
        service = (self.a_ms + self.c_ms) / 1000.0
        servers = len(free)
        previous = sorted(free)
        rest = np.asarray(times[head:])
        done = np.empty(rest.size)
        for r in range(min(servers, rest.size)):
            x = rest[r::servers]
            steps = np.arange(x.size) * service
            done[r::servers] = (
                steps + service + np.maximum(np.maximum.accumulate(x - steps), previous[r])
            )
        begin = done - service
        count = int(np.searchsorted(begin, until_s, side="left"))
        begin, done = begin[:count], done[:count]
        free[:] = sorted([*previous, *done[-servers:].tolist()])[-servers:]
        heapq.heapify(free)
        all_starts = np.concatenate([np.asarray(starts), begin])
        all_ends = np.concatenate([np.asarray(ends), done])
        sizes = np.ones(all_starts.size, dtype=np.int64)
        return head + count, all_starts, sizes, all_ends

    def _finish(
        self, times: list[float], served: tuple[int, np.ndarray, np.ndarray, np.ndarray]
    ) -> ServedBatch:
        head, _starts, sizes, ends = served
        self.waiting = times[head:]
        return ServedBatch(np.asarray(times[:head]), np.repeat(ends, sizes))

    # -- the request loop ----------------------------------------------------------------------

    def _requests(
        self,
        arrivals: list[float],
        plan: BatchPlan,
        until_s: float,
        spill_position: float,
        gate: SpillGate,
        deadline_s: float,
        shed: ShedSink | None,
    ) -> ServedBatch:
        size = plan.size
        timeout_s = plan.timeout_ms / 1000.0
        a_s, c_s = self.a_ms / 1000.0, self.c_ms / 1000.0
        free = self.free_s
        waiting = self.waiting
        head = 0  # waiting[head:] is the queue
        out_arrival: list[float] = []
        out_done: list[float] = []

        def advance(limit_s: float) -> None:
            nonlocal head
            while head < len(waiting):
                server_free = free[0]
                first = waiting[head]
                full_at = waiting[head + size - 1] if head + size <= len(waiting) else math.inf
                start = max(server_free, min(full_at, first + timeout_s), first)
                idle_at = max(max(free), first)  # work-conserving: nothing in flight
                if idle_at < start:
                    start = idle_at
                if start > limit_s:
                    return
                if shed is not None and first + deadline_s < start:
                    late_end = head
                    while late_end < len(waiting) and waiting[late_end] + deadline_s < start:
                        late_end += 1
                    shed(waiting[head:late_end], start)
                    head = late_end
                    continue
                ready = bisect.bisect_right(waiting, start, head) - head
                count = min(backlog_take(plan, ready, (start - first) * 1000.0), ready)
                end = start + a_s + c_s * count
                heapq.heapreplace(free, end)
                out_arrival.extend(waiting[head : head + count])
                out_done.extend([end] * count)
                head += count

        for t in arrivals:
            advance(t)
            position = len(waiting) - head
            if position > spill_position and gate(t, t, position):
                continue
            waiting.append(t)
        advance(until_s - 1e-12 if math.isfinite(until_s) else math.inf)
        self.waiting = waiting[head:]
        return ServedBatch(np.asarray(out_arrival), np.asarray(out_done))
