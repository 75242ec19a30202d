"""Which models each instance holds in memory, learnt from the instances (issue 19, "Routing
by residency"), and the loads the front end asks them for.

A many-model `mark worker` holds only some of the models it may serve (its memory budget,
mark/apps/worker/cache.py). The front end reads each running instance's KServe v2 repository
index (`POST /v2/repository/index`, Triton's and MLServer's shape) on the fleet's sync cadence,
off the request path and within a timeout, and keeps the models READY there. An instance that
does not implement the repository API (404: a single-model worker of another server, TF
Serving) holds exactly the models it was launched with (`Instance.models`), as does one not
read yet: the fleet's listing is the best guess until the instance says otherwise. The calls
are mark/adapters/repository.py's, which the control loop's placement uses too.

Where the control loop places models (`Instance.placed_models`, `Instance.draining_models`:
mark/apps/control/placement_applier.py), a model goes to the instances holding it where it is
placed, else to every instance holding it (`provisioner.policy.placement_steps.route_targets`),
and never to, nor loaded on, an instance it is being drained from while it is marked there.

A model resident nowhere is loaded by asking the instance that can load it soonest
(`POST /v2/repository/models/{m}/load`, unpinned: mark/core/protocol/repository.py): one load per
model at a time (later requests join it: it is the soonest), whose wall time is remembered as
that (instance, model)'s expected load time (until one is measured: `batching.default_load_s`).
The requests waiting for it are held on the load (`ModelLoad.held`), bounded per model by
`batching.max_held_per_model`.

An (instance, model) whose load failed is not asked to load it again for a back-off,
`batching.load_backoff_base_s` doubled per failure in a row up to `batching.load_backoff_max_s`
(`Backoff`): a model whose artifact is corrupt is tried once per back-off, not once per request.
An instance that refused the load for want of room beside the models it protects (`mark worker`'s
`Mark-Refused: no-room`) is not asked again before its Retry-After, when the first protection
there lapses (`Residency.no_room`); that is no failure, and the requests wait for it.
An instance that answers an inference call saying it does not have the model (the index was up
to one sync old) is marked not holding it (`refused`) until its next index read says otherwise.

Scale to zero per model (issue 19, item 4) of the loads the front end makes itself: the
control loop's placement unloads what it placed (mark/apps/control/placement_applier.py), but a
model the front end loaded for its requests (on a fleet the placement does not run, on a
third-party server without eviction of its own such as MLServer) would stay. One that this front
end routed nothing to there for `batching.unload_idle_s` is unloaded from it
(`POST /v2/repository/models/{m}/unload`). Only the front end's own loads (`Link.loaded_s`):
an instance's launch models and the placement's pins are not its to drop. The unload carries
`Mark-Unload-Idle-S` (mark/core/protocol/repository.py): a `mark worker` keeps a model another
front end still uses, or that the placement pinned since (409), which a front end, seeing only
its own traffic, cannot know.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field

from frontend.batcher import QueuedRequest
from mark.adapters.repository import (
    NO_REPOSITORY_API,
    IndexRead,
    IndexUnreadable,
    LoadFailed,
    read_index,
    request_load,
)
from mark.core.types import Instance

__all__ = ["NO_REPOSITORY_API", "Backoff", "IndexRead", "IndexUnreadable", "LoadFailed",
           "ModelLoad", "Residency", "read_index", "request_load"]  # fmt: skip


@dataclass(eq=False, slots=True)
class ModelLoad:
    """One load of one model on one instance that the front end asked for, and the requests
    held until it completes."""

    instance_id: str
    started_s: float
    expected_s: float
    held: list[QueuedRequest] = field(default_factory=list)
    tried: frozenset[str] = frozenset()  # instances where this model's load failed just before
    task: asyncio.Task[None] | None = None

    def remaining_s(self, now_s: float) -> float:
        """The expected time left (0 once overdue: it may end any moment)."""
        return max(self.expected_s - (now_s - self.started_s), 0.0)


@dataclass(frozen=True, slots=True)
class Backoff:
    """An (instance, model) not asked to load the model before `until_s`: `failures` loads
    failed there in a row, the last with `reason`; or, with `no_room`, the instance refused it
    for want of room beside the models it protects until then (its Retry-After)."""

    failures: int
    until_s: float
    reason: str
    no_room: bool = False


@dataclass(slots=True)
class Residency:
    """What the front end knows of each instance's memory: the READY models from its last
    index (NO_REPOSITORY_API without one; absent: not read yet), and the measured load times.

    `generation` counts the loads the front end saw complete on an instance: an index read
    that began before one completed is stale for it and is not applied."""

    default_load_s: float
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    ready: dict[str, frozenset[str] | None] = field(default_factory=dict)
    generation: dict[str, int] = field(default_factory=dict)
    load_times_s: dict[tuple[str, str], float] = field(default_factory=dict)
    # (instance, backend name) that said they do not have the model, until their next index
    absent: set[tuple[str, str]] = field(default_factory=set)
    backoffs: dict[tuple[str, str], Backoff] = field(default_factory=dict)
    # each instance's `Instance.models` and the same as a set (`_listed`)
    listed: dict[str, tuple[tuple[str, ...], frozenset[str]]] = field(default_factory=dict)

    def holds(self, instance: Instance, model: str, backend_name: str) -> bool:
        """Whether Mark's `model` is in memory on `instance` as far as the front end knows: in
        its index under the name the instance serves it by (`backend_name`), or, without an
        index, in its `Instance.models`; not since it said otherwise (`refused`)."""
        if (instance.id, backend_name) in self.absent:
            return False
        ready = self.ready.get(instance.id, NO_REPOSITORY_API)
        if ready is NO_REPOSITORY_API:
            return model in self._listed(instance)
        return backend_name in ready

    def _listed(self, instance: Instance) -> frozenset[str]:
        """`instance.models` as a set, made once per listing: an instance of a thousand models
        was a scan of a thousand names for each of its models' routes (20 instances of 1,000:
        400,000 scans, seconds of a blocked loop, while their indexes were not read yet)."""
        found = self.listed.get(instance.id)
        if found is None or found[0] is not instance.models:
            found = self.listed[instance.id] = (instance.models, frozenset(instance.models))
        return found[1]

    def expected_load_s(self, instance_id: str, backend_name: str) -> float:
        return self.load_times_s.get((instance_id, backend_name), self.default_load_s)

    def apply(self, instance_id: str, ready: frozenset[str] | None, generation: int) -> bool:
        """Take an index read that began at `generation`; False when a load completed since
        (the read may predate it)."""
        if self.generation.get(instance_id, 0) != generation:
            return False
        self.ready[instance_id] = ready
        self.absent = {key for key in self.absent if key[0] != instance_id}
        return True

    def refused(self, instance_id: str, backend_name: str) -> None:
        """The instance answered that it does not have the model: it does not hold it until an
        index read that begins after now says it does."""
        self.generation[instance_id] = self.generation.get(instance_id, 0) + 1
        self.absent.add((instance_id, backend_name))

    def load_failed(self, instance_id: str, backend_name: str, reason: str, now_s: float) -> None:
        """A load failed there: back off, twice as long as after the previous failure in a
        row (from `backoff_base_s`, at most `backoff_max_s`)."""
        key = (instance_id, backend_name)
        previous = self.backoffs.get(key)
        failures = previous.failures + 1 if previous is not None else 1
        wait_s = min(self.backoff_base_s * 2 ** (failures - 1), self.backoff_max_s)
        self.backoffs[key] = Backoff(failures, now_s + wait_s, reason)

    def no_room(self, instance_id: str, backend_name: str, reason: str, until_s: float) -> None:
        """The instance refused the load for want of room until `until_s` (when a protection
        there lapses): not asked again before then, and no failure (the streak that doubles
        a back-off is left as it was)."""
        previous = self.backoffs.get((instance_id, backend_name))
        failures = previous.failures if previous is not None else 0
        self.backoffs[(instance_id, backend_name)] = Backoff(failures, until_s, reason, True)

    def backoff(self, instance_id: str, backend_name: str, now_s: float) -> Backoff | None:
        """The back-off in force for loading the model there, None when it may be asked."""
        found = self.backoffs.get((instance_id, backend_name))
        return found if found is not None and now_s < found.until_s else None

    def loaded(self, instance_id: str, backend_name: str, took_s: float) -> None:
        """A load the front end asked for completed in `took_s`."""
        self.generation[instance_id] = self.generation.get(instance_id, 0) + 1
        self.load_times_s[(instance_id, backend_name)] = took_s
        self.absent.discard((instance_id, backend_name))
        self.backoffs.pop((instance_id, backend_name), None)
        ready = self.ready.get(instance_id, NO_REPOSITORY_API)
        if ready is not NO_REPOSITORY_API:
            self.ready[instance_id] = ready | {backend_name}

    def unloaded(self, instance_id: str, backend_name: str) -> None:
        """The front end's idle unload completed: the model is not there any more."""
        self.refused(instance_id, backend_name)
        ready = self.ready.get(instance_id, NO_REPOSITORY_API)
        if ready is not NO_REPOSITORY_API:
            self.ready[instance_id] = ready - {backend_name}

    def forget(self, keep: Iterable[str]) -> None:
        """Drop what is known of instances no longer running."""
        kept = set(keep)
        for known in (self.ready, self.generation, self.listed):
            for instance_id in set(known) - kept:
                del known[instance_id]
        for keyed in (self.load_times_s, self.backoffs):
            for key in [k for k in keyed if k[0] not in kept]:
                del keyed[key]
        self.absent = {key for key in self.absent if key[0] in kept}
