"""Two control planes on one database and one EC2 fleet (moto's server on loopback): only the
holder of the lease plans and acts, it forecasts the sum of both front ends' counts, and when it
dies the other takes over within two ticks without buying the fleet a second time."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from mark.adapters.db import Database
from mark.apps.control.loop import ControlLoop
from mark.core.types import ActionKind
from provisioner.adapters.ec2 import Ec2Cloud
from tests.test_control_loop_ec2 import Clock, _capacity, inception, loop_config, make_cloud

__all__ = ["make_cloud"]  # the EC2 providers' fixture, shared with the control loop's tests

TICK_S = 60.0


class Counter:
    """One front end's cumulative request counter on the shared clock, at a rate that may
    change (when a host dies, the load balancer sends its traffic to the other)."""

    def __init__(self, clock: Clock, rps: float) -> None:
        self.clock, self.rps = clock, rps
        self.since, self.before = clock(), 0.0

    def set_rate(self, rps: float) -> None:
        self.before, self.since, self.rps = self(), self.clock(), rps

    def __call__(self) -> float:
        return self.before + self.rps * (self.clock() - self.since)


class Counts:
    def __init__(self, counter: Counter) -> None:
        self.counter = counter

    def __call__(self) -> dict[str, float]:
        return {"inception-v3": self.counter()}


def _config() -> Any:
    config = loop_config()
    control = config.control.model_copy(update={"leader_election": True, "lease_ticks": 2.0})
    return config.model_copy(update={"control": control})


async def test_one_leader_forecasts_both_front_ends_and_a_follower_takes_over(
    make_cloud: Callable[..., Ec2Cloud], db_url: str
) -> None:
    clock = Clock(datetime.now(UTC).timestamp())
    clock.now_s -= clock.now_s % TICK_S  # ticks on bucket edges
    dbs = [await Database.open(db_url), await Database.open(db_url)]
    await dbs[0].create_model(inception())
    rates = (6.0, 9.0)  # requests per second at each front end
    counters = [Counter(clock, rps) for rps in rates]
    loops = [
        ControlLoop(
            db, make_cloud(db, clock), _config(), counts=Counts(c), clock=clock, holder=f"host-{k}"
        )
        for k, (db, c) in enumerate(zip(dbs, counters, strict=True))
    ]
    a, b = loops
    try:
        for _ in range(4):
            assert await a.tick() is not None  # a took the lease first and keeps it
            assert await b.tick() is None  # b follows: no plan, no decision, no launch
            await a.sync_and_replan()
            await b.sync_and_replan()  # a follower does not reconcile either
            clock.now_s += TICK_S
        assert a.fence is not None and a.fence.term == 1 and b.fence is None
        decisions, _ = await dbs[0].list_decisions(limit=500)
        assert decisions and {d.term for d in decisions} == {1}
        # The leader's forecast is of both front ends' requests (the "last" forecaster: the
        # newest whole bucket's rate), not of its own 6 req/s.
        launch = next(d for d in decisions if d.action == ActionKind.LAUNCH)
        assert max(launch.forecast_upper_rps) >= 0.95 * sum(rates)
        fleet = {i.id for i in await dbs[0].list_instances()}
        assert fleet

        # a's host dies: its control plane stops renewing and its traffic moves to b's front
        # end. b takes over once the lease ran out, at most two ticks later, in a new term,
        # and keeps a's fleet instead of buying another.
        counters[0].set_rate(0.0)
        counters[1].set_rate(sum(rates))
        waited = 0
        while waited < 3:
            clock.now_s += TICK_S
            waited += 1
            if await b.tick() is not None:
                break
        assert waited <= 2 and b.fence is not None and b.fence.term == 2
        await b.sync_and_replan()
        clock.now_s += TICK_S
        await b.tick()
        after = await dbs[1].list_instances()
        by_b = [d for d in (await dbs[1].list_decisions(limit=500))[0] if d.term == 2]
        launched = [d for d in by_b if d.action == ActionKind.LAUNCH]
        assert len(launched) <= 1, [d.reason for d in launched]
        # What b retires is a's finished drains and surplus, never capacity the demand needs.
        assert _capacity(after) >= sum(rates)
        # a wakes up: it cannot renew, so it plans and applies nothing.
        assert await a.tick() is None and a.fence is None
    finally:
        for db in dbs:
            await db.close()


async def test_a_leader_whose_tick_runs_long_keeps_the_lease_by_renewing_it(
    make_cloud: Callable[..., Ec2Cloud], db_url: str
) -> None:
    """A tick slowed by the cloud's API outlasts the lease's two ticks: the renewal between
    ticks (`renew`, every `control.sync_s` in `mark serve`) keeps it with its holder, so the
    other host does not take the fleet over in the middle of the slow tick; without renewals
    it would have."""
    clock = Clock(datetime.now(UTC).timestamp())
    dbs = [await Database.open(db_url), await Database.open(db_url)]
    await dbs[0].create_model(inception())
    counter = Counter(clock, 5.0)
    a, b = (
        ControlLoop(db, make_cloud(db, clock), _config(), counts=Counts(counter), clock=clock,
                    holder=f"host-{k}")
        for k, db in enumerate(dbs)
    )  # fmt: skip
    try:
        assert await a.tick() is not None
        for _ in range(6):  # a's next tick is three lease-lengths late; it renews meanwhile
            clock.now_s += TICK_S / 2
            await a.renew()
            assert await b.tick() is None
        assert a.fence is not None and a.fence.term == 1
        clock.now_s += 3 * TICK_S  # no renewal for longer than the lease: b takes it
        assert await b.tick() is not None and b.fence is not None and b.fence.term == 2
        await a.renew()  # a renews nothing it no longer holds
        assert a.fence is None
    finally:
        for db in dbs:
            await db.close()
