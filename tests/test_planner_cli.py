"""`mark plan`, run as a real subprocess against the catalog."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mark.apps.commands.plan import parse_forecasts, parse_running
from mark.core.errors import InvalidValue
from mark.core.types import Market


def mark(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mark.apps.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_what_if_prints_launches_and_reasons() -> None:
    done = mark(
        "plan", "--model", "inception-v3", "--forecast", "20,20,40,40,40",
        "--running", "c5.large:1", "--now", "1700000000", "--budget", "5",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "launch" in done.stdout and "inception-v3" in done.stdout
    assert "/M req" in done.stdout and "spend now $" in done.stdout


def test_covered_fleet_has_nothing_to_do() -> None:
    done = mark(
        "plan", "--model", "inception-v3", "--forecast", "0", "--now", "1700000000",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Nothing to do" in done.stdout


def test_bad_flags_are_reported_not_raised() -> None:
    done = mark("plan", "--model", "inception-v3", "--forecast", "x", "--now", "1700000000")
    assert done.returncode == 2
    assert "--forecast" in done.stderr and "Traceback" not in done.stderr


def test_flag_parsing() -> None:
    assert parse_forecasts(["1,2", "b=3"], ["a", "b"]) == {"a": (1.0, 2.0), "b": (3.0,)}
    assert parse_running(["b@c5.large/spot:2", "m5.large:1"], ["a", "b"]) == [
        ("b", "c5.large", Market.SPOT, 2),
        ("a", "m5.large", Market.ON_DEMAND, 1),
        ("b", "m5.large", Market.ON_DEMAND, 1),
    ]
    with pytest.raises(InvalidValue):
        parse_forecasts(["c=1"], ["a"])
    with pytest.raises(InvalidValue):
        parse_running(["c5.large"], ["a"])
