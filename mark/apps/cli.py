"""`mark`: one console script, one module per subcommand under `mark.apps.commands`.

Each command module exposes `register(subparsers)` which adds its parser and sets `func` to a
callable taking the parsed namespace and returning an exit code. Heavy imports happen inside the
command, so `mark --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from mark.core.errors import MarkError

__all__ = ["main", "build_parser"]

COMMANDS: tuple[str, ...] = (
    "serve",
    "config",
    "worker",
    "plan",
    "trace",
    "forecast_eval",
    "simulate",
    "profile",
    "status",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mark",
        description="SLO-aware autoscaling control plane for ML inference (after MArk, ATC'19).",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"mark.apps.commands.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MarkError as exc:
        print(f"mark {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
