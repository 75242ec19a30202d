"""Soak (issue 18, item 5): sustained load through a real `mark serve` on the local cloud (one
real `mark worker` process per instance) with its control loop active, shaped so that the fleet
scales out and back in during the run (cycles of a low rate, a step up, a low rate again).

Reports: requests sent, duration, the statuses counted, whether every request was answered
exactly once (each request carries its own id and must get exactly one answer, carrying that id
back when it is a 200), the error rate, launches and drains from the decision log, the peak and
final number of live instances, the front end's memory (RSS) and open file descriptors at the
start and the end (the `mark serve` process and its descendants other than the `mark worker`
instances, read from /proc), and the instances left running once `mark serve` has stopped.

    python bench/soak.py --minutes 10

`tests/test_soak.py` runs `soak` for about a minute in CI with the same server configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
MODEL_NAME = "soak"
# 50 ms per request on a c5.large (the worker paces to it), unbatched: a few instances' worth at
# the high rate, one at the low rate.
MODEL = {
    "name": MODEL_NAME,
    "slo": {"latency_ms": 500, "percentile": 0.98},
    "backend": {"protocol": "kserve-v2", "artifact": "builtin:mlp"},
    "profiles": {
        "c5.large": {"instance_type": "c5.large", "latency_ms": {"1": 50.0}, "max_batch": 1}
    },
    "max_batch": 1,
}
# Seconds, not minutes: a 2 s tick forecasting the last 2 s bucket, instances that boot in a
# few seconds, and a short hold before scale-in, so one minute holds a scale-out and a scale-in;
# 16 sandboxes in the local function pool (8 by default) cover the ramp while instances boot.
CONFIG = """
[control]
tick_s = 2.0
sync_s = 0.5
reconcile_grace_s = 60.0
[cloud]
launch_overhead_scale = 0.02
zones = ["us-east-1a"]
[planner]
horizon_s = 10.0
spot = false
allowed_types = ["c5.large"]
scale_in_hold_s = 4.0
drain_s = 1.0
release_window_s = 60.0
[forecast]
predictor = "last"
bucket_s = 2.0
[serverless]
concurrency = 16
"""


@dataclass(frozen=True)
class Phase:
    rps: float
    seconds: float


def ramp(from_rps: float, to_rps: float, seconds: float) -> list[Phase]:
    """The rate going linearly from `from_rps` to `to_rps`, one phase per second."""
    steps = max(int(round(seconds)), 1)
    return [
        Phase(from_rps + (to_rps - from_rps) * (k + 0.5) / steps, seconds / steps)
        for k in range(steps)
    ]


def cycles(total_s: float, *, low_rps: float = 4.0, high_rps: float = 40.0) -> list[Phase]:
    """Cycles of about a minute each: a quarter at the low rate, a ramp up to the high rate
    over a quarter (as fast as a 2 s tick and a few seconds' boot follow with the serverless
    pool's help), a quarter at the high rate, then back to the low rate at once, where the fleet
    scales in."""
    count = max(int(total_s // 60), 1)
    quarter = total_s / count / 4
    phases: list[Phase] = []
    for _ in range(count):
        phases += [Phase(low_rps, quarter), *ramp(low_rps, high_rps, quarter)]
        phases += [Phase(high_rps, quarter), Phase(low_rps, quarter)]
    return phases


@dataclass(frozen=True)
class ProcessUse:
    """Memory and descriptors of the front end: `mark serve` and its descendants that are not
    instances nor serverless sandboxes (Sanic's manager, its HTTP workers, the control plane,
    multiprocessing's resource tracker once a sandbox has started); `sandboxes` counted apart."""

    rss_kib: int
    fds: int
    processes: int
    sandboxes: int


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            out += [int(c) for c in task.read_text().split()]
        except OSError:
            continue
    return out


def _argv(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def _is_instance(pid: int) -> bool:
    argv = _argv(pid)
    return b"worker" in argv and any(a.endswith(b"mark.apps.cli") for a in argv)


def _is_sandbox(pid: int, parent: int, root: int) -> bool:
    """A local function pool's sandbox: a spawned process (`spawn_main`) started by the control
    plane, not by `mark serve` itself as Sanic's workers and the control plane are; serverless
    capacity kept warm for `serverless.keep_warm_s`, not the front end."""
    return parent != root and any(b"spawn_main" in a for a in _argv(pid))


def process_tree(pid: int) -> list[tuple[int, int]]:
    """`pid` and all its descendants, each with its parent (`pid`'s own parent given as 0)."""
    seen, todo = [], [(pid, 0)]
    while todo:
        p, parent = todo.pop()
        seen.append((p, parent))
        todo += [(c, p) for c in _children(p)]
    return seen


def instance_pids(pid: int) -> list[int]:
    return [p for p, _ in process_tree(pid) if _is_instance(p)]


def front_end_use(pid: int) -> ProcessUse:
    rss = fds = count = sandboxes = 0
    for p, parent in process_tree(pid):
        if _is_instance(p):
            continue
        if _is_sandbox(p, parent, pid):
            sandboxes += 1
            continue
        try:
            status = Path(f"/proc/{p}/status").read_text()
            fds += len(os.listdir(f"/proc/{p}/fd"))
        except OSError:
            continue
        count += 1
        rss += next(
            int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")
        )
    return ProcessUse(rss, fds, count, sandboxes)


@dataclass
class SoakReport:
    requests: int
    duration_s: float
    statuses: dict[str, int]
    errors: dict[str, int]  # what each error answer said, counted
    answered_once: bool  # every request got exactly one answer, a 200 carrying its own id
    lost: int  # requests sent that got no answer at all
    error_rate: float
    launches: int
    drains: int
    peak_instances: int  # live (pending, running, draining) at once, polled every second
    peak_by_state: dict[str, int]  # the most in each state at once
    final_instances: int
    start: ProcessUse
    end: ProcessUse
    phases: list[Phase] = field(default_factory=list)


async def _admin(session: aiohttp.ClientSession, base: str, token: str, path: str) -> Any:
    async with session.get(base + path, headers={"Authorization": f"Bearer {token}"}) as r:
        r.raise_for_status()
        return await r.json()


async def _live(session: aiohttp.ClientSession, base: str, token: str) -> list[dict[str, Any]]:
    doc = await _admin(session, base, token, f"/admin/v1/instances?model={MODEL_NAME}")
    return list(doc["instances"])


async def _one(
    session: aiohttp.ClientSession, url: str, rid: str, answers: dict[str, list[str]]
) -> None:
    body = {"id": rid, "inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32",
                                   "data": [0.5] * 16}]}  # fmt: skip
    try:
        async with session.post(url, json=body) as r:
            doc = await r.json(content_type=None)
            if r.status == 200:
                answers[rid].append("200" if doc.get("id") == rid else "200 for another id")
            else:
                answers[rid].append(f"{r.status} {str(doc.get('error', ''))[:100]}")
    except (aiohttp.ClientError, TimeoutError) as exc:
        answers[rid].append(type(exc).__name__)


async def _drive(url: str, phases: Sequence[Phase]) -> dict[str, list[str]]:
    """Open-loop load: each phase's requests at its rate, on schedule whatever the answers,
    from a client of its own whose connections are closed at the end (kept alive, they would
    count as the front end's descriptors)."""
    answers: dict[str, list[str]] = {}
    tasks = []
    clock = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        for phase in phases:
            for k in range(int(phase.rps * phase.seconds)):
                delay = clock + k / phase.rps - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                rid = uuid.uuid4().hex
                answers[rid] = []
                tasks.append(asyncio.create_task(_one(session, url, rid, answers)))
            clock += phase.seconds
        await asyncio.gather(*tasks)
    await asyncio.sleep(1.0)  # the front end sees the closes
    return answers


async def soak(
    base: str, token: str, serve_pid: int, phases: Sequence[Phase], *, settle_s: float = 60.0
) -> SoakReport:
    """Register the model, wait for its first instance, warm up, measure, load, wait for the
    fleet to scale back in (at most `settle_s`), measure again."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        headers = {"Authorization": f"Bearer {token}"}
        async with session.post(base + "/admin/v1/models", json=MODEL, headers=headers) as r:
            if r.status != 201:
                raise RuntimeError(f"registering the model: {r.status} {await r.text()}")
        url = f"{base}/v2/models/{MODEL_NAME}/infer"
        async with asyncio.timeout(90):
            while not any(i["state"] == "running" for i in await _live(session, base, token)):
                await asyncio.sleep(0.5)
        warm = await _drive(url, [Phase(4.0, 3.0)])  # pools and caches opened
        if any(a != ["200"] for a in warm.values()):
            raise RuntimeError(f"warm-up failed: {Counter(x for a in warm.values() for x in a)}")
        start_use = front_end_use(serve_pid)
        peak = 0
        peak_by_state: Counter[str] = Counter()

        async def watch() -> None:
            nonlocal peak
            while True:
                live_now = await _live(session, base, token)
                peak = max(peak, len(live_now))
                peak_by_state.update(
                    {
                        state: n - peak_by_state[state]
                        for state, n in Counter(i["state"] for i in live_now).items()
                        if n > peak_by_state[state]
                    }
                )
                await asyncio.sleep(1.0)

        watcher = asyncio.create_task(watch())
        began = time.monotonic()
        answers = await _drive(url, phases)
        duration = time.monotonic() - began
        deadline = time.monotonic() + settle_s
        live = await _live(session, base, token)
        while len(live) >= peak > 1 and time.monotonic() < deadline:
            await asyncio.sleep(1.0)
            live = await _live(session, base, token)
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        end_use = front_end_use(serve_pid)
        page = await _admin(
            session, base, token, f"/admin/v1/decisions?limit=1000&model={MODEL_NAME}"
        )
    kinds = Counter(d["action"] for d in page["decisions"])
    reasons = Counter(s for got in answers.values() for s in got)
    statuses = Counter(s.split(" ", 1)[0] for got in answers.values() for s in got)
    answered_once = all(got == ["200"] for got in answers.values())
    errors = sum(n for s, n in statuses.items() if s != "200")
    return SoakReport(
        requests=len(answers),
        duration_s=round(duration, 1),
        statuses=dict(statuses),
        errors={k: n for k, n in reasons.items() if k != "200"},
        answered_once=answered_once,
        lost=sum(1 for got in answers.values() if not got),
        error_rate=errors / max(len(answers), 1),
        launches=kinds["launch"],
        drains=kinds["drain"],
        peak_instances=peak,
        peak_by_state=dict(peak_by_state),
        final_instances=len(live),
        start=start_use,
        end=end_use,
        phases=list(phases),
    )


def _start_serve(workdir: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    from bench.harness import free_port, wait_http

    port = free_port()
    token = uuid.uuid4().hex
    (workdir / "mark.toml").write_text(CONFIG)
    env = {**os.environ, "MARK_ADMIN_TOKEN": token,
           "MARK_DATABASE_URL": f"sqlite+aiosqlite:///{workdir / 'mark.db'}"}  # fmt: skip
    log = open(workdir / "serve.log", "wb")  # noqa: SIM115 (the child keeps it)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mark.apps.cli", "serve", "--config", str(workdir / "mark.toml"),
         "--port", str(port)],
        cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    log.close()
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/v2/health/ready")
    while "control plane running" not in (workdir / "serve.log").read_text(errors="replace"):
        time.sleep(0.2)
    time.sleep(1.0)  # Sanic's manager takes its workers' acknowledgements (tests/conftest.py)
    return proc, base, token


def stop_and_count_leaks(proc: subprocess.Popen[bytes], instances: Sequence[int]) -> int:
    """SIGTERM `mark serve`, wait, and count the instance processes still alive after it."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    time.sleep(1.0)
    return sum(1 for p in instances if _is_instance(p))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--low-rps", type=float, default=4.0)
    parser.add_argument("--high-rps", type=float, default=40.0)
    args = parser.parse_args(argv)
    phases = cycles(args.minutes * 60.0, low_rps=args.low_rps, high_rps=args.high_rps)
    with tempfile.TemporaryDirectory(prefix="mark-soak-") as tmp:
        proc, base, token = _start_serve(Path(tmp))
        seen: set[int] = set()
        try:
            report = asyncio.run(soak(base, token, proc.pid, phases))
            seen.update(instance_pids(proc.pid))
        finally:
            leaked = stop_and_count_leaks(proc, sorted(seen))
    command = "python bench/soak.py " + " ".join(sys.argv[1:] if argv is None else argv)
    doc = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "command": command,
           **asdict(report), "instances_leaked": leaked}  # fmt: skip
    print(json.dumps(doc, indent=2))
    return 0 if report.answered_once and leaked == 0 else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
