"""A cloud on this machine: instances are real `mark worker` processes on loopback ports.

`mark serve` uses it by default, and the tests use it as a real (not faked) provider. It keeps
the CloudProvider contracts (provisioner/adapters/cloud.py) and imitates what matters of EC2:
- launch returns a PENDING instance at once; the worker starts after the type's launch overhead
  (`launch_overhead_s` x `cloud.launch_overhead_scale`, so tests run in seconds), and the instance
  turns RUNNING only once `GET /v2/health/ready` answers; `list()` shows the transition. A worker
  that fails to start is terminated, never left half-alive.
- each worker paces batches to the model's profile for the offering's type (T(b) = a + c*b), so
  a c5.large and a g4dn.xlarge stand-in differ the way the planner assumes;
- each worker gets the `[worker]` section (`worker`: the store, the memory budget, protection,
  polling) as `mark worker` flags. In a many-model fleet (the section sets a `store` or a
  `memory_budget_bytes`) the models that declare `memory_mb` are known to the worker but load on
  demand (`--lazy-model`): a many-model instance may list more models than its memory holds, and
  the control loop's placement or the front end loads them where they are wanted (through the
  repository API); the others load at start and stay (`--model`), as a single-model instance
  always did. Each model is served under the name the front end calls it by
  (`backend_model_name`, else its own), its artifact a file or an S3 object
  (`onnx:s3://bucket/key`, fetched by the worker);
- `cloud.worker_command` names what an instance runs. `mark worker ...` (the default, written for
  EC2's user data) starts the reference worker above, always on loopback and with this
  interpreter; any other command (Seldon MLServer, Triton with `--model-control-mode=explicit`)
  is run as given, `{port}` in it replaced by a free loopback port, and the instance is
  `http://127.0.0.1:{port}` once `GET /v2/health/ready` answers 200 there. Such a server loads
  its models from its own repository: Mark drives it through the repository API (the front
  end's loads and idle unloads), and a restarted provider does not adopt it (`_is_worker`);
- billing as EC2 would, from launch to termination at the offering's price, is the control
  loop's (`provisioner.policy.billing`, written to the cost ledger), as for any provider;
- spot interruptions on demand: `interrupt(id, notice_s)` yields a notice on `interruptions()`,
  then kills the worker abruptly when the notice runs out (as EC2 reclaims capacity).
- a worker that dies on its own (crash, OOM kill, SIGKILL) is noticed: its instance turns
  TERMINATED in `list()` at once and a notice with no warning left ("process exited") is
  yielded on `interruptions()`, as EC2 reports an instance already gone; so does a worker of
  the state file that died while no provider watched it (the control plane was down), and so
  does a launch of the state file that was not yet running when its provider died (a pending
  instance is saved at launch, so that a restart learns of it: it is reported gone, its worker
  killed if one started, and the loop records it terminated and replaces it at once).

No worker outlives its provider: close() stops them all; each worker also gets PR_SET_PDEATHSIG
(SIGKILL when the process that launched it dies, even by SIGKILL) and an atexit hook kills any
left. The pids, ports and instances are kept in a JSON state file (`cloud.local_state_dir`), so a
restarted control plane's provider lists (adopts) workers that are still alive and drops the rest.
"""

from __future__ import annotations

import asyncio
import atexit
import builtins
import contextlib
import ctypes
import json
import logging
import os
import shlex
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from mark.core.catalog import Catalog, load_catalog
from mark.core.config import CloudConfig, WorkerConfig
from mark.core.errors import CloudError, CloudNotFound, InsufficientCapacity, NotFound
from mark.core.types import Instance, InstanceState, InstanceType, Model, Offering
from provisioner.adapters.cloud import MODELS_TAG, OWNER_TAG, CloudProvider, InterruptionNotice

__all__ = ["LocalCloud", "STATE_FILE"]

logger = logging.getLogger("mark.provisioner.local")

STATE_FILE = "instances.json"
_PR_SET_PDEATHSIG = 1
_LISTENING = "listening on "
_STOP_GRACE_S = 5.0
_REFERENCE = ("mark", "worker")  # a cloud.worker_command that runs the reference worker
_CHILD_PIDS: set[int] = set()


def _kill_children_at_exit() -> None:
    for pid in list(_CHILD_PIDS):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


atexit.register(_kill_children_at_exit)


def _die_with_parent() -> None:
    """Runs in the child between fork and exec: SIGKILL it when its parent dies (Linux)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _is_worker(pid: int) -> bool:
    """True when `pid` is alive and is a `mark ... worker` process (guards against pid reuse)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"worker" in argv and any(a.endswith(b"mark.apps.cli") for a in argv)


