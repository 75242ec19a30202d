"""The serverless pool that spilled requests go to (MArk's Lambda path), behind one interface.

- `pool`: the `ServerlessPool` protocol, `Invocation`, `PoolStats` and the errors callers
  branch on; both pools keep the latency the spill rule needs (`profile(model)`: warm latency
  and cold start as observed, idle-warm sandboxes, free slots) and what was spent.
- `lambda_pool.LambdaPool`: AWS Lambda through boto3 `invoke`.
- `local.LocalFunctionPool`: the embedded default, Lambda's execution model on this machine
  (sandbox processes running `deploy/lambda/handler.py`, billed as Lambda bills).
- `invoke_server.InvokeServer`: Lambda's Invoke HTTP API on loopback in front of a local pool,
  so that front-end processes reach it with the very boto3 client they would use against AWS.
- `spill`: what the front end calls (`spill_event`, `infer`, `build_pool`).

The public names are re-exported here: `from provisioner.adapters.serverless import X`.
"""

from provisioner.adapters.serverless.invoke_server import INVOKE_PATH, InvokeServer
from provisioner.adapters.serverless.lambda_pool import LambdaPool
from provisioner.adapters.serverless.local import DEFAULT_HANDLER_PATH, LocalFunctionPool
from provisioner.adapters.serverless.pool import (
    FunctionError,
    InputRejected,
    Invocation,
    PayloadTooLarge,
    PoolStats,
    ServerlessPool,
    Throttled,
)
from provisioner.adapters.serverless.spill import build_pool, infer, spill_event

__all__ = [
    "ServerlessPool",
    "Invocation",
    "PoolStats",
    "PayloadTooLarge",
    "Throttled",
    "FunctionError",
    "InputRejected",
    "LocalFunctionPool",
    "LambdaPool",
    "InvokeServer",
    "DEFAULT_HANDLER_PATH",
    "INVOKE_PATH",
    "spill_event",
    "infer",
    "build_pool",
]
