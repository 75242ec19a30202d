"""The floor of any Sanic front end, for bench_frontend: one Sanic process that forwards each
request's body, unread, round-robin to the workers through Mark's own instance client
(`mark/adapters/http_pool.py`) and answers with theirs. No parsing, checks, batching, routing
weights, spill or metrics: what Mark costs above this is its own work, and what this costs
above nginx is Python, Sanic and the extra process hop.

    python -m bench.sanic_proxy PORT URL[,URL...]
"""

from __future__ import annotations

import itertools
import sys

from sanic import Request, Sanic
from sanic.response import HTTPResponse, json, raw

from mark.adapters.http_pool import HttpPool


def build(upstreams: list[str]) -> Sanic:
    app = Sanic("sanic_proxy")
    app.config.ACCESS_LOG = False
    app.config.AUTO_EXTEND = False
    turn = itertools.cycle(upstreams)

    @app.before_server_start
    async def _pool(app: Sanic) -> None:
        app.ctx.pool = HttpPool(limit=256, timeout_s=30.0)

    @app.get("/v2/health/ready")
    async def ready(request: Request) -> HTTPResponse:
        return json({"ready": True})

    @app.post("/v2/models/<name:str>/infer")
    async def infer(request: Request, name: str) -> HTTPResponse:
        answer = await app.ctx.pool.post(next(turn), f"/v2/models/{name}/infer", request.body)
        return raw(answer.body, status=answer.status, content_type="application/json")

    return app


if __name__ == "__main__":
    build(sys.argv[2].split(",")).run(
        host="127.0.0.1", port=int(sys.argv[1]), single_process=True, access_log=False
    )
