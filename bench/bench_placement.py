"""Many-model placement at the AWS seed's scale (issue 16 target: 3,000 models onto up to 100
instances in under 1 s), and how many instances it uses against the simple lower bound
max(total memory / instance memory, total occupancy), measured in the same run.

    .venv/bin/python bench/bench_placement.py [--models 3000] [--rps 6230] [--zipf 1.1]

3,000 bert-base models of 800 MB with Zipf popularity and 6,230 req/s in all (the seed's peak),
packed onto inf1.xlarge-profiled instances holding 76 models each (the seed's figure per
instance after bf16 casting); then placed again from the result with a shifted popularity, which
shows the moves a tick makes when traffic drifts.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from mark.core.catalog import load_catalog
from provisioner.policy.capacity import CapacityCache
from provisioner.policy.placement import ModelNeed, Resident, occupancy, place

MODEL_MB = 800.0
PER_INSTANCE = 76


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=int, default=3000)
    parser.add_argument("--rps", type=float, default=6230.0)
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument("--max-moves", type=int, default=50)
    args = parser.parse_args()
    bert = load_catalog().model("bert-base").to_model()
    profile = bert.profiles["inf1.xlarge"]
    cache = CapacityCache()
    weights = 1.0 / np.arange(1, args.models + 1) ** args.zipf
    rates = args.rps * weights / weights.sum()

    def needs(order: np.ndarray) -> list[ModelNeed]:
        return [
            ModelNeed(f"bert-{i:04d}", float(rates[k]), MODEL_MB, profile, bert.slo, bert.max_batch)
            for i, k in enumerate(order)
        ]

    first = needs(np.arange(args.models))
    limit = PER_INSTANCE * MODEL_MB
    start = time.perf_counter()
    result = place(first, [], memory_limit_mb=limit, max_moves=0, cache=cache)
    wall = time.perf_counter() - start
    occ = sum(b.occupancy for b in result.bins)
    bound = max(math.ceil(args.models * MODEL_MB / limit), math.ceil(occ))
    print(
        f"{args.models:,} models, {args.rps:,.0f} req/s: {result.new_instances} instances "
        f"({sum(result.replicas.values()):,} replicas) in {wall * 1000:.0f} ms; lower bound "
        f"{bound} (memory {math.ceil(args.models * MODEL_MB / limit)}, occupancy {occ:.1f}): "
        f"{result.new_instances / bound:.2f}x"
    )
    print(f"occupancy of a model at 1 req/s: {occupancy(first[0], 1.0, cache):.4f} of an instance")
    residents = [Resident(f"i-{k}", frozenset(b.rates)) for k, b in enumerate(result.bins)]
    shifted = needs(np.roll(np.arange(args.models), 7))  # popularity drifts by seven ranks
    start = time.perf_counter()
    again = place(shifted, residents, memory_limit_mb=limit, max_moves=args.max_moves, cache=cache)
    wall = time.perf_counter() - start
    print(
        f"drifted popularity: {again.moves} moves (bound {args.max_moves}), "
        f"{again.new_instances} new instances, in {wall * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
