"""The control plane: one process that owns the cloud provider, the control loop and the
serverless pool, beside the HTTP workers of `mark serve`."""
