"""Smooth weighted round-robin over a model's instances (nginx's upstream algorithm,
`ngx_http_upstream_get_peer` in `ngx_http_upstream_round_robin.c`).

Each pick adds every eligible peer's weight to its running score, takes the peer with the highest
score and subtracts the total weight from it. Over any window of `sum(weights)` picks each peer is
chosen exactly in proportion to its weight, and picks are interleaved (weights 5, 1, 1 give
a a b a c a a, never a burst of five), which keeps each instance's batcher fed evenly.
MArk (paper, section 4) balances with weighted round-robin; the weights here are each instance's
capacity at the SLO (`provisioner.policy.dataplane.routing_weight`).
"""

from __future__ import annotations

__all__ = ["SmoothWeightedRoundRobin"]


class SmoothWeightedRoundRobin:
    """Peers keyed by id with positive weights; not thread-safe (one event loop owns it)."""

    def __init__(self) -> None:
        self._weights: dict[str, float] = {}
        self._current: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._weights)

    def __contains__(self, key: object) -> bool:
        return key in self._weights

    @property
    def weights(self) -> dict[str, float]:
        return dict(self._weights)

    def set(self, key: str, weight: float) -> None:
        """Add a peer or change its weight; a joining peer starts with score 0 (as in nginx)."""
        if not weight > 0:
            raise ValueError(f"weight of {key!r} must be > 0, got {weight!r}")
        self._weights[key] = weight
        self._current.setdefault(key, 0.0)

    def remove(self, key: str) -> None:
        """Forget a peer (left, drained or ejected); absent keys are ignored."""
        self._weights.pop(key, None)
        self._current.pop(key, None)

    def pick(self) -> str | None:
        """The next peer; None when there is none."""
        best: str | None = None
        total = 0.0
        for key, weight in self._weights.items():
            self._current[key] += weight
            total += weight
            if best is None or self._current[key] > self._current[best]:
                best = key
        if best is not None:
            self._current[best] -= total
        return best
