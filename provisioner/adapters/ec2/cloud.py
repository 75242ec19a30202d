"""`Ec2Cloud`: the CloudProvider over EC2, its calls and the state one control plane keeps
(what it is terminating, which interruptions it reported, its dry-run instances). What the
calls send and how their answers become Mark's values live beside it (`launch`, `offerings`,
`instances`, `errors`).
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from datetime import datetime
from functools import partial
from typing import Any

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from mark.core.config import CloudConfig
from mark.core.errors import CloudError, CloudNotFound, DryRunOperation, InsufficientCapacity
from mark.core.types import Instance, InstanceType, Market, Model, Offering
from provisioner.adapters.cloud import OWNER_TAG, CloudProvider, InterruptionNotice
from provisioner.adapters.ec2.errors import mapped_error
from provisioner.adapters.ec2.instances import (
    GONE_STATES,
    LIVE_STATES,
    SPOT_INTERRUPTION_CODES,
    instance_from_row,
)
from provisioner.adapters.ec2.launch import (
    launch_tags,
    spot_options,
    template_or_image,
    worker_user_data,
)
from provisioner.adapters.ec2.offerings import (
    SPOT_PRODUCTS,
    described_type,
    latest_spot_prices,
    pool_offerings,
    timestamp_s,
    zones_by_type,
)

__all__ = ["Ec2Cloud"]

log = logging.getLogger("mark.ec2")

# DescribeInstanceTypes takes at most 100 names per call.
_DESCRIBE_TYPES_BATCH = 100


class Ec2Cloud:
    """CloudProvider over EC2. One instance of this class per control plane; every method runs
    its boto3 call in a worker thread (boto3 is synchronous).

    Each call is made once, and botocore's standard retry mode (`cloud.api_max_attempts`)
    retries throttling and 5xx at the wire; whatever outlives it is raised as a typed Mark
    error (`provisioner.adapters.ec2.errors`), and retrying a transient one is the business of
    `provisioner.adapters.retry.RetryingCloud`, which wraps this provider in the control plane.
    A refused launch raises `InsufficientCapacity` and nothing more: remembering which pools to
    avoid is the planner's.

    `models(name)` returns a registered Model (its artifact for the worker's user data), e.g.
    `Database.get_model`, as for `LocalCloud`.

    `catalog_types` gives on-demand prices and the fallback facts; when omitted, the packaged
    catalog's (`mark.core.catalog.load_catalog().instance_types`) are used; `offered_types`
    narrows what is described and offered to those names. `client` replaces the
    boto3 EC2 client built from `config`; `clock` is the wall clock of spot price history, of
    interruption notices and of dry-run launches.
    """

    name = "ec2"

    def __init__(
        self,
        config: CloudConfig,
        *,
        models: Callable[[str], Awaitable[Model]],
        catalog_types: Sequence[InstanceType] | None = None,
        offered_types: Collection[str] = (),
        client: Any | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not (config.launch_template or config.image_id):
            raise CloudError("the EC2 provider needs cloud.launch_template or cloud.image_id")
        self.config = config
        self._models = models
        self.client = client if client is not None else self._build_client(config)
        self._clock = clock
        self._catalog = {t.name: t for t in catalog_types} if catalog_types is not None else None
        # the types the planner may buy (`planner.allowed_types`; empty: all): only these are
        # described and priced, as DescribeSpotPriceHistory over the whole catalog is
        # hundreds of pages of a rate-limited call every tick; any type is still adopted
        self._offered = frozenset(offered_types)
        self._types: dict[str, InstanceType] | None = None
        self._zones_by_type: dict[str, frozenset[str]] | None = None
        self._subnet_by_zone: dict[str, str] | None = None
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

    async def _in_thread(self, operation: str, call: Callable[[], Any]) -> Any:
        try:
            return await asyncio.to_thread(call)
        except (ClientError, BotoCoreError) as exc:
            raise mapped_error(operation, exc) from exc

    async def _call(self, operation: str, **params: Any) -> dict[str, Any]:
        """One EC2 call in a thread, errors mapped to Mark's typed ones."""
        result: dict[str, Any] = await self._in_thread(
            operation, partial(getattr(self.client, operation), **params)
        )
        return result

    async def _pages(self, operation: str, key: str, **params: Any) -> list[dict[str, Any]]:
        """Every page of a describe call through boto3's paginator: the items under `key`."""
        paginator = self.client.get_paginator(operation)

        def collect() -> list[dict[str, Any]]:
            return [item for page in paginator.paginate(**params) for item in page.get(key, [])]

        items: list[dict[str, Any]] = await self._in_thread(operation, collect)
        return items

    async def _mutate(self, operation: str, **params: Any) -> dict[str, Any] | None:
        """A call that changes or buys something. In dry-run mode it is logged and sent with
        DryRun=True; the answer is None when AWS says it would have succeeded."""
        if not self.config.dry_run:
            return await self._call(operation, **params)
        log.info("dry-run: %s %s", operation, params)
        try:
            await self._call(operation, DryRun=True, **params)
        except DryRunOperation:
            return None
        raise CloudError(f"EC2 {operation} with DryRun=True did not answer DryRunOperation")

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
            wanted = [n for n in catalog if not self._offered or n in self._offered]
            zones = await self._zones_offering(wanted)
            offered = [name for name in wanted if zones.get(name)]
            facts = await self._described_types(offered)
            self._types = {name: facts.get(name, catalog[name]) for name in offered}
        return list(self._types.values())

    async def _zones_offering(self, names: list[str]) -> dict[str, frozenset[str]]:
        if self._zones_by_type is None:
            try:
                rows = await self._pages(
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
                self._zones_by_type = {name: frozenset(self.config.zones) for name in names}
            else:
                self._zones_by_type = zones_by_type(rows, self.config.zones)
        return self._zones_by_type

    async def _described_types(self, names: list[str]) -> dict[str, InstanceType]:
        catalog = self._catalog_types()
        try:
            rows: list[dict[str, Any]] = []
            for start in range(0, len(names), _DESCRIBE_TYPES_BATCH):
                rows += await self._pages(
                    "describe_instance_types",
                    "InstanceTypes",
                    InstanceTypes=names[start : start + _DESCRIBE_TYPES_BATCH],
                )
        except CloudError as exc:
            log.warning("DescribeInstanceTypes unavailable (%s): using catalog facts", exc)
            return {}
        return {
            row["InstanceType"]: described_type(catalog[row["InstanceType"]], row) for row in rows
        }

    async def offerings(self) -> list[Offering]:
        """Every (type, configured zone, market): on-demand at the catalog price, spot at the
        latest of the last hour's DescribeSpotPriceHistory (`offerings.pool_offerings`)."""
        types = await self.instance_types()
        rows = await self._pages(
            "describe_spot_price_history",
            "SpotPriceHistory",
            InstanceTypes=[t.name for t in types],
            ProductDescriptions=list(SPOT_PRODUCTS),
            StartTime=datetime.fromtimestamp(self._clock() - 3600.0),
        )
        return pool_offerings(
            types, self.config.zones, self._zones_by_type or {}, latest_spot_prices(rows)
        )

    # ---- launch --------------------------------------------------------------------------

    async def _subnet_for(self, zone: str) -> str | None:
        if not self.config.subnet_ids:
            return None
        if self._subnet_by_zone is None:
            rows = await self._pages(
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
        known = self._catalog_types()
        if instance_type not in known:
            raise CloudError(f"instance type {instance_type} is not in the catalog")
        return known[instance_type].on_demand_price_per_hour

    async def launch(self, offering: Offering, models: Sequence[str]) -> Instance:
        """RunInstances for one instance of `offering`; PENDING on return. A `ClientToken`
        makes botocore's retries of this one call idempotent: a throttled call that in fact
        went through does not buy a second instance."""
        tags = launch_tags(self.config.owner, models, offering.market, offering.price_per_hour)
        command = self.config.worker_command.format(port=self.config.worker_port)
        params: dict[str, Any] = {
            **template_or_image(self.config),
            **await self._placement(offering.zone),
            "InstanceType": offering.instance_type,
            "MinCount": 1,
            "MaxCount": 1,
            "UserData": worker_user_data(command, [await self._models(m) for m in models]),
            "ClientToken": uuid.uuid4().hex,
            "TagSpecifications": [
                {"ResourceType": kind, "Tags": tags} for kind in ("instance", "volume")
            ],
        }
        if self.config.instance_profile_arn:
            params["IamInstanceProfile"] = {"Arn": self.config.instance_profile_arn}
        if offering.market == Market.SPOT:
            max_price = self._on_demand_price(offering.instance_type)
            params["InstanceMarketOptions"] = spot_options(max_price)
        answer = await self._mutate("run_instances", **params)
        if answer is None:
            return self._dry_run_instance(offering, models)
        return self._instance(answer["Instances"][0], offering=offering)

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

    def _instance(self, row: dict[str, Any], *, offering: Offering | None = None) -> Instance:
        return instance_from_row(
            row,
            worker_port=self.config.worker_port,
            on_demand_price=self._on_demand_price,
            offering=offering,
        )

    async def _describe(self, states: Sequence[str] = ()) -> list[dict[str, Any]]:
        """This fleet's instances (by the owner tag), in `states` when given."""
        filters = [{"Name": f"tag:{OWNER_TAG}", "Values": [self.config.owner]}]
        if states:
            filters.append({"Name": "instance-state-name", "Values": list(states)})
        reservations = await self._pages("describe_instances", "Reservations", Filters=filters)
        return [row for r in reservations for row in r.get("Instances", [])]

    async def list(self) -> list[Instance]:
        rows = await self._describe(states=LIVE_STATES)
        live = [self._instance(row) for row in rows if row["InstanceId"] not in self._terminating]
        return live + list(self._dry_run_instances.values())

    async def terminate(self, instance_id: str) -> None:
        """TerminateInstances; an instance already gone is success (the CloudProvider
        contract)."""
        if self._dry_run_instances.pop(instance_id, None) is not None:
            log.info("dry-run: terminate_instances %s (launched in dry run)", instance_id)
            return
        self._terminating.add(instance_id)
        try:
            await self._mutate("terminate_instances", InstanceIds=[instance_id])
        except CloudNotFound:
            return
        except CloudError:
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
            if state in LIVE_STATES:
                self._seen_live.add(instance_id)
            if state in GONE_STATES and instance_id in self._seen_live:
                reason = row.get("StateReason", {}).get("Code") or f"instance {state}"
                notices.append(InterruptionNotice(instance_id, now_s, now_s, reason))
            elif state in LIVE_STATES and row.get("InstanceLifecycle") == "spot":
                live_spot.append(instance_id)
        if live_spot:
            requests = await self._pages(
                "describe_spot_instance_requests",
                "SpotInstanceRequests",
                Filters=[{"Name": "instance-id", "Values": live_spot}],
            )
            for request in requests:
                code = request.get("Status", {}).get("Code", "")
                if code in SPOT_INTERRUPTION_CODES and request.get("InstanceId") in live_spot:
                    updated = request.get("Status", {}).get("UpdateTime")
                    at_s = timestamp_s(updated) if updated is not None else now_s
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
