"""The packaged catalog: every file loads and validates, the paper's figures are there exactly,
and broken files are reported by file and entry."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mark.core.catalog import (
    DEFAULT_DIRECTORY,
    INSTANCE_TYPES_FILE,
    LAMBDA_FILE,
    PROFILES_FILE,
    SAGEMAKER_FILE,
    SPOT_ADVISOR_FILE,
    SPOT_FILE,
    Catalog,
    CatalogError,
    load_catalog,
)
from mark.core.errors import InvalidValue, NotFound
from mark.core.types import AcceleratorKind, InstanceType, Market, Model, Profile

PAPER_MODELS = ("inception-v3", "inception-resnet-v2", "nasnet", "lstm-ptb", "opennmt-ende")
ALL_FILES = (
    INSTANCE_TYPES_FILE,
    SAGEMAKER_FILE,
    LAMBDA_FILE,
    SPOT_FILE,
    PROFILES_FILE,
    SPOT_ADVISOR_FILE,
)


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


@pytest.fixture()
def copy_dir(tmp_path: Path) -> Path:
    """A writable copy of the packaged catalog, for corrupting."""
    target = tmp_path / "catalog"
    target.mkdir()
    for name in ALL_FILES:
        shutil.copy(DEFAULT_DIRECTORY / name, target / name)
    return target


# --- every file loads, with its source and date -----------------------------------------------


def test_every_file_states_source_and_date(catalog: Catalog) -> None:
    assert set(catalog.sources) == set(ALL_FILES)
    for line in catalog.sources.values():
        source, _, date = line.rpartition("; ")
        assert source.strip()
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", date)
    assert (
        "AWS EC2 On-Demand pricing page, us-east-1, Linux" in catalog.sources[INSTANCE_TYPES_FILE]
    )
    assert "synthetic" in catalog.sources[SPOT_FILE]
    assert "estimated" in catalog.sources[SPOT_FILE]


def test_default_catalog_is_cached_and_directories_load_fresh(copy_dir: Path) -> None:
    assert load_catalog() is load_catalog()
    fresh = load_catalog(copy_dir)
    assert fresh is not load_catalog()
    assert fresh.instance_types == load_catalog().instance_types


# --- instance types ---------------------------------------------------------------------------

PUBLISHED_ON_DEMAND = {
    "t3.large": 0.0832,
    "c5.large": 0.085,
    "m5.large": 0.096,
    "m5.xlarge": 0.192,
    "r5.large": 0.126,
    "g4dn.xlarge": 0.526,
    "g5.xlarge": 1.006,
    "p3.2xlarge": 3.06,
    "p2.xlarge": 0.90,
    "inf1.xlarge": 0.228,
    "inf1.6xlarge": 1.18,
}


def test_instance_types_cover_the_brief_with_published_prices(catalog: Catalog) -> None:
    expected = (
        [f"t3.{s}" for s in ("large", "xlarge", "2xlarge")]
        + [
            f"{f}.{s}"
            for f in ("c5", "m5", "r5")
            for s in ("large", "xlarge", "2xlarge", "4xlarge")
        ]
        + [f"g4dn.{s}" for s in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge")]
        + ["g5.xlarge", "p3.2xlarge", "p2.xlarge"]
        + [f"inf1.{s}" for s in ("xlarge", "2xlarge", "6xlarge")]
    )
    assert sorted(catalog.instance_types) == sorted(expected)
    for name, price in PUBLISHED_ON_DEMAND.items():
        assert catalog.instance_type(name).on_demand_price_per_hour == price


def test_instance_types_validate_and_bill_per_second_after_a_minute(catalog: Catalog) -> None:
    for name, itype in catalog.instance_types.items():
        assert itype.name == name
        assert InstanceType.model_validate(itype.model_dump()) == itype
        assert (itype.billing_granularity_s, itype.billing_minimum_s) == (1, 60)
        assert itype.source
        if itype.accelerator == AcceleratorKind.NONE:
            assert 100 <= itype.launch_overhead_s <= 120
        else:
            assert 180 <= itype.launch_overhead_s <= 240
    c5 = catalog.instance_type("c5.large")
    assert c5.charge_usd(10) == pytest.approx(60 * 0.085 / 3600)
    assert catalog.instance_type("p2.xlarge").accelerator == AcceleratorKind.GPU
    assert catalog.instance_type("inf1.6xlarge").accelerator == AcceleratorKind.INFERENTIA
    assert catalog.instance_type("inf1.6xlarge").accelerator_count == 4


def test_sagemaker_prices_are_keyed_by_ec2_type_and_cost_more(catalog: Catalog) -> None:
    prices = catalog.sagemaker_price_per_hour
    for name in ("c5.large", "c5.xlarge", "c5.2xlarge", "m5.large", "p2.xlarge", "g4dn.xlarge"):
        assert name in prices
    assert prices["c5.large"] == 0.102
    for name, price in prices.items():
        ratio = price / catalog.instance_type(name).on_demand_price_per_hour
        assert 1.1 <= ratio <= 1.45, name


# --- Lambda -----------------------------------------------------------------------------------


def test_lambda_limits_and_prices(catalog: Catalog) -> None:
    lp = catalog.lambda_pricing
    assert lp.per_gb_second_usd == 0.0000166667
    assert lp.per_gb_second_arm_usd == 0.0000133334
    assert lp.per_request_usd == pytest.approx(0.20 / 1e6)
    assert (lp.min_memory_mb, lp.max_memory_mb) == (128, 10240)
    assert lp.max_sync_payload_bytes == 6 * 1024 * 1024
    assert lp.timeout_s == 900
    assert lp.billing_granularity_ms == 1
    assert lp.cold_start_estimated and 1000 <= lp.cold_start_ms <= 3000


def test_lambda_charge_matches_the_paper_per_million_requests(catalog: Catalog) -> None:
    lp = catalog.lambda_pricing
    inception = 1e6 * lp.charge_usd(380, 3008)
    assert inception == pytest.approx(1e6 * (0.380 * 2.9375 * 0.0000166667) + 0.2)
    assert inception == pytest.approx(19.0, rel=0.02)  # paper: $19.0
    assert 1e6 * lp.charge_usd(785, 3008) == pytest.approx(39.3, rel=0.03)  # paper: $39.3
    assert 1e6 * lp.charge_usd(3100, 3008) == pytest.approx(155, rel=0.03)  # paper: $155
    assert lp.charge_usd(380, 3008, arm=True) < lp.charge_usd(380, 3008)


def test_lambda_charge_rounds_up_to_the_millisecond_and_stops_at_timeout(
    catalog: Catalog,
) -> None:
    lp = catalog.lambda_pricing
    assert lp.charge_usd(0.2, 1024) == pytest.approx(lp.charge_usd(1, 1024))
    assert lp.charge_usd(1.2, 1024) == pytest.approx(lp.charge_usd(2, 1024))
    assert lp.charge_usd(2e6, 1024) == pytest.approx(lp.charge_usd(900_000, 1024))
    with pytest.raises(InvalidValue):
        lp.charge_usd(100, 64)
    with pytest.raises(InvalidValue):
        lp.charge_usd(-1, 1024)


# --- spot history -----------------------------------------------------------------------------


def test_spot_sample_shape_and_discounts(catalog: Catalog) -> None:
    assert (DEFAULT_DIRECTORY / SPOT_FILE).stat().st_size < 300_000
    zones = {p.zone for p in catalog.spot_history}
    assert zones == {"us-east-1a", "us-east-1b", "us-east-1c", "us-east-1d"}
    assert {p.instance_type for p in catalog.spot_history} == set(catalog.instance_types)
    stamps = sorted({p.timestamp_s for p in catalog.spot_history})
    assert len(stamps) == 48 and {b - a for a, b in zip(stamps, stamps[1:], strict=False)} == {3600}
    discounts = []
    for point in catalog.spot_history:
        on_demand = catalog.instance_type(point.instance_type).on_demand_price_per_hour
        assert 0 < point.price_per_hour < on_demand
        discounts.append(1 - point.price_per_hour / on_demand)
    typical = sum(0.55 <= d <= 0.75 for d in discounts) / len(discounts)
    assert typical > 0.8


def test_spot_price_in_force_wraps_around_the_sample(catalog: Catalog) -> None:
    first = min(p.timestamp_s for p in catalog.spot_history)
    span = 48 * 3600.0
    pool = sorted(
        (
            p
            for p in catalog.spot_history
            if (p.instance_type, p.zone) == ("c5.large", "us-east-1b")
        ),
        key=lambda p: p.timestamp_s,
    )
    assert catalog.spot_price("c5.large", "us-east-1b", first) == pool[0].price_per_hour
    assert catalog.spot_price("c5.large", "us-east-1b", first + 5400) == pool[1].price_per_hour
    assert catalog.spot_price("c5.large", "us-east-1b", first + span - 1) == pool[-1].price_per_hour
    for offset in (0.0, 1800.0, 7 * 3600.0 + 5):
        here = catalog.spot_price("c5.large", "us-east-1b", first + offset)
        assert catalog.spot_price("c5.large", "us-east-1b", first + 3 * span + offset) == here
        assert catalog.spot_price("c5.large", "us-east-1b", first - span + offset) == here
    assert catalog.spot_price("c5.large", "us-east-1b", 0.0) is not None


def test_spot_price_absent_pool_and_unknown_type(catalog: Catalog) -> None:
    assert catalog.spot_price("p2.xlarge", "us-east-1d", 0.0) is None
    assert catalog.spot_price("c5.large", "eu-west-1a", 0.0) is None
    with pytest.raises(NotFound):
        catalog.spot_price("c9.huge", "us-east-1a", 0.0)
    with pytest.raises(InvalidValue):
        catalog.spot_price("c5.large", "us-east-1a", float("nan"))


# --- offerings --------------------------------------------------------------------------------


def test_offerings_counts(catalog: Catalog) -> None:
    types = len(catalog.instance_types)
    zones = ["us-east-1a", "us-east-1d"]
    everything = catalog.offerings(zones)
    on_demand = [o for o in everything if o.market == Market.ON_DEMAND]
    spot = [o for o in everything if o.market == Market.SPOT]
    assert len(on_demand) == types * 2
    assert len(spot) == types * 2 - 2  # p2.xlarge and inf1.6xlarge have no us-east-1d history
    assert len(catalog.offerings(zones, spot=False)) == types * 2
    assert len(catalog.offerings(["us-east-1a", "us-east-1a"], spot=False)) == types
    assert len(catalog.offerings(["eu-west-1a"])) == types  # no spot history there
    assert len({o.key for o in everything}) == len(everything)


def test_offerings_prices_and_filter(catalog: Catalog) -> None:
    first = min(p.timestamp_s for p in catalog.spot_history)
    at_s = first + 10 * 3600 + 60
    chosen = catalog.offerings(
        ("us-east-1a", "us-east-1c"), at_s=at_s, types=("p2.xlarge", "c5.large")
    )
    assert [(o.instance_type, o.zone, o.market) for o in chosen] == [
        ("p2.xlarge", "us-east-1a", Market.ON_DEMAND),
        ("p2.xlarge", "us-east-1a", Market.SPOT),
        ("p2.xlarge", "us-east-1c", Market.ON_DEMAND),
        ("p2.xlarge", "us-east-1c", Market.SPOT),
        ("c5.large", "us-east-1a", Market.ON_DEMAND),
        ("c5.large", "us-east-1a", Market.SPOT),
        ("c5.large", "us-east-1c", Market.ON_DEMAND),
        ("c5.large", "us-east-1c", Market.SPOT),
    ]
    for offering in chosen:
        expected: float | None
        if offering.market == Market.ON_DEMAND:
            expected = catalog.instance_type(offering.instance_type).on_demand_price_per_hour
            assert INSTANCE_TYPES_FILE in offering.source
        else:
            expected = catalog.spot_price(offering.instance_type, offering.zone, at_s)
            assert SPOT_FILE in offering.source
        assert offering.price_per_hour == expected
        assert offering.available
    with pytest.raises(NotFound):
        catalog.offerings(["us-east-1a"], types=["c9.huge"])


# --- models and profiles ----------------------------------------------------------------------


def test_models_validate_as_registrable_models(catalog: Catalog) -> None:
    assert set(PAPER_MODELS) | {"bert-base", "translation-300mb", "demo"} == set(catalog.models)
    for name, entry in catalog.models.items():
        model = entry.to_model()
        assert isinstance(model, Model) and model.name == name
        assert model.max_batch == max(p.max_batch for p in entry.profiles.values())
        for itype, profile in entry.profiles.items():
            assert itype in catalog.instance_types
            assert Profile.model_validate(profile.model_dump()) == profile
            assert profile.source, (name, itype)
        assert entry.source and entry.slo_source
        assert entry.serverless_memory_mb == 3008


def test_paper_slos_and_ours(catalog: Catalog) -> None:
    paper = {"inception-v3": 600, "nasnet": 1000, "lstm-ptb": 100, "opennmt-ende": 1400}
    for name, latency_ms in paper.items():
        slo = catalog.model(name).slo
        assert (slo.latency_ms, slo.percentile) == (latency_ms, 0.98)
        assert "paper" in catalog.model(name).slo_source
    for name in ("inception-resnet-v2", "bert-base", "demo"):
        assert catalog.model(name).slo_source.startswith("ours")


def test_slide_figures_are_present_exactly(catalog: Catalog) -> None:
    c5 = {name: catalog.model(name).profiles["c5.large"] for name in catalog.models}
    assert c5["inception-v3"].latency_ms[1] == 210.0
    assert c5["inception-resnet-v2"].latency_ms[1] == 398.0
    assert c5["opennmt-ende"].latency_ms[1] == 2180.0
    for name, ms in (("inception-v3", 380), ("inception-resnet-v2", 785), ("opennmt-ende", 3100)):
        entry = catalog.model(name)
        assert entry.serverless_latency_ms == ms
        assert not entry.serverless_estimated
    for name in ("nasnet", "lstm-ptb", "bert-base", "demo"):
        assert catalog.model(name).serverless_estimated


@pytest.mark.parametrize(
    ("model", "itype", "batch", "capacity_rpm"),
    [
        ("inception-v3", "c5.xlarge", 2, 490),
        ("inception-v3", "c5.2xlarge", 2, 771),
        ("inception-v3", "c5.4xlarge", 2, 1080),
        ("inception-v3", "p2.xlarge", 8, 415 * 8),
        ("nasnet", "c5.xlarge", 2, 85),
        ("nasnet", "c5.2xlarge", 2, 135),
        ("nasnet", "c5.4xlarge", 2, 187),
        ("nasnet", "p2.xlarge", 8, 95 * 8),
        ("opennmt-ende", "c5.xlarge", 2, 40 * 2),
        ("opennmt-ende", "c5.2xlarge", 2, 54 * 2),
        ("opennmt-ende", "c5.4xlarge", 2, 75 * 2),
        ("opennmt-ende", "p2.xlarge", 8, 80 * 8),
        ("lstm-ptb", "c5.xlarge", 2, 3100),
    ],
)
def test_mark_code_capacities_are_reproduced(
    catalog: Catalog, model: str, itype: str, batch: int, capacity_rpm: float
) -> None:
    """MArk's code profiled requests/minute with the batch its query processor sends per type
    (1 on c5.large, 2 on bigger c5, 8 on p2.xlarge): T(h) = h * 60000 / capacity."""
    profile = catalog.model(model).profiles[itype]
    assert batch * 60000 / profile.latency_ms[batch] == pytest.approx(capacity_rpm, rel=1e-3)


def test_profile_shapes_batching_pays_on_accelerators_not_cpu(catalog: Catalog) -> None:
    for entry in catalog.models.values():
        for itype, profile in entry.profiles.items():
            kind = catalog.instance_type(itype).accelerator
            sizes = sorted(profile.latency_ms)
            assert all(
                profile.latency_ms[a] < profile.latency_ms[b]
                for a, b in zip(sizes, sizes[1:], strict=False)
            )
            if kind != AcceleratorKind.NONE:
                assert sizes == [1, 2, 4, 8, 16, 32]
                gain = (32 / profile.latency_ms[32]) / (1 / profile.latency_ms[1])
                assert gain > 2, (entry.name, itype)
            elif entry.name in ("inception-v3", "inception-resnet-v2", "nasnet"):
                assert sizes == [1, 2, 4]
                gain = (4 / profile.latency_ms[4]) / (1 / profile.latency_ms[1])
                assert gain < 1.1, (entry.name, itype)


def test_paper_p2_batching_fits_the_slo(catalog: Catalog) -> None:
    """The paper's tuned p2.xlarge batching: W_batch + T(N_batch) <= RTmax."""
    for name, n, wait_ms in (("inception-v3", 8, 200), ("opennmt-ende", 16, 490)):
        entry = catalog.model(name)
        assert wait_ms + entry.profiles["p2.xlarge"].latency_ms[n] <= entry.slo.latency_ms


