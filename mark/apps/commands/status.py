"""`mark status`: the fleet at a glance, as tables, from a running server.

It reads `GET /admin/v1/status` over HTTP (never the database), so it works against a remote
`mark serve` as well as a local one:

    mark status                                   # 127.0.0.1:8000, token from ./.mark-admin-token
    mark status --url https://mark.example.com --token "$MARK_ADMIN_TOKEN" --decisions 20

The token is `--token`, else `MARK_ADMIN_TOKEN`, else the file `mark serve` writes in its working
directory when no token is configured (`--token-file`, default `.mark-admin-token`).
"""

from __future__ import annotations

import argparse
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mark.core.errors import InvalidValue, MarkError

if TYPE_CHECKING:
    from frontend.admin_schema import FleetStatus

__all__ = ["register"]

_TIMEOUT_S = 10.0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "status", help="print the fleet, models, spend and last decisions of a running server"
    )
    p.add_argument(
        "--url", default="http://127.0.0.1:8000", help="the server (default %(default)s)"
    )
    p.add_argument("--token", help="admin token (default: MARK_ADMIN_TOKEN, then --token-file)")
    p.add_argument(
        "--token-file",
        help="file holding the token (default: the one `mark serve` writes in its working "
        "directory, .mark-admin-token)",
    )
    p.add_argument(
        "--decisions", type=int, default=10, help="newest decisions to show, 0-100 (default 10)"
    )
    p.add_argument("--json", action="store_true", help="print the status document as JSON")
    p.set_defaults(func=run)


def _token(args: argparse.Namespace) -> str:
    if args.token:
        return str(args.token)
    if os.environ.get("MARK_ADMIN_TOKEN"):
        return os.environ["MARK_ADMIN_TOKEN"]
    from frontend.app import TOKEN_FILE

    path = Path(args.token_file or TOKEN_FILE)
    if path.is_file():
        return path.read_text().strip()
    raise InvalidValue(
        "--token", f"no token given, MARK_ADMIN_TOKEN is unset and {path} does not exist"
    )


def _fetch(url: str, token: str, decisions: int = 10) -> dict[str, Any]:
    """The server's `/admin/v1/status` document; MarkError naming what went wrong."""
    query = urllib.parse.urlencode({"decisions": decisions})
    target = f"{url.rstrip('/')}/admin/v1/status?{query}"
    request = urllib.request.Request(target, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
            doc: dict[str, Any] = json.loads(response.read())
            return doc
    except urllib.error.HTTPError as exc:
        with exc:
            detail = exc.read().decode(errors="replace")
        try:
            detail = json.loads(detail).get("error", detail)
        except ValueError:
            pass
        raise MarkError(f"{target}: HTTP {exc.code}: {detail}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise MarkError(f"cannot reach {target}: {exc}") from exc


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from frontend.admin_schema import FleetStatus

    doc = _fetch(args.url, _token(args), args.decisions)
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # piped: wide enough that reasons stay readable
    _print(console, FleetStatus.model_validate(doc), args.url)
    return 0


def _num(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else f"{value:{spec}}"


def _print(console: Any, status: FleetStatus, url: str) -> None:
    from rich.table import Table

    window = f"{status.window_s:.0f} s"
    models = Table(title=f"Models ({url})")
    for column in ("model", "SLO"):
        models.add_column(column)
    for column in (
        f"rate req/s ({window})",
        "forecast peak req/s",
        "capacity req/s",
        f"SLO met ({window})",
        "SLO met (since start)",
        "requests",
        "instances",
        "cost $",
    ):
        models.add_column(column, justify="right")
    for m in status.models:
        models.add_row(
            m.name,
            f"{m.slo.percentile:.1%} in {m.slo.latency_ms:.0f} ms",
            _num(m.rate_rps),
            _num(m.forecast_upper_rps),
            _num(m.capacity_rps),
            _num(m.slo_attainment_recent, ".2%"),
            _num(m.slo_attainment, ".2%"),
            str(m.requests),
            str(m.instances),
            f"{m.cost_usd:.4f}",
        )
    instances = Table(title="Instances")
    for column in ("instance type", "market", "state"):
        instances.add_column(column)
    for column in ("count", "$/h now"):
        instances.add_column(column, justify="right")
    for g in status.instances:
        instances.add_row(
            g.instance_type, g.market.value, g.state.value, str(g.count), f"{g.usd_per_hour:.4f}"
        )
    s = status.spend
    spend = Table(title="Spend")
    for column in ("$/h now", "budget $/h", "so far $", "instances $", "serverless $"):
        spend.add_column(column, justify="right")
    spend.add_row(
        f"{s.usd_per_hour:.4f}",
        _num(s.budget_usd_per_hour, ".4f"),
        f"{s.total_usd:.4f}",
        f"{s.instances_usd:.4f}",
        f"{s.serverless_usd:.4f}",
    )
    decisions = Table(title="Last decisions", show_lines=True)
    for column in ("at (UTC)", "action", "model", "what"):
        decisions.add_column(column, overflow="fold", max_width=32)
    decisions.add_column("why", overflow="fold", ratio=1)
    for d in status.decisions:
        decisions.add_row(
            time.strftime("%H:%M:%S", time.gmtime(d.at_s)),
            d.action.value,
            d.model or "",
            d.instance_id or d.offering_key or "",
            d.reason,
        )
    console.print(models)
    console.print(instances if status.instances else "No live instances.")
    console.print(spend)
    console.print(decisions if status.decisions else "No decisions yet.")
