"""Configuration: one TOML file plus `MARK_...` environment overrides over embedded defaults.

Precedence, lowest first (a later layer wins key by key, section by section):
1. the defaults written below;
2. the TOML file (`mark serve --config FILE`);
3. the short environment names (`MARK_ADMIN_TOKEN`, `MARK_DATABASE_URL`, `MARK_HOST`,
   `MARK_PORT`), for the few keys every deployment sets;
4. the long environment names, section and key joined by a double underscore
   (`MARK_SERVER__PORT=9000`, `MARK_PLANNER__SPOT_MAX_SHARE=0.5`, `MARK_CLOUD__ZONES='["a","b"]'`),
   read by pydantic-settings (`env_prefix="MARK_"`, `env_nested_delimiter="__"`): list and tuple
   values are JSON, everything else is the plain string that the field's type parses; a whole
   section may also be one JSON object (`MARK_SERVER='{"port": 9000}'`), merged key by key;
5. explicit per-section keyword arguments of `load_config` (the CLI's flags).
Each section is a validated model, units in the key names; unknown keys are errors and a value of
the wrong type fails at start-up, both with the key named, so a typo never passes silently.
`Config(...)` itself is a plain value: only `load_config` reads the file and the environment.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from mark.core.errors import InvalidValue

__all__ = [
    "Config",
    "ServerConfig",
    "DatabaseConfig",
    "ControlLoopConfig",
    "CloudConfig",
    "ServerlessConfig",
    "PlannerConfig",
    "ForecastConfig",
    "BatchingConfig",
    "SpillConfig",
    "WorkerConfig",
    "PlacementConfig",
    "RouteGroup",
    "DEFAULT_ROUTE_GROUP",
    "load_config",
    "ENV_PREFIX",
    "ENV_SHORTCUTS",
]

ENV_PREFIX = "MARK_"
ENV_SHORTCUTS: Mapping[str, tuple[str, str]] = {
    "MARK_ADMIN_TOKEN": ("server", "admin_token"),
    "MARK_DATABASE_URL": ("database", "url"),
    "MARK_HOST": ("server", "host"),
    "MARK_PORT": ("server", "port"),
}


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ServerConfig(_Section):
    """The one HTTP port: inference, admin API and metrics."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    workers: Annotated[int, Field(ge=1, le=64)] = 1
    admin_token: str | None = None
    # Every model's inference routes need a key (README, "Inference keys"); off: only the
    # models some key covers do.
    inference_keys_required: bool = False
    max_body_mb: Annotated[float, Field(gt=0, le=1024)] = 64.0
    request_timeout_s: Annotated[float, Field(gt=0)] = 60.0
    demo: bool = False


class DatabaseConfig(_Section):
    """SQLite file by default; `postgresql+asyncpg://...` when several front ends share a fleet."""

    url: str = "sqlite+aiosqlite:///./mark.db"
    echo: bool = False


class ControlLoopConfig(_Section):
    """The APScheduler job that forecasts, plans and applies (MArk decides every minute)."""

    enabled: bool = True
    tick_s: Annotated[float, Field(gt=0)] = 60.0
    apply_retries: Annotated[int, Field(ge=0, le=20)] = 3
    reconcile_grace_s: Annotated[float, Field(ge=0)] = 300.0
    sync_s: Annotated[float, Field(gt=0)] = 2.0
    # an instance the front ends keep ejected (failed calls and health checks) this long is
    # terminated and replaced, as an auto-scaling group does with load-balancer health checks
    unhealthy_replace_s: Annotated[float, Field(gt=0)] = 30.0
    # several `mark serve` on one PostgreSQL: only the holder of the database lease plans and
    # acts (mark/adapters/db/leadership.py); the lease runs out `lease_ticks` ticks after its
    # holder stopped renewing it, and every control plane shares its front ends' counts
    leader_election: bool = False
    lease_ticks: Annotated[float, Field(gt=1)] = 2.0


