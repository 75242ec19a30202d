#!/bin/bash
# User data of the launch template deploy/ec2/launch-template.json: start `mark worker` with the
# models Mark tagged this instance with (mark:models).
#
# Mark's RunInstances launches carry their own user data (provisioner/adapters/ec2/launch.py
# writes the `mark worker` command with each model's artifact), which replaces this script; it
# starts the worker on instances launched from the template by other means (an operator's
# `aws ec2 run-instances`, an Auto Scaling group). It reads the instance's tags from the instance metadata (InstanceMetadataTags enabled
# in the template) and each model's artifact from /etc/mark/artifacts on the image, one
# NAME=ARTIFACT a line (builtin:mlp, onnx:PATH, sklearn:PATH, torchscript:PATH: the artifacts of
# the models' backends in Mark's admin API). The image has the `mark` package on root's PATH.
# The port must be cloud.worker_port (default 8080).
set -euo pipefail

imds=${MARK_IMDS_URL:-http://169.254.169.254} # tests point it at a stand-in on loopback
artifacts=${MARK_ARTIFACTS_FILE:-/etc/mark/artifacts}
port=${MARK_WORKER_PORT:-8080}

token=$(curl -fsS -X PUT "$imds/latest/api/token" -H "X-aws-ec2-metadata-token-ttl-seconds: 300")
tag() { curl -fsS -H "X-aws-ec2-metadata-token: $token" "$imds/latest/meta-data/tags/instance/$1"; }

# Tags given at launch may reach the instance metadata a moment after boot.
models=""
for _ in $(seq 60); do
  if models=$(tag mark:models) && [ -n "$models" ]; then break; fi
  sleep 2
done
if [ -z "$models" ]; then
  echo "mark: no mark:models tag on this instance" >&2
  exit 1
fi

flags=()
IFS=, read -ra names <<< "$models"
for name in "${names[@]}"; do
  artifact=$(awk -F= -v n="$name" '$1 == n { sub(/^[^=]*=/, ""); print; exit }' "$artifacts")
  if [ -z "$artifact" ]; then
    echo "mark: no artifact for model $name in $artifacts" >&2
    exit 1
  fi
  flags+=(--model "$name=$artifact")
done
exec mark worker --host 0.0.0.0 --allow-remote --port "$port" "${flags[@]}"
