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

A third: an index request may carry `If-None-Match` with the `index_etag` of the last index
body the caller read, and `mark worker` answers 304 with no body while its index is that body
still (HTTP's conditional request; the answer also carries the tag as `ETag`). Every front end
reads every instance's index on each sync, twice a second, and a many-model worker's index
rarely changes: the front end's parsing of unchanged indexes was a fifth of its sync. The tag
is a digest of the body, so a caller computes it from what it read, whatever else the server
sends; a server without conditional requests answers 200 with the body, as before.

A fourth: `mark worker` refuses a load (or the request that would load its model) for want of
room beside models it protects (pinned, or in active rotation: used within `worker.protect_s`)
with 503, `Retry-After` (the seconds until the first protection lapses) and `Mark-Refused:
no-room`. The same 503 with `Retry-After` also answers an artifact that failed to load, but the
two call for different answers from the front end: a failed load is answered at once (503 with
the reason), while room is a matter of time (a protection lapses, or the placement unloads what
it pinned), so the requests wait for it, bounded (frontend/fleet.py). A header, so that the
front end branches on what the server says rather than on the words of its reason; a server
without it (Triton, MLServer) has every refused load taken as failed.
"""

from __future__ import annotations

import hashlib

__all__ = ["LOAD_PIN_HEADER", "NO_ROOM", "REFUSED_HEADER", "UNLOAD_IDLE_HEADER", "index_etag"]

LOAD_PIN_HEADER = "Mark-Load-Pin"
UNLOAD_IDLE_HEADER = "Mark-Unload-Idle-S"
REFUSED_HEADER = "Mark-Refused"
NO_ROOM = "no-room"  # its value on a refusal for want of room beside protected models


def index_etag(body: bytes) -> str:
    """The entity tag of an index body (a quoted 64-bit BLAKE2b digest, RFC 9110 form)."""
    return '"' + hashlib.blake2b(body, digest_size=8).hexdigest() + '"'
