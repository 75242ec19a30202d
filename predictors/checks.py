"""The parameter checks every forecaster's constructor runs, one of each, so that a bad value
gets the same InvalidValue (naming the parameter) whichever forecaster it was given to."""

from __future__ import annotations

import math

import numpy as np

from mark.core.errors import InvalidValue

__all__ = ["require_int", "require_positive"]


def require_int(field: str, value: int, least: int) -> None:
    """An integer (numpy's too, not a bool) of at least `least`."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < least:
        raise InvalidValue(field, f"must be an integer >= {least}, got {value!r}")


def require_positive(field: str, value: float) -> None:
    """A finite number > 0 (NaN and infinity are refused, not compared)."""
    if not (math.isfinite(value) and value > 0):
        raise InvalidValue(field, f"must be a finite number > 0, got {value!r}")
