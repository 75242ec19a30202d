"""`mark profile`: measure T(b) = a + c*b for a model on the machine it runs on.

    mark profile --model demo=builtin:mlp --instance-type c5.large --out demo-c5.large.json

MArk profiles each model offline on each instance type and treats execution time as
deterministic (paper, section 4). This command takes those measurements the way the model is
served, not in a notebook. It starts a real `mark worker` process, the same server and loaders that
instances run under `mark serve`, at native speed. It reads the model's inputs from the worker's
v2 metadata and sends one request of b rows for each batch size b: first `--warmup` untimed,
then `--repeats` timed, one at a time, so each time is one batch's service alone. The body is
encoded before the clock starts, so client-side encoding is not counted.

Each batch size's median becomes one point of the profile. `Profile` fits the line through those
points (the same least-squares fit the planner and batcher use). The command prints that fit with
the residuals of every point and of every single measurement, so a reader can see whether T(b) is
really linear on this machine. It writes a profile entry marked measured (`estimated: false`),
whose `source` names the host, the CPU, the date and the fit. The entry can be given to
`mark worker --profiles`, to the admin API's model profiles, or to the catalog.

An instance type is only a label here: run the command on that type (a c5.large, a g4dn.xlarge)
for the profile to mean that type.
"""

from __future__ import annotations

import argparse
import http.client
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = ["register", "run", "ProfileRun", "measure", "fit_report"]

_LISTENING = "listening on "
_V2_NUMPY = {
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "UINT8": "uint8",
    "BOOL": "bool",
}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "profile",
        help="measure a model's batch service time T(b) = a + c*b on this machine",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, metavar="[NAME=]ARTIFACT")
    parser.add_argument(
        "--instance-type", default="local", help="label of the entry (run it on that type)"
    )
    parser.add_argument("--max-batch", type=int, default=32, help="largest batch measured")
    parser.add_argument(
        "--batch-sizes",
        default=None,
        metavar="B,B,...",
        help="batch sizes to measure (default: 1, 2, 4, ... up to --max-batch)",
    )
    parser.add_argument("--warmup", type=int, default=3, help="untimed requests per size")
    parser.add_argument("--repeats", type=int, default=10, help="timed requests per size")
    parser.add_argument("--out", type=Path, default=None, help="write the entry here (JSON)")
    parser.add_argument(
        "--worker-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for the `mark worker` it starts (repeatable, e.g. "
        "--worker-arg=--instance-type=X to profile a paced worker)",
    )
    parser.set_defaults(func=run)


@dataclass(frozen=True, slots=True)
class ProfileRun:
    """Every timed batch: `times_ms[b]` holds the `repeats` service times of batches of b."""

    model: str
    instance_type: str
    times_ms: dict[int, list[float]]


def batch_sizes(spec: str | None, max_batch: int) -> list[int]:
    """`1,2,4` as given, or the powers of two up to `max_batch` (and `max_batch` itself)."""
    from mark.core.errors import InvalidValue

    if spec is not None:
        try:
            sizes = sorted({int(s) for s in spec.split(",") if s.strip()})
        except ValueError as exc:
            raise InvalidValue("batch-sizes", f"not a list of integers: {spec!r}") from exc
        if not sizes or sizes[0] < 1:
            raise InvalidValue("batch-sizes", "batch sizes must be integers >= 1")
        return sizes
    if max_batch < 1:
        raise InvalidValue("max-batch", "must be >= 1")
    sizes = [1]
    while sizes[-1] * 2 <= max_batch:
        sizes.append(sizes[-1] * 2)
    if sizes[-1] != max_batch:
        sizes.append(max_batch)
    return sizes


def _request_body(inputs: Sequence[dict[str, Any]], rows: int) -> bytes:
    """A v2 JSON request of `rows` rows: the batch on dimension 0, every other variable
    dimension 1, values drawn from a fixed seed (the model's speed should not depend on them)."""
    import numpy as np

    from mark.core.errors import InvalidValue

    rng = np.random.default_rng(0)
    tensors = []
    for meta in inputs:
        dtype = _V2_NUMPY.get(meta["datatype"])
        if dtype is None:
            raise InvalidValue(
                "model",
                f"cannot profile input {meta['name']!r} of type {meta['datatype']} "
                "(numeric tensors only)",
            )
        shape = [rows] + [1 if d < 0 else int(d) for d in meta["shape"][1:]]
        data = rng.random(shape) if dtype.startswith("float") else rng.integers(0, 2, shape)
        tensors.append(
            {
                "name": meta["name"],
                "shape": shape,
                "datatype": meta["datatype"],
                "data": data.astype(dtype).ravel().tolist(),
            }
        )
    return json.dumps({"inputs": tensors}).encode()


