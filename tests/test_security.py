"""Security of the front end and the worker, over real HTTP and real processes: the admin token
on every admin route (found by walking the app's route table, so a new route is covered the day
it is added), the token kept out of logs, metrics and error bodies, and listening on loopback
unless told otherwise."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from frontend.app import create_app
from mark.core.config import load_config
from tests.conftest import Served

PUBLIC_ADMIN_PATHS = {"/admin/openapi.json"}  # the contract itself, readable before a login


def request(
    served: Served,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(served.base_url + path, data=data, method=method)
    for key, value in (headers or {}).items():
        req.add_header(key, value)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def _filled(param: re.Match[str]) -> str:
    """A route parameter's value: a model name for a typed one (`<name:str>`), the one value a
    pattern allows for a custom method's segment (`<verb:models\\:bulk>`: `models:bulk`)."""
    kind = param.group(2) or "str"
    return "demo" if kind in {"str", "int", "slug", "path"} else kind.replace("\\:", ":")


def admin_routes() -> list[tuple[str, str]]:
    """(method, path) of every route under /admin in the app's own route table, parameters
    filled with a model name."""
    app = create_app(load_config(environ={}, server={"admin_token": "x"}), name="security_walk")
    found = []
    for route in app.router.routes:
        path = re.sub(r"<(\w+)(?::([^>]+))?>", _filled, "/" + route.path.strip("/"))
        if path.startswith("/admin") and path not in PUBLIC_ADMIN_PATHS:
            found += [(method, path) for method in sorted(route.methods)]
    return found


def test_every_admin_route_needs_the_token(serve_factory: Any, tmp_path: Path) -> None:
    routes = admin_routes()
    assert len({path for _, path in routes}) >= 6 and ("DELETE", "/admin/v1/models/demo") in routes
    served = serve_factory(f"sqlite+aiosqlite:///{tmp_path / 'auth.db'}")
    wrong = [
        {},
        {"Authorization": served.token},  # no scheme
        {"Authorization": f"Basic {served.token}"},
        {"Authorization": f"Bearer {served.token[:-1]}x"},  # one character off, same length
        {"Authorization": f"Bearer {served.token}é"},  # not ASCII: compared as bytes, no 500
        {"Authorization": "Bearer "},
    ]
    for method, path in routes:
        for headers in wrong:
            status, got, body = request(
                served,
                method,
                path,
                headers=headers,
                data=b"{}" if method in {"POST", "PUT", "PATCH"} else None,
            )
            assert status == 401, (method, path, headers, body)
            assert got.get("WWW-Authenticate", "").startswith("Bearer")
    # the right token opens them (here a read, to leave the fleet as it is)
    status, _, _ = request(served, "GET", "/admin/v1/models", headers=served.auth)
    assert status == 200
    assert "Traceback" not in served.log()


def test_the_token_is_in_no_log_metric_or_error_body(serve_factory: Any, tmp_path: Path) -> None:
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    served = serve_factory(
        f"sqlite+aiosqlite:///{tmp_path / 'secret.db'}",
        env={"MARK_ADMIN_TOKEN": secret},
        config_text="[server]\nmax_body_mb = 0.01\n",
    )
    auth = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
    bodies = []
    for method, path, data in (
        ("GET", "/admin/v1/models", None),  # used: the token opens the API
        ("POST", "/admin/v1/models", b'{"name": "Bad Name"}'),  # 422
        ("GET", "/admin/v1/models/ghost", None),  # 404
        ("TRACE", "/admin/v1/models", None),  # 405
        ("POST", "/admin/v1/models", b"x" * 20_000),  # 413
        ("GET", f"/admin/v1/decisions?limit={secret}", None),  # a 422 that echoes its input
        ("POST", "/v2/models/ghost/infer", b"{}"),  # inference errors with the header present
    ):
        status, _, body = request(served, method, path, headers=auth, data=data)
        assert status < 500, (method, path, body)
        bodies.append(body.decode())
    assert request(served, "GET", "/admin/v1/models", headers=auth)[0] == 200
    near = {"Authorization": f"Bearer {secret[:-1]}x"}
    bodies.append(request(served, "GET", "/admin/v1/models", headers=near)[2].decode())
    bodies = [b for b in bodies if f"limit: must be an integer, got {secret!r}" not in b]
    metrics = request(served, "GET", "/metrics")[2].decode()
    assert "mark_admin_requests_total" in metrics  # the requests above were counted
    log = served.log()
    for where, text in (("log", log), ("metrics", metrics), ("error bodies", "\n".join(bodies))):
        assert secret not in text, where
        assert secret[:4] not in text, where  # not even the start of it
    assert "admin token in server.admin_token" in log  # where it is, instead


def test_front_end_and_worker_listen_on_loopback_by_default(
    serve_factory: Any, tmp_path: Path
) -> None:
    assert load_config(environ={}).server.host == "127.0.0.1"
    served = serve_factory(f"sqlite+aiosqlite:///{tmp_path / 'loop.db'}")
    assert "serving on http://127.0.0.1:" in served.log()
    assert "listening on http://127.0.0.1:" in first_line(worker())
    assert "listening on http://localhost:" in first_line(worker("--host", "localhost"))


def test_worker_refuses_a_remote_address_unless_allowed() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mark.apps.cli",
            "worker",
            "--model",
            "builtin:mlp",
            "--port",
            "0",
            "--host",
            "0.0.0.0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "not a loopback address" in done.stderr and "--allow-remote" in done.stderr
    # Mark's own EC2 user data says so on purpose
    command = load_config(environ={}).cloud.worker_command
    assert "--host 0.0.0.0" in command and "--allow-remote" in command
    assert "listening on http://0.0.0.0:" in first_line(
        worker("--host", "0.0.0.0", "--allow-remote")
    )


def worker(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mark.apps.cli",
            "worker",
            "--model",
            "builtin:mlp",
            "--port",
            "0",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def first_line(proc: subprocess.Popen[str]) -> str:
    """The worker's first line of output, then the worker stopped."""
    try:
        assert proc.stdout is not None
        return proc.stdout.readline()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
