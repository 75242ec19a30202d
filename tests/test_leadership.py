"""The control loop's lease, fenced writes and the front ends' shared counts
(mark/adapters/db/leadership.py), on SQLite and on PostgreSQL, with two Database handles
standing for two `mark serve` processes on one database."""

from __future__ import annotations

import asyncio

import pytest

from mark.adapters.db import Database, Fence
from mark.core.errors import Fenced
from mark.core.types import ActionKind, Decision, Instance, InstanceState, Market, Offering

NOW = 1_700_000_000.0
TTL = 10.0
OFFERING = Offering(
    instance_type="c5.large", zone="us-east-1a", market=Market.ON_DEMAND, price_per_hour=0.085
)


def _decision(reason: str) -> Decision:
    return Decision(at_s=NOW, action=ActionKind.HOLD, reason=reason, model="m")


async def test_one_holder_at_a_time_and_a_new_term_at_each_takeover(db_url: str) -> None:
    a, b = await Database.open(db_url), await Database.open(db_url)
    try:
        first = await a.acquire_lease("host-a", NOW, TTL)
        assert first is not None and first.term == 1
        assert await b.acquire_lease("host-b", NOW + 1, TTL) is None  # a holds it
        renewed = await a.acquire_lease("host-a", NOW + 5, TTL)
        assert renewed is not None and renewed.term == 1  # renewing keeps the term
        assert renewed.expires_at_s == NOW + 5 + TTL
        # a stops renewing (killed): once the lease runs out, b takes it, in a new term.
        assert await b.acquire_lease("host-b", NOW + 5 + TTL - 0.1, TTL) is None
        taken = await b.acquire_lease("host-b", NOW + 5 + TTL + 0.1, TTL)
        assert taken is not None and taken.holder == "host-b" and taken.term == 2
        assert await a.acquire_lease("host-a", NOW + 16, TTL) is None
        await b.release_lease("host-b")
        back = await a.acquire_lease("host-a", NOW + 17, TTL)
        assert back is not None and back.term == 3
    finally:
        await a.close()
        await b.close()


async def test_racing_processes_never_both_win(db_url: str) -> None:
    handles = [await Database.open(db_url) for _ in range(4)]
    try:
        for round_ in range(5):
            at = NOW + 100.0 * round_  # every earlier lease has run out
            won = await asyncio.gather(
                *(h.acquire_lease(f"host-{i}", at, TTL) for i, h in enumerate(handles))
            )
            holders = [w.holder for w in won if w is not None]
            assert len(holders) == 1, won
            lease = await handles[0].lease()
            assert lease is not None and lease.holder == holders[0]
    finally:
        for h in handles:
            await h.close()


async def test_a_deposed_leader_s_late_writes_are_refused(db_url: str) -> None:
    a, b = await Database.open(db_url), await Database.open(db_url)
    try:
        lease_a = await a.acquire_lease("host-a", NOW, TTL)
        assert lease_a is not None
        fence_a = Fence("host-a", lease_a.term)
        await a.add_decisions([_decision("planned by a")], fence=fence_a)
        lease_b = await b.acquire_lease("host-b", NOW + TTL + 1, TTL)
        assert lease_b is not None
        # a wakes from a pause and applies its old plan: nothing of it is recorded.
        inst = Instance(
            id="i-late", offering=OFFERING, models=("m",), state=InstanceState.PENDING,
            launched_at_s=NOW,
        )  # fmt: skip
        with pytest.raises(Fenced, match="no longer the leader"):
            await a.add_decisions([_decision("late")], fence=fence_a)
        with pytest.raises(Fenced):
            await a.save_instance(inst, fence=fence_a)
        assert await a.list_instances() == []
        await b.add_decisions([_decision("planned by b")], fence=Fence("host-b", lease_b.term))
        decisions, _ = await b.list_decisions()
        assert [d.reason for d in decisions] == ["planned by b", "planned by a"]
    finally:
        await a.close()
        await b.close()


async def test_counts_of_every_front_end_add_up(db_url: str) -> None:
    a, b = await Database.open(db_url), await Database.open(db_url)
    try:
        await a.add_observed("host-a", NOW, {"m": 30, "n": 0})
        await b.add_observed("host-b", NOW, {"m": 12, "n": 5})
        await a.add_observed("host-a", NOW, {"m": 10})  # the same bucket, later: adds
        await a.add_observed("host-a", NOW + 60, {"m": 7})
        assert await b.observed_totals() == {"m": 59.0, "n": 5.0}
        assert await b.observed_by_bucket(NOW) == {
            "m": {NOW: 52.0, NOW + 60: 7.0},
            "n": {NOW: 5.0},
        }
        assert await a.forget_observed(NOW + 60) == 3
        assert await a.observed_by_bucket(0.0) == {"m": {NOW + 60: 7.0}}
    finally:
        await a.close()
        await b.close()