def _start_worker(model: str, max_batch: int, extra: Sequence[str]) -> tuple[Any, str]:
    """A `mark worker` process at native speed on a free loopback port, and its URL."""
    cmd = [sys.executable, "-m", "mark.apps.cli", "worker", "--model", model, "--port", "0"]
    cmd += ["--max-batch", str(max_batch), *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if _LISTENING not in line:
        proc.kill()
        from mark.core.errors import MarkError

        raise MarkError(f"mark worker did not start (exit {proc.wait()}): {line.strip()}")
    return proc, line.split(_LISTENING, 1)[1].strip()


def _call(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None) -> bytes:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    conn.request(method, path, body=body, headers=headers)
    answer = conn.getresponse()
    data = answer.read()
    if answer.status != 200:
        from mark.core.errors import MarkError

        raise MarkError(f"{method} {path} answered {answer.status}: {data[:200]!r}")
    return data


def measure(
    model_spec: str,
    instance_type: str,
    sizes: Sequence[int],
    *,
    warmup: int,
    repeats: int,
    worker_args: Sequence[str] = (),
) -> ProfileRun:
    """Time `repeats` batches of each size on a real worker (after `warmup` untimed ones)."""
    from rich.progress import Progress

    from mark.apps.commands.worker import parse_model_specs

    (name,) = parse_model_specs([model_spec])
    proc, url = _start_worker(model_spec, max(sizes), worker_args)
    try:
        split = urlsplit(url)
        conn = http.client.HTTPConnection(split.hostname or "127.0.0.1", split.port, timeout=600)
        meta = json.loads(_call(conn, "GET", f"/v2/models/{name}", None))
        path = f"/v2/models/{name}/infer"
        times: dict[int, list[float]] = {}
        with Progress(transient=True) as progress:
            task = progress.add_task(f"profiling {name}", total=len(sizes) * (warmup + repeats))
            for b in sizes:
                body = _request_body(meta["inputs"], b)
                for _ in range(warmup):
                    _call(conn, "POST", path, body)
                    progress.advance(task)
                got = []
                for _ in range(repeats):
                    started = time.perf_counter()
                    _call(conn, "POST", path, body)
                    got.append((time.perf_counter() - started) * 1000.0)
                    progress.advance(task)
                times[b] = got
        conn.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return ProfileRun(model=name, instance_type=instance_type, times_ms=times)


def fit_report(result: ProfileRun, max_batch: int) -> tuple[Any, dict[str, Any]]:
    """The measured `Profile` (medians as its points, so `Profile`'s own least-squares line is
    the fit) and the fit's figures: a, c, and the residuals of the points and of every sample."""
    from mark.core.types import Profile

    medians = {b: round(statistics.median(ts), 4) for b, ts in result.times_ms.items()}
    draft = Profile(instance_type=result.instance_type, latency_ms=medians, max_batch=max_batch)
    point_res = {b: t - draft.service_ms(b) for b, t in medians.items()}
    sample_res = [t - draft.service_ms(b) for b, ts in result.times_ms.items() for t in ts]
    rms = statistics.fmean(r * r for r in sample_res) ** 0.5
    fit = {
        "a_ms": round(draft.a_ms, 4),
        "c_ms": round(draft.c_ms, 4),
        "points": [
            {
                "batch": b,
                "median_ms": round(medians[b], 4),
                "fit_ms": round(draft.service_ms(b), 4),
                "residual_ms": round(point_res[b], 4),
                "samples": len(result.times_ms[b]),
            }
            for b in medians
        ],
        "rms_residual_ms": round(rms, 4),
        "max_abs_residual_ms": round(max(abs(r) for r in sample_res), 4),
    }
    today = datetime.now(UTC).date().isoformat()
    cpu = platform.processor() or platform.machine()
    source = (
        f"measured by `mark profile` on {platform.node()} ({cpu}, "
        f"{platform.python_implementation()} {platform.python_version()}), "
        f"{today}: medians of {len(next(iter(result.times_ms.values())))} timed batches per "
        f"size after warm-up; least-squares T(b) = {fit['a_ms']:.3f} + {fit['c_ms']:.3f}*b ms, "
        f"rms residual {fit['rms_residual_ms']:.3f} ms"
    )
    profile = draft.model_copy(update={"estimated": False, "source": source})
    return profile, fit


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from mark.core.errors import InvalidValue

    if args.warmup < 0 or args.repeats < 1:
        raise InvalidValue("repeats", "--repeats must be >= 1 and --warmup >= 0")
    sizes = batch_sizes(args.batch_sizes, args.max_batch)
    result = measure(
        args.model,
        args.instance_type,
        sizes,
        warmup=args.warmup,
        repeats=args.repeats,
        worker_args=args.worker_arg,
    )
    profile, fit = fit_report(result, max(sizes))
    table = Table(
        title=f"{result.model} on {result.instance_type}: T(b) = {fit['a_ms']:.3f} + "
        f"{fit['c_ms']:.3f}*b ms (rms residual {fit['rms_residual_ms']:.3f} ms)"
    )
    for column in ("batch", "median ms", "fit ms", "residual ms", "samples"):
        table.add_column(column, justify="right")
    for p in fit["points"]:
        table.add_row(
            str(p["batch"]),
            f"{p['median_ms']:.3f}",
            f"{p['fit_ms']:.3f}",
            f"{p['residual_ms']:+.3f}",
            str(p["samples"]),
        )
    Console().print(table)
    entry = {
        "model": result.model,
        "profile": profile.model_dump(mode="json"),
        "fit": fit,
        "samples_ms": {str(b): [round(t, 4) for t in ts] for b, ts in result.times_ms.items()},
    }
    if args.out is not None:
        args.out.write_text(json.dumps(entry, indent=2) + "\n")
        print(f"wrote {args.out}")
    else:
        print(json.dumps(entry["profile"], indent=2))
    return 0
