"""The policies the simulator compares: Mark itself and the baselines, each a frozen value with
a pure `decide(ctx, state)` (see `base`)."""

from mark.apps.simulator.policies.base import Metrics, Policy, PolicyContext, PolicyDecision
from mark.apps.simulator.policies.mark_policy import MarkPolicy
from mark.apps.simulator.policies.oracle import OraclePolicy, OracleSchedule, solve_oracle
from mark.apps.simulator.policies.queue_length import QueuePolicy
from mark.apps.simulator.policies.reactive import ReactivePolicy
from mark.apps.simulator.policies.skyserve import SkyServePolicy
from mark.apps.simulator.policies.static import StaticPolicy

__all__ = [
    "Metrics",
    "Policy",
    "PolicyContext",
    "PolicyDecision",
    "MarkPolicy",
    "OraclePolicy",
    "OracleSchedule",
    "solve_oracle",
    "QueuePolicy",
    "ReactivePolicy",
    "SkyServePolicy",
    "StaticPolicy",
]
