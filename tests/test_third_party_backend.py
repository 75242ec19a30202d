"""A third-party KServe v2 server as a Mark instance (issue 4, item 4): Seldon MLServer with
its scikit-learn runtime, started from its own venv (`make .venv-mlserver/.stamp`, a
dependency of `make test`: MLServer's protobuf pin conflicts with ours), serves a logistic
regression trained on iris; Mark's front end routes v2 and TF Serving requests to it, batches
them, and must return MLServer's own predictions."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from mark.adapters.db import Database
from mark.core.config import load_config
from tests.conftest import free_port
from tests.dataplane import front_end, model, running, wait_routable

ROOT = Path(__file__).resolve().parent.parent
MLSERVER_VENV = ROOT / ".venv-mlserver"
REQUIRE_ENV = "MARK_REQUIRE_THIRD_PARTY"

# Trains and saves the model with the venv's own scikit-learn, and prints its predictions for
# the rows given on stdin: the reference the front end's answers must match.
TRAIN = """
import json, sys
import joblib
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
x, y = load_iris(return_X_y=True)
clf = LogisticRegression(max_iter=500).fit(x, y)
joblib.dump(clf, sys.argv[1])
rows = json.load(sys.stdin)
print(json.dumps(clf.predict(rows).tolist()))
"""


def _mlserver_python() -> Path:
    python = MLSERVER_VENV / "bin" / "python"
    if not (MLSERVER_VENV / ".stamp").exists() or not python.exists():
        reason = (
            f"{MLSERVER_VENV} is missing: run `make .venv-mlserver/.stamp` (`make test` does) "
            "to install Seldon MLServer for the third-party backend test"
        )
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(f"{reason} ({REQUIRE_ENV} is set)")
        pytest.skip(reason)
    return python


async def _run(*args: str, stdin: bytes = b"") -> bytes:
    proc = await asyncio.create_subprocess_exec(
        *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(stdin), 120)
    assert proc.returncode == 0, err.decode()
    return out


@contextlib.asynccontextmanager
async def mlserver(model_dir: Path, python: Path) -> AsyncIterator[str]:
    """`mlserver start` on free loopback ports, ready to serve; stopped (SIGTERM) after."""
    http_port = free_port()
    settings = {"host": "127.0.0.1", "http_port": http_port, "grpc_port": free_port(),
                "metrics_port": free_port(), "parallel_workers": 0}  # fmt: skip
    (model_dir / "settings.json").write_text(json.dumps(settings))
    log = open(model_dir / "mlserver.log", "wb")
    proc = await asyncio.create_subprocess_exec(
        str(python.parent / "mlserver"), "start", str(model_dir),
        stdout=log, stderr=asyncio.subprocess.STDOUT, cwd=model_dir,
    )  # fmt: skip
    url = f"http://127.0.0.1:{http_port}"
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(600):
                if proc.returncode is not None:
                    break
                with contextlib.suppress(aiohttp.ClientError):
                    async with s.get(f"{url}/v2/models/iris/ready") as r:
                        if r.status == 200:
                            break
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError("MLServer did not become ready in 60 s")
        if proc.returncode is not None:
            raise RuntimeError(f"MLServer exited: {(model_dir / 'mlserver.log').read_text()}")
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        log.close()


async def test_mlserver_serves_as_an_instance_behind_marks_front_end(tmp_path: Path) -> None:
    python = _mlserver_python()
    rows = np.random.default_rng(12).uniform([4, 2, 1, 0], [8, 4.5, 7, 2.5], size=(24, 4))
    model_dir = tmp_path / "models"
    (model_dir / "iris").mkdir(parents=True)
    expected = json.loads(
        await _run(
            str(python),
            "-c",
            TRAIN,
            str(model_dir / "iris" / "model.joblib"),
            stdin=json.dumps(rows.tolist()).encode(),
        )
    )
    assert len(set(expected)) > 1  # the rows reach more than one class
    settings = {"name": "iris", "implementation": "mlserver_sklearn.SKLearnModel",
                "parameters": {"uri": "./model.joblib", "version": "v1"}}  # fmt: skip
    (model_dir / "iris" / "model-settings.json").write_text(json.dumps(settings))

    db_url = f"sqlite+aiosqlite:///{tmp_path / 'mark.db'}"
    db = await Database.open(db_url)
    port = free_port()
    config = load_config(environ={}, server={"port": port}, database={"url": db_url},
                         batching={"sync_interval_s": 0.05})  # fmt: skip
    try:
        async with mlserver(model_dir, python) as endpoint:
            # Mark's name for it differs from the server's: backend_model_name maps them.
            await db.create_model(
                model("flowers", artifact="sklearn:iris", backend_model_name="iris")
            )
            await db.save_instance(running("mlserver-1", endpoint, models=("flowers",)))
            async with front_end(config) as app:
                await wait_routable(app, "flowers")
                base = f"http://127.0.0.1:{port}"
                async with aiohttp.ClientSession() as s:

                    async def v2(i: int) -> list[int]:
                        data = rows[i : i + 2].reshape(-1).tolist()
                        tensor = {"name": "x", "shape": [2, 4], "datatype": "FP64", "data": data}
                        body = {"inputs": [tensor]}
                        async with s.post(f"{base}/v2/models/flowers/infer", json=body) as r:
                            doc = await r.json()
                            assert r.status == 200, doc
                        (out,) = doc["outputs"]
                        assert out["name"] == "predict" and out["shape"][0] == 2
                        assert doc["model_name"] == "flowers"
                        return [int(v) for v in out["data"]]

                    # 12 concurrent two-row requests: batched together, split back per request
                    got = await asyncio.gather(*(v2(i) for i in range(0, 24, 2)))
                    tf = {"instances": rows[:6].tolist()}
                    async with s.post(f"{base}/v1/models/flowers:predict", json=tf) as r:
                        preds = (await r.json())["predictions"]
    finally:
        await db.close()
    assert [p for pair in got for p in pair] == expected
    assert np.asarray(preds).reshape(-1).astype(int).tolist() == expected[:6]
