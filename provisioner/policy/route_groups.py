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

The control loop (mark/apps/control/placement_applier.py) and the many-model simulator
(mark/apps/simulator/many_model.py) both split the fleet with `group_of`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase

from mark.core.config import DEFAULT_ROUTE_GROUP, RouteGroup

__all__ = ["DEFAULT_ROUTE_GROUP", "group_names", "group_of", "instance_group"]


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
