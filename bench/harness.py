"""Shared pieces of the data-plane benchmarks: real workers, a real Mark front end, nginx and wrk.

Everything runs on loopback; each benchmark measures Mark against its reference (nginx, direct)
in the same run against the same workers and prints ratios. wrk and nginx come from Debian:
`apt-get update && apt-get install -y wrk nginx-light`.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROW = [0.1 * i for i in range(16)]
BODY = json.dumps(
    {"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32", "data": ROW}]}
)

# wrk script: POST the body; at the end print p50/p99 and the share of requests within SLO_US.
WRK_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = os.getenv("BENCH_BODY")
local pause_ms = tonumber(os.getenv("BENCH_DELAY_MS") or "0")
if pause_ms > 0 then
  delay = function() return pause_ms end
end
done = function(summary, latency, requests)
  local slo = tonumber(os.getenv("BENCH_SLO_US"))
  local lo, hi = 0.0, 100.0
  for _ = 1, 40 do
    local mid = (lo + hi) / 2
    if latency:percentile(mid) <= slo then lo = mid else hi = mid end
  end
  io.write(string.format(
    "BENCH {\\"requests\\": %d, \\"duration_us\\": %d, \\"errors\\": %d, \\"p50_us\\": %d, " ..
    "\\"p99_us\\": %d, \\"within_slo\\": %.5f}\\n",
    summary.requests, summary.duration,
    summary.errors.connect + summary.errors.read + summary.errors.write +
    summary.errors.status + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), lo / 100.0))
end
"""


def require_tools() -> None:
    missing = [t for t in ("wrk", "nginx") if shutil.which(t) is None]
    if missing:
        sys.exit(
            f"missing {', '.join(missing)}: install with "
            "`apt-get update && apt-get install -y wrk nginx-light` (Debian/Ubuntu)"
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not become ready")


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    url: str

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def start_worker(*args: str) -> Proc:
    port = free_port()
    cmd = [sys.executable, "-m", "mark.apps.cli", "worker", "--port", str(port), *args]
    popen = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/v2/health/ready")
    return Proc(popen, url)


def start_nginx(upstreams: Sequence[str], workdir: Path) -> Proc:
    port = free_port()
    servers = "\n".join(f"    server {u.removeprefix('http://')};" for u in upstreams)
    conf = f"""
worker_processes 1;
error_log {workdir}/nginx-error.log;
pid {workdir}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {workdir}; proxy_temp_path {workdir};
  upstream workers {{
{servers}
    keepalive 128;
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://workers;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""
    (workdir / "nginx.conf").write_text(conf)
    popen = subprocess.Popen(
        ["nginx", "-p", str(workdir), "-c", str(workdir / "nginx.conf"), "-g", "daemon off;"]
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/v2/health/ready")
    return Proc(popen, url)


def start_sanic_proxy(upstreams: Sequence[str]) -> Proc:
    """bench/sanic_proxy.py: a bare Sanic forwarder, the floor of a Sanic front end."""
    port = free_port()
    cmd = [sys.executable, "-m", "bench.sanic_proxy", str(port), ",".join(upstreams)]
    popen = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/v2/health/ready")
    return Proc(popen, url)


@dataclass
class Front(Proc):
    """The front end: its first worker process, and the others sharing its port."""

    others: list[Proc]

    def stop(self) -> None:
        for proc in self.others:
            proc.stop()
        super().stop()


def start_pool() -> Proc:
    """The local function pool behind Lambda's Invoke API (what `mark serve`'s control plane
    runs), in a process of its own: a front end given its port spills there."""
    port = free_port()
    popen = subprocess.Popen([sys.executable, "-m", "bench.harness", "--pool", str(port)],
                             cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return Proc(popen, f"http://127.0.0.1:{port}")
        time.sleep(0.1)
    popen.kill()
    raise RuntimeError("the local function pool did not start")


async def _serve_pool(port: int) -> None:
    from mark.core.config import load_config
    from provisioner.adapters.serverless import InvokeServer, LocalFunctionPool

    pool = LocalFunctionPool(load_config(environ={}, serverless={"local_port": port}).serverless)
    await InvokeServer(pool).start()
    await asyncio.Event().wait()


def start_front(model: dict[str, object], upstreams: Sequence[tuple[str, str]], workdir: Path,
                batching: dict[str, object] | None = None, workers: int = 1,
                extra_models: Sequence[dict[str, object]] = (),
                pool: Proc | None = None) -> Front:  # fmt: skip
    """A real Mark front end (create_app + the inference blueprint) whose database lists
    `upstreams` ((instance type, endpoint)) as running instances of `model`. As under `mark serve`
    with `server.workers = workers`: that many processes share the port (SO_REUSEPORT: the
    kernel spreads connections) and the metrics are in multiprocess mode. `extra_models` are
    registered too and listed on every instance (a many-model fleet); with `pool`
    (`start_pool`) it spills there, as `mark serve` does, else spill is off."""
    port = free_port()
    metrics_dir = workdir / "metrics"
    metrics_dir.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    procs: list[Proc] = []
    url = f"http://127.0.0.1:{port}"
    for index in range(workers):
        ready = workdir / f"front-{index}.ready"
        spec = {"model": model, "upstreams": list(upstreams), "db": str(workdir / "bench.db"),
                "port": port, "batching": batching or {}, "seed": index == 0,
                "ready_file": str(ready), "extra_models": list(extra_models),
                "pool_port": int(pool.url.rsplit(":", 1)[1]) if pool else 0}  # fmt: skip
        spec_file = workdir / f"front-{index}.json"  # a thousand models pass argv's limit
        spec_file.write_text(json.dumps(spec))
        popen = subprocess.Popen(
            [sys.executable, "-m", "bench.harness", str(spec_file)], cwd=ROOT, env=env
        )
        procs.append(Proc(popen, url))
        deadline = time.monotonic() + 60
        while not ready.exists():
            if time.monotonic() > deadline or popen.poll() is not None:
                for proc in procs:
                    proc.stop()
                raise RuntimeError("the Mark front end did not become ready")
            time.sleep(0.1)
    return Front(procs[0].popen, url, procs[1:])


def wrk(url: str, *, connections: int, duration_s: int, slo_ms: float, threads: int = 1,
        delay_ms: int = 0) -> dict:  # fmt: skip
    """Closed loop over `connections`; with `delay_ms` each connection pauses that long after
    every answer (wrk's delay() hook), which paces the offered load below saturation."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(WRK_LUA)
    env = {**os.environ, "BENCH_BODY": BODY, "BENCH_SLO_US": str(int(slo_ms * 1000)),
           "BENCH_DELAY_MS": str(delay_ms)}  # fmt: skip
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration_s}s", "-s", fh.name, url],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    os.unlink(fh.name)
    line = next(x for x in out.stdout.splitlines() if x.startswith("BENCH "))
    doc: dict = json.loads(line.removeprefix("BENCH "))
    doc["rps"] = doc["requests"] / (doc["duration_us"] / 1e6)
    doc["goodput_rps"] = doc["rps"] * doc["within_slo"]
    return doc


