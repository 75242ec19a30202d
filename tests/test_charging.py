"""The ledger's charges for a whole fleet (mark/apps/control/charging.py), on SQLite and on
PostgreSQL: a charge is the same few statements for one instance as for fifty, and the busy
rows it shares charges by are dropped once no charge needs them, so over many periods of
launches and terminations the table holds the live fleet's rows while the split stays right."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event, func, select

from mark.adapters.db import Database
from mark.adapters.db.tables import ObservedBusyRow
from mark.apps.control import charging
from mark.core.catalog import load_catalog
from mark.core.types import Instance, InstanceState, Market, Offering

NOW = 1_700_000_000.0
TYPES = load_catalog().instance_types
OFFERING = Offering(
    instance_type="c5.large", zone="us-east-1a", market=Market.ON_DEMAND, price_per_hour=0.085
)
PRICES = {OFFERING.key: OFFERING.price_per_hour}
MODELS = ("a", "b")


def running(instance_id: str, at_s: float) -> Instance:
    return Instance(
        id=instance_id,
        offering=OFFERING,
        models=MODELS,
        state=InstanceState.RUNNING,
        launched_at_s=at_s,
        running_at_s=at_s,
    )


@contextmanager
def statements(db: Database) -> Iterator[list[str]]:
    """The SQL statements sent to the database inside the block (one per cursor execute: an
    executemany is one)."""
    sent: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        sent.append(statement)

    event.listen(db.engine.sync_engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", record)


async def busy_rows(db: Database) -> int:
    async with db.session() as s:
        return int(
            (await s.execute(select(func.count()).select_from(ObservedBusyRow))).scalar_one()
        )


async def test_a_charge_is_the_same_statements_for_one_instance_as_for_fifty(db_url: str) -> None:
    db = await Database.open(db_url)
    try:
        fleets = {n: [running(f"i-{n}-{k}", NOW) for k in range(n)] for n in (1, 50)}
        counts: dict[int, list[int]] = {}
        for n, fleet in fleets.items():
            for inst in fleet:
                await db.save_instance(inst)
            await db.add_busy("h1", {(i.id, m): 10.0 for i in fleet for m in MODELS})
            counts[n] = []
            for period in (1, 2):  # a first charge (no line yet), then one adding to its line
                with statements(db) as sent:
                    await charging.charge(db, fleet, TYPES, PRICES, NOW + 600.0 * period)
                counts[n].append(len(sent))
        # two reads (ledger lines, busy seconds) and three writes, for any fleet
        assert counts[1] == counts[50] == [5, 5], counts
        lines = await db.instance_charges([i.id for i in fleets[50]])
        assert len(lines) == 50
        for line in lines.values():
            assert line.usd == pytest.approx(1200.0 * OFFERING.price_per_hour / 3600.0)
            assert line.models["a"].usd == pytest.approx(line.usd / 2)
    finally:
        await db.close()


async def test_busy_rows_stay_bounded_over_many_periods_and_the_split_stays_right(
    db_url: str,
) -> None:
    """Forty periods of 10 minutes: an instance launched each period lives three, two front
    ends share its busy time 3:1 between its two models, and each period ends with the
    charges a sync makes (terminations, then the live fleet) and the pruning after them."""
    period_s, life, periods = 600.0, 3, 40
    db = await Database.open(db_url)
    try:
        live: list[Instance] = []
        ended: list[Instance] = []
        for k in range(periods):
            now = NOW + k * period_s
            live.append(running(f"i-{k}", now))
            await db.save_instance(live[-1])
            now += period_s
            for host, share in (("h1", 2.0 / 3.0), ("h2", 1.0 / 3.0)):  # busy a 30 s, b 10 s
                await db.add_busy(
                    host, {(i.id, m): s * share for i in live for m, s in (("a", 30), ("b", 10))}
                )
            if len(live) == life:
                done = live.pop(0).transition(InstanceState.TERMINATED, now)
                await db.save_instance(done)
                await charging.charge(db, [done], TYPES, PRICES, now)
                ended.append(done)
                # a front end's last batch on it, published after its final charge
                await db.add_busy("h2", {(done.id, "a"): 5.0})
            await charging.charge(db, live, TYPES, PRICES, now)
            await charging.prune(db, now)
            assert await busy_rows(db) <= len(live) * len(MODELS) * 2, f"period {k}"

        costs = await db.costs()
        end = NOW + periods * period_s
        billed_s = sum(i.terminated_at_s - i.launched_at_s for i in ended if i.terminated_at_s)
        billed_s += sum(end - i.launched_at_s for i in live)
        assert costs.instances_usd == pytest.approx(billed_s * OFFERING.price_per_hour / 3600.0)
        assert math.fsum(costs.per_model_usd.values()) == pytest.approx(costs.instances_usd)
        assert costs.per_model_usd["a"] == pytest.approx(0.75 * costs.instances_usd)
        assert costs.per_model_usd["b"] == pytest.approx(0.25 * costs.instances_usd)
    finally:
        await db.close()


async def test_an_instance_ended_without_a_final_charge_loses_its_rows_after_the_grace(
    db_url: str,
) -> None:
    db = await Database.open(db_url)
    try:
        inst = running("i-lost", NOW)
        await db.save_instance(inst)
        await db.add_busy("h1", {(inst.id, "a"): 3.0})
        await charging.charge(db, [inst], TYPES, PRICES, NOW + 60.0)
        # recorded terminated, and the process died before its final charge
        await db.save_instance(inst.transition(InstanceState.TERMINATED, NOW + 120.0))
        assert await charging.prune(db, NOW + 120.0) == 0  # its final charge may still come
        grace = charging.FINAL_CHARGE_GRACE_S
        assert await charging.prune(db, NOW + 120.0 + grace + 1.0) == 1
        assert await busy_rows(db) == 0
    finally:
        await db.close()
