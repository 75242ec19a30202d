"""`mark status` against a running `mark serve --demo`: it reads the admin API over HTTP (the
token from the flag, the environment or the server's token file) and prints the demo model, its
instance, the spend and the decisions; a wrong token or no server is an error naming why."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from frontend.admin_schema import FleetStatus
from tests.conftest import Served, free_port
from tests.test_admin_api import call
from tests.test_serve_inference import README_BODY

# A tick every 2 s, so that the forecast and the decision log fill within the test.
FAST_TICKS = "[control]\ntick_s = 2.0\n"


def mark_status(*args: str, env: dict[str, str] | None = None, cwd: Path) -> tuple[int, str]:
    base = {k: v for k, v in os.environ.items() if k != "MARK_ADMIN_TOKEN"}
    done = subprocess.run(
        [sys.executable, "-m", "mark.apps.cli", "status", *args],
        env={**base, **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, done.stdout + done.stderr


def wait_for_running(served: Served, timeout_s: float = 60.0) -> dict[str, Any]:
    """The status once the demo instance runs and the control loop has planned."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        code, doc = call(served, "GET", "/admin/v1/status")
        assert code == 200, doc
        running = any(g["state"] == "running" for g in doc["instances"])
        if running and doc["decisions"] and doc["models"][0]["forecast_upper_rps"] is not None:
            return dict(doc)
        time.sleep(0.5)
    raise AssertionError(f"no running demo instance and plan: {doc}\n{served.log()}")


def test_mark_status_shows_the_demo_fleet(serve_factory: Any, tmp_path: Path) -> None:
    served = serve_factory(
        f"sqlite+aiosqlite:///{tmp_path / 's.db'}", extra_args=("--demo",), config_text=FAST_TICKS
    )
    wait_for_running(served)
    for _ in range(5):
        assert call(served, "POST", "/v2/models/demo/infer", README_BODY, auth=False)[0] == 200
    code, out = mark_status("--url", served.base_url, "--token", served.token, cwd=tmp_path)
    assert code == 0, out
    for title in ("Models", "Instances", "Spend", "Last decisions"):
        assert title in out, out
    models_table = out[: out.index("Instances")]
    (demo_row,) = [line for line in models_table.splitlines() if "│ demo " in line]
    assert "99.0% in 100 ms" in demo_row, out
    instances_table = out[out.index("Instances") : out.index("Spend")]
    (instance_row,) = [line for line in instances_table.splitlines() if "c5.large" in line]
    assert "on-demand" in instance_row and "running" in instance_row, out
    assert "│     1 │" in instance_row, out

    # The token from the file `mark serve` writes where it runs (here: written by hand, as the
    # fixture configures the token through MARK_ADMIN_TOKEN), and --json for scripts.
    (tmp_path / ".mark-admin-token").write_text(served.token + "\n")
    code, out = mark_status("--url", served.base_url, "--json", cwd=tmp_path)
    assert code == 0, out
    status = FleetStatus.model_validate(json.loads(out))
    (demo,) = status.models
    assert demo.name == "demo" and demo.instances == 1 and demo.capacity_rps > 0
    assert demo.requests >= 5 and demo.slo_attainment is not None
    assert demo.forecast_upper_rps is not None and status.decisions
    assert status.spend.usd_per_hour > 0 and status.instances[0].count == 1


def test_mark_status_names_what_went_wrong(serve_factory: Any, tmp_path: Path) -> None:
    served = serve_factory(f"sqlite+aiosqlite:///{tmp_path / 'w.db'}")
    code, out = mark_status("--url", served.base_url, "--token", "guess-4711", cwd=tmp_path)
    assert code == 2 and "HTTP 401" in out and "guess-4711" not in out, out
    code, out = mark_status("--url", served.base_url, cwd=tmp_path)
    assert code == 2 and "no token given" in out, out
    code, out = mark_status(
        "--url", served.base_url, env={"MARK_ADMIN_TOKEN": served.token}, cwd=tmp_path
    )
    assert code == 0 and "No live instances." in out, out
    nobody = f"http://127.0.0.1:{free_port()}"
    code, out = mark_status("--url", nobody, "--token", "x", cwd=tmp_path)
    assert code == 2 and "cannot reach" in out, out
