"""EC2 instances that run: moto's server keeps instances as records, so tests of Mark on the EC2
emulator could check what was bought but never serve through it. `Ec2Machines` plays the part
of the machines themselves: each instance of one owner that moto lists as running gets the
process its user data starts (the `mark worker` command Mark wrote into RunInstances), and that
process is killed when the instance leaves running (terminated by Mark, or reclaimed by the test
standing for AWS). The fleet's VPC is 127.0.0.0/16, which moto accepts, so every private
address it hands out is on loopback: the worker binds there, Mark's endpoint for the instance
(`http://<private ip>:<worker_port>`) reaches it, and nothing leaves the machine.

The user data runs with `MARK_INSTANCE_IP` in its environment (the address that the instance
metadata service gives a real instance), which `ec2_worker_command` uses as the worker's host."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from tests.aws import FAKE_ENV
from tests.conftest import free_port

__all__ = [
    "Ec2Machines",
    "cloud_ids",
    "ec2_cloud_toml",
    "ec2_worker_command",
    "loopback_subnets",
    "running_machines",
]


def ec2_worker_command() -> str:
    """`cloud.worker_command` for the emulator's machines: this interpreter's `mark worker`,
    bound at the instance's own loopback address."""
    return f"{sys.executable} -m mark.apps.cli worker --host $MARK_INSTANCE_IP --port {{port}}"


def loopback_subnets(client: Any, zones: Sequence[str]) -> list[str]:
    """A VPC on 127.0.0.0/16 with one /24 subnet per zone (127.0.1.0/24 for the first): the
    subnet ids for `cloud.subnet_ids`."""
    vpc = client.create_vpc(CidrBlock="127.0.0.0/16")["Vpc"]["VpcId"]
    return [
        client.create_subnet(VpcId=vpc, CidrBlock=f"127.0.{k + 1}.0/24", AvailabilityZone=zone)[
            "Subnet"
        ]["SubnetId"]
        for k, zone in enumerate(zones)
    ]


def ec2_cloud_toml(
    client: Any, moto_url: str, image_id: str, owner: str, zones: Sequence[str]
) -> str:
    """A `[cloud]` section for `mark serve` on the emulator: its own owner tag, loopback
    subnets in `zones`, this interpreter's worker at each instance's address, no retries."""
    quoted = ", ".join(f'"{x}"' for x in zones)
    subnets = ", ".join(f'"{x}"' for x in loopback_subnets(client, zones))
    return (
        "[cloud]\n"
        'provider = "ec2"\n'
        f'endpoint_url = "{moto_url}"\n'
        f'image_id = "{image_id}"\n'
        f'owner = "{owner}"\n'
        f"zones = [{quoted}]\n"
        f"subnet_ids = [{subnets}]\n"
        f'worker_command = "{ec2_worker_command()}"\n'
        f"worker_port = {free_port()}\n"
        "poll_interval_s = 1.0\n"
        "api_max_attempts = 1\n"
    )


def cloud_ids(client: Any, owner: str) -> set[str]:
    """The owner's instances that EC2 lists as pending or running (the cloud's own truth)."""
    pages = client.get_paginator("describe_instances").paginate(
        Filters=[
            {"Name": "tag:mark:owner", "Values": [owner]},
            {"Name": "instance-state-name", "Values": ["pending", "running"]},
        ]
    )
    return {i["InstanceId"] for page in pages for r in page["Reservations"] for i in r["Instances"]}


class Ec2Machines:
    """The running instances of `owner`, each with its user data's process; `poll` starts and
    stops them as the instances' states change, and `close` stops every one."""

    def __init__(self, client: Any, owner: str, log_dir: Path) -> None:
        self.client, self.owner, self.log_dir = client, owner, log_dir
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.addresses: dict[str, str] = {}
        self.started: list[str] = []  # every instance that got a process, in order

    def _rows(self) -> list[dict[str, Any]]:
        pages = self.client.get_paginator("describe_instances").paginate(
            Filters=[{"Name": "tag:mark:owner", "Values": [self.owner]}]
        )
        return [i for page in pages for r in page["Reservations"] for i in r["Instances"]]

    def _start(self, row: dict[str, Any]) -> None:
        instance_id, ip = row["InstanceId"], row["PrivateIpAddress"]
        encoded = self.client.describe_instance_attribute(
            InstanceId=instance_id, Attribute="userData"
        )["UserData"]["Value"]
        script = base64.b64decode(encoded).decode()
        log = open(self.log_dir / f"{instance_id}.log", "wb")  # noqa: SIM115 (the child's)
        env = {**os.environ, **FAKE_ENV, "MARK_INSTANCE_IP": ip}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.processes[instance_id] = subprocess.Popen(
            ["bash", "-c", script],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        log.close()
        self.addresses[instance_id] = ip
        self.started.append(instance_id)

    def _stop(self, instance_id: str) -> None:
        process = self.processes.pop(instance_id)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10.0)

    def poll(self) -> None:
        """One look at the cloud: a process for every instance newly running, none for one
        that is not running any more."""
        running = set()
        for row in self._rows():
            if row["State"]["Name"] != "running":
                continue
            running.add(row["InstanceId"])
            if row["InstanceId"] not in self.processes:
                self._start(row)
        for instance_id in set(self.processes) - running:
            self._stop(instance_id)

    def close(self) -> None:
        for instance_id in list(self.processes):
            self._stop(instance_id)


@contextlib.asynccontextmanager
async def running_machines(
    client: Any, owner: str, log_dir: Path, interval_s: float = 0.2
) -> AsyncIterator[Ec2Machines]:
    """`Ec2Machines` polled every `interval_s` (off the event loop: boto3 blocks) while the
    block runs; every process stopped after it."""
    machines = Ec2Machines(client, owner, log_dir)
    stopping = asyncio.Event()

    async def polling() -> None:
        while not stopping.is_set():
            await asyncio.to_thread(machines.poll)
            await asyncio.sleep(interval_s)

    task = asyncio.create_task(polling())
    try:
        yield machines
    finally:
        # Not cancelled: a poll in its thread would go on and could start a worker after
        # `close`; the loop ends after the poll in flight.
        stopping.set()
        (failed,) = await asyncio.gather(task, return_exceptions=True)
        machines.close()
    if isinstance(failed, Exception):  # a dead poller would pass for a fleet that never ran
        raise failed