class CloudConfig(_Section):
    """Which CloudProvider buys instances. `local` runs real `mark worker` processes here."""

    provider: Literal["local", "ec2"] = "local"
    region: str = "us-east-1"
    zones: tuple[str, ...] = ("us-east-1a", "us-east-1b", "us-east-1c")
    endpoint_url: str | None = None
    dry_run: bool = False
    launch_template: str | None = None
    image_id: str | None = None
    subnet_ids: tuple[str, ...] = ()
    security_group_ids: tuple[str, ...] = ()
    instance_profile_arn: str | None = None
    launch_overhead_scale: Annotated[float, Field(ge=0)] = 0.01
    interruption_notice_s: Annotated[float, Field(ge=0)] = 120.0
    local_instance_type: str = "c5.large"
    local_state_dir: str = ".mark-local-cloud"  # worker pids/ports, so a restart can adopt them
    local_boot_timeout_s: Annotated[float, Field(gt=0)] = 60.0
    poll_interval_s: Annotated[float, Field(gt=0)] = 5.0
    # EC2 (provisioner/adapters/ec2/): the `mark:owner` tag value that marks this fleet's
    # instances, the worker started by user data, and botocore's attempts per call. The local
    # cloud runs `worker_command` too: `mark worker ...` is its reference worker (on loopback,
    # with the [worker] section), any other command a third-party server whose `{port}` it picks
    # (provisioner/adapters/local_cloud.py).
    owner: Annotated[str, Field(min_length=1, max_length=128)] = "mark"
    worker_port: Annotated[int, Field(ge=1, le=65535)] = 8080
    worker_command: str = "mark worker --host 0.0.0.0 --allow-remote --port {port}"
    api_max_attempts: Annotated[int, Field(ge=1, le=20)] = 4


class ServerlessConfig(_Section):
    """Where spilled requests go: the local function pool (default) or AWS Lambda."""

    provider: Literal["local", "lambda", "none"] = "local"
    function_name: str = "mark-spill"
    memory_mb: Annotated[int, Field(ge=128, le=10240)] = 3008
    concurrency: Annotated[int, Field(ge=1, le=10000)] = 8
    endpoint_url: str | None = None
    region: str = "us-east-1"
    arm: bool = False
    # provisioner/adapters/serverless/: the function timeout, how long an idle sandbox stays warm,
    # the local pool's Invoke API address (port 0: any free port) and its handler file.
    timeout_s: Annotated[float, Field(gt=0, le=900)] = 30.0
    keep_warm_s: Annotated[float, Field(ge=0)] = 600.0
    local_host: str = "127.0.0.1"
    local_port: Annotated[int, Field(ge=0, le=65535)] = 0
    handler_path: str | None = None
    api_max_attempts: Annotated[int, Field(ge=1, le=20)] = 3


class PlannerConfig(_Section):
    """The greedy planner's knobs (provisioner/policy/planner.py)."""

    horizon_s: Annotated[float, Field(gt=0)] = 300.0
    budget_per_hour: Annotated[float, Field(gt=0)] | None = None
    spot: bool = True
    spot_max_share: Annotated[float, Field(ge=0, le=1)] = 0.8
    spot_min_pools: Annotated[int, Field(ge=1)] = 2
    allowed_types: tuple[str, ...] = ()
    backup_types: tuple[str, ...] = ()
    release_window_s: Annotated[float, Field(ge=0)] = 60.0
    min_instances: Annotated[int, Field(ge=0)] = 0
    max_instances_per_model: Annotated[int, Field(ge=1)] = 1000
    # Launches one tick may make, in all and of one instance type: a surge is bought over a few
    # ticks and spilled meanwhile, never as hundreds of instances at once (EC2 throttles
    # RunInstances per account: a bucket of about 1,000 with a refill of 2 per second, and an
    # account's vCPU quota is often a few hundred).
    max_launches_per_tick: Annotated[int, Field(ge=1)] = 40
    max_launches_per_type_per_tick: Annotated[int, Field(ge=1)] = 20
    drain_s: Annotated[float, Field(ge=0)] = 30.0
    pool_cooldown_s: Annotated[float, Field(ge=0)] = 600.0
    scale_in_hold_s: Annotated[float, Field(ge=0)] = 300.0
    # release nothing that would leave less capacity than the highest rate observed over this
    # window (Kubernetes HPA's scale-down stabilization window, 300 s there): capacity is given
    # back on a drop that lasted, not on one bucket's dip (planner.py, _release)
    scale_in_window_s: Annotated[float, Field(ge=0)] = 300.0
    # cover the mean forecast, not its upper quantile, until the model's most cost-efficient
    # type could be ready: a tail sooner than that is left to queueing and spill instead of
    # stopgap instances costing many times more per request (provisioner/policy/planner.py)
    tail_after_lead: bool = True
    # weigh the serverless pool against instances per window of demand (planner_greedy.py): a
    # window the pool serves more cheaply per request is spilled, not bought for
    weigh_serverless: bool = True


