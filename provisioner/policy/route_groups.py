"""Route groups (issue 19 item 5, after Cortex's router API): the models of a many-model fleet
split by a rule in config (`[[placement.groups]]`: a name and name patterns, in order), each
group placed on instances of its own, so that each worker holds, and each front end routes
across, one group only. Requests carry no group: a model's group is a function of its name.

- `group_of`: the first group one of whose patterns the name matches (shell-style,
  case-sensitive, `fnmatch.fnmatchcase`), else `DEFAULT_ROUTE_GROUP` ("rest"); every name is
  in exactly one group, and with no rules every name is in "rest" (one flat fleet).
- `instance_group`: the group an instance of the fleet belongs to, from the models it serves
  (`Instance.models`, the group's models once the placement saved it): the group most of them
  are in. Only an instance started before the rules changed has models of several groups; it
  is kept by the group most of its models are in, and the others leave it (unloaded: no rate
  in its group) and are placed on their own group's instances.
- `share_moves`: `placement.max_moves` bounds the whole fleet's moves per tick, groups or not
  (a fleet split into ten groups does not churn ten times as much: every move is a load that
  the store serves and an instance spends time on), so the groups with something to place
  split it evenly, the first ones in the rules' order taking the remainder. A share left unused
  is not passed on: a group's moves go on over the syncs after the tick, within its share.

The control loop (mark/apps/control/placement_applier.py) and the many-model simulator
(mark/apps/simulator/many_model.py) both split the fleet with `group_of`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase

from mark.core.config import DEFAULT_ROUTE_GROUP, RouteGroup

__all__ = ["DEFAULT_ROUTE_GROUP", "group_names", "group_of", "instance_group", "share_moves"]


def group_names(groups: Sequence[RouteGroup]) -> tuple[str, ...]:
    """Every group the rules make, in their order, "rest" last."""
    return (*(g.name for g in groups), DEFAULT_ROUTE_GROUP)


def group_of(model: str, groups: Sequence[RouteGroup]) -> str:
    """The route group of the model named `model` (see the module docstring)."""
    for group in groups:
        if any(fnmatchcase(model, pattern) for pattern in group.patterns):
            return group.name
    return DEFAULT_ROUTE_GROUP


def instance_group(models: Iterable[str], groups: Sequence[RouteGroup]) -> str:
    """The group most of `models` are in (the first in the rules' order among equals); "rest"
    for none."""
    if not groups:
        return DEFAULT_ROUTE_GROUP
    counts: dict[str, int] = {}
    for model in models:
        name = group_of(model, groups)
        counts[name] = counts.get(name, 0) + 1
    if not counts:
        return DEFAULT_ROUTE_GROUP
    order = {name: k for k, name in enumerate(group_names(groups))}
    return min(counts, key=lambda name: (-counts[name], order[name]))


def share_moves(max_moves: int, groups: Sequence[str]) -> dict[str, int]:
    """Each of `groups` (those with something to place, in the rules' order) its share of
    `max_moves`: an even split, the remainder one each to the first; the shares sum to it."""
    if not groups:
        return {}
    each, extra = divmod(max(max_moves, 0), len(groups))
    return {name: each + (1 if k < extra else 0) for k, name in enumerate(groups)}