def _running(pid: int) -> bool:
    """True while `pid` exists and has not exited (a zombie has exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _free_port() -> int:
    """A loopback port free now, for a server that cannot pick its own (`{port}`)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_BOOT_ESTIMATE_S = 3.0  # a Python worker's start-up on a loaded 2-core machine, until measured


@dataclass(slots=True)
class _Worker:
    instance: Instance
    pid: int | None = None
    process: asyncio.subprocess.Process | None = None
    boot: asyncio.Task[None] | None = None
    log_path: Path | None = None
    killers: list[asyncio.Task[None]] = field(default_factory=list)
    watcher: asyncio.Task[None] | None = None
    stopping: bool = False  # this provider stops it: its exit is no news


class LocalCloud:
    """`models(name)` returns a registered Model (its artifact and profiles), e.g.
    `Database.get_model`; `worker` is the `[worker]` section its workers get (with a store or a
    budget, a many-model fleet: module docstring). Create it inside a running event loop."""

    name = "local"

    def __init__(
        self,
        config: CloudConfig,
        *,
        models: Callable[[str], Awaitable[Model]],
        catalog: Catalog | None = None,
        state_dir: str | Path | None = None,
        clock: Callable[[], float] = time.time,
        owner: str = "mark",
        worker: WorkerConfig | None = None,
    ) -> None:
        self.config = config
        self.worker = worker if worker is not None else WorkerConfig()
        self.catalog = catalog if catalog is not None else load_catalog()
        self._models = models
        self._clock = clock
        self._owner = owner
        self.state_dir = Path(state_dir if state_dir is not None else config.local_state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._workers: dict[str, _Worker] = {}
        self._notices: asyncio.Queue[InterruptionNotice] = asyncio.Queue()
        self._boot_s = _BOOT_ESTIMATE_S
        self._adopt()

    # --- state file ---------------------------------------------------------------------------

    @property
    def _state_path(self) -> Path:
        return self.state_dir / STATE_FILE

    def _adopt(self) -> None:
        """Take over live workers a previous provider left in this state dir; forget the rest."""
        try:
            doc = json.loads(self._state_path.read_text())
        except (OSError, ValueError):
            return
        for record in doc.get("instances", []):
            try:
                instance = Instance.model_validate(record["instance"])
                pid = None if record["pid"] is None else int(record["pid"])
            except (KeyError, TypeError, ValueError):
                continue
            if not instance.live:
                continue
            if pid is None or instance.state != InstanceState.RUNNING:
                # a launch cut short: no worker yet, or one that never answered its health check
                if pid is not None and _is_worker(pid):
                    os.kill(pid, signal.SIGKILL)
                self._gone(instance.id, "its launch was interrupted (the provider died)")
            elif _is_worker(pid):
                worker = _Worker(instance, pid=pid)
                self._workers[instance.id] = worker
                worker.watcher = asyncio.create_task(self._watch(worker))
                logger.info("adopted local instance %s (pid %d)", instance.id, pid)
            else:
                self._gone(instance.id, f"worker process {pid} is gone")
        self._save()

    def _save(self) -> None:
        records = [
            {"pid": w.pid, "instance": w.instance.model_dump(mode="json")}
            for w in self._workers.values()
            if w.instance.live
        ]
        tmp = self._state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"instances": records}, indent=1))
        tmp.replace(self._state_path)

    # --- CloudProvider ------------------------------------------------------------------------

    async def instance_types(self) -> list[InstanceType]:
        """The catalog's types with this provider's own launch overhead: the catalog's scaled
        by `cloud.launch_overhead_scale`, plus the worker process's boot time as measured here
        (a slowly decaying maximum): the planner must plan with the delay it will get."""
        scale = self.config.launch_overhead_scale
        return [
            t.model_copy(update={"launch_overhead_s": t.launch_overhead_s * scale + self._boot_s})
            for t in self.catalog.instance_types.values()
        ]

    async def offerings(self) -> list[Offering]:
        """Catalog prices: on-demand list prices and the spot sample in force now."""
        return self.catalog.offerings(self.config.zones, at_s=self._clock())

    async def launch(self, offering: Offering, models: Sequence[str]) -> Instance:
        if not offering.available:
            raise InsufficientCapacity(f"offering {offering.key} is not available")
        if not models:
            raise CloudError("a local instance needs at least one model to serve")
        try:
            itype = self.catalog.instance_type(offering.instance_type)
            resolved = [await self._models(name) for name in models]
        except NotFound as exc:  # an unknown type or model: retrying cannot mend it
            raise CloudNotFound(f"cannot launch {offering.key}: {exc}") from exc
        instance = Instance(
            id=f"local-{uuid.uuid4().hex[:12]}",
            offering=offering,
            models=tuple(models),
            state=InstanceState.PENDING,
            tags={OWNER_TAG: self._owner, MODELS_TAG: ",".join(models)},
            launched_at_s=self._clock(),
        )
        worker = _Worker(instance, log_path=self.state_dir / f"{instance.id}.log")
        self._workers[instance.id] = worker
        overhead_s = itype.launch_overhead_s * self.config.launch_overhead_scale
        worker.boot = asyncio.create_task(self._boot(worker, overhead_s, resolved))
        self._save()  # a restarted provider must learn of it even if no worker ever starts
        return instance

    async def terminate(self, instance_id: str) -> None:
        """Stop the worker (SIGTERM, then SIGKILL after a grace period); unknown or already
        terminated instances succeed (not-found is done)."""
        worker = self._workers.get(instance_id)
        if worker is None or not worker.instance.live:
            return
        if worker.boot is not None and not worker.boot.done():
            worker.boot.cancel()
            await asyncio.gather(worker.boot, return_exceptions=True)
        await self._stop(worker, signal.SIGTERM)
        self._mark_terminated(worker)

    async def list(self) -> list[Instance]:
        return [w.instance for w in self._workers.values() if w.instance.live]

    async def interruptions(self) -> AsyncIterator[InterruptionNotice]:
        while True:
            yield await self._notices.get()

    async def close(self) -> None:
        """Kill every worker this provider holds, adopted ones included."""
        live = [w for w in self._workers.values() if w.instance.live]
        await asyncio.gather(*(self.terminate(w.instance.id) for w in live))
        for w in self._workers.values():
            for task in [*w.killers, *([w.watcher] if w.watcher is not None else [])]:
                task.cancel()

    # --- beyond the protocol ------------------------------------------------------------------

    def interrupt(self, instance_id: str, notice_s: float | None = None) -> InterruptionNotice:
        """Inject a spot interruption: a notice now, the worker killed after `notice_s`
        (default `cloud.interruption_notice_s`, EC2's two minutes)."""
        worker = self._workers.get(instance_id)
        if worker is None or not worker.instance.live:
            raise NotFound(f"no live local instance {instance_id!r}")
        notice_s = self.config.interruption_notice_s if notice_s is None else notice_s
        now = self._clock()
        notice = InterruptionNotice(instance_id, now, now + notice_s, "spot-interruption")
        self._notices.put_nowait(notice)
        worker.killers.append(asyncio.create_task(self._reclaim(worker, notice_s)))
        return notice

    def pid(self, instance_id: str) -> int | None:
        worker = self._workers.get(instance_id)
        return None if worker is None else worker.pid

    async def wait_running(self, instance_id: str, timeout_s: float) -> Instance:
        """Wait until the instance is RUNNING; raises CloudError when it dies or time runs out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            worker = self._workers.get(instance_id)
            if worker is None or not worker.instance.live:
                raise CloudError(f"instance {instance_id} terminated before it ran")
            if worker.instance.state == InstanceState.RUNNING:
                return worker.instance
            await asyncio.sleep(0.05)
        raise CloudError(f"instance {instance_id} not running after {timeout_s} s")

    # --- processes ----------------------------------------------------------------------------

    def _third_party(self, port: int) -> builtins.list[str] | None:
        """The argv of `cloud.worker_command` with `port`, None when it is `mark worker`."""
        argv = shlex.split(self.config.worker_command.format(port=port))
        return None if argv[:2] == list(_REFERENCE) else argv

    def _command(self, instance: Instance, models: Sequence[Model]) -> builtins.list[str]:
        """The reference worker's argv: the instance type's profiles (in a file: a thousand
        models' inline JSON would pass the kernel's 128 KiB limit on one argument), the
        `[worker]` section as flags, and each model under its served name."""
        itype = instance.offering.instance_type
        served = [(m.backend.backend_model_name or m.name, m) for m in models]
        profiles = {
            name: m.profiles[itype].model_dump(mode="json")
            for name, m in served
            if itype in m.profiles
        }
        cmd = [sys.executable, "-m", "mark.apps.cli", "worker"]
        cmd += ["--host", "127.0.0.1", "--port", "0"]
        cmd += ["--instance-type", itype]
        if profiles:
            path = self.state_dir / f"{instance.id}.profiles.json"
            path.write_text(json.dumps(profiles))
            cmd += ["--profiles", str(path)]
        cmd += ["--max-batch", str(max(m.max_batch for m in models))]
        cmd += self._cache_flags(self.worker)
        many = self.worker.store is not None or self.worker.memory_budget_bytes is not None
        for spec, lazy in dict.fromkeys(
            (f"{name}={m.backend.artifact}", many and m.memory_mb is not None) for name, m in served
        ):
            cmd += ["--lazy-model" if lazy else "--model", spec]
        return cmd

    @staticmethod
    def _cache_flags(worker: WorkerConfig) -> builtins.list[str]:
        """`mark worker`'s cache flags for the `[worker]` section (the unset ones left out)."""
        values = {
            "store": worker.store,
            "store-endpoint-url": worker.store_endpoint_url,
            "memory-budget-bytes": worker.memory_budget_bytes,
            "disk-budget-bytes": worker.disk_budget_bytes,
            "cache-dir": worker.cache_dir,
            "protect-s": worker.protect_s,
            "poll-s": worker.poll_s,
        }
        return [a for k, v in values.items() if v is not None for a in (f"--{k}", str(v))]

    async def _boot(self, worker: _Worker, overhead_s: float, models: Sequence[Model]) -> None:
        try:
            await asyncio.sleep(overhead_s)
            started = time.monotonic()
            endpoint = await asyncio.wait_for(
                self._start(worker, models), self.config.local_boot_timeout_s
            )
            self._boot_s = max(self._boot_s * 0.7, time.monotonic() - started)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure to start ends the instance, never half-alive
            logger.error(
                "local instance %s failed to start: %s (log: %s)",
                worker.instance.id,
                exc,
                worker.log_path,
            )
            await self._stop(worker, signal.SIGKILL)
            self._mark_terminated(worker)
            return
        worker.instance = worker.instance.transition(
            InstanceState.RUNNING, self._clock(), endpoint=endpoint
        )
        worker.watcher = asyncio.create_task(self._watch(worker))
        self._save()

    async def _watch(self, worker: _Worker) -> None:
        """Notice the worker's exit when this provider did not ask for it (a crash, a kill)."""
        pid = worker.pid
        if worker.process is not None:
            code: int | None = await worker.process.wait()
        else:  # adopted: not our child, poll /proc
            while pid is not None and _running(pid):
                await asyncio.sleep(0.5)
            code = None
        if worker.stopping or not worker.instance.live:
            return
        if pid is not None:
            _CHILD_PIDS.discard(pid)
        logger.warning(
            "local instance %s: worker process %s exited (code %s)", worker.instance.id, pid, code
        )
        self._mark_terminated(worker)
        self._gone(worker.instance.id, f"worker process {pid} exited (code {code})")

    def _gone(self, instance_id: str, why: str) -> None:
        """Tell the control loop an instance is gone with no warning left."""
        now = self._clock()
        self._notices.put_nowait(InterruptionNotice(instance_id, now, now, why))

    async def _start(self, worker: _Worker, models: Sequence[Model]) -> str:
        assert worker.log_path is not None
        port = _free_port()
        third_party = self._third_party(port)
        argv = third_party or self._command(worker.instance, models)
        with open(worker.log_path, "ab") as log:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log if third_party else asyncio.subprocess.PIPE,
                stderr=log,
                preexec_fn=_die_with_parent,
            )
        worker.process, worker.pid = process, process.pid
        _CHILD_PIDS.add(process.pid)
        self._save()
        if third_party:
            endpoint = f"http://127.0.0.1:{port}"
        else:
            assert process.stdout is not None
            line = (await process.stdout.readline()).decode()
            if _LISTENING not in line:
                raise CloudError(f"worker exited before listening (code {await process.wait()})")
            endpoint = line.split(_LISTENING, 1)[1].strip()
        async with aiohttp.ClientSession() as session:
            while True:
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{endpoint}/v2/health/ready") as resp:
                        if resp.status == 200:
                            return endpoint
                if process.returncode is not None:
                    raise CloudError(f"worker exited with code {process.returncode}")
                await asyncio.sleep(0.05)

    async def _stop(self, worker: _Worker, sig: signal.Signals) -> None:
        worker.stopping = True
        pid = worker.pid
        if pid is None:
            return
        if worker.process is not None:
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(sig)
            try:
                await asyncio.wait_for(worker.process.wait(), _STOP_GRACE_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()
                await worker.process.wait()
        else:  # adopted: not our child, poll /proc until it is gone
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            deadline = time.monotonic() + _STOP_GRACE_S
            while _running(pid) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if _running(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        _CHILD_PIDS.discard(pid)

    async def _reclaim(self, worker: _Worker, notice_s: float) -> None:
        await asyncio.sleep(notice_s)
        if worker.instance.live:
            await self._stop(worker, signal.SIGKILL)
            self._mark_terminated(worker)

    def _mark_terminated(self, worker: _Worker) -> None:
        if worker.instance.live:
            worker.instance = worker.instance.transition(InstanceState.TERMINATED, self._clock())
        self._save()


_: type[CloudProvider] = LocalCloud