class ForecastConfig(_Section):
    """Which forecaster each model gets (a name from predictors' registry) and its quantile.

    `upper_band` False makes the planner cover the forecast mean instead of its upper quantile
    (the forecast's upper band equals its mean); with `predictor = "last"` the planner is fed
    the last observed rate alone, the "no forecast" ablation that shows what forecasting saves.
    """

    predictor: str = "arima"
    quantile: Annotated[float, Field(gt=0, lt=1)] = 0.95
    upper_band: bool = True
    bucket_s: Annotated[float, Field(gt=0)] = 60.0
    schedule_file: str | None = None


class BatchingConfig(_Section):
    """SLO-aware dynamic batching in the front end."""

    enabled: bool = True
    # share of the SLO latency a batch may use (gather + T(b)); the rest absorbs the network,
    # waiting for a free slot on the instance and scheduling jitter
    slo_budget_fraction: Annotated[float, Field(gt=0, le=1)] = 0.8
    worker_timeout_s: Annotated[float, Field(gt=0)] = 30.0
    health_interval_s: Annotated[float, Field(gt=0)] = 1.0
    # a new instance is routed to once its health check passes (EC2 says `running` a minute
    # before the worker its user data starts listens); one still failing it after this long
    # is reported unhealthy, for the control plane to replace (ASG's health check grace period)
    boot_grace_s: Annotated[float, Field(gt=0)] = 300.0
    # batches outstanding per instance; the backlog beyond waits in the front end (spill sees it)
    max_inflight_batches: Annotated[int, Field(ge=1, le=64)] = 2
    rate_window_s: Annotated[float, Field(gt=0)] = 1.0  # EWMA of the rate routed to an instance
    pool_size: Annotated[int, Field(ge=1)] = 256  # pooled connections to instances, per process
    sync_interval_s: Annotated[float, Field(gt=0)] = 0.5  # fleet view refresh from the database
    # How long a request may wait in the front end for an instance or a pool slot (a crashed
    # instance's replacement, a full pool) before a 503; below server.request_timeout_s, so the
    # front end answers before Sanic's own timeout. With `shed_late` a request that cannot meet
    # its SLO and finds no pool slot is answered 429 with Retry-After (`shed_retry_after_s`) at
    # once instead: load shedding, for clients that would rather retry than wait.
    queue_timeout_s: Annotated[float, Field(gt=0)] = 30.0
    shed_late: bool = False
    shed_retry_after_s: Annotated[int, Field(ge=0)] = 1
    # Routing by residency (frontend/residency.py): a model resident on no instance is loaded on
    # the one that can load it soonest, its expected load time this until one is measured; at
    # most `max_held_per_model` requests wait for its loads, the next spill or get 429.
    default_load_s: Annotated[float, Field(gt=0)] = 5.0
    max_held_per_model: Annotated[int, Field(ge=1)] = 256
    # After a failed load, that instance is not asked to load that model again for
    # `load_backoff_base_s`, doubled per failure in a row up to `load_backoff_max_s`.
    load_backoff_base_s: Annotated[float, Field(gt=0)] = 1.0
    load_backoff_max_s: Annotated[float, Field(gt=0)] = 60.0
    # Scale to zero per model: a model this front end loaded on an instance and routed nothing
    # to there for this long is unloaded from it (frontend/residency.py; 0: never).
    unload_idle_s: Annotated[float, Field(ge=0)] = 300.0


