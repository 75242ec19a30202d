"""Route groups (issue 19 item 5): the `[[placement.groups]]` rules and their checks, the pure
`route_groups.group_of` (every model in exactly one group), `mark config` writing them back,
and the many-model simulator's grouped runs (each group a fleet of its own). The live loop on
real workers: tests/test_placement_local.py."""

from __future__ import annotations

import json
import tomllib
from fnmatch import fnmatchcase
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mark.apps.cli import main
from mark.apps.commands.config import render_toml
from mark.apps.simulator import many_model as mm
from mark.apps.simulator.fleet_file import FleetModel, write_fleet
from mark.core.catalog import load_catalog
from mark.core.config import DEFAULT_ROUTE_GROUP, RouteGroup, load_config
from mark.core.errors import InvalidValue
from mark.core.types import Slo
from provisioner.policy.route_groups import group_names, group_of, instance_group, share_moves
from traces import Trace, write_trace
from traces.generators import zipf_models

CATALOG = load_catalog()
CORTEX = (
    RouteGroup(name="en", patterns=("*-en", "en-*")),
    RouteGroup(name="de", patterns=("*-de",)),
)
GROUPS_TOML = """
[[placement.groups]]
name = "en"
patterns = ["*-en", "en-*"]

[[placement.groups]]
name = "de"
patterns = ["*-de"]
"""


def test_groups_from_toml_keep_their_order(tmp_path: Path) -> None:
    path = tmp_path / "mark.toml"
    path.write_text("[placement]\nmax_moves = 7\n" + GROUPS_TOML)
    config = load_config(path, environ={})
    assert config.placement.groups == CORTEX
    assert config.placement.max_moves == 7
    assert load_config(environ={}).placement.groups == ()  # none: one flat fleet


def test_groups_from_the_environment() -> None:
    env = {"MARK_PLACEMENT__GROUPS": json.dumps([{"name": "en", "patterns": ["*-en"]}])}
    assert load_config(environ=env).placement.groups == (RouteGroup(name="en", patterns=("*-en",)),)


def _tables(*bodies: str) -> str:
    return "".join(f"[[placement.groups]]\n{body}\n" for body in bodies)


