"""How many serverless functions to keep warm for a model (DESIGN.md "Spill": before an
expected surge MArk warms Lambda with concurrent pings).

What the instances serving now cannot take of the next bucket's forecast (upper quantile) goes
to the pool; by Little's law that needs gap * latency sandboxes busy at once, and one more is
kept so that the first spill of a model never pays a cold start. Instances still pending or with
an interruption notice do not count as serving: the gap they leave is the surge to warm for.
"""

from __future__ import annotations

import math

__all__ = ["warm_functions"]


def warm_functions(next_upper_rps: float, serving_rps: float, serverless_latency_ms: float) -> int:
    """Sandboxes to keep warm: ceil(max(forecast - serving capacity, 0) * latency) + 1."""
    gap_rps = max(next_upper_rps - serving_rps, 0.0)
    return math.ceil(gap_rps * serverless_latency_ms / 1000.0) + 1
