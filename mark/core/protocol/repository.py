"""The KServe v2 model repository extension as Mark's two ends speak it (the shapes are
Triton's: triton-inference-server/server docs/protocol/extension_model_repository.md).

Two additions of Mark's own. A load may carry `Mark-Load-Pin: false`, and `mark worker` then
does not pin the model (it stays evictable once idle, mark/apps/worker/cache.py). The front end
loads a model that is resident nowhere for the requests it holds (frontend/residency.py); a pin
outliving them would keep every later load out of a full memory budget. It is a header, not a
load parameter, because servers ignore headers they do not know while a load's `parameters`
are the server's to interpret (Triton reads `config` and `file:` entries from them): the front
end sends the same load to any server.

A second: an unload may carry `Mark-Unload-Idle-S: N` (the front end's idle unloads,
frontend/fleet.py), and `mark worker` then unloads only a model that is not pinned, has no
request in flight and served none in the last N seconds, else answers 409: a front end sees only
its own traffic, the worker sees every front end's. A server without the header unloads anyway.
"""

__all__ = ["LOAD_PIN_HEADER", "UNLOAD_IDLE_HEADER"]

LOAD_PIN_HEADER = "Mark-Load-Pin"
UNLOAD_IDLE_HEADER = "Mark-Unload-Idle-S"
