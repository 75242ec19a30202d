"""The KServe v2 model repository extension as Mark's two ends speak it (the shapes are
Triton's: triton-inference-server/server docs/protocol/extension_model_repository.md).

One addition of Mark's own: a load may carry `Mark-Load-Pin: false`, and `mark worker` then
does not pin the model (it stays evictable once idle, mark/apps/worker/cache.py). The front end
loads a model that is resident nowhere for the requests it holds (frontend/residency.py); a pin
outliving them would keep every later load out of a full memory budget. It is a header, not a
load parameter, because servers ignore headers they do not know while a load's `parameters`
are the server's to interpret (Triton reads `config` and `file:` entries from them): the front
end sends the same load to any server.
"""

__all__ = ["LOAD_PIN_HEADER"]

LOAD_PIN_HEADER = "Mark-Load-Pin"
