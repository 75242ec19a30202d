"""Debian packages the tests need (Prometheus, Chromium): installed with apt-get when missing and
allowed (root), else the tests skip with the reason; `MARK_REQUIRE_<WHAT>=1` (CI, `.ci/run`)
turns the skip into a failure, as MARK_REQUIRE_PG does for PostgreSQL (tests/conftest.py)."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import NoReturn

import pytest

__all__ = ["apt_install", "skip_or_fail"]


def skip_or_fail(reason: str, require_env: str) -> NoReturn:
    if os.environ.get(require_env) == "1":
        pytest.fail(f"{reason} ({require_env}=1)")
    pytest.skip(reason)


def apt_install(*packages: str) -> str | None:
    """apt-get install `packages` (no recommends); None when done, else why not. One at a
    time across the test processes (pytest-xdist's workers): apt-get refuses to run while
    another holds dpkg's lock, and two workers may want Prometheus at once."""
    if not shutil.which("apt-get"):
        return "apt-get is not available"
    if os.geteuid() != 0:
        return f"not root: cannot apt-get install {' '.join(packages)}"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with open(Path(tempfile.gettempdir()) / "mark-tests-apt.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for args in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
        ):
            done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                return f"{' '.join(args)} failed: {(done.stdout + done.stderr)[-2000:]}"
    return None