class SpillConfig(_Section):
    """The queue-time monitor that sends threatened requests to the serverless pool."""

    enabled: bool = True
    margin_ms: Annotated[float, Field(ge=0)] = 20.0
    interval_ms: Annotated[float, Field(gt=0)] = 10.0
    # frontend/spill_monitor.py: the pool's warm latency assumed until one has been observed,
    # and how often the spilled cost is written to the ledger (batched off the hot path)
    serverless_warm_ms: Annotated[float, Field(gt=0)] = 100.0
    ledger_flush_s: Annotated[float, Field(gt=0)] = 1.0
    throttle_backoff_ms: Annotated[float, Field(ge=0)] = 100.0  # pool full after a throttle


class WorkerConfig(_Section):
    """`mark worker`'s model cache (mark/apps/worker/cache.py): models load on demand from the
    store (a directory or `s3://bucket/prefix`; unset: only the `--model` ones) within the memory
    budget (unset: unbounded); the least recently used move to the disk tier (`cache_dir`, unset:
    a temporary directory) and leave it past its budget. A model that served a request in the
    last `protect_s`, or that is pinned, is never evicted. Loaded artifacts are polled every
    `poll_s` (0: never) and a changed one is reloaded live."""

    store: str | None = None
    store_endpoint_url: str | None = None
    memory_budget_bytes: Annotated[int, Field(ge=1)] | None = None
    disk_budget_bytes: Annotated[int, Field(ge=1)] = 10 * 2**30
    cache_dir: str | None = None
    protect_s: Annotated[float, Field(ge=0)] = 60.0
    poll_s: Annotated[float, Field(ge=0)] = 10.0


DEFAULT_ROUTE_GROUP = "rest"  # the route group of the models that no rule matches


class RouteGroup(_Section):
    """One route group (issue 19 item 5, Cortex's router API): the models whose name matches one
    of `patterns` (shell-style, case-sensitive: `*`, `?`, `[...]`; Python's `fnmatchcase`) and
    no earlier group's; they run on instances of their own."""

    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][\w.-]*$")]
    patterns: Annotated[tuple[Annotated[str, Field(min_length=1)], ...], Field(min_length=1)]


class PlacementConfig(_Section):
    """Many-model fleets (mark/apps/control/placement_applier.py): with `worker.store` set (on
    the local cloud), the models that declare `memory_mb` share instances of one type, which
    load them from the store;
    each tick places them (provisioner/policy/placement.py) and moves them through the workers'
    repository API, loads before the front ends route there, unloads after they stopped. Models
    without `memory_mb` keep the per-model planner."""

    # loads and unloads per tick on running instances (each costs a model load somewhere)
    max_moves: Annotated[int, Field(ge=0)] = 50
    # a model taking more than this share of one instance gets replicas on distinct instances
    replicate_above: Annotated[float, Field(gt=0, le=1)] = 0.5
    # a model the forecast expects fewer requests of over the horizon is placed nowhere and
    # unloaded everywhere (scale to zero): its next request is a load or a spill
    min_expected_requests: Annotated[float, Field(ge=0)] = 1.0
    # the share of the SLO's miss allowance that the models left to the workers' caches may
    # spend on requests that a load makes late (provisioner/policy/placement_fleet.py,
    # `split_cached`); set a priori at half, the other half for bursts and moves
    miss_allowance_share: Annotated[float, Field(ge=0, le=1)] = 0.5
    # a model leaving an instance is off the front ends' routes this long before its unload
    # (their sync, batching.sync_interval_s, and the requests queued there, must fit in it)
    unload_drain_s: Annotated[float, Field(ge=0)] = 10.0
    # a placement's load gives up after this (an index read or an unload: after control.sync_s,
    # so that an instance that does not answer never holds up a sync)
    load_timeout_s: Annotated[float, Field(gt=0)] = 120.0
    # route groups, in order (`[[placement.groups]]`, name and patterns): a model joins the first
    # group a pattern of which its name matches, else "rest"; each group is placed on instances
    # of its own type, `max_moves` split among them (provisioner/policy/route_groups.py)
    groups: tuple[RouteGroup, ...] = ()

    @model_validator(mode="after")
    def _groups_named_once(self) -> PlacementConfig:
        seen: set[str] = set()
        for group in self.groups:
            if group.name == DEFAULT_ROUTE_GROUP:
                raise ValueError(
                    f"route group name {DEFAULT_ROUTE_GROUP!r} is the group of the models no "
                    "rule matches; give the rule another name"
                )
            if group.name in seen:
                raise ValueError(f"route group {group.name!r} is named twice")
            seen.add(group.name)
        return self


