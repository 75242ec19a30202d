"""Workload traces: the CSV format (`read_trace`, `write_trace`), seeded generators
(`traces.generators`) and the shipped traces under traces/data/ (see traces/README.md)."""

from pathlib import Path

from traces import generators
from traces.format import Trace, read_trace, write_trace

__all__ = ["Trace", "read_trace", "write_trace", "generators", "DATA_DIR", "shipped_trace"]

DATA_DIR = Path(__file__).parent / "data"


def shipped_trace(name: str) -> Path:
    """Path of a trace shipped under traces/data/ (`name` with or without `.csv`)."""
    path = DATA_DIR / (name if name.endswith(".csv") else f"{name}.csv")
    if not path.is_file():
        from mark.core.errors import InvalidValue

        available = sorted(p.stem for p in DATA_DIR.glob("*.csv"))
        raise InvalidValue("trace", f"no shipped trace {name!r}; shipped: {', '.join(available)}")
    return path
