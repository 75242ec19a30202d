"""`Ec2Cloud`: the CloudProvider over EC2 through boto3, the same calls against real AWS and against
an emulator on loopback (only `endpoint_url` differs).

What it calls and why:
- `RunInstances` (one instance, from the launch template or the AMI, user data that starts
  `mark worker`), with `InstanceMarketOptions` for spot (max price = the on-demand price, so a spot
  instance never costs more than its on-demand twin). A `ClientToken` makes a retried launch
  idempotent: a throttled call that in fact went through does not buy a second instance.
- `CreateFleet` type `instant` with `price-capacity-optimized` for a spot launch spread over several
  pools at once (`launch_fleet`): AWS picks the pool least likely to be interrupted among the
  cheap ones, in one call.
- `TerminateInstances`; an instance already gone is success (the CloudProvider contract).
- `DescribeInstances` filtered by the `mark:owner` tag: what `list` returns and what the
  interruption poll watches; `DescribeSpotInstanceRequests` for the spot status codes that come
  before the instance state changes (`marked-for-termination`, `marked-for-stop`,
  `instance-terminated-by-price`...).
- `DescribeSpotPriceHistory` for spot prices; on-demand prices come from the catalog (EC2's API has
  none). `DescribeInstanceTypes` and `DescribeInstanceTypeOfferings` for type facts and zone
  availability when the credentials allow them; the catalog otherwise.

Errors: capacity codes (InsufficientInstanceCapacity, SpotMaxPriceTooLow, ...) raise
`InsufficientCapacity` and mark the pool unavailable for `capacity_cooldown_s` (Karpenter's
unavailable-offerings cache), so the next `offerings()` steers the planner to another pool or to
on-demand. Throttling is retried by botocore's standard retry mode and then by our own bounded
exponential backoff with full jitter. UnauthorizedOperation becomes a `CloudError` naming the
missing permission and the policy in deploy/iam/.

Dry run (`cloud.dry_run`): every call that would change or buy something is logged with its
parameters and sent with `DryRun=True`, so AWS still checks permissions and parameters; the
launched instances exist only in this process (ids `dryrun-...`) so that the control plane runs
on as if they did. Read-only calls are made for real: the plan needs prices and the fleet.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import random
import shlex
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from functools import partial
from typing import Any

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from mark.core.config import CloudConfig
from mark.core.errors import CloudError, InsufficientCapacity
from mark.core.types import (
    AcceleratorKind,
    Instance,
    InstanceState,
    InstanceType,
    Market,
    Model,
    Offering,
)
from provisioner.adapters.cloud import MODELS_TAG, OWNER_TAG, CloudProvider, InterruptionNotice

__all__ = [
    "Ec2Cloud",
    "CAPACITY_ERROR_CODES",
    "THROTTLE_ERROR_CODES",
    "SPOT_INTERRUPTION_CODES",
    "MARKET_TAG",
    "PRICE_TAG",
]

log = logging.getLogger("mark.ec2")

MARKET_TAG = "mark:market"
PRICE_TAG = "mark:price-per-hour"

# Codes AWS returns when a pool cannot supply the instance now (EC2 API error reference and
# the CreateFleet error codes); the caller falls back to another pool or to on-demand.
CAPACITY_ERROR_CODES = frozenset(
    {
        "InsufficientInstanceCapacity",
        "InsufficientCapacity",
        "InsufficientHostCapacity",
        "SpotMaxPriceTooLow",
        "MaxSpotInstanceCountExceeded",
        "UnfulfillableCapacity",
        "InsufficientFreeAddressesInSubnet",
    }
)
THROTTLE_ERROR_CODES = frozenset(
    {"RequestLimitExceeded", "Throttling", "ThrottlingException", "RequestThrottled"}
)
_NOT_FOUND_CODES = frozenset({"InvalidInstanceID.NotFound"})
_UNAUTHORIZED_CODES = frozenset({"UnauthorizedOperation", "AuthFailure", "AccessDenied"})

# Spot request status codes that announce the instance's end (EC2 User Guide, "Spot request
# status"); the instance state still reads `running` when they appear.
SPOT_INTERRUPTION_CODES = frozenset(
    {
        "marked-for-termination",
        "marked-for-stop",
        "marked-for-hibernation",
        "instance-terminated-by-price",
        "instance-terminated-no-capacity",
        "instance-terminated-capacity-oversubscribed",
        "instance-terminated-launch-group-constraint",
        "instance-stopped-by-price",
        "instance-stopped-no-capacity",
    }
)
_GONE_STATES = frozenset({"shutting-down", "terminated", "stopping", "stopped"})
_LIVE_STATES = ("pending", "running")
_SPOT_PRODUCTS = ("Linux/UNIX", "Linux/UNIX (Amazon VPC)")
_IAM_HINT = "attach deploy/iam/mark-ec2-policy.json to the role or user Mark runs as"


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _timestamp_s(value: Any) -> float:
    return value.timestamp() if isinstance(value, datetime) else float(value)


class Ec2Cloud:
    """CloudProvider over EC2. One instance of this class per control plane; every method runs
    its boto3 call in a worker thread (boto3 is synchronous).

    `models(name)` returns a registered Model (its artifact for the worker's user data), e.g.
    `Database.get_model`, as for `LocalCloud`.

    `catalog_types` gives on-demand prices and the fallback facts; when omitted, the packaged
    catalog's (`mark.core.catalog.load_catalog().instance_types`) are used. `client` replaces the
    boto3 EC2 client built from `config` (tests pass one with event hooks); `clock` is the wall
    clock the interruption poll and the capacity cache use.
    """

    name = "ec2"

    def __init__(
        self,
        config: CloudConfig,
        *,
        models: Callable[[str], Awaitable[Model]],
        catalog_types: Sequence[InstanceType] | None = None,
        client: Any | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        if not (config.launch_template or config.image_id):
            raise CloudError("the EC2 provider needs cloud.launch_template or cloud.image_id")
        self.config = config
        self._models = models
        self.client = client if client is not None else self._build_client(config)
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._catalog = {t.name: t for t in catalog_types} if catalog_types is not None else None
        self._types: dict[str, InstanceType] | None = None
        self._zones_by_type: dict[str, frozenset[str]] | None = None
        self._subnet_by_zone: dict[str, str] | None = None
        self._refused_until_s: dict[str, float] = {}
        self._terminating: set[str] = set()
        self._noticed: set[str] = set()
        self._seen_live: set[str] = set()
        self._dry_run_instances: dict[str, Instance] = {}

    @staticmethod
    def _build_client(config: CloudConfig) -> Any:
        # total_max_attempts counts the first try; botocore's `max_attempts` would not.
        retries = {"mode": "standard", "total_max_attempts": config.api_max_attempts}
        return boto3.session.Session().client(
            "ec2",
            region_name=config.region,
            endpoint_url=config.endpoint_url,
            config=BotoConfig(retries=retries),
        )

    # ---- calls -------------------------------------------------------------------------

    async def _call(self, operation: str, **params: Any) -> dict[str, Any]:
        """One EC2 call in a thread, retried on throttling with exponential backoff and full
        jitter (`throttle_retries` times, from `backoff_base_s`), errors mapped to Mark's."""
        method = getattr(self.client, operation)
        for attempt in range(self.config.throttle_retries + 1):
            try:
                result: dict[str, Any] = await asyncio.to_thread(partial(method, **params))
                return result
            except ClientError as exc:
                code = _error_code(exc)
                if code in THROTTLE_ERROR_CODES and attempt < self.config.throttle_retries:
                    delay_s = self._rng.uniform(0, self.config.backoff_base_s * 2**attempt)
                    log.warning("%s throttled (%s); retrying in %.2f s", operation, code, delay_s)
                    await asyncio.sleep(delay_s)
                    continue
                raise self._mapped(operation, exc) from exc
            except BotoCoreError as exc:
                raise CloudError(f"EC2 {operation} failed: {exc}") from exc
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _mapped(self, operation: str, exc: ClientError) -> Exception:
        code = _error_code(exc)
        message = exc.response.get("Error", {}).get("Message", "")
        if code in CAPACITY_ERROR_CODES:
            return InsufficientCapacity(f"EC2 {operation}: {code}: {message}")
        if code in _UNAUTHORIZED_CODES:
            return CloudError(
                f"EC2 denied {operation} ({code}): the credentials lack the permission; "
                f"{_IAM_HINT}. {message}"
            )
        if code in THROTTLE_ERROR_CODES:
            return CloudError(f"EC2 {operation} still throttled after retries ({code})")
        return CloudError(f"EC2 {operation} failed ({code}): {message}")

    async def _mutate(self, operation: str, **params: Any) -> dict[str, Any] | None:
        """A call that changes or buys something. In dry-run mode it is logged and sent with
        DryRun=True; the answer is None when AWS says it would have succeeded."""
        if not self.config.dry_run:
            return await self._call(operation, **params)
        log.info("dry-run: %s %s", operation, params)
        try:
            await self._call(operation, DryRun=True, **params)
        except CloudError as exc:
            if isinstance(exc.__cause__, ClientError) and _error_code(exc.__cause__) == (
                "DryRunOperation"
            ):
                return None
            raise
        raise CloudError(f"EC2 {operation} with DryRun=True did not answer DryRunOperation")

    async def _paginate(self, operation: str, key: str, **params: Any) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            page = await self._call(operation, **params, **({"NextToken": token} if token else {}))
            items.extend(page.get(key, []))
            token = page.get("NextToken")
            if not token:
                return items

    # ---- instance types and offerings ---------------------------------------------------

    def _catalog_types(self) -> dict[str, InstanceType]:
        if self._catalog is None:
            from mark.core.catalog import load_catalog

            self._catalog = dict(load_catalog().instance_types)
        return self._catalog

    async def instance_types(self) -> list[InstanceType]:
        """The catalog's types offered in the configured zones, with vCPUs, memory and
        accelerators as DescribeInstanceTypes reports them when allowed."""
        if self._types is None:
            catalog = self._catalog_types()
            zones = await self._zones_offering(list(catalog))
            offered = [name for name in catalog if zones.get(name)]
            facts = await self._described_types(offered)
            self._types = {name: facts.get(name, catalog[name]) for name in offered}
        return list(self._types.values())

    async def _zones_offering(self, names: list[str]) -> dict[str, frozenset[str]]:
        if self._zones_by_type is None:
            wanted = set(self.config.zones)
            try:
                rows = await self._paginate(
                    "describe_instance_type_offerings",
                    "InstanceTypeOfferings",
                    LocationType="availability-zone",
                    Filters=[{"Name": "location", "Values": list(self.config.zones)}],
                )
            except CloudError as exc:
                log.warning(
                    "DescribeInstanceTypeOfferings unavailable (%s): using the catalog "
                    "for zone availability",
                    exc,
                )
                self._zones_by_type = {name: frozenset(wanted) for name in names}
            else:
                zones: dict[str, set[str]] = {}
                for row in rows:
                    if row["Location"] in wanted:
                        zones.setdefault(row["InstanceType"], set()).add(row["Location"])
                self._zones_by_type = {k: frozenset(v) for k, v in zones.items()}
        return self._zones_by_type

    async def _described_types(self, names: list[str]) -> dict[str, InstanceType]:
        catalog = self._catalog_types()
        try:
            rows: list[dict[str, Any]] = []
            for start in range(0, len(names), 100):
                rows += await self._paginate(
                    "describe_instance_types",
                    "InstanceTypes",
                    InstanceTypes=names[start : start + 100],
                )
        except CloudError as exc:
            log.warning("DescribeInstanceTypes unavailable (%s): using catalog facts", exc)
            return {}
        facts: dict[str, InstanceType] = {}
        for row in rows:
            name = row["InstanceType"]
            gpus = sum(g.get("Count", 0) for g in row.get("GpuInfo", {}).get("Gpus", []))
            inferentia = sum(
                a.get("Count", 0)
                for a in row.get("InferenceAcceleratorInfo", {}).get("Accelerators", [])
            ) + sum(n.get("Count", 0) for n in row.get("NeuronInfo", {}).get("NeuronDevices", []))
            kind, count = (
                (AcceleratorKind.GPU, gpus)
                if gpus
                else (AcceleratorKind.INFERENTIA, inferentia)
                if inferentia
                else (AcceleratorKind.NONE, 0)
            )
            facts[name] = catalog[name].model_copy(
                update={
                    "vcpus": int(row["VCpuInfo"]["DefaultVCpus"]),
                    "memory_gib": row["MemoryInfo"]["SizeInMiB"] / 1024.0,
                    "accelerator": kind,
                    "accelerator_count": count,
                    "source": f"{catalog[name].source}; facts: EC2 DescribeInstanceTypes",
                }
            )
        return facts

    async def _spot_prices(self, names: list[str]) -> dict[tuple[str, str], float]:
        """Latest spot price per (type, zone), from the last hour of DescribeSpotPriceHistory."""
        rows = await self._paginate(
            "describe_spot_price_history",
            "SpotPriceHistory",
            InstanceTypes=names,
            ProductDescriptions=list(_SPOT_PRODUCTS),
            StartTime=datetime.fromtimestamp(self._clock() - 3600.0),
        )
        latest: dict[tuple[str, str], tuple[float, float]] = {}
        for row in rows:
            key = (row["InstanceType"], row["AvailabilityZone"])
            at_s = _timestamp_s(row["Timestamp"])
            if key not in latest or at_s > latest[key][0]:
                latest[key] = (at_s, float(row["SpotPrice"]))
        return {key: price for key, (_, price) in latest.items()}

    async def offerings(self) -> list[Offering]:
        """On-demand (catalog price) and spot (latest spot price) per type and configured zone.
        A pool is unavailable when the type is not offered there, when it has no spot price,
        or while it cools down after refusing a launch."""
        types = await self.instance_types()
        zones = self._zones_by_type or {}
        spot = await self._spot_prices([t.name for t in types])
        now_s = self._clock()
        out: list[Offering] = []
        for itype in types:
            for zone in self.config.zones:
                offered = zone in zones.get(itype.name, frozenset())
                for market in (Market.ON_DEMAND, Market.SPOT):
                    if market == Market.ON_DEMAND:
                        price, source = itype.on_demand_price_per_hour, itype.source
                    else:
                        price = spot.get((itype.name, zone), itype.on_demand_price_per_hour)
                        source = "EC2 DescribeSpotPriceHistory"
                    offering = Offering(
                        instance_type=itype.name,
                        zone=zone,
                        market=market,
                        price_per_hour=price,
                        source=source,
                    )
                    refused = self._refused_until_s.get(offering.key, 0.0) > now_s
                    has_price = market == Market.ON_DEMAND or (itype.name, zone) in spot
                    available = offered and has_price and not refused
                    out.append(offering.model_copy(update={"available": available}))
        return out

    def _refuse(self, offering: Offering) -> None:
        self._refused_until_s[offering.key] = self._clock() + self.config.capacity_cooldown_s

    # ---- launch --------------------------------------------------------------------------

    async def _user_data(self, names: Sequence[str]) -> str:
        """A shell script that starts `mark worker` with each model's artifact (the image or
        launch template provides the `mark` package)."""
        models = [await self._models(name) for name in names]
        command = self.config.worker_command.format(port=self.config.worker_port)
        flags = [f"--max-batch {max((m.max_batch for m in models), default=1)}"]
        flags += [f"--model {shlex.quote(f'{m.name}={m.backend.artifact}')}" for m in models]
        script = (
            "#!/bin/bash\n"
            "# Written by Mark (provisioner/adapters/ec2.py): serve the models tagged on "
            "this instance.\n"
            f"exec {command} {' '.join(flags)}\n"
        )
        return script  # botocore base64-encodes RunInstances' UserData itself

    def _tags(self, models: Sequence[str], market: Market, price: float) -> list[dict[str, str]]:
        tags = {
            OWNER_TAG: self.config.owner,
            MODELS_TAG: ",".join(models),
            MARKET_TAG: market.value,
            PRICE_TAG: f"{price:.6f}",
            "Name": f"mark-{self.config.owner}",
        }
        return [{"Key": k, "Value": v} for k, v in tags.items()]

    def _template_or_image(self) -> dict[str, Any]:
        if self.config.launch_template:
            key = (
                "LaunchTemplateId"
                if self.config.launch_template.startswith("lt-")
                else ("LaunchTemplateName")
            )
            spec = {key: self.config.launch_template, "Version": "$Latest"}
            return {"LaunchTemplate": spec}
        return {"ImageId": self.config.image_id}

    async def _subnet_for(self, zone: str) -> str | None:
        if not self.config.subnet_ids:
            return None
        if self._subnet_by_zone is None:
            rows = await self._paginate(
                "describe_subnets", "Subnets", SubnetIds=list(self.config.subnet_ids)
            )
            self._subnet_by_zone = {row["AvailabilityZone"]: row["SubnetId"] for row in rows}
        subnet = self._subnet_by_zone.get(zone)
        if subnet is None:
            raise InsufficientCapacity(f"no configured subnet in {zone}")
        return subnet

    async def _placement(self, zone: str) -> dict[str, Any]:
        subnet = await self._subnet_for(zone)
        params: dict[str, Any] = (
            {"SubnetId": subnet} if subnet else {"Placement": {"AvailabilityZone": zone}}
        )
        if self.config.security_group_ids:
            params["SecurityGroupIds"] = list(self.config.security_group_ids)
        return params

    def _on_demand_price(self, instance_type: str) -> float:
        known = self._types or self._catalog_types()
        if instance_type not in known:
            raise CloudError(f"instance type {instance_type} is not in the catalog")
        return known[instance_type].on_demand_price_per_hour

    async def launch(self, offering: Offering, models: Sequence[str]) -> Instance:
        """RunInstances for one instance of `offering`; PENDING on return."""
        params: dict[str, Any] = {
            **self._template_or_image(),
            **await self._placement(offering.zone),
            "InstanceType": offering.instance_type,
            "MinCount": 1,
            "MaxCount": 1,
            "UserData": await self._user_data(models),
            "ClientToken": uuid.uuid4().hex,
            "TagSpecifications": [
                {
                    "ResourceType": kind,
                    "Tags": self._tags(models, offering.market, offering.price_per_hour),
                }
                for kind in ("instance", "volume")
            ],
        }
        if self.config.instance_profile_arn:
            params["IamInstanceProfile"] = {"Arn": self.config.instance_profile_arn}
        if offering.market == Market.SPOT:
            params["InstanceMarketOptions"] = {
                "MarketType": "spot",
                "SpotOptions": {
                    "MaxPrice": f"{self._on_demand_price(offering.instance_type):.6f}",
                    "SpotInstanceType": "one-time",
                    "InstanceInterruptionBehavior": "terminate",
                },
            }
        try:
            answer = await self._mutate("run_instances", **params)
        except InsufficientCapacity:
            self._refuse(offering)
            raise
        if answer is None:
            return self._dry_run_instance(offering, models)
        return self._instance(answer["Instances"][0], offering=offering)

    async def launch_fleet(self, offerings: Sequence[Offering], models: Sequence[str]) -> Instance:
        """One spot instance from whichever of `offerings` (spot pools) CreateFleet's
        price-capacity-optimized allocation picks. Needs `cloud.launch_template`. Raises
        InsufficientCapacity (and marks every pool refused) when no pool could supply it."""
        if not self.config.launch_template:
            raise CloudError("CreateFleet needs cloud.launch_template")
        if not offerings or any(o.market != Market.SPOT for o in offerings):
            raise CloudError("launch_fleet takes one or more spot offerings")
        spec = self._template_or_image()["LaunchTemplate"]
        overrides = []
        for offering in offerings:
            override = {
                "InstanceType": offering.instance_type,
                "MaxPrice": f"{self._on_demand_price(offering.instance_type):.6f}",
            }
            subnet = await self._subnet_for(offering.zone)
            override.update({"SubnetId": subnet} if subnet else {"AvailabilityZone": offering.zone})
            overrides.append(override)
        cheapest = min(o.price_per_hour for o in offerings)
        answer = await self._mutate(
            "create_fleet",
            Type="instant",
            TargetCapacitySpecification={
                "TotalTargetCapacity": 1,
                "DefaultTargetCapacityType": "spot",
            },
            SpotOptions={"AllocationStrategy": "price-capacity-optimized"},
            LaunchTemplateConfigs=[{"LaunchTemplateSpecification": spec, "Overrides": overrides}],
            TagSpecifications=[
                {"ResourceType": "instance", "Tags": self._tags(models, Market.SPOT, cheapest)}
            ],
        )
        if answer is None:
            return self._dry_run_instance(offerings[0], models)
        ids = [i for group in answer.get("Instances", []) for i in group.get("InstanceIds", [])]
        if not ids:
            codes = sorted({e.get("ErrorCode", "") for e in answer.get("Errors", [])})
            for offering in offerings:
                self._refuse(offering)
            if not codes or set(codes) <= CAPACITY_ERROR_CODES:
                raise InsufficientCapacity(f"EC2 CreateFleet: no spot capacity ({codes})")
            raise CloudError(f"EC2 CreateFleet launched nothing: {codes}")
        rows = await self._describe([ids[0]])
        if not rows:
            raise CloudError(f"EC2 CreateFleet launched {ids[0]}, which DescribeInstances lacks")
        row = rows[0]
        by_pool = {(o.instance_type, o.zone): o for o in offerings}
        chosen = by_pool.get((row["InstanceType"], row["Placement"]["AvailabilityZone"]))
        return self._instance(row, offering=chosen)

    def _dry_run_instance(self, offering: Offering, models: Sequence[str]) -> Instance:
        instance = Instance(
            id=f"dryrun-{uuid.uuid4().hex[:17]}",
            offering=offering,
            models=tuple(models),
            launched_at_s=self._clock(),
            tags={OWNER_TAG: self.config.owner, "mark:dry-run": "true"},
        )
        self._dry_run_instances[instance.id] = instance
        return instance

    # ---- describe, list, terminate -------------------------------------------------------

    def _instance(self, row: Mapping[str, Any], *, offering: Offering | None = None) -> Instance:
        """An Instance from a DescribeInstances/RunInstances row and its Mark tags."""
        tags = {t["Key"]: t["Value"] for t in row.get("Tags", [])}
        market = Market.SPOT if row.get("InstanceLifecycle") == "spot" else Market.ON_DEMAND
        if offering is None:
            price = tags.get(PRICE_TAG)
            offering = Offering(
                instance_type=row["InstanceType"],
                zone=row["Placement"]["AvailabilityZone"],
                market=market,
                price_per_hour=float(price)
                if price
                else self._on_demand_price(row["InstanceType"]),
                source="EC2 instance tags",
            )
        ip = row.get("PrivateIpAddress")
        state = (
            InstanceState.RUNNING if row["State"]["Name"] == "running" else InstanceState.PENDING
        )
        launched_at_s = _timestamp_s(row["LaunchTime"])
        models = tuple(m for m in tags.get(MODELS_TAG, "").split(",") if m)
        return Instance(
            id=row["InstanceId"],
            offering=offering,
            models=models,
            state=state,
            endpoint=f"http://{ip}:{self.config.worker_port}" if ip else None,
            tags=tags,
            launched_at_s=launched_at_s,
            running_at_s=launched_at_s if state == InstanceState.RUNNING else None,
        )

    async def _describe(
        self, ids: Iterable[str] = (), states: Sequence[str] = ()
    ) -> list[dict[str, Any]]:
        filters = [{"Name": f"tag:{OWNER_TAG}", "Values": [self.config.owner]}]
        if states:
            filters.append({"Name": "instance-state-name", "Values": list(states)})
        extra: dict[str, Any] = {"InstanceIds": list(ids)} if ids else {}
        reservations = await self._paginate(
            "describe_instances", "Reservations", Filters=filters, **extra
        )
        return [row for r in reservations for row in r.get("Instances", [])]

    async def list(self) -> list[Instance]:
        rows = await self._describe(states=_LIVE_STATES)
        live = [self._instance(row) for row in rows if row["InstanceId"] not in self._terminating]
        return live + list(self._dry_run_instances.values())

    async def terminate(self, instance_id: str) -> None:
        if self._dry_run_instances.pop(instance_id, None) is not None:
            log.info("dry-run: terminate_instances %s (launched in dry run)", instance_id)
            return
        self._terminating.add(instance_id)
        try:
            await self._mutate("terminate_instances", InstanceIds=[instance_id])
        except CloudError as exc:
            cause = exc.__cause__
            if isinstance(cause, ClientError) and _error_code(cause) in _NOT_FOUND_CODES:
                return
            self._terminating.discard(instance_id)
            raise

    # ---- interruptions -------------------------------------------------------------------

    async def poll_interruptions(self) -> builtins.list[InterruptionNotice]:
        """One poll: Mark's instances that the cloud is taking back and that Mark did not ask
        to terminate, each reported once. Spot status codes give the two-minute warning; an
        instance already shutting down or gone is reported with no warning left. Only instances
        this process has seen live count, so that old terminated rows (EC2 lists them for about
        an hour) are not news."""
        now_s = self._clock()
        rows = await self._describe()
        notices: builtins.list[InterruptionNotice] = []
        live_spot: builtins.list[str] = []
        for row in rows:
            instance_id = row["InstanceId"]
            if instance_id in self._terminating or instance_id in self._noticed:
                continue
            state = row["State"]["Name"]
            if state in _LIVE_STATES:
                self._seen_live.add(instance_id)
            if state in _GONE_STATES and instance_id in self._seen_live:
                reason = row.get("StateReason", {}).get("Code") or f"instance {state}"
                notices.append(InterruptionNotice(instance_id, now_s, now_s, reason))
            elif state in _LIVE_STATES and row.get("InstanceLifecycle") == "spot":
                live_spot.append(instance_id)
        if live_spot:
            requests = await self._paginate(
                "describe_spot_instance_requests",
                "SpotInstanceRequests",
                Filters=[{"Name": "instance-id", "Values": live_spot}],
            )
            for request in requests:
                code = request.get("Status", {}).get("Code", "")
                if code in SPOT_INTERRUPTION_CODES and request.get("InstanceId") in live_spot:
                    updated = request.get("Status", {}).get("UpdateTime")
                    at_s = _timestamp_s(updated) if updated is not None else now_s
                    notices.append(
                        InterruptionNotice(
                            request["InstanceId"],
                            at_s,
                            at_s + self.config.interruption_notice_s,
                            code,
                        )
                    )
        self._noticed.update(n.instance_id for n in notices)
        return notices

    async def interruptions(self) -> AsyncIterator[InterruptionNotice]:
        """Notices as the poll finds them, every `poll_interval_s` (AWS: poll every 5 s).
        A failed poll is logged and retried at the next interval rather than ending the
        stream."""
        while True:
            try:
                notices = await self.poll_interruptions()
            except CloudError as exc:
                log.warning("interruption poll failed: %s", exc)
                notices = []
            for notice in notices:
                yield notice
            await asyncio.sleep(self.config.poll_interval_s)

    async def close(self) -> None:
        """Instances are left running: they are paid for and the next start adopts them."""
        await asyncio.to_thread(self.client.close)


_: type[CloudProvider] = Ec2Cloud