class Config(BaseSettings):
    """The whole configuration, one validated section per part of the system."""

    model_config = SettingsConfigDict(
        frozen=True, extra="forbid", env_prefix=ENV_PREFIX, env_nested_delimiter="__"
    )

    server: ServerConfig = ServerConfig()
    database: DatabaseConfig = DatabaseConfig()
    control: ControlLoopConfig = ControlLoopConfig()
    cloud: CloudConfig = CloudConfig()
    serverless: ServerlessConfig = ServerlessConfig()
    planner: PlannerConfig = PlannerConfig()
    forecast: ForecastConfig = ForecastConfig()
    batching: BatchingConfig = BatchingConfig()
    spill: SpillConfig = SpillConfig()
    worker: WorkerConfig = WorkerConfig()
    placement: PlacementConfig = PlacementConfig()

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        if self.cloud.provider == "ec2" and not (self.cloud.launch_template or self.cloud.image_id):
            raise ValueError("cloud.provider = 'ec2' needs cloud.launch_template or cloud.image_id")
        if self.batching.queue_timeout_s >= self.server.request_timeout_s:
            raise ValueError(
                "batching.queue_timeout_s must be below server.request_timeout_s, so that a "
                "request waiting for capacity is answered before the server's own timeout"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only the keyword arguments: the environment is read by `load_config` alone, from the
        mapping it is given, so that a test or a second config in one process sees no other."""
        return (init_settings,)


class _Environment(EnvSettingsSource):
    """pydantic-settings' `MARK_SECTION__KEY` reader over a given mapping instead of
    `os.environ` (names match case-insensitively, as they do for the real environment)."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(Config)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {name.lower(): value for name, value in self._environ.items()}


class _Shortcuts(PydanticBaseSettingsSource):
    """The short names of ENV_SHORTCUTS, below the long ones, matched case-insensitively like
    them; their values stay strings (a token of digits is still a token)."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        super().__init__(Config)
        self._environ = environ

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ reads whole sections

    def __call__(self) -> dict[str, Any]:
        out: dict[str, dict[str, str]] = {}
        for name, value in self._environ.items():
            if (target := ENV_SHORTCUTS.get(name.upper())) is not None:
                section, key = target
                out.setdefault(section, {})[key] = value
        return out


def _read_toml(path: str | Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        with open(path, "rb") as fh:
            loaded = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise InvalidValue("config", f"file {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise InvalidValue("config", f"{path} is not valid TOML: {exc}") from exc
    for section, values in loaded.items():
        if not isinstance(values, dict):
            raise InvalidValue(section, "must be a [table] of keys")
    return loaded


def _merge(low: Mapping[str, Any], high: Mapping[str, Any]) -> dict[str, Any]:
    """`high` over `low`, section by section and key by key (a whole section given as a JSON
    object in `MARK_SERVER` merges like one given key by key)."""
    out = dict(low)
    for section, values in high.items():
        below = out.get(section)
        both_tables = isinstance(below, Mapping) and isinstance(values, Mapping)
        out[section] = {**below, **values} if both_tables else values  # type: ignore[dict-item]
    return out


def load_config(
    path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: dict[str, Any],
) -> Config:
    """Build the config from the layers of the module docstring, lowest first: defaults, an
    optional TOML file, the environment (`os.environ` unless `environ` is given) and explicit
    per-section overrides (CLI flags). Raises InvalidValue naming the first bad key."""
    env = os.environ if environ is None else environ
    try:
        long_names = _Environment(env)()
    except SettingsError as exc:  # a list or tuple value that is not JSON
        raise InvalidValue("environment", str(exc)) from exc
    data: dict[str, Any] = {}
    for layer in (_read_toml(path), _Shortcuts(env)(), long_names, overrides):
        data = _merge(data, layer)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "config"
        raise InvalidValue(field, first["msg"]) from exc
