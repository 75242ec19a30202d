"""The PNG figures of a simulation, after the MArk paper's: cost over time, instances by type
and market over time, demand against capacity at the SLO, the latency CCDF of every policy, and
the SLO attained so far over time (where in the run the misses came from)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mark.apps.simulator.engine import PolicyRun  # noqa: E402
from mark.core.types import Slo  # noqa: E402

__all__ = ["PLOT_NAMES", "write_plots"]


def _hours(run: PolicyRun) -> np.ndarray:
    t = run.series["time_s"]
    return (t - t[0]) / 3600.0 if t.size else t


PLOT_NAMES = ("cost", "instances", "capacity", "latency_ccdf", "attainment")


def write_plots(runs: Sequence[PolicyRun], slo: Slo, out: Path, *, prefix: str = "") -> list[Path]:
    """Write the figures into `out` as `{prefix}{name}.png` (PLOT_NAMES); returns their
    paths."""
    paths = [out / f"{prefix}{n}.png" for n in PLOT_NAMES]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for run in runs:
        ax.plot(_hours(run), run.series["cost_usd"], label=run.name)
    ax.set(xlabel="hours", ylabel="cumulative cost (USD)", title="Cost over time")
    ax.legend()
    fig.tight_layout()
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(len(runs), 1, figsize=(8, 2.2 * len(runs)), sharex=True, squeeze=False)
    for ax, run in zip(axes[:, 0], runs, strict=True):
        keys = sorted(run.market_series)
        if keys:
            ax.stackplot(
                _hours(run),
                *[run.market_series[k] for k in keys],
                labels=[f"{name} {market}" for name, market in keys],
            )
            ax.legend(loc="upper right", fontsize=7)
        ax.set_ylabel(run.name, fontsize=8)
    axes[-1, 0].set_xlabel("hours")
    fig.suptitle("Instances by type and market")
    fig.tight_layout()
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4.5))
    if runs:
        demand = runs[0].series["demand_rps"]
        window = 6
        smooth = np.convolve(demand, np.ones(window) / window, mode="same")
        ax.plot(_hours(runs[0]), smooth, color="black", lw=1.5, label="demand (1-min mean)")
    for run in runs:
        ax.plot(_hours(run), run.series["capacity_rps"], lw=1, label=f"{run.name} capacity")
    ax.set(xlabel="hours", ylabel="requests/s", title="Demand vs capacity at the SLO")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(paths[2], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for run in runs:
        lat = np.sort(run.latencies_ms[np.isfinite(run.latencies_ms)])
        if lat.size:
            step = max(1, lat.size // 4000)
            xs = lat[::step]
            ccdf = 1.0 - np.arange(0, lat.size, step) / lat.size
            ax.semilogy(xs, ccdf, label=run.name)
    ax.axvline(slo.latency_ms, color="grey", ls="--", label="SLO")
    ax.axhline(1 - slo.percentile, color="grey", ls=":")
    ax.set(xlabel="latency (ms)", ylabel="P(latency > x)", title="Latency CCDF")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(paths[3], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for run in runs:
        answered = np.cumsum(run.series["demand_rps"]) * _window_s(run)
        missed = run.series["missed"]
        share = 1.0 - missed / np.maximum(answered, 1.0)
        ax.plot(_hours(run), 100.0 * share, lw=1, label=run.name)
    ax.axhline(100.0 * slo.percentile, color="grey", ls="--", label="SLO")
    ax.set(
        xlabel="hours",
        ylabel=f"% within {slo.latency_ms:g} ms so far",
        title="SLO attained since the start",
        ylim=(max(0.0, 100.0 * (2 * slo.percentile - 1) - 5.0), 100.5),
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(paths[4], dpi=110)
    plt.close(fig)
    return paths


def _window_s(run: PolicyRun) -> float:
    t = run.series["time_s"]
    return float(t[1] - t[0]) if t.size > 1 else 1.0