@pytest.mark.parametrize(
    ("text", "field", "message"),
    [
        (_tables('name = "en"\npatterns = ["a"]') * 2, "placement", "'en' is named twice"),
        (_tables('name = "rest"\npatterns = ["a"]'), "placement", "no rule matches"),
        (_tables('name = "en"\npatterns = []'), "placement.groups.0.patterns", "at least 1"),
        (_tables('name = "en"\npatterns = [""]'), "placement.groups.0.patterns.0", "at least 1"),
        (_tables('name = "e n"\npatterns = ["a"]'), "placement.groups.0.name", "pattern"),
        (_tables('patterns = ["a"]'), "placement.groups.0.name", "required"),
        (
            _tables('name = "en"\npatterns = ["a"]\nmodels = 3'),
            "placement.groups.0.models",
            "not permitted",
        ),
        (_tables('name = "en"\npatterns = "*-en"'), "placement.groups.0.patterns", "tuple"),
    ],
)
def test_bad_groups_name_the_key(tmp_path: Path, text: str, field: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(InvalidValue) as info:
        load_config(path, environ={})
    assert info.value.field == field, info.value
    assert message in str(info.value), info.value


def test_mark_config_writes_the_groups_back(tmp_path: Path) -> None:
    path = tmp_path / "mark.toml"
    path.write_text(GROUPS_TOML)
    config = load_config(path, environ={})
    again = tmp_path / "again.toml"
    again.write_text(render_toml(config))
    assert tomllib.loads(again.read_text())["placement"]["groups"] == [
        {"name": "en", "patterns": ["*-en", "en-*"]},
        {"name": "de", "patterns": ["*-de"]},
    ]
    assert load_config(again, environ={}).placement == config.placement


def test_cortex_rule() -> None:
    assert [group_of(n, CORTEX) for n in ("opus-en", "en-fr", "opus-de", "opus-fr")] == [
        "en",
        "en",
        "de",
        DEFAULT_ROUTE_GROUP,
    ]
    assert group_of("de-en", CORTEX) == "en"  # the first rule that matches wins
    assert group_of("OPUS-EN", CORTEX) == DEFAULT_ROUTE_GROUP  # case-sensitive
    assert group_of("anything", ()) == DEFAULT_ROUTE_GROUP
    assert group_names(CORTEX) == ("en", "de", DEFAULT_ROUTE_GROUP)


_CHARS = "ab-*?"
_names = st.text("ab-", min_size=1, max_size=8)
_patterns = st.lists(st.text(_CHARS, min_size=1, max_size=5), min_size=1, max_size=3)
_rules = st.lists(
    st.tuples(st.text("xyz", min_size=1, max_size=3), _patterns),
    max_size=4,
    unique_by=lambda r: r[0],
).map(lambda rules: tuple(RouteGroup(name=n, patterns=tuple(p)) for n, p in rules))


@given(_rules, st.lists(_names, min_size=1, max_size=20))
def test_every_model_is_in_exactly_one_group(
    rules: tuple[RouteGroup, ...], names: list[str]
) -> None:
    for name in names:
        group = group_of(name, rules)
        matching = [r.name for r in rules if any(fnmatchcase(name, p) for p in r.patterns)]
        assert group in group_names(rules)
        assert group == (matching[0] if matching else DEFAULT_ROUTE_GROUP)
    by_group: dict[str, list[str]] = {}
    for name in dict.fromkeys(names):
        by_group.setdefault(group_of(name, rules), []).append(name)
    assert sorted(n for members in by_group.values() for n in members) == sorted(set(names))
    for group, members in by_group.items():  # an instance of one group is that group's
        assert instance_group(members, rules) == group


@given(st.integers(0, 500), st.lists(st.text("ab", min_size=1), unique=True, max_size=12))
def test_the_move_budget_is_split_evenly_and_whole(budget: int, groups: list[str]) -> None:
    shares = share_moves(budget, groups)
    assert list(shares) == groups
    if groups:
        assert sum(shares.values()) == budget
        assert max(shares.values()) - min(shares.values()) <= 1
        assert list(shares.values()) == sorted(shares.values(), reverse=True)  # the first more


def test_an_instance_of_models_of_several_groups_is_the_most_common_ones() -> None:
    assert instance_group(["a-de", "b-de", "a-en"], CORTEX) == "de"
    assert instance_group(["a-de", "a-en"], CORTEX) == "en"  # a tie: the first rule
    assert instance_group([], CORTEX) == DEFAULT_ROUTE_GROUP


# --- the many-model simulator --------------------------------------------------------------

SLO = Slo(latency_ms=100, percentile=0.9)
LANGS = ("en", "de", "fr")


def _fleet(n: int, group: str | None = None) -> tuple[FleetModel, ...]:
    return tuple(
        FleetModel(f"model-{i:04d}-{LANGS[i % 3]}", 800.0, SLO, "bert-base", group)
        for i in range(1, n + 1)
    )


def _trace(fleet: tuple[FleetModel, ...], hours: float = 3.0) -> Trace:
    trace = zipf_models(n_models=len(fleet), hours=hours, total_peak_rps=120.0, seed=4)
    assert trace.models is not None
    named = {f"model-{i:04d}": m.name for i, m in enumerate(fleet, start=1)}
    models = tuple(named[m] for m in trace.models)
    return Trace(trace.timestamps_s, trace.counts, trace.bucket_s, models)


def test_groups_come_from_the_fleet_file_then_the_rules() -> None:
    fleet = _fleet(6)
    trace = _trace(fleet, 0.5)
    rules = (RouteGroup(name="en", patterns=("*-en",)),)
    settings = mm.ManySettings(groups=rules)
    split = mm.route_groups(mm.ManyScenario(fleet, trace, CATALOG, settings=settings))
    assert {g: [fleet[i].name[-2:] for i in idx] for g, idx in split.items()} == {
        "en": ["en", "en"],
        "rest": ["de", "fr", "de", "fr"],
    }
    pinned = (*fleet[:5], FleetModel(fleet[5].name, 800.0, SLO, "bert-base", "mine"))
    split = mm.route_groups(mm.ManyScenario(pinned, trace, CATALOG, settings=settings))
    assert list(split) == ["en", "rest", "mine"] and split["mine"].tolist() == [5]
    flat = mm.route_groups(mm.ManyScenario(fleet, trace, CATALOG))
    assert list(flat) == ["rest"] and flat["rest"].size == 6


def test_a_grouped_run_is_each_groups_own_fleet_added_up() -> None:
    """Groups share nothing: the grouped run of the whole fleet is the flat runs of each
    group's models, added up; the flat run of the same fleet differs only in the grouping."""
    fleet = _fleet(30)
    trace = _trace(fleet)
    rules = tuple(RouteGroup(name=lang, patterns=(f"*-{lang}",)) for lang in LANGS[:2])
    grouped = mm.ManyScenario(fleet, trace, CATALOG, settings=mm.ManySettings(groups=rules))
    [run] = mm.simulate_many(grouped, ["mark"])
    summary = run.summary(fleet)
    assert set(summary["route_groups"]) == {"en", "de", "rest"}
    assert sum(g["models"] for g in summary["route_groups"].values()) == 30
    split = mm.route_groups(grouped)
    shares = share_moves(mm.ManySettings().max_moves, list(split))
    assert sum(shares.values()) == mm.ManySettings().max_moves
    assert max(run.moves) <= mm.ManySettings().max_moves  # the bound is the fleet's
    cost = 0.0
    for group, index in split.items():
        members = tuple(fleet[i] for i in index.tolist())
        names = {m.name for m in members}
        keep = np.array([m in names for m in trace.models or ()])
        kept = tuple(np.asarray(trace.models)[keep].tolist())
        alone = Trace(trace.timestamps_s[keep], trace.counts[keep], trace.bucket_s, kept)
        settings = mm.ManySettings(max_moves=shares[group])
        [part] = mm.simulate_many(
            mm.ManyScenario(members, alone, CATALOG, settings=settings), ["mark"]
        )
        assert part.cost_usd == pytest.approx(run.groups[group].cost_usd)
        np.testing.assert_allclose(run.good_by_model[index], part.good_by_model)
        cost += part.cost_usd
    assert run.cost_usd == pytest.approx(cost)
    assert summary["requests"] == int(trace.counts.sum())
    # a group needs an instance of its own: at least one per group at every bucket
    assert min(run.live_by_bucket) >= len(split)
    [flat] = mm.simulate_many(mm.ManyScenario(fleet, trace, CATALOG), ["mark"])
    assert "route_groups" not in flat.summary(fleet) and not flat.groups


def test_cli_takes_the_groups_from_the_config(tmp_path: Path) -> None:
    fleet = _fleet(12)
    write_trace(tmp_path / "t.csv", _trace(fleet, 1.0))
    write_fleet(tmp_path / "fleet.json", list(fleet))
    (tmp_path / "mark.toml").write_text(GROUPS_TOML)
    code = main(
        ["simulate", "--trace", str(tmp_path / "t.csv"), "--fleet", str(tmp_path / "fleet.json"),
         "--policies", "mark", "--market", "ondemand", "--config", str(tmp_path / "mark.toml"),
         "--out", str(tmp_path / "out")]
    )  # fmt: skip
    assert code == 0
    data = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert data["meta"]["route_groups"] == {"en": 4, "de": 4, "rest": 4}
    entry = data["policies"]["mark-ondemand"]
    assert {g: v["models"] for g, v in entry["route_groups"].items()} == data["meta"][
        "route_groups"
    ]
