"""The fleet's view of one model's route targets: a `Link` per running instance that serves it
(its batcher, its profile, its routing weight) and the model's `ModelRoutes` (router, links,
the requests waiting for a first instance, the cached metadata of an instance and of the
artifact).

The rules these apply are the data plane's, on floor 2 (`provisioner.policy.dataplane`): the
batch plan a link's batcher runs (`link_plan`), the weights (`reweigh`) and the queue the spill
rule sees (`Link.queue`), the same functions the simulator calls.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from statistics import fmean
from typing import TYPE_CHECKING, Any

from frontend.batcher import InstanceBatcher, QueuedRequest
from mark.core.config import BatchingConfig
from mark.core.protocol import TensorMeta
from mark.core.types import Instance, InstanceState, Model, Profile
from provisioner.policy.batching import BatchPlan
from provisioner.policy.capacity import CapacityCache
from provisioner.policy.dataplane import batch_plan, routing_weight, service_rate_rps
from provisioner.policy.routing import SmoothWeightedRoundRobin
from provisioner.policy.spill import QueueView

if TYPE_CHECKING:
    from frontend.model_metadata import ArtifactMetadata
    from frontend.residency import ModelLoad

__all__ = ["Link", "ModelRoutes", "reachable", "serving", "link_plan", "reweigh"]


@dataclass(eq=False, slots=True)
class Link:
    """One instance as one model's route target. Its batcher is made when first asked for
    (`batcher`): most links of a fleet of many models never see a request."""

    instance: Instance
    new_batcher: Callable[[], InstanceBatcher]
    profile: Profile | None
    made: InstanceBatcher | None = None  # the batcher, once made
    weight: float = 1.0
    ejected: bool = False
    closed: bool = False
    # its health check has passed once: a new instance is not routed to before (its worker may
    # still be starting), and a failure before is no ejection (`Fleet._admit`)
    proven: bool = False
    # the model is in memory there (frontend/residency.py), and not being drained off it (the
    # control loop's placement): only resident links are routed to
    resident: bool = True
    # routed among the resident links: the placement put the model here, or none of the
    # instances it put it on holds it yet (`provisioner.policy.placement_steps.route_targets`)
    preferred: bool = True
    # may be asked to load the model, as of the last `Fleet._apply_residency`
    loadable: bool = False
    # when this front end's load of the model there completed (or its idle unload was last
    # declined): a model it loaded is unloaded once idle (frontend/residency.py); None: not ours
    loaded_s: float | None = None
    checked_s: float = -math.inf  # when its health was last checked after a refusal

    @property
    def batcher(self) -> InstanceBatcher:
        made = self.made
        if made is None:
            made = self.made = self.new_batcher()
        return made

    def take_all(self) -> list[QueuedRequest]:
        """What its batcher has not sent yet (`InstanceBatcher.take_all`), none before it is
        made."""
        return [] if self.made is None else self.made.take_all()

    @property
    def id(self) -> str:
        return self.instance.id

    @property
    def endpoint(self) -> str:
        assert self.instance.endpoint is not None
        return self.instance.endpoint

    @property
    def up(self) -> bool:
        """Answering its health checks and not gone: it may serve or load any of its models."""
        return self.proven and not self.ejected and not self.closed

    @property
    def routable(self) -> bool:
        """In the router: proven, holding the model where it is routed, not ejected, not gone."""
        return self.up and self.resident and self.preferred

    def queue(self, running_instances: int, *, ahead: int = 0, draining: bool = False) -> QueueView:
        """This instance's backlog for the spill rule: the requests in flight plus `ahead`, and
        its throughput at the batcher's current plan (0 without a profile: no deadline
        estimate, nothing spills for the deadline until the request expires)."""
        plan = self.batcher.plan()
        profile = self.profile
        rate_rps = service_rate_rps(profile.parallelism, plan) if profile is not None else 0.0
        return QueueView(
            ahead=self.batcher.inflight_requests + ahead,
            service_rate_rps=rate_rps,
            batch_service_ms=plan.service_ms,
            running_instances=running_instances,
            draining=draining,
        )


@dataclass(eq=False, slots=True)
class ModelRoutes:
    """One served model in the fleet: its router over its resident links, the requests
    waiting for an instance to join (or for room on one: `room_retry` asks for the load again
    when the first protection that kept it out lapses), the load in flight for it (when it is
    resident nowhere) with the requests it holds, its metadata as an instance reported it, and
    as its artifact declares it (`artifact`, read when no instance reports it:
    frontend/model_metadata.py)."""

    model: Model
    router: SmoothWeightedRoundRobin = field(default_factory=SmoothWeightedRoundRobin)
    links: dict[str, Link] = field(default_factory=dict)
    waiting: deque[QueuedRequest] = field(default_factory=deque)
    room_retry: asyncio.TimerHandle | None = None
    loading: ModelLoad | None = None
    metadata: dict[str, Any] | None = None
    inputs: tuple[TensorMeta, ...] = ()
    artifact: ArtifactMetadata | None = None
    metadata_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def backend_name(self) -> str:
        return self.model.backend.backend_model_name or self.model.name

    def fastest_s(self) -> float:
        """The least time any routable instance needs for one request (0 without profiles)."""
        times = [
            link.profile.service_ms(1) / 1000.0
            for link in self.links.values()
            if link.profile is not None and not link.ejected
        ]
        return min(times, default=0.0)

    def held(self) -> int:
        """Requests held for this model's load."""
        return len(self.loading.held) if self.loading is not None else 0


def reachable(instance: Instance) -> bool:
    """Whether `instance` takes requests: running, with an endpoint."""
    return instance.state == InstanceState.RUNNING and instance.endpoint is not None


def serving(instances: Iterable[Instance]) -> dict[str, dict[str, Instance]]:
    """Each model's route targets among `instances` (by id): the reachable ones that list it.
    One pass over every instance's models, so a sync costs the listing's size, not the models
    times the instances times their lists."""
    out: dict[str, dict[str, Instance]] = {}
    for instance in instances:
        if reachable(instance):
            for model in instance.models:
                out.setdefault(model, {})[instance.id] = instance
    return out


def link_plan(
    routes: ModelRoutes, link: Link, config: BatchingConfig, rate_rps: float
) -> BatchPlan:
    """What a link's batcher plans at `rate_rps` (its `plan_for`): `batch_plan` for the model
    and the link's profile as they are now (both change when the models are replaced), with
    the config's budget."""
    model = routes.model
    return batch_plan(
        link.profile, model.slo, rate_rps, model.max_batch, config.slo_budget_fraction,
        config.enabled,
    )  # fmt: skip


def reweigh(routes: ModelRoutes, cache: CapacityCache) -> None:
    """Weights = `routing_weight` (capacity at the SLO); links without a profile get the mean
    of the others (1.0 when none has one). Ejected links and links not holding the model keep
    their weight for their return."""
    model = routes.model
    known = {
        link.id: routing_weight(link.profile, model.slo, model.max_batch, cache)
        for link in routes.links.values()
        if link.profile is not None
    }
    default = fmean(known.values()) if known else 1.0
    for link in routes.links.values():
        link.weight = known.get(link.id, default)
        if link.routable:
            routes.router.set(link.id, link.weight)
