"""docs/evaluation-many-model.md says only what its runs measured: `render_page` is a function of
the results, so each figure and each holds / does-not-hold follows the rows it is given."""

from __future__ import annotations

import copy
from typing import Any

from bench.evaluation_many_model import PageResults, claims, render_page


def _row(cost: float, attained: float = 0.99, peak: int = 3) -> dict[str, Any]:
    return {
        "cost_per_hour_usd": cost,
        "slo_attainment": attained,
        "requests": 1000,
        "models": 10,
        "models_meeting_slo": 9,
        "cache_hit_rate": 0.97,
        "loads_per_hour": 120.0,
        "moves_per_tick_max": 4,
        "peak_instances": peak,
        "cpu_s": 1.0,
        "instance_hours": {"g4dn.xlarge": 4.0},
        "instance_cost_usd": 0.8,
        "compute_floor_instance_hours": 2.0,
        "slo_attainment_by_decile": [0.99] * 10,
    }


def _results() -> PageResults:
    cortex = {
        "mark-spot": _row(0.40),
        "mark-ondemand": _row(1.2),
        "mark-spot, no moves": _row(0.5),
        "mark-spot, no cache": _row(3.0),
        "mark-spot, route groups": _row(0.42),
        "static": _row(100.0, 1.0, 200),
    }
    aws = {
        "mark-spot": _row(15.0, 0.97, 38),
        "mark-ondemand": _row(45.0, 0.97, 38),
        "static": _row(60.0, 1.0, 50),
    }
    return PageResults(
        "cmd --hours 4",
        4.0,
        0,
        1,
        2.0,
        {2.0: _row(0.4), 5.0: _row(0.9)},
        {"cortex": cortex, "aws": aws},
        12.0,
        2,
    )


def test_every_claim_holds_when_the_figures_do() -> None:
    res = _results()
    page = render_page(res)
    assert page.startswith("# Evaluation: the many-model scenarios")
    assert "    cmd --hours 4" in page
    assert ": **does not hold**" not in page
    assert "$0.400 | 0.84x" in page  # beside Cortex's published $0.474/h
    assert "Total runtime: 12 s" in page
    assert all(ok for name, rows in res.runs.items() for _, ok in claims(name, rows))


def test_a_figure_past_its_target_turns_its_claim_and_the_count() -> None:
    res = _results()
    before = render_page(res)
    worse = copy.deepcopy(res)
    worse.runs["cortex"]["mark-spot"]["cost_per_hour_usd"] = 0.60
    worse.runs["aws"]["mark-ondemand"]["peak_instances"] = 41
    after = render_page(worse)
    assert ": **does not hold**" in after and after != before
    failed = [
        text for name, rows in worse.runs.items() for text, ok in claims(name, rows) if not ok
    ]
    assert any("below $0.47/h" in t for t in failed)
    assert any("at most 40 instances" in t for t in failed)
    total = sum(len(claims(n, r)) for n, r in res.runs.items())
    assert f"Claims: {total - len(failed)} of {total} hold" in after
