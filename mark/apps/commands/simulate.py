"""`mark simulate`: replay a trace against autoscaling policies in virtual time.

    mark simulate --trace traces/data/twitter-like-diurnal-2d.csv --model inception-v3 \\
        --policies mark,reactive,queue,skyserve,static,oracle --market mixed --out out/

Writes OUT/summary.json (DESIGN.md's shape), four PNG figures, and prints a table, then each
policy's cost against the lower bound (`mark.apps.simulator.lower_bound`: on-demand only, and
with spot unless the market is on-demand), which summary.json keeps under `meta.lower_bound`.

Many models (a trace with a `model` column and a fleet file; policies mark and static):

    mark simulate --trace zipf.csv --fleet fleet.json --policies mark,static --out out/

runs `mark.apps.simulator.many_model` (per bucket, not per request) and writes summary.json with
the many-model keys (cost_per_hour_usd, models, models_meeting_slo, cache_hit_rate, loads,
slo_attainment_by_decile) and prints a table; no figures. Route groups: the fleet file's
`group`s, else the config's `[[placement.groups]]` rules (`--config`); each policy's entry then
adds `route_groups`, the figures of each group.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "simulate",
        help="replay a trace against policies in virtual time",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--trace", required=True, help="trace CSV (timestamp_s,requests[,model])")
    p.add_argument("--model", help="catalog model name (profiles.json); not with --fleet")
    p.add_argument(
        "--fleet",
        help="many-model fleet JSON ({models: [{name, size_mb, slo_ms, percentile, profile, "
        "group}]}), with a trace that has a model column",
    )
    p.add_argument(
        "--load-mb-per-s",
        type=float,
        help="model load bandwidth for --fleet (default: many_model.LOAD_MB_PER_S, estimated)",
    )
    p.add_argument("--max-moves", type=int, help="placement loads and unloads per tick for --fleet")
    p.add_argument("--profile", help="JSON file with a custom model: {name, slo, profiles: [...]}")
    p.add_argument("--slo-ms", type=float, help="latency SLO in ms (default: the catalog's)")
    p.add_argument("--percentile", type=float, help="SLO percentile, e.g. 0.98 (default: catalog)")
    p.add_argument(
        "--policies",
        default="mark,reactive,queue,skyserve,static,oracle",
        help="comma-separated policy names (also reactive-cpu, queue-batch and the ablations "
        "mark-noforecast, mark-nobatch, mark-nospill, mark-nospot; an unknown name lists all)",
    )
    p.add_argument("--market", choices=("ondemand", "spot", "mixed"), default="mixed")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--interruption-rate",
        type=_interruption_rate,
        default=0.02,
        help=(
            "spot interruption notices per instance-hour, or 'advisor' for each type's rate from "
            "its Spot Advisor band (catalog spot_advisor.json; 7e-5 to 5.5e-4 per hour); "
            "default 0.02, a stress test about 36x the worst band"
        ),
    )
    p.add_argument(
        "--reclaim-pool-at",
        type=_reclaim_at,
        help=(
            "hours after the trace's start, or 'peak' (its busiest bucket), at which the spot "
            "pool with the most capacity gets its 2-minute notice whole"
        ),
    )
    p.add_argument("--types", help="comma-separated instance types to consider")
    p.add_argument("--predictor", help="forecaster name (default: ForecastConfig's)")
    p.add_argument(
        "--config",
        help="TOML config whose planner/forecast/spill sections apply (with --fleet: its "
        "[[placement.groups]])",
    )
    p.set_defaults(func=_run)


def _interruption_rate(text: str) -> float | str:
    from mark.apps.simulator.sim_state import ADVISOR

    if text == ADVISOR:
        return ADVISOR
    return _non_negative(text)


def _reclaim_at(text: str) -> float | str:
    """Seconds after the start for a number of hours; `peak` as it is."""
    from mark.apps.simulator.sim_state import PEAK

    if text == PEAK:
        return PEAK
    return _non_negative(text) * 3600.0


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def _model(args: argparse.Namespace) -> tuple[Any, float, int]:
    from mark.core.catalog import load_catalog
    from mark.core.errors import InvalidValue
    from mark.core.types import Model, Slo

    catalog = load_catalog()
    if args.profile:
        data = json.loads(Path(args.profile).read_text(encoding="utf-8"))
        serverless = data.pop("serverless", {})
        profiles = data.get("profiles", {})
        if isinstance(profiles, list):
            data["profiles"] = {p["instance_type"]: p for p in profiles}
        model = Model.model_validate(data)
        latency = float(serverless.get("latency_ms", 0.0))
        memory = int(serverless.get("memory_mb", 3008))
    else:
        entry = catalog.model(args.model)
        model = entry.to_model()
        latency, memory = entry.serverless_latency_ms, entry.serverless_memory_mb
    if args.slo_ms is not None or args.percentile is not None:
        slo = Slo(
            latency_ms=args.slo_ms if args.slo_ms is not None else model.slo.latency_ms,
            percentile=args.percentile if args.percentile is not None else model.slo.percentile,
        )
        model = model.model_copy(update={"slo": slo})
    if not model.profiles:
        raise InvalidValue("profile", "the model has no instance type profiles")
    return model, latency, memory


def _bound_table(data: dict[str, Any], bounds: dict[str, Any]) -> Any:
    """Each policy's cost over each bound (Mark/bound), the bounds' own line in the title."""
    from rich.table import Table

    title = "; ".join(
        f"lower bound {market} ${b.usd:.2f} ({b.method}, serverless {b.serverless_share:.1%})"
        for market, b in bounds.items()
    )
    table = Table(title=title)
    table.add_column("policy")
    table.add_column("cost $", justify="right")
    for market in bounds:
        table.add_column(f"/ bound {market}", justify="right")
    for name, row in data["policies"].items():
        ratios = [f"{row['cost_usd'] / b.usd:.2f}x" if b.usd > 0 else "-" for b in bounds.values()]
        table.add_row(name, f"{row['cost_usd']:.2f}", *ratios)
    return table


def _run(args: argparse.Namespace) -> int:
    if args.fleet:
        return _run_many(args)
    if not args.model:
        raise SystemExit("mark simulate: --model is required (or --fleet for many models)")
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from mark.apps.simulator.engine import SimSettings
    from mark.apps.simulator.lower_bound import scenario_bound
    from mark.apps.simulator.plots import write_plots
    from mark.apps.simulator.report import summary, summary_table, write_summary
    from mark.apps.simulator.runner import Scenario, build_policies, simulate
    from mark.core.catalog import load_catalog
    from mark.core.config import load_config
    from traces import read_trace

    config = load_config(args.config)
    model, latency, memory = _model(args)
    trace = read_trace(args.trace)
    if trace.models is not None:
        trace = trace.for_model(model.name) if model.name in trace.model_names else trace.total()
    forecast = config.forecast
    if args.predictor:
        forecast = forecast.model_copy(update={"predictor": args.predictor})
    settings = SimSettings(
        zones=config.cloud.zones,
        types=tuple(t for t in (args.types or "").split(",") if t),
        seed=args.seed,
        interruption_rate_per_hour=args.interruption_rate,
        interruption_notice_s=config.cloud.interruption_notice_s,
        pool_reclaim_at_s=args.reclaim_pool_at,
        batching=config.batching,
        spill=config.spill,
        serverless_keep_warm_s=config.serverless.keep_warm_s,
    )
    scenario = Scenario(
        model=model,
        trace=trace,
        catalog=load_catalog(),
        market=args.market,
        settings=settings,
        planner=config.planner,
        forecast=forecast,
        serverless_latency_ms=latency,
        serverless_memory_mb=memory,
    )
    names = [n.strip() for n in args.policies.split(",") if n.strip()]
    count = len(build_policies(scenario, [n for n in names if n != "oracle"])) + ("oracle" in names)
    console = Console()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console
    ) as bar:
        task = bar.add_task("simulating", total=trace.duration_s * count)

        def tick(name: str, seconds: float) -> None:
            bar.update(task, advance=seconds, description=f"simulating {name}")

        runs = simulate(scenario, names, progress=tick)
    bounds = {"ondemand": scenario_bound(scenario, spot=False)}
    if args.market != "ondemand":
        bounds["spot"] = scenario_bound(scenario, spot=True)
    meta = {
        "trace": str(args.trace),
        "model": model.name,
        "slo_ms": model.slo.latency_ms,
        "percentile": model.slo.percentile,
        "market": args.market,
        "seed": args.seed,
        "interruption_rate_per_hour": args.interruption_rate,
        "pool_reclaim_at_s": args.reclaim_pool_at,
        "lower_bound": {market: bound.summary() for market, bound in bounds.items()},
    }
    data = summary(runs, model.slo, meta)
    write_summary(out / "summary.json", data)
    write_plots(runs, model.slo, out)
    console.print(summary_table(data, model.slo))
    console.print(_bound_table(data, bounds))
    console.print(f"wrote {out / 'summary.json'} and plots in {out}")
    return 0


def _run_many(args: argparse.Namespace) -> int:
    """`--fleet`: the many-model engine, its summary.json and table."""
    from rich.console import Console
    from rich.table import Table

    from mark.apps.simulator.fleet_file import read_fleet
    from mark.apps.simulator.many_model import (
        ManyScenario,
        ManySettings,
        route_groups,
        simulate_many,
    )
    from mark.apps.simulator.report import write_summary
    from mark.core.catalog import load_catalog
    from mark.core.config import load_config
    from traces import read_trace

    if args.model:
        raise SystemExit("mark simulate: --model and --fleet exclude each other")
    config = load_config(args.config)
    catalog = load_catalog()
    fleet = read_fleet(args.fleet, catalog)
    trace = read_trace(args.trace)
    defaults = ManySettings()
    settings = ManySettings(
        types=tuple(t for t in (args.types or "").split(",") if t),
        zones=config.cloud.zones,
        budget_fraction=config.batching.slo_budget_fraction,
        quantile=config.forecast.quantile,
        predictor=args.predictor or defaults.predictor,
        load_mb_per_s=args.load_mb_per_s or defaults.load_mb_per_s,
        max_moves=defaults.max_moves if args.max_moves is None else args.max_moves,
        groups=config.placement.groups,
    )
    scenario = ManyScenario(fleet, trace, catalog, args.market, settings)
    names = [n.strip() for n in args.policies.split(",") if n.strip()]
    runs = simulate_many(scenario, names)
    policies = {run.name: run.summary(fleet) for run in runs}
    meta = {
        "trace": str(args.trace),
        "fleet": str(args.fleet),
        "models_in_fleet": len(fleet),
        "market": args.market,
        "load_mb_per_s": settings.load_mb_per_s,
        "max_moves": settings.max_moves,
        "replan_s": settings.replan_s,
        "predictor": settings.predictor,
        "instance_type": {run.name: run.instance_type for run in runs},
        "route_groups": {g: len(i) for g, i in route_groups(scenario).items()},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_summary(out / "summary.json", {"policies": policies, "meta": meta})
    table = Table(title=f"{len(fleet)} models, {trace.duration_s / 3600:.1f} h")
    for column in (
        "policy",
        "type",
        "$/h",
        "SLO attained",
        "models meeting SLO",
        "hit rate",
        "loads/h",
        "moves/tick max",
    ):
        table.add_column(column, justify="left" if column in ("policy", "type") else "right")
    for run in runs:
        row = policies[run.name]
        table.add_row(
            run.name,
            run.instance_type,
            f"{row['cost_per_hour_usd']:.2f}",
            f"{row['slo_attainment']:.2%}",
            f"{row['models_meeting_slo']}/{row['models']}",
            f"{row['cache_hit_rate']:.2%}",
            f"{row['loads_per_hour']:.1f}",
            str(row["moves_per_tick_max"]),
        )
    console = Console()
    console.print(table)
    console.print(f"wrote {out / 'summary.json'}")
    return 0
