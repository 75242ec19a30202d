"""`mark plan`: what the planner would do now, and why (a what-if for operators).

Builds a fleet snapshot from the catalog (models, instance types, offerings in the configured
zones at the catalog's spot prices), the forecast given on the command line (in buckets of
`forecast.bucket_s`, the bucket rule of `provisioner.policy.snapshot`) and the running instances
described by `--running`, with the same `build_snapshot` and `provisioner.policy.planner.plan`
the control loop calls, and prints its actions, deferred launches and decisions as tables.

    mark plan --model inception-v3 --forecast 20,20,40,40,40
    mark plan --models-from-catalog --forecast 5 --running c5.large:2 --budget 1.5
    mark plan --model nasnet --forecast nasnet=10,30 --running nasnet@c5.xlarge/spot:1
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping, Sequence
from typing import Any

from mark.core.errors import InvalidValue
from mark.core.types import Forecast, Instance, InstanceState, Market, Offering, require_finite

__all__ = ["register", "parse_forecasts", "parse_running"]

# A --running instance has been up this long: past its billing minimum and launch overhead.
_RUNNING_AGE_S = 600.0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "plan", help="print what the planner would launch, drain and terminate now, and why"
    )
    p.add_argument("--config", help="TOML config file (planner, cloud zones, forecast bucket)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--model", action="append", metavar="NAME", help="a catalog model (repeatable)"
    )
    which.add_argument(
        "--models-from-catalog", action="store_true", help="every model in the catalog"
    )
    p.add_argument(
        "--forecast",
        action="append",
        required=True,
        metavar="[MODEL=]RPS[,RPS...]",
        help="upper-quantile rate per forecast bucket from now (the last value holds); without "
        "MODEL= it applies to every model",
    )
    p.add_argument(
        "--running",
        action="append",
        default=[],
        metavar="[MODEL@]TYPE[/spot]:N",
        help="N instances of TYPE already running (for MODEL, or for every model)",
    )
    p.add_argument("--now", type=float, help="epoch seconds to plan at (default: now)")
    p.add_argument("--budget", type=float, help="override planner.budget_per_hour (USD/h)")
    p.set_defaults(func=run)


def _split_model(spec: str, sep: str) -> tuple[str | None, str]:
    if sep in spec:
        name, _, rest = spec.partition(sep)
        return name.strip(), rest.strip()
    return None, spec.strip()


def parse_forecasts(specs: Sequence[str], models: Sequence[str]) -> dict[str, tuple[float, ...]]:
    """`RPS,RPS` for every model, `MODEL=RPS,RPS` for one; later entries win."""
    out: dict[str, tuple[float, ...]] = {}
    for spec in specs:
        name, values = _split_model(spec, "=")
        try:
            rates = tuple(
                require_finite("--forecast", float(v), minimum=0.0) for v in values.split(",")
            )
        except ValueError as exc:
            raise InvalidValue("--forecast", f"{spec!r}: rates must be numbers >= 0") from exc
        if name is not None and name not in models:
            raise InvalidValue("--forecast", f"{name!r} is not one of the planned models")
        for target in [name] if name is not None else models:
            out[target] = rates
    missing = [m for m in models if m not in out]
    if missing:
        raise InvalidValue("--forecast", f"no forecast for {', '.join(missing)}")
    return out


def parse_running(
    specs: Sequence[str], models: Sequence[str]
) -> list[tuple[str, str, Market, int]]:
    """(model, type, market, count) from `[MODEL@]TYPE[/spot]:N`."""
    out: list[tuple[str, str, Market, int]] = []
    for spec in specs:
        name, rest = _split_model(spec, "@")
        kind, sep, count = rest.rpartition(":")
        if not sep or not count.isdigit():
            raise InvalidValue("--running", f"{spec!r}: expected [MODEL@]TYPE[/spot]:N")
        type_name, _, market = kind.partition("/")
        if market not in ("", "spot", "on-demand"):
            raise InvalidValue("--running", f"{spec!r}: market must be spot or on-demand")
        if name is not None and name not in models:
            raise InvalidValue("--running", f"{name!r} is not one of the planned models")
        for target in [name] if name is not None else models:
            out.append((target, type_name, Market(market or "on-demand"), int(count)))
    return out


def _running_instances(
    wanted: Sequence[tuple[str, str, Market, int]],
    offerings: Sequence[Offering],
    now_s: float,
) -> list[Instance]:
    pools: dict[tuple[str, Market], list[Offering]] = {}
    for o in offerings:
        pools.setdefault((o.instance_type, o.market), []).append(o)
    out: list[Instance] = []
    for model, type_name, market, count in wanted:
        choices = pools.get((type_name, market))
        if not choices:
            raise InvalidValue("--running", f"no {market.value} offering of {type_name!r}")
        for n in range(count):
            out.append(
                Instance(
                    id=f"what-if-{len(out) + 1}",
                    offering=choices[n % len(choices)],
                    models=(model,),
                    state=InstanceState.RUNNING,
                    launched_at_s=now_s - _RUNNING_AGE_S,
                    running_at_s=now_s - _RUNNING_AGE_S,
                )
            )
    return out


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from mark.core.catalog import load_catalog
    from mark.core.config import load_config
    from provisioner.policy.offerings import Offerings
    from provisioner.policy.planner import plan
    from provisioner.policy.snapshot import build_snapshot

    overrides: dict[str, Any] = {}
    if args.budget is not None:
        overrides["budget_per_hour"] = args.budget
    config = load_config(args.config, planner=overrides) if overrides else load_config(args.config)
    catalog = load_catalog()
    names = sorted(catalog.models) if args.models_from_catalog else list(dict.fromkeys(args.model))
    models = {name: catalog.model(name).to_model() for name in names}
    now_s = require_finite("--now", args.now) if args.now is not None else time.time()
    rates = parse_forecasts(args.forecast, names)
    bucket_s = config.forecast.bucket_s
    forecasts = {
        name: Forecast(start_s=now_s, bucket_s=bucket_s, mean_rps=r, upper_rps=r)
        for name, r in rates.items()
    }
    offerings = catalog.offerings(config.cloud.zones, spot=config.planner.spot)
    instances = _running_instances(parse_running(args.running, names), offerings, now_s)
    snapshot = build_snapshot(
        now_s,
        [models[n] for n in names],
        forecasts,
        instances=instances,
        offerings=offerings,
        instance_types=catalog.instance_types,
        tick_s=config.control.tick_s,
        batching=config.batching.enabled,
    )
    result = plan(snapshot, config.planner)
    prices = Offerings.of(offerings).prices()
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # piped: wide enough that reasons stay readable
    _print(console, result, instances, prices, config.planner.horizon_s)
    return 0


def _print(
    console: Any,
    result: Any,
    instances: Sequence[Instance],
    prices: Mapping[str, float],
    horizon_s: float,
) -> None:
    from rich.table import Table

    from provisioner.policy.actions import Drain, Launch
    from provisioner.policy.billing import price_now

    spend = sum(price_now(i, prices) for i in instances)
    added = sum(a.offering.price_per_hour for a in result.actions if isinstance(a, Launch))
    released = {a.instance_id for a in result.actions if isinstance(a, Drain)}
    freed = sum(price_now(i, prices) for i in instances if i.id in released)
    table = Table(title="Planned actions", show_lines=True)
    for column in ("action", "model", "what", "$/h", "cost over horizon"):
        table.add_column(column, overflow="fold", max_width=32)
    table.add_column("why", overflow="fold", ratio=1)
    for decision in result.decisions:
        what = decision.offering_key or ""
        if decision.instance_id:
            what = f"{decision.instance_id} ({what})"
        price = prices.get(decision.offering_key or "")
        table.add_row(
            decision.action.value,
            decision.model or "",
            what,
            "" if price is None else f"{price:.4f}",
            f"${decision.expected_cost_usd:.4f}" if decision.expected_cost_usd else "",
            decision.reason,
        )
    for launch in result.deferred:
        table.add_row(
            "deferred",
            launch.model,
            launch.offering.key,
            f"{launch.offering.price_per_hour:.4f}",
            f"${launch.expected_cost_usd:.4f}",
            launch.reason,
        )
    if not result.decisions and not result.deferred:
        console.print("Nothing to do: the running instances cover the forecast.")
    else:
        console.print(table)
    console.print(
        f"spend now ${spend:.4f}/h; after this plan ${spend + added - freed:.4f}/h "
        f"(+${added:.4f} launched, -${freed:.4f} draining) over a {horizon_s:.0f} s horizon"
    )
