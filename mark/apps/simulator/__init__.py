"""The trace simulator (`mark simulate`): Mark and the baselines replayed in virtual time
through the live system's batching rule, router weights, spill rule, forecasters and planner.

    from mark.apps.simulator import Scenario, simulate, summary
    runs = simulate(Scenario(model=..., trace=..., catalog=load_catalog()), ["mark", "oracle"])
"""

from mark.apps.simulator.engine import PolicyRun, SimSettings, run_policy
from mark.apps.simulator.report import policy_summary, summary, summary_table, write_summary
from mark.apps.simulator.runner import POLICY_NAMES, Scenario, build_policies, simulate

__all__ = [
    "PolicyRun",
    "SimSettings",
    "run_policy",
    "policy_summary",
    "summary",
    "summary_table",
    "write_summary",
    "POLICY_NAMES",
    "Scenario",
    "build_policies",
    "simulate",
]