def test_demo_model_is_tiny_and_served_by_the_builtin_mlp(catalog: Catalog) -> None:
    demo = catalog.model("demo")
    model = demo.to_model()
    assert model.backend.artifact == "builtin:mlp"
    assert demo.profiles["c5.large"].latency_ms[1] < 10
    assert {"c5.large", "m5.large", "t3.large"} <= set(demo.profiles)


def test_unknown_names_raise_not_found_listing_the_known(catalog: Catalog) -> None:
    with pytest.raises(NotFound, match="inception-v3"):
        catalog.model("resnet-9000")
    with pytest.raises(NotFound, match="c5.large"):
        catalog.instance_type("c9.huge")


# --- broken files are named -------------------------------------------------------------------


def _edit_json(path: Path, edit: Callable[[dict[str, Any]], object]) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_corrupt_json_names_the_file(copy_dir: Path) -> None:
    (copy_dir / PROFILES_FILE).write_text('{"source": "x", "date": "2026-01-01", "models": {')
    with pytest.raises(CatalogError, match=PROFILES_FILE) as info:
        load_catalog(copy_dir)
    assert info.value.file == PROFILES_FILE


def test_missing_file_names_the_file(copy_dir: Path) -> None:
    (copy_dir / LAMBDA_FILE).unlink()
    with pytest.raises(CatalogError, match=LAMBDA_FILE):
        load_catalog(copy_dir)


