"""Forecasters by name, so that config (`forecast.predictor = "holt-winters"`) and the CLI can
choose one, and third-party forecasters can plug in.

Built-ins are imported only when created (statsmodels takes a second to import). A third party
registers a `Forecaster` subclass (or a factory taking `bucket_s=` and keyword parameters and
returning one) under the entry point group `mark.forecasters`:

    [project.entry-points."mark.forecasters"]
    prophet = "my_package.forecasting:ProphetForecaster"

A built-in name always wins over an entry point of the same name.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from mark.core.errors import InvalidValue
from predictors.base import Forecaster

__all__ = ["ENTRY_POINT_GROUP", "BUILTIN_FORECASTERS", "available_forecasters", "create_forecaster"]

ENTRY_POINT_GROUP = "mark.forecasters"

BUILTIN_FORECASTERS: dict[str, str] = {
    "last": "predictors.simple:LastValue",
    "moving-max": "predictors.simple:MovingMax",
    "ewma": "predictors.simple:Ewma",
    "holt-winters": "predictors.holt_winters:HoltWinters",
    "arima": "predictors.arima:Arima",
    "learned": "predictors.learned:Learned",
    "ensemble": "predictors.ensemble:Ensemble",
}


def _plugins() -> dict[str, EntryPoint]:
    return {
        ep.name: ep
        for ep in entry_points(group=ENTRY_POINT_GROUP)
        if ep.name not in BUILTIN_FORECASTERS
    }


def available_forecasters() -> list[str]:
    """Built-in names in a fixed order, then plugged-in names sorted."""
    return [*BUILTIN_FORECASTERS, *sorted(_plugins())]


def _factory(name: str) -> Callable[..., Any]:
    target = BUILTIN_FORECASTERS.get(name)
    if target is not None:
        module, _, attribute = target.partition(":")
        builtin: Callable[..., Any] = getattr(importlib.import_module(module), attribute)
        return builtin
    plugin = _plugins().get(name)
    if plugin is None:
        raise InvalidValue(
            "predictor",
            f"unknown forecaster {name!r}; available: {', '.join(available_forecasters())}",
        )
    loaded: Callable[..., Any] = plugin.load()
    return loaded


_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def _parameters(factory: Callable[..., Any]) -> frozenset[str] | None:
    """The keyword parameters `factory` takes, None when it takes any. A forecaster class passes
    what it does not use on to its base (`**common`), so its own `__init__` and its bases' are
    read up the MRO until one that takes no `**kwargs`."""
    if isinstance(factory, type):
        owners = [c.__dict__["__init__"] for c in factory.__mro__ if "__init__" in c.__dict__]
    else:
        owners = [factory]
    names: set[str] = set()
    for function in owners:
        parameters = inspect.signature(function).parameters.values()
        names.update(p.name for p in parameters if p.kind in _NAMED and p.name != "self")
        if all(p.kind is not inspect.Parameter.VAR_KEYWORD for p in parameters):
            return frozenset(names)
    return None


def create_forecaster(name: str, bucket_s: float = 60.0, **params: Any) -> Forecaster:
    """A new forecaster `name` for buckets of `bucket_s` seconds. Raises InvalidValue for an
    unknown name or a parameter the forecaster does not take (checked against its signature
    before it is called, so a TypeError from inside a constructor stays the bug it is)."""
    factory = _factory(name)
    accepted = _parameters(factory)
    if accepted is not None and (unknown := sorted(set(params) - accepted)):
        takes = ", ".join(sorted(accepted - {"bucket_s"}))
        raise InvalidValue(
            "predictor", f"{name}: unexpected keyword argument {unknown[0]!r}; it takes {takes}"
        )
    forecaster = factory(bucket_s=bucket_s, **params)
    if not isinstance(forecaster, Forecaster):
        raise InvalidValue(
            "predictor",
            f"{name!r} made a {type(forecaster).__name__}, which is not a predictors.Forecaster",
        )
    return forecaster
