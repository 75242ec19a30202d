"""What a simulation writes: `summary.json` exactly as DESIGN.md gives it (extra keys inside a
policy allowed), and the table `mark simulate` prints."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from mark.apps.simulator.engine import PolicyRun
from mark.core.types import Slo

__all__ = ["fleet_by_market", "policy_summary", "summary", "write_summary", "summary_table"]


def _percentile(latencies_ms: np.ndarray, q: float) -> float | None:
    if not latencies_ms.size:
        return None
    value = float(np.percentile(latencies_ms, q))
    return round(value, 3) if math.isfinite(value) else None


def fleet_by_market(run: PolicyRun) -> dict[str, dict[str, dict[str, float]]]:
    """Peak and mean instances alive per window, by type then market (`{type: {market:
    {"peak", "mean"}}}`): the fleet's size and mix, which instance-hours alone do not show."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for (name, market), counts in sorted(run.market_series.items()):
        out.setdefault(name, {})[market] = {
            "peak": int(counts.max(initial=0.0)),
            "mean": round(float(counts.mean()) if counts.size else 0.0, 3),
        }
    return out


def policy_summary(run: PolicyRun, slo: Slo) -> dict[str, Any]:
    """One policy's entry: the DESIGN.md keys, then extras (failed, split of the cost, the
    fleet by type and market, the engine's counters)."""
    lat = run.latencies_ms
    attained = float(np.mean(lat <= slo.latency_ms)) if lat.size else 1.0
    return {
        "cost_usd": round(run.cost_usd, 6),
        "slo_attainment": round(attained, 6),
        "requests": int(run.requests),
        "spilled": int(run.spilled),
        "p50_ms": _percentile(lat, 50),
        "p99_ms": _percentile(lat, 99),
        "instance_hours": {k: round(v, 4) for k, v in sorted(run.instance_hours.items())},
        "failed": int(run.failed),
        "instance_cost_usd": round(run.instance_cost_usd, 6),
        "serverless_cost_usd": round(run.serverless_cost_usd, 6),
        "slo_met": attained >= slo.percentile,
        "instances_by_market": fleet_by_market(run),
        **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in run.extra.items()},
    }


def summary(runs: Sequence[PolicyRun], slo: Slo, meta: dict[str, Any]) -> dict[str, Any]:
    return {"policies": {r.name: policy_summary(r, slo) for r in runs}, "meta": meta}


def write_summary(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def summary_table(data: dict[str, Any], slo: Slo, baseline: str = "reactive") -> Table:
    policies = data["policies"]
    ref = policies.get(baseline, {}).get("cost_usd")
    table = Table(title=f"SLO: {slo.percentile:.0%} of requests within {slo.latency_ms:g} ms")
    for column in (
        "policy",
        "cost $",
        f"x {baseline}",
        "SLO attained",
        "p50 ms",
        "p99 ms",
        "spilled",
        "failed",
        "instance-hours",
    ):
        table.add_column(column, justify="left" if column == "policy" else "right")
    for name, row in policies.items():
        ratio = f"{ref / row['cost_usd']:.2f}" if ref and row["cost_usd"] > 0 else "-"
        hours = ", ".join(f"{t} {h:.1f}" for t, h in row["instance_hours"].items())
        style = "" if row["slo_met"] else "red"
        table.add_row(
            name,
            f"{row['cost_usd']:.2f}",
            ratio,
            f"{row['slo_attainment']:.2%}",
            "-" if row["p50_ms"] is None else f"{row['p50_ms']:.0f}",
            "-" if row["p99_ms"] is None else f"{row['p99_ms']:.0f}",
            str(row["spilled"]),
            str(row["failed"]),
            hours,
            style=style,
        )
    return table