def cpu_s(procs: Sequence[Proc]) -> float:
    """User + system CPU seconds the processes have used so far (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for proc in procs:
        fields = Path(f"/proc/{proc.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / ticks


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}, {time.strftime('%Y-%m-%d')}"


async def _serve_front(spec: dict) -> None:
    from frontend import inference
    from frontend.app import create_app
    from mark.adapters.db import Database
    from mark.core.config import load_config
    from mark.core.types import Instance, InstanceState, Market, Model, Offering

    url = f"sqlite+aiosqlite:///{spec['db']}"
    if spec["seed"]:
        db = await Database.open(url)
        model = Model.model_validate(spec["model"])
        extra = [Model.model_validate(m) for m in spec["extra_models"]]
        await db.create_models([model, *extra])
        served = (model.name, *(m.name for m in extra))
        for i, (itype, endpoint) in enumerate(spec["upstreams"]):
            offering = Offering(instance_type=itype, zone="local", market=Market.ON_DEMAND,
                                price_per_hour=0.1)  # fmt: skip
            await db.save_instance(
                Instance(id=f"bench-{i}", offering=offering, models=served,
                         state=InstanceState.RUNNING, endpoint=endpoint, launched_at_s=0.0)
            )  # fmt: skip
        await db.close()
    config = load_config(
        server={"port": spec["port"]},
        database={"url": url},
        batching=spec["batching"],
        serverless={"local_port": spec["pool_port"]},
    )
    app = create_app(config, name="bench")
    if "inference" not in app.blueprints:
        app.blueprint(inference.bp)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", spec["port"]))
    server = await app.create_server(
        sock=sock,
        return_asyncio_server=True,
        access_log=False,
        asyncio_server_kwargs={"start_serving": False},  # listen once the fleet is built
    )
    assert server is not None
    await server.startup()
    await server.before_start()
    await server.after_start()
    fleet = app.ctx.fleet
    while not fleet.resident(spec["model"]["name"]):  # routed to an instance holding it
        await asyncio.sleep(0.05)
    await server.start_serving()
    Path(spec["ready_file"]).touch()
    await server.serve_forever()


if __name__ == "__main__":
    import uvloop

    if sys.argv[1] == "--pool":
        uvloop.run(_serve_pool(int(sys.argv[2])))
    else:
        uvloop.run(_serve_front(json.loads(Path(sys.argv[1]).read_text())))
