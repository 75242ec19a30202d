"""The cost ledger's instance charges, made for a whole fleet at once (README, "Admin API":
`GET /admin/v1/costs` sums what is written here).

Each sync charges every live instance for the time since its last ledger line at the price in
force (`billing.price_now`: a spot instance pays its pool's current price, as EC2 bills spot at
the market price of each period rather than at the launch price), with the type's rounding on
the running total (`billing.period_charge_usd`), and shares that period's dollars among the
models the instance served by their busy time in the period (`billing.split_charge`; the busy
seconds are the front ends' `mark_instance_busy_seconds_total`, summed over hosts in the
database). An instance that ends is charged once more, up to its end. The current prices are
the offerings the last tick read, so a price change reaches the ledger from the first sync
after the next tick: at most one tick's time is charged at the old price.

The database work is per charge, not per instance: one read of the ledger lines, one of the
busy seconds and three statements to write, so that a sync over thousands of instances is not
thousands of queries (tests/test_charging.py counts them). Busy rows no charge will read again
are dropped on the same cadence (`prune`), so the table holds the live fleet's, not history.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from mark.adapters.db import Database, InstanceCharge, LedgerLine, ModelCharge
from mark.core.types import Instance, InstanceType
from provisioner.policy import billing

__all__ = ["FINAL_CHARGE_GRACE_S", "charge", "prune"]

# A terminated instance is charged right after it is recorded terminated; one recorded
# terminated this long ago with no final line never will be (nothing charges it later), so its
# busy rows go too. An hour, as long as a sync keeps reconciling terminated records.
FINAL_CHARGE_GRACE_S = 3600.0


async def charge(
    db: Database,
    instances: Sequence[Instance],
    instance_types: Mapping[str, InstanceType],
    prices: Mapping[str, float],
    now_s: float,
) -> None:
    """Add to each instance's ledger line the period since it was last written, at the price
    in force (`prices`: the current price per offering key), shared among its models. An
    instance of a type the cloud does not list is skipped: there is no rule to bill it by."""
    billable = [i for i in instances if i.offering.instance_type in instance_types]
    if not billable:
        return
    ids = [i.id for i in billable]
    lines = await db.instance_charges(ids)
    busy = await db.busy_by_instance(ids)
    await db.set_instance_charges(
        [
            _next_line(
                inst,
                instance_types[inst.offering.instance_type],
                lines.get(inst.id, InstanceCharge(0.0, 0.0)),
                busy.get(inst.id, {}),
                billing.price_now(inst, prices),
                now_s,
            )
            for inst in billable
        ],
        at_s=now_s,
    )


def _next_line(
    inst: Instance,
    itype: InstanceType,
    last: InstanceCharge,
    busy_s: Mapping[str, float],
    price_per_hour: float,
    now_s: float,
) -> LedgerLine:
    """The instance's line once the period since `last` is added: its billed time up to now
    (or its end) at `price_per_hour`, shared by the busy time past what `last` shared (each
    part keeps the busy seconds shared so far, so the next period shares only what is new)."""
    end = inst.terminated_at_s if inst.terminated_at_s is not None else now_s
    seconds = max(end - billing.billed_from_s(inst), 0.0)
    usd = billing.period_charge_usd(itype, last.seconds, seconds, price_per_hour)
    before = {m: c.busy_s for m, c in last.models.items()}
    fresh = {m: max(s - before.get(m, 0.0), 0.0) for m, s in busy_s.items()}
    # a period with no busy time goes to the models it holds for its placement, if any
    split = billing.split_charge(usd, fresh, inst.placed_models or inst.models)
    parts = {
        m: ModelCharge(
            last.models.get(m, ModelCharge(0.0)).usd + split.get(m, 0.0),
            max(busy_s.get(m, 0.0), before.get(m, 0.0)),
        )
        for m in set(last.models) | set(split) | set(busy_s)
    }
    return LedgerLine(
        instance_id=inst.id,
        model=inst.models[0] if inst.models else "",
        instance_type=itype.name,
        market=inst.offering.market.value,
        charge=InstanceCharge(max(seconds, last.seconds), last.usd + usd, parts),
    )


async def prune(db: Database, now_s: float) -> int:
    """Drop the busy rows no charge will read again (`Database.forget_busy`): those of
    instances whose final line is written, or that ended `FINAL_CHARGE_GRACE_S` ago."""
    return await db.forget_busy(now_s - FINAL_CHARGE_GRACE_S)
