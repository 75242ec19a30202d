"""The IAM policies in deploy/iam/ grant every AWS action the providers call, and no wildcard
action."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CALL = re.compile(r'(?:_call|_pages|_mutate)\(\s*"([a-z_]+)"')
EC2_PACKAGE = ROOT / "provisioner" / "adapters" / "ec2"


def actions(policy: str) -> set[str]:
    doc = json.loads((ROOT / "deploy" / "iam" / policy).read_text())
    found: set[str] = set()
    for statement in doc["Statement"]:
        listed = statement["Action"]
        found.update([listed] if isinstance(listed, str) else listed)
    return found


def camel(snake: str) -> str:
    return "".join(part.capitalize() for part in snake.split("_"))


def test_ec2_policy_covers_every_call_of_the_provider() -> None:
    called = {
        call for module in EC2_PACKAGE.rglob("*.py") for call in CALL.findall(module.read_text())
    }
    assert {"run_instances", "terminate_instances", "describe_instances"} <= called
    granted = actions("mark-ec2-policy.json")
    assert {f"ec2:{camel(c)}" for c in called} - granted == set()
    assert "ec2:CreateTags" in granted  # TagSpecifications at launch need it
    assert not any(a.endswith("*") for a in granted)


def test_lambda_policy_allows_invoking_the_spill_function_only() -> None:
    assert actions("mark-lambda-invoke-policy.json") == {"lambda:InvokeFunction"}
