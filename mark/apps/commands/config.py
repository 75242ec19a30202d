"""`mark config`: the effective configuration (defaults, file, environment), as TOML to start a
config file from, or as the Markdown table the README documents every key with."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported by run() alone, so that `mark --help` stays fast
    from mark.core.config import Config

__all__ = ["register", "render_toml", "render_markdown"]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("config", help="print the effective configuration")
    p.add_argument("--config", help="TOML config file to read over the defaults")
    p.add_argument("--format", choices=("toml", "markdown"), default="toml")
    p.set_defaults(func=run)


def _plain(value: Any) -> Any:
    """Tuples as lists, and a table inside a key (a route group of `placement.groups`) as a
    mapping, which JSON and TOML can write."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    return value


def _toml_value(value: Any) -> str:
    if value is None:
        return '""  # unset'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(_plain(v)) for v in value) + "]"
    if isinstance(value, dict):  # an inline table
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        return json.dumps(value)
    return str(value)


def render_toml(config: Config) -> str:
    lines: list[str] = []
    for section, values in config:
        doc = (type(values).__doc__ or "").strip().splitlines()[0]
        lines += [f"# {doc}", f"[{section}]"]
        for key, value in values:
            line = f"{key} = {_toml_value(value)}"
            lines.append(("# " + line) if value is None else line)
        lines.append("")
    return "\n".join(lines)


def render_markdown(config: Config) -> str:
    """One table per section, for the README (tests check that it lists every key)."""
    lines: list[str] = []
    for section, values in config:
        doc = " ".join((type(values).__doc__ or "").split())
        lines += [f"**[{section}]** {doc}", "", "| key | default |", "| --- | --- |"]
        for key, value in values:
            shown = "unset" if value is None else json.dumps(_plain(value))
            lines.append(f"| `{section}.{key}` | `{shown}` |")
        lines.append("")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from mark.core.config import load_config

    config = load_config(args.config)
    print(render_toml(config) if args.format == "toml" else render_markdown(config))
    return 0
