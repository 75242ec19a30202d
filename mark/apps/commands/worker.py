"""`mark worker`: run the reference KServe v2 model server (what local instances are).

    mark worker --model demo=builtin:mlp --port 0 --instance-type c5.large
    mark worker --store s3://bucket/models --memory-budget-bytes 4000000000 --port 8080

`--model [NAME=]ARTIFACT` may repeat: those models load at start and stay (pinned).
`--lazy-model [NAME=]ARTIFACT` may repeat too: those load on their first request, like stored
ones (the local cloud starts a worker with a memory budget so). With `--store` (a directory or
s3://bucket/prefix) any model the store holds loads on its first request within
`--memory-budget-bytes` (mark/apps/worker/cache.py). An artifact may be an S3 object
(`onnx:s3://bucket/key`, fetched through `--store-endpoint-url` when given, versioned by its
ETag). The cache's flags override the `[worker]` section of `--config FILE` and its
`MARK_WORKER__...` environment. `--port 0` picks a free port. The worker has no
authentication, so it listens on loopback unless `--allow-remote` lets `--host` name another
address. Once serving, the worker prints one line
`mark-worker listening on http://HOST:PORT` to stdout (the local cloud reads the port from it)
and stops cleanly on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import shutil
import signal
import socket
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["register", "parse_model_specs", "parse_profiles", "require_loopback"]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "worker",
        help="run the reference KServe v2 model server",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="[NAME=]ARTIFACT",
        help="builtin:mlp, onnx:PATH, sklearn:PATH or torchscript:PATH, loaded at start and "
        "pinned (repeatable)",
    )
    parser.add_argument(
        "--lazy-model",
        action="append",
        default=[],
        metavar="[NAME=]ARTIFACT",
        help="like --model, but loaded on its first request (or a repository load) within the "
        "memory budget and evicted like a stored model (repeatable)",
    )
    parser.add_argument("--config", default=None, metavar="FILE", help="TOML with [worker]")
    cache = parser.add_argument_group("model cache (the [worker] config section)")
    cache.add_argument(
        "--store", default=None, help="model store: a directory or s3://bucket/prefix"
    )
    cache.add_argument("--store-endpoint-url", default=None, help="S3 endpoint (an emulator)")
    cache.add_argument(
        "--memory-budget-bytes", type=int, default=None, help="memory for models (default: no cap)"
    )
    cache.add_argument(
        "--disk-budget-bytes", type=int, default=None, help="disk tier size (default 10 GiB)"
    )
    cache.add_argument(
        "--cache-dir",
        default=None,
        help="where the disk tier lives (default: a temporary directory)",
    )
    cache.add_argument(
        "--protect-s",
        type=float,
        default=None,
        help="a model that served a request this recently is never evicted (default 60)",
    )
    cache.add_argument(
        "--poll-s",
        type=float,
        default=None,
        help="seconds between store polls for live reload (default 10; 0: off)",
    )
    parser.add_argument("--port", type=int, required=True, help="TCP port (0: any free port)")
    parser.add_argument(
        "--host", default="127.0.0.1", help="listen address (default 127.0.0.1, loopback only)"
    )
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a --host that is not loopback (the worker has no authentication: only on a "
        "network where the front end is the sole client, e.g. an instance's private address)",
    )
    parser.add_argument(
        "--instance-type",
        default=None,
        help="pace each batch to this type's profile T(b) = a + c*b (default: native speed)",
    )
    parser.add_argument(
        "--profiles",
        default=None,
        metavar="JSON|FILE",
        help="explicit profiles by model name, overriding the catalog's (needs --instance-type)",
    )
    parser.add_argument("--max-batch", type=int, default=64, help="most rows per executed batch")
    parser.add_argument("--max-body-mb", type=float, default=64.0)
    parser.set_defaults(func=run)


def parse_model_specs(specs: list[str]) -> dict[str, str]:
    """`[NAME=]ARTIFACT` flags to {name: artifact}; the name defaults from the artifact."""
    from mark.apps.worker.loaders import default_name
    from mark.core.errors import InvalidValue

    out: dict[str, str] = {}
    for spec in specs:
        name, sep, artifact = spec.partition("=")
        if not sep or ":" in name:
            name, artifact = default_name(spec), spec
        if not name or name in out:
            raise InvalidValue("model", f"model name {name!r} is empty or given twice")
        out[name] = artifact
    return out


def require_loopback(host: str, allow_remote: bool) -> None:
    """Refuse a listen address other hosts can reach unless the caller says so: the worker
    answers anyone who connects (inference and the model repository's load/unload), with no
    token, so being reachable must be a decision rather than a default."""
    if allow_remote or _is_loopback(host):
        return
    from mark.core.errors import InvalidValue

    raise InvalidValue(
        "host",
        f"{host!r} is not a loopback address and the worker has no authentication; pass "
        "--allow-remote to listen there on purpose (as Mark's EC2 instances do)",
    )


def _is_loopback(host: str) -> bool:
    """Every address `host` names is loopback (a name is resolved; 0.0.0.0 and :: are every
    interface, not loopback)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return bool(infos) and all(
        ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos
    )


def parse_profiles(raw: str | None) -> dict[str, Any]:
    """{name: Profile} from inline JSON or a JSON file."""
    from mark.core.errors import InvalidValue
    from mark.core.types import Profile

    if raw is None:
        return {}
    text = Path(raw).read_text() if not raw.lstrip().startswith("{") else raw
    try:
        doc = json.loads(text)
        return {name: Profile.model_validate(p) for name, p in doc.items()}
    except (json.JSONDecodeError, ValueError, AttributeError) as exc:
        raise InvalidValue("profiles", f"not a JSON object of profiles: {exc}") from exc


_CACHE_FLAGS = (
    "store",
    "store_endpoint_url",
    "memory_budget_bytes",
    "disk_budget_bytes",
    "cache_dir",
    "protect_s",
    "poll_s",
)


def _settings(args: argparse.Namespace) -> Any:
    """The [worker] section: --config and the environment, the cache flags over them."""
    from mark.core.config import load_config

    flags = {k: getattr(args, k) for k in _CACHE_FLAGS if getattr(args, k) is not None}
    return load_config(args.config, worker=flags).worker


async def _serve(args: argparse.Namespace, settings: Any, cache_dir: Path) -> None:
    from importlib.metadata import version

    from aiohttp import web

    from mark.adapters.model_store import open_store
    from mark.apps.worker.cache import ModelCache
    from mark.apps.worker.loaders import ServedModel
    from mark.apps.worker.pacing import resolve_profiles
    from mark.apps.worker.runner import ModelRunner
    from mark.apps.worker.server import SERVER_NAME, build_app
    from mark.core.errors import InvalidValue

    specs = parse_model_specs(args.model)
    lazy = parse_model_specs(args.lazy_model)
    both = sorted(set(specs) & set(lazy))
    if both:
        raise InvalidValue("model", f"given as --model and --lazy-model: {', '.join(both)}")
    if not specs and not lazy and settings.store is None:
        raise InvalidValue(
            "model", "give --model, --store (or [worker] store), --lazy-model, or several"
        )
    known = {**lazy, **specs}
    explicit = parse_profiles(args.profiles)
    if explicit and args.instance_type is None:
        raise InvalidValue("profiles", "--profiles needs --instance-type")
    if args.instance_type:
        resolve_profiles(known, args.instance_type, explicit)  # refuse a bad type at start

    def make_runner(model: ServedModel, model_version: str) -> ModelRunner:
        """A stored model is paced like a --model one: its explicit or catalog profile."""
        profile = None
        if args.instance_type:
            named = {model.name: known.get(model.name, "store")}
            profile = resolve_profiles(named, args.instance_type, explicit)[model.name]
        return ModelRunner(model, profile=profile, max_batch=args.max_batch, version=model_version)

    store = None
    if settings.store is not None:
        store = open_store(settings.store, endpoint_url=settings.store_endpoint_url)
    cache = ModelCache(settings, store, specs, cache_dir, make_runner, on_demand=lazy)
    try:
        await cache.start()
    except BaseException:
        await cache.close()
        raise
    app = build_app(cache, max_body_mb=args.max_body_mb, version=version("mark"))
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    await web.SockSite(runner, sock, backlog=1024).start()
    port = sock.getsockname()[1]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"{SERVER_NAME} listening on http://{args.host}:{port}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def run(args: argparse.Namespace) -> int:
    require_loopback(args.host, args.allow_remote)
    # before prometheus_client is imported: a worker that `mark serve` started must keep its
    # metrics to itself, not write them into the front end's multiprocess files
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    settings = _settings(args)
    parent = settings.cache_dir
    if parent is not None:
        Path(parent).mkdir(parents=True, exist_ok=True)
    # the disk tier of this process only: a previous run's files are not trusted or counted
    cache_dir = Path(tempfile.mkdtemp(prefix="mark-worker-cache-", dir=parent))
    try:
        try:
            import uvloop
        except ImportError:
            asyncio.run(_serve(args, settings, cache_dir))
        else:
            uvloop.run(_serve(args, settings, cache_dir))
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    return 0
