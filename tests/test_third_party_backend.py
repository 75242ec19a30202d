"""A third-party KServe v2 server as a Mark instance (issue 4, item 4): Seldon MLServer with
its scikit-learn runtime, started from its own venv (`make .venv-mlserver/.stamp`, a
dependency of `make test`: MLServer's protobuf pin conflicts with ours), serves a logistic
regression trained on iris; Mark's front end routes v2 and TF Serving requests to it, batches
them, and must return MLServer's own predictions.

Then (issue 19) MLServer as a many-model instance that the local cloud starts through
`cloud.worker_command`, with three models in its repository and none loaded: Mark's front end
loads each where it is asked for and unloads each once idle, through the repository API."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from prometheus_client import REGISTRY

from frontend.fleet import Answer, Fleet
from mark.adapters.db import Database
from mark.core.config import BatchingConfig, CloudConfig, load_config
from mark.core.protocol import InferRequest, Tensor
from mark.core.types import Instance, Model
from provisioner.adapters.local_cloud import LocalCloud
from tests.conftest import free_port
from tests.dataplane import front_end, model, offering, running, wait_routable
from tests.model_artifacts import index

ROOT = Path(__file__).resolve().parent.parent
MLSERVER_VENV = ROOT / ".venv-mlserver"
REQUIRE_ENV = "MARK_REQUIRE_THIRD_PARTY"

# Trains and saves the model with the venv's own scikit-learn, and prints its predictions for
# the rows given on stdin: the reference the front end's answers must match. With a second
# argument k the classes are relabelled (y + k) % 3, so that each of several such models
# answers differently.
TRAIN = """
import json, sys
import joblib
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
x, y = load_iris(return_X_y=True)
shift = int(sys.argv[2]) if len(sys.argv) > 2 else 0
clf = LogisticRegression(max_iter=500).fit(x, (y + shift) % 3)
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


@dataclasses.dataclass
class CloudListing:
    """What the front end syncs from, with no control loop to record instances in a database:
    the registered models, and the instances exactly as the cloud lists them."""

    models: list[Model]
    cloud: LocalCloud

    async def list_models(self) -> list[Model]:
        return self.models

    async def list_instances(
        self, *, live_only: bool = True, model: str | None = None
    ) -> list[Instance]:
        return await self.cloud.list()


def _done(kind: str, name: str, instance_id: str) -> float:
    """The front end's successful `kind` (loads, unloads) of `name` on the instance."""
    labels = {"model": name, "instance": instance_id, "outcome": "ok"}
    return REGISTRY.get_sample_value(f"mark_frontend_model_{kind}_total", labels) or 0.0


