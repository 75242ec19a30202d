"""Shared fixtures: database URLs (SQLite file, PostgreSQL when MARK_TEST_PG_URL is set) and a
real `mark serve` subprocess on a free loopback port.

Under pytest-xdist (`make test` runs `-n 2`) each worker process has what a test may reset or
fill to itself: its own PostgreSQL database, `<db>_<worker>` beside MARK_TEST_PG_URL's (created
through the server's `postgres` database when missing, `pytest_configure`), because `db_url`
drops and recreates the schema of the database it hands out, under the other worker's tests
too; its own moto server (session fixtures are per process); and free ports, temporary
directories and Prometheus instances of its own, as each test already takes them."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer
from sqlalchemy.engine import URL, make_url

from tests.aws import FAKE_ENV

PG_ENV = "MARK_TEST_PG_URL"
# Why this process has no PostgreSQL database of its own (pytest_configure), None when it has
_pg_unavailable: str | None = None


def pytest_configure(config: pytest.Config) -> None:
    """In an xdist worker, point MARK_TEST_PG_URL at the worker's own database, `<db>_gw0` and
    so on, created when missing. Every reader of the variable (`_pg_url_or_skip`) then gets it;
    without xdist the URL is used as given. A server that cannot be reached leaves the reason
    for the PostgreSQL tests to skip (or fail, under MARK_REQUIRE_PG) with."""
    global _pg_unavailable
    worker, url = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get(PG_ENV)
    if not worker or not url:
        return
    given = make_url(url)
    own = given.set(database=f"{given.database or 'postgres'}_{worker}")
    try:
        asyncio.run(_ensure_database(own))
    except OSError as exc:
        _pg_unavailable = f"PostgreSQL at {url} is unreachable: {exc}"
    os.environ[PG_ENV] = own.render_as_string(hide_password=False)


async def _ensure_database(url: URL) -> None:
    """Create `url`'s database through the server's `postgres` database, unless it exists
    (a worker's database stays between runs: each test that uses it resets its schema)."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    admin = create_async_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            found = await conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": url.database}
            )
            if found.first() is None:
                await conn.exec_driver_sql(f'CREATE DATABASE "{url.database}"')
    finally:
        await admin.dispose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_url_or_skip() -> str:
    url = os.environ.get(PG_ENV)
    if url and _pg_unavailable is None:
        return url
    reason = _pg_unavailable or f"{PG_ENV} is not set: PostgreSQL tests need a server"
    if os.environ.get("MARK_REQUIRE_PG") == "1":
        pytest.fail(reason + " (MARK_REQUIRE_PG=1)")
    pytest.skip(reason)


async def _fresh_pg_schema(url: str) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql("DROP SCHEMA IF EXISTS public CASCADE")
            await conn.exec_driver_sql("CREATE SCHEMA public")
    except OSError as exc:
        if os.environ.get("MARK_REQUIRE_PG") == "1":
            pytest.fail(f"PostgreSQL at {url} is unreachable: {exc}")
        pytest.skip(f"PostgreSQL at {url} is unreachable: {exc}")
    finally:
        await engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.pg)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test using it runs once on a SQLite file and once on a clean PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'mark.db'}"
    url = _pg_url_or_skip()
    asyncio.run(_fresh_pg_schema(url))
    return url


@dataclass
class Served:
    """A running `mark serve` process."""

    base_url: str
    token: str
    workdir: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_serve(
    workdir: Path,
    db_url: str,
    *,
    extra_args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    config_text: str | None = None,
    ready_timeout_s: float = 60.0,
) -> Served:
    import urllib.request

    port = free_port()
    token = "test-" + uuid.uuid4().hex
    full_env = {
        **os.environ,
        "MARK_ADMIN_TOKEN": token,
        "MARK_DATABASE_URL": db_url,
        **(env or {}),
    }
    full_env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    args = [sys.executable, "-m", "mark.apps.cli", "serve", "--port", str(port)]
    if config_text is not None:
        cfg = workdir / "mark.toml"
        cfg.write_text(config_text)
        args += ["--config", str(cfg)]
    args += list(extra_args)
    log_path = workdir / f"serve-{port}.log"
    with open(log_path, "wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            args,
            cwd=workdir,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mark serve exited with {proc.returncode}:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(base + "/v2/health/ready", timeout=1) as r:
                if r.status == 200 and "control plane running" in log_path.read_text():
                    # Sanic's manager loops forever if signalled before it has taken every
                    # worker's start-up acknowledgement, which may trail the first answer.
                    time.sleep(1.0)
                    return Served(base, token, workdir, proc, log_path)
        except OSError:
            time.sleep(0.2)
    stop_serve_process(proc)
    raise RuntimeError(f"mark serve did not become ready:\n{log_path.read_text()}")


def stop_serve_process(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


@pytest.fixture
def serve_factory(tmp_path: Path) -> Iterator[object]:
    started: list[Served] = []

    def factory(db_url: str, **kwargs: object) -> Served:
        served = start_serve(tmp_path, db_url, **kwargs)  # type: ignore[arg-type]
        started.append(served)
        return served

    yield factory
    for s in started:
        stop_serve_process(s.process)


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    with pytest.MonkeyPatch.context() as env:
        for key, value in FAKE_ENV.items():
            env.setenv(key, value)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        try:
            yield f"http://{host}:{port}"
        finally:
            server.stop()


@pytest.fixture(scope="session")
def outside(moto_url: str) -> Any:
    """A client standing for everything outside Mark: the console, AWS reclaiming spot."""
    return boto3.client("ec2", endpoint_url=moto_url, region_name="us-east-1")


@pytest.fixture(scope="session")
def image_id(outside: Any) -> str:
    return str(outside.describe_images(MaxResults=5)["Images"][0]["ImageId"])
