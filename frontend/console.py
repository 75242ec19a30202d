"""The read-only web console at /console: the fleet without Grafana.

It shows what `GET /admin/v1/status` returns (frontend/status.py): models with their rate,
forecast, capacity and SLO attainment, instances by type, market and state, spend, the newest
decisions, and two plots from the worker's in-memory samples: demand vs capacity (and the
forecast peak planned for), and cost so far. Everything is rendered here, on the server, as HTML
with inline SVG; the page's only script fetches `/console/panels` (the same fragment) every
`REFRESH_S` and swaps it in, so there is no build step and no second renderer.

Sign-in is the admin token, posted once from a form (never in a URL, where proxies and access
logs would keep it). The session cookie holds an HMAC of the token, not the token: it is good
for the console only, for as long as the token stays the same, and changing the token signs
every console out. The cookie is HttpOnly, SameSite=Strict, scoped to /console, and Secure when
the request came over HTTPS. `Authorization: Bearer` works as well, for scripts. Responses carry
a Content-Security-Policy that allows only this response's own script and style (by nonce) and
same-origin fetches.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Sequence
from html import escape

from sanic import Blueprint, Request
from sanic.response import HTTPResponse, html, redirect

from frontend import status as fleet_status
from frontend.admin import bearer_matches, token_matches
from frontend.admin_schema import FleetStatus, StatusPoint
from frontend.errors import error_response

__all__ = ["bp", "COOKIE", "REFRESH_S", "render_panels", "session_value"]

bp = Blueprint("console")

COOKIE = "mark_console"
REFRESH_S = 3
DECISIONS_SHOWN = 15
_SESSION_LABEL = b"mark console session v1"
_PLOT_W, _PLOT_H, _PAD_L, _PAD_B, _PAD_T = 720, 220, 64, 24, 12


def session_value(token: str) -> str:
    """The cookie for `token`: an HMAC of it, so the cookie never carries the token itself."""
    return hmac.new(token.encode(), _SESSION_LABEL, hashlib.sha256).hexdigest()


def _signed_in(request: Request) -> bool:
    cookie = request.cookies.get(COOKIE)
    if cookie is not None:
        token: str = request.app.ctx.config.server.admin_token or request.app.ctx.admin_token
        given = cookie.encode("utf-8", "surrogateescape")
        if hmac.compare_digest(given, session_value(token).encode()):
            return True
    return bearer_matches(request)


def _secured(response: HTTPResponse, nonce: str | None = None) -> HTTPResponse:
    own = f"'nonce-{nonce}'" if nonce else "'none'"
    response.headers["Content-Security-Policy"] = (
        f"default-src 'none'; script-src {own}; style-src {own}; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


# --- pages ---------------------------------------------------------------------------------

_STYLE = """
body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #1d232b; }
h1 { font-size: 1.3em; margin: 0 0 .2em; } h2 { font-size: 1.05em; margin: 1.4em 0 .4em; }
table { border-collapse: collapse; } td, th { padding: .25em .7em; border-bottom: 1px solid #dde; }
th { text-align: left; background: #f3f4f8; }
td.n { text-align: right; font-variant: tabular-nums; }
.muted { color: #667; } .plots { display: flex; flex-wrap: wrap; gap: 1.5em; }
svg { background: #fbfbfd; border: 1px solid #dde; } form.out { float: right; }
.error { color: #b00020; }
"""


def _page(title: str, body: str, nonce: str, script: str = "") -> str:
    tag = f'<script nonce="{nonce}">{script}</script>' if script else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title>"
        f'<style nonce="{nonce}">{_STYLE}</style></head><body>{body}{tag}</body></html>'
    )


_REFRESH_SCRIPT = """
const panels = document.getElementById("panels");
async function refresh() {
  try {
    const r = await fetch("/console/panels", {credentials: "same-origin", cache: "no-store"});
    if (r.status === 401) { location.reload(); return; }
    if (r.ok) { panels.innerHTML = await r.text(); }
  } catch (e) { /* the server restarting: try again at the next tick */ }
}
setInterval(refresh, %d);
"""


def _login_page(nonce: str, message: str = "") -> str:
    from frontend.app import TOKEN_FILE  # app.py registers this blueprint

    why = f'<p class="error">{escape(message)}</p>' if message else ""
    body = (
        "<h1>Mark console</h1>"
        f"{why}"
        '<form method="post" action="/console/login">'
        '<label>Admin token <input type="password" name="token" id="token" '
        'autocomplete="current-password" required></label> '
        '<button type="submit" id="sign-in">Sign in</button></form>'
        '<p class="muted">The token is <code>server.admin_token</code> (or '
        f"<code>MARK_ADMIN_TOKEN</code>); without one, <code>{TOKEN_FILE}</code> in the "
        "server's working directory.</p>"
    )
    return _page("Mark console: sign in", body, nonce)


async def _panels(request: Request) -> str:
    reading = await fleet_status.read(request.app.ctx.db)
    decisions, _ = await request.app.ctx.db.list_decisions(limit=DECISIONS_SHOWN)
    return render_panels(request.app.ctx.sampler.status(reading, decisions))


@bp.get("/console")
async def console(request: Request) -> HTTPResponse:
    nonce = secrets.token_urlsafe(16)
    if not _signed_in(request):
        return _secured(html(_login_page(nonce), status=401), nonce)
    body = (
        '<form class="out" method="post" action="/console/logout">'
        '<button type="submit">Sign out</button></form>'
        "<h1>Mark console</h1>"
        f'<p class="muted">Read-only; refreshes every {REFRESH_S} s. The same data as '
        "<code>mark status</code> and <code>GET /admin/v1/status</code>.</p>"
        f'<div id="panels">{await _panels(request)}</div>'
    )
    page = _page("Mark console", body, nonce, _REFRESH_SCRIPT % (REFRESH_S * 1000))
    return _secured(html(page), nonce)


@bp.get("/console/panels")
async def panels(request: Request) -> HTTPResponse:
    if not _signed_in(request):
        return _secured(error_response(401, "sign in at /console"))
    return _secured(html(await _panels(request)))


@bp.post("/console/login")
async def login(request: Request) -> HTTPResponse:
    given = request.form.get("token") if request.form else None
    if not given or not token_matches(request, given):
        nonce = secrets.token_urlsafe(16)
        page = _login_page(nonce, "That is not the admin token.")
        return _secured(html(page, status=401), nonce)
    token: str = request.app.ctx.config.server.admin_token or request.app.ctx.admin_token
    response = redirect("/console", status=303)
    response.add_cookie(
        COOKIE,
        session_value(token),
        path="/console",
        secure=request.scheme == "https",
        httponly=True,
        samesite="Strict",
    )
    return _secured(response)


@bp.post("/console/logout")
async def logout(request: Request) -> HTTPResponse:
    response = redirect("/console", status=303)
    response.delete_cookie(COOKIE, path="/console")
    return _secured(response)


# --- the fragment --------------------------------------------------------------------------


def _num(value: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "–" if value is None else f"{value:{spec}}{suffix}"


def _table(table_id: str, head: Sequence[str], rows: Sequence[Sequence[str]], numeric: int) -> str:
    """Columns from `numeric` on are right-aligned numbers; cells are escaped here."""
    if not rows:
        return f'<p class="muted" id="{table_id}">none</p>'
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td{' class=n' if i >= numeric else ''}>{escape(cell)}</td>"
            for i, cell in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f'<table id="{table_id}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _clock(at_s: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(at_s)) + " UTC"


def _plot(
    plot_id: str,
    title: str,
    unit: str,
    points: Sequence[StatusPoint],
    series: Sequence[tuple[str, str, str, Sequence[float | None]]],
) -> str:
    """One SVG line plot over the samples' times. Each line carries its values in
    `data-values` (what tests and scripts read); None values (no forecast yet) are left out."""
    w, h = _PLOT_W - _PAD_L, _PLOT_H - _PAD_B - _PAD_T
    head = f"<h2>{escape(title)}</h2>"
    if len(points) < 2:
        return (
            f'{head}<svg id="{plot_id}" data-points="{len(points)}" width="{_PLOT_W}" '
            f'height="{_PLOT_H}"><text x="{_PAD_L}" y="{_PLOT_H // 2}">waiting for samples '
            f"(every {fleet_status.SAMPLE_S:.0f} s)</text></svg>"
        )
    t0, t1 = points[0].at_s, points[-1].at_s
    top = max((v for _, _, _, values in series for v in values if v is not None), default=0.0)
    top = top * 1.1 if top > 0 else 1.0
    lines, legend = [], []
    for k, (name, label, color, values) in enumerate(series):
        xy = [
            (_PAD_L + w * (p.at_s - t0) / (t1 - t0), _PAD_T + h * (1 - v / top))
            for p, v in zip(points, values, strict=True)
            if v is not None
        ]
        kept = ",".join(f"{v:.6g}" for v in values if v is not None)
        coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
        lines.append(
            f'<polyline data-series="{name}" data-values="{kept}" points="{coords}" '
            f'fill="none" stroke="{color}" stroke-width="2"/>'
        )
        last = next((v for v in reversed(values) if v is not None), None)
        legend.append(
            f'<text x="{_PAD_L + 8 + 190 * k}" y="{_PAD_T + 12}" fill="{color}">'
            f"{escape(label)} {_num(last, '.3g')}</text>"
        )
    span_min = (t1 - t0) / 60
    axes = (
        f'<line x1="{_PAD_L}" y1="{_PAD_T + h}" x2="{_PLOT_W}" y2="{_PAD_T + h}" stroke="#99a"/>'
        f'<line x1="{_PAD_L}" y1="{_PAD_T}" x2="{_PAD_L}" y2="{_PAD_T + h}" stroke="#99a"/>'
        f'<text x="{_PAD_L - 6}" y="{_PAD_T + 10}" text-anchor="end">{top:.3g}</text>'
        f'<text x="{_PAD_L - 6}" y="{_PAD_T + h}" text-anchor="end">0</text>'
        f'<text x="{_PAD_L - 6}" y="{_PAD_T + h / 2}" text-anchor="end">{escape(unit)}</text>'
        f'<text x="{_PAD_L}" y="{_PLOT_H - 6}">-{span_min:.1f} min</text>'
        f'<text x="{_PLOT_W - 4}" y="{_PLOT_H - 6}" text-anchor="end">now</text>'
    )
    return (
        f'{head}<svg id="{plot_id}" data-points="{len(points)}" width="{_PLOT_W}" '
        f'height="{_PLOT_H}" viewBox="0 0 {_PLOT_W} {_PLOT_H}" role="img" '
        f'aria-label="{escape(title)}">{axes}{"".join(lines)}{"".join(legend)}</svg>'
    )


def render_panels(status: FleetStatus) -> str:
    """The console's tables and plots for `status` (escaped: model names and decision reasons
    come from users and from the cloud)."""
    window = f"{status.window_s:.0f} s"
    models = _table(
        "models",
        (
            "model",
            "SLO",
            f"rate req/s ({window})",
            "forecast peak req/s",
            "capacity req/s",
            f"SLO met ({window})",
            "SLO met (since start)",
            "instances",
            "cost so far $",
        ),
        [
            (
                m.name,
                f"{m.slo.percentile:.1%} within {m.slo.latency_ms:.0f} ms",
                _num(m.rate_rps),
                _num(m.forecast_upper_rps),
                _num(m.capacity_rps),
                _num(m.slo_attainment_recent, ".2%"),
                _num(m.slo_attainment, ".2%"),
                str(m.instances),
                _num(m.cost_usd, ".4f"),
            )
            for m in status.models
        ],
        numeric=2,
    )
    instances = _table(
        "instances",
        ("instance type", "market", "state", "count", "$/h now"),
        [
            (g.instance_type, g.market.value, g.state.value, str(g.count), f"{g.usd_per_hour:.4f}")
            for g in status.instances
        ],
        numeric=3,
    )
    s = status.spend
    spend = _table(
        "spend",
        ("$/h now", "budget $/h", "so far $", "instances $", "serverless $"),
        [
            (
                f"{s.usd_per_hour:.4f}",
                _num(s.budget_usd_per_hour, ".4f"),
                f"{s.total_usd:.4f}",
                f"{s.instances_usd:.4f}",
                f"{s.serverless_usd:.4f}",
            )
        ],
        numeric=0,
    )
    decisions = _table(
        "decisions",
        ("at", "action", "model", "what", "why"),
        [
            (
                _clock(d.at_s),
                d.action.value,
                d.model or "",
                d.instance_id or d.offering_key or "",
                d.reason,
            )
            for d in status.decisions
        ],
        numeric=5,
    )
    points = status.history
    demand = _plot(
        "demand-plot",
        "Demand vs capacity",
        "req/s",
        points,
        (
            ("demand", "demand", "#1f5fbf", [p.demand_rps for p in points]),
            ("capacity", "capacity at the SLO", "#2e8540", [p.capacity_rps for p in points]),
            ("forecast", "forecast peak", "#c26a00", [p.forecast_upper_rps for p in points]),
        ),
    )
    cost = _plot(
        "cost-plot",
        "Cost so far",
        "$",
        points,
        (("cost", "cost so far", "#7a3fb0", [p.cost_usd for p in points]),),
    )
    return (
        f'<p class="muted" id="updated" data-at="{status.at_s:.3f}">updated '
        f"{_clock(status.at_s)}</p>"
        f"<h2>Models</h2>{models}<h2>Instances</h2>{instances}<h2>Spend</h2>{spend}"
        f'<div class="plots"><div>{demand}</div><div>{cost}</div></div>'
        f"<h2>Last decisions</h2>{decisions}"
    )