async def test_mlserver_started_by_the_local_cloud_has_its_models_loaded_and_unloaded_by_mark(
    tmp_path: Path,
) -> None:
    python = _mlserver_python()
    rows = np.random.default_rng(19).uniform([4, 2, 1, 0], [8, 4.5, 7, 2.5], size=(6, 4))
    repo = tmp_path / "repository"
    names = [f"iris-{k}" for k in range(3)]
    expected: dict[str, list[int]] = {}
    for k, name in enumerate(names):
        (repo / name).mkdir(parents=True)
        artifact = repo / name / "model.joblib"
        stdin = json.dumps(rows.tolist()).encode()
        expected[name] = json.loads(await _run(str(python), "-c", TRAIN, str(artifact), str(k),
                                               stdin=stdin))  # fmt: skip
        settings = {"name": name, "implementation": "mlserver_sklearn.SKLearnModel",
                    "parameters": {"uri": "./model.joblib", "version": "v1"}}  # fmt: skip
        (repo / name / "model-settings.json").write_text(json.dumps(settings))
    assert len({tuple(v) for v in expected.values()}) == 3  # each model answers its own way
    # MLServer reads its settings from the environment (no settings.json in the repository);
    # the local cloud chooses the HTTP port, the test the other two
    scratch = tmp_path / "mlserver"
    env = {"HOST": "127.0.0.1", "HTTP_PORT": "{port}", "GRPC_PORT": str(free_port()),
           "METRICS_PORT": str(free_port()), "PARALLEL_WORKERS": "0",
           "LOAD_MODELS_AT_STARTUP": "false", "ENVIRONMENTS_DIR": str(scratch / "envs"),
           "METRICS_DIR": str(scratch / "metrics")}  # fmt: skip
    command = " ".join(["env", *(f"MLSERVER_{k}={v}" for k, v in env.items()),
                        str(python.parent / "mlserver"), "start", str(repo)])  # fmt: skip
    cloud_config = CloudConfig(worker_command=command, launch_overhead_scale=0.0,
                               local_boot_timeout_s=90.0)  # fmt: skip
    registered = [model(n, slo_ms=30_000.0, artifact="sklearn:iris") for n in names]
    by_name = {m.name: m for m in registered}

    async def lookup(name: str) -> Model:
        return by_name[name]

    idle_s = 2.0
    cloud = LocalCloud(cloud_config, models=lookup, state_dir=tmp_path / "cloud")
    fleet: Fleet | None = None
    try:
        launched = await cloud.launch(offering(), names)
        instance = await cloud.wait_running(launched.id, 90)
        endpoint = instance.endpoint
        assert endpoint is not None and endpoint.startswith("http://127.0.0.1:")
        async with aiohttp.ClientSession() as s:
            idx = await index(s, endpoint)
            assert {n: idx[n]["state"] for n in names} == dict.fromkeys(names, "UNAVAILABLE")
            loads_before = {n: _done("loads", n, instance.id) for n in names}
            unloads_before = {n: _done("unloads", n, instance.id) for n in names}
            fleet = Fleet(BatchingConfig(sync_interval_s=0.1, unload_idle_s=idle_s))
            fleet.start_sync(CloudListing(registered, cloud), 0.1)
            async with asyncio.timeout(10):
                while any(not fleet.routable(n) for n in names):
                    await asyncio.sleep(0.02)

            async def ask(name: str) -> None:
                request = InferRequest((Tensor.of("x", np.asarray(rows, dtype=np.float64)),))
                answer = await fleet.infer(name, request)
                assert isinstance(answer, Answer) and answer.path == "instance"
                assert answer.instance_id == instance.id
                got = answer.response.outputs[0].array.reshape(-1).astype(int).tolist()
                assert got == expected[name]

            # resident nowhere: each model's first requests share one load the front end asks
            for name in names:
                await asyncio.gather(*(ask(name) for _ in range(4)))
                assert _done("loads", name, instance.id) == loads_before[name] + 1
            idx = await index(s, endpoint)
            assert {n: idx[n]["state"] for n in names} == dict.fromkeys(names, "READY")

            # iris-1 goes idle while the others keep serving: the front end unloads it alone
            async with asyncio.timeout(30):
                while (await index(s, endpoint))["iris-1"]["state"] == "READY":
                    await asyncio.gather(ask("iris-0"), ask("iris-2"))
                    await asyncio.sleep(0.2)
            idx = await index(s, endpoint)
            assert (idx["iris-0"]["state"], idx["iris-2"]["state"]) == ("READY", "READY")
            assert fleet.resident("iris-1") == []
            await ask("iris-1")  # asked again: loaded again
            assert _done("loads", "iris-1", instance.id) == loads_before["iris-1"] + 2

            # all idle: each one is unloaded, and MLServer holds none of them
            async with asyncio.timeout(30):
                while any(i["state"] == "READY" for i in (await index(s, endpoint)).values()):
                    await asyncio.sleep(0.2)
            unloaded = {n: _done("unloads", n, instance.id) - unloads_before[n]
                        for n in names}  # fmt: skip
            assert unloaded == {"iris-0": 1, "iris-1": 2, "iris-2": 1}
    finally:
        if fleet is not None:
            await fleet.close()
        await cloud.close()
    print(f"\nMLServer started by the local cloud at {instance.endpoint}; loads and unloads "
          f"through its repository API: {unloaded}")  # fmt: skip
