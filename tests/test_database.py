"""Persistence on SQLite and PostgreSQL: migrations, round trips, typed errors, the ledger."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from mark.adapters.db import Database, InstanceCharge, LedgerLine, ModelCharge
from mark.core.errors import Conflict, NotFound
from mark.core.types import (
    AcceleratorKind,
    ActionKind,
    BackendSpec,
    Decision,
    Instance,
    InstanceState,
    InstanceType,
    Market,
    Model,
    Offering,
    Profile,
    Slo,
)
from tests.conftest import _fresh_pg_schema, _pg_url_or_skip

MODEL = Model(
    name="inception-v3",
    slo=Slo(latency_ms=600, percentile=0.98),
    backend=BackendSpec(protocol="tfserving", artifact="onnx:/models/inception.onnx"),
    profiles={
        "c5.large": Profile(instance_type="c5.large", latency_ms={1: 210.0}, source="slides"),
        "p2.xlarge": Profile(
            instance_type="p2.xlarge",
            latency_ms={1: 120.0, 8: 200.0},
            max_batch=16,
            parallelism=1,
            estimated=True,
        ),
    },
    max_batch=16,
)
SPOT = Offering(
    instance_type="c5.large",
    zone="us-east-1a",
    market=Market.SPOT,
    price_per_hour=0.031,
    source="test",
)


async def test_model_crud_round_trip(db_url: str) -> None:
    db = await Database.open(db_url)
    try:
        assert await db.create_model(MODEL) == MODEL
        assert await db.get_model(MODEL.name) == MODEL
        with pytest.raises(Conflict):
            await db.create_model(MODEL)
        changed = MODEL.model_copy(
            update={
                "slo": Slo(latency_ms=700, percentile=0.99),
                "profiles": {"c5.large": MODEL.profiles["c5.large"]},
            }
        )
        await db.update_model(changed)
        assert await db.list_models() == [changed]
        await db.delete_model(MODEL.name)
        with pytest.raises(NotFound):
            await db.get_model(MODEL.name)
        with pytest.raises(NotFound):
            await db.delete_model(MODEL.name)
        with pytest.raises(NotFound):
            await db.update_model(MODEL)
    finally:
        await db.close()
    # reopening migrates nothing and loses nothing
    db = await Database.open(db_url)
    await db.close()


async def test_models_in_bulk_all_or_none(db_url: str) -> None:
    many = [
        MODEL.model_copy(update={"name": f"m-{i:04d}", "memory_mb": float(i + 1)})
        for i in range(1000)
    ]
    db = await Database.open(db_url)
    try:
        await db.create_models(many)
        assert await db.list_models() == many
        assert await db.registered_names(["m-0003", "ghost", "m-0999"]) == {"m-0003", "m-0999"}
        late = [MODEL.model_copy(update={"name": "late"}), many[7]]
        with pytest.raises(Conflict):
            await db.create_models(late)
        assert await db.registered_names(["late"]) == set()  # nothing of a refused batch
        lighter = many[0].model_copy(update={"memory_mb": None, "profiles": {}})
        await db.update_model(lighter)
        assert await db.get_model("m-0000") == lighter
    finally:
        await db.close()


async def test_listed_models_are_read_again_only_after_a_change(db_url: str) -> None:
    """list_models answers from its last read while models_version stands (the front end asks
    twice a second): the same objects then, and every create, update and delete seen at once,
    by this process and by another (a second Database on the same URL)."""
    db, other = await Database.open(db_url), await Database.open(db_url)
    try:
        await db.create_models([MODEL, MODEL.model_copy(update={"name": "b"})])
        first, again = await db.list_models(), await db.list_models()
        assert [m.name for m in first] == ["b", "inception-v3"]
        assert all(x is y for x, y in zip(first, again, strict=True))
        await other.update_model(MODEL.model_copy(update={"max_batch": 4}))
        assert [m.max_batch for m in await db.list_models()] == [16, 4]
        await other.delete_model("b")
        assert [m.name for m in await db.list_models()] == ["inception-v3"]
        await other.create_model(MODEL.model_copy(update={"name": "c"}))
        assert [m.name for m in await db.list_models()] == ["c", "inception-v3"]
    finally:
        await db.close()
        await other.close()


async def test_instance_lifecycle_is_audited(db_url: str) -> None:
    db = await Database.open(db_url)
    try:
        i = Instance(
            id="i-1",
            offering=SPOT,
            models=("inception-v3",),
            launched_at_s=100.0,
            tags={"mark:owner": "test"},
        )
        await db.save_instance(i)
        r = i.transition(InstanceState.RUNNING, 150.0, endpoint="http://127.0.0.1:9001")
        await db.save_instance(r)
        await db.save_instance(r)  # no state change, no extra transition row
        d = r.transition(InstanceState.DRAINING, 200.0)
        await db.save_instance(d)
        assert await db.get_instance("i-1") == d
        assert await db.list_instances(model="inception-v3") == [d]
        assert await db.list_instances(model="other") == []
        t = d.transition(InstanceState.TERMINATED, 260.0)
        await db.save_instance(t)
        assert await db.list_instances() == []
        assert await db.list_instances(live_only=False) == [t]
        assert await db.list_transitions("i-1") == [
            (None, "pending", 100.0),
            ("pending", "running", 150.0),
            ("running", "draining", 200.0),
            ("draining", "terminated", 260.0),
        ]
        with pytest.raises(NotFound):
            await db.get_instance("i-404")
    finally:
        await db.close()


async def test_decisions_page_newest_first(db_url: str) -> None:
    db = await Database.open(db_url)
    try:
        await db.add_decisions(
            [
                Decision(
                    at_s=float(t),
                    action=ActionKind.LAUNCH,
                    reason=f"r{t}",
                    model="a" if t % 2 else "b",
                    expected_cost_usd=0.01 * t,
                    forecast_upper_rps=(1.0, 2.0),
                )
                for t in range(10)
            ]
        )
        page, total = await db.list_decisions(limit=3, offset=1)
        assert total == 10 and [d.reason for d in page] == ["r8", "r7", "r6"]
        assert page[0].forecast_upper_rps == (1.0, 2.0)
        only_a, total_a = await db.list_decisions(model="a")
        assert total_a == 5 and all(d.model == "a" for d in only_a)
    finally:
        await db.close()


def line(
    instance_id: str, model: str, instance_type: str, market: str, charge: InstanceCharge
) -> LedgerLine:
    return LedgerLine(instance_id, model, instance_type, market, charge)


async def test_cost_ledger_and_catalog_tables(db_url: str) -> None:
    db = await Database.open(db_url)
    try:
        await db.set_instance_charges(
            [line("i-1", "a", "c5.large", "spot", InstanceCharge(60, 0.5))], at_s=1
        )
        await db.set_instance_charges(
            [
                line("i-1", "a", "c5.large", "spot", InstanceCharge(120, 1.0)),  # cumulative
                line("i-2", "b", "p2.xlarge", "on-demand", InstanceCharge(60, 2.0)),
            ],
            at_s=2,
        )
        await db.charge_serverless(
            model="a", requests=10, gb_seconds=3.0, usd=0.25, at_s=3, reason="deadline"
        )
        c = await db.costs()
        assert c.instances_usd == pytest.approx(3.0)
        assert c.serverless_usd == pytest.approx(0.25)
        assert c.total_usd == pytest.approx(3.25)
        assert c.per_model_usd == pytest.approx({"a": 1.25, "b": 2.0})
        assert c.per_instance_type_usd == pytest.approx({"c5.large": 1.0, "p2.xlarge": 2.0})
        assert c.serverless_requests == 10

        # A many-model instance: its charge shared among the models it served.
        parts = {"a": ModelCharge(0.3, busy_s=30.0), "b": ModelCharge(0.1, busy_s=10.0)}
        await db.set_instance_charges(
            [line("i-3", "a", "c5.large", "on-demand", InstanceCharge(60, 0.4, parts))], at_s=3
        )
        c = await db.costs()
        assert c.per_model_usd == pytest.approx({"a": 1.55, "b": 2.1})
        assert c.per_instance_type_usd == pytest.approx({"c5.large": 1.4, "p2.xlarge": 2.0})
        lines = await db.instance_charges(["i-3", "i-1", "i-9"])
        assert set(lines) == {"i-1", "i-3"}  # none written for i-9
        assert (lines["i-3"].seconds, lines["i-3"].usd) == (60, 0.4)
        assert lines["i-3"].models == parts
        assert lines["i-1"] == InstanceCharge(120, 1.0, {"a": ModelCharge(1.0)})
        assert await db.instance_charges([]) == {}

        # Busy seconds per instance and model: added per host, summed over hosts.
        await db.add_busy("h1", {("i-3", "a"): 20.0, ("i-3", "b"): 5.0, ("i-4", "a"): 1.0})
        await db.add_busy("h2", {("i-3", "a"): 10.0, ("i-3", "b"): 0.0})
        await db.add_busy("h1", {("i-3", "b"): 5.0})
        busy = await db.busy_by_instance(["i-3", "i-4", "i-9"])
        assert busy == {"i-3": {"a": 30.0, "b": 10.0}, "i-4": {"a": 1.0}}  # whole seconds: exact

        gpu = InstanceType(
            name="p2.xlarge",
            vcpus=4,
            memory_gib=61,
            accelerator=AcceleratorKind.GPU,
            accelerator_count=1,
            on_demand_price_per_hour=0.9,
        )
        await db.sync_instance_types([gpu])
        await db.sync_instance_types([gpu])
        assert await db.list_instance_types() == [gpu]
        await db.replace_offerings([SPOT, SPOT], at_s=5)
        assert await db.list_offerings() == [SPOT]
    finally:
        await db.close()


# One `mark serve` opening the database, as each front end does when it starts.
_OPEN = """
import asyncio, sys
from mark.adapters.db import Database

async def main() -> None:
    db = await Database.open(sys.argv[1])
    await db.close()

asyncio.run(main())
"""


@pytest.mark.pg
def test_front_ends_starting_together_on_a_fresh_postgresql_database_all_open_it() -> None:
    """Two replicas of one Deployment start at once on an empty database: one migrates, the
    others wait for it (an advisory lock) and find the schema migrated, where before all but
    one failed on tables created under them."""
    url = _pg_url_or_skip()
    asyncio.run(_fresh_pg_schema(url))
    starts = [
        subprocess.Popen([sys.executable, "-c", _OPEN, url], stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    for start in starts:
        _, err = start.communicate(timeout=120)
        assert start.returncode == 0, err.decode()