def test_bad_instance_type_entry_names_file_and_entry(copy_dir: Path) -> None:
    def edit(data: dict[str, Any]) -> None:
        data["instance_types"][3]["vcpus"] = -2

    _edit_json(copy_dir / INSTANCE_TYPES_FILE, edit)
    with pytest.raises(CatalogError) as info:
        load_catalog(copy_dir)
    assert (info.value.file, info.value.entry) == (INSTANCE_TYPES_FILE, "c5.large")
    assert "vcpus" in str(info.value)


def test_missing_source_or_date_is_an_error(copy_dir: Path) -> None:
    _edit_json(copy_dir / SAGEMAKER_FILE, lambda data: data.pop("date"))
    with pytest.raises(CatalogError, match=f"{SAGEMAKER_FILE}: date"):
        load_catalog(copy_dir)


def test_profile_on_unknown_type_names_model_and_type(copy_dir: Path) -> None:
    def edit(data: dict[str, Any]) -> None:
        data["models"]["nasnet"]["profiles"][0]["instance_type"] = "c9.huge"

    _edit_json(copy_dir / PROFILES_FILE, edit)
    with pytest.raises(CatalogError) as info:
        load_catalog(copy_dir)
    assert (info.value.file, info.value.entry) == (PROFILES_FILE, "nasnet/c9.huge")


def test_infeasible_slo_names_the_model(copy_dir: Path) -> None:
    def edit(data: dict[str, Any]) -> None:
        data["models"]["lstm-ptb"]["slo"]["latency_ms"] = 1

    _edit_json(copy_dir / PROFILES_FILE, edit)
    with pytest.raises(CatalogError, match=f"{PROFILES_FILE}: lstm-ptb"):
        load_catalog(copy_dir)


def test_bad_spot_rows_and_header_name_the_line(copy_dir: Path) -> None:
    path = copy_dir / SPOT_FILE
    lines = path.read_text().splitlines()
    lines[4] = "1748736000,c5.large,us-east-1a,cheap"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(CatalogError, match=f"{SPOT_FILE}: line 5"):
        load_catalog(copy_dir)
    path.write_text("\n".join(lines[1:]) + "\n")
    with pytest.raises(CatalogError, match=f"{SPOT_FILE}: line 1"):
        load_catalog(copy_dir)
