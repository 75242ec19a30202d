"""Domain values reject what cannot be true, with a message naming the field."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from mark.core.errors import InvalidTransition
from mark.core.types import (
    AcceleratorKind,
    Forecast,
    Instance,
    InstanceState,
    InstanceType,
    Market,
    Model,
    Offering,
    Profile,
    Slo,
)

CPU = Profile(instance_type="c5.large", latency_ms={1: 210.0})
GPU = Profile(instance_type="p2.xlarge", latency_ms={1: 120.0, 8: 200.0}, max_batch=16)


def offering(price: float = 0.085) -> Offering:
    return Offering(
        instance_type="c5.large", zone="us-east-1a", market=Market.ON_DEMAND, price_per_hour=price
    )


def test_profile_fit_is_least_squares_line() -> None:
    p = Profile(instance_type="g", latency_ms={1: 12.0, 2: 14.0, 4: 18.0, 8: 26.0}, max_batch=8)
    assert p.a_ms == pytest.approx(10.0)
    assert p.c_ms == pytest.approx(2.0)
    assert p.service_ms(16) == pytest.approx(42.0)
    assert CPU.a_ms == 0.0 and CPU.c_ms == pytest.approx(210.0)
    assert GPU.fastest_ms == pytest.approx(GPU.service_ms(1))


@given(
    a=st.floats(min_value=0.0, max_value=500.0),
    c=st.floats(min_value=0.01, max_value=100.0),
)
def test_profile_fit_recovers_exact_lines(a: float, c: float) -> None:
    p = Profile(instance_type="t", latency_ms={b: a + c * b for b in (1, 2, 4, 8)}, max_batch=8)
    assert p.service_ms(3) == pytest.approx(a + 3 * c, rel=1e-6, abs=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"latency_ms": 0, "percentile": 0.9}, "latency_ms"),
        ({"latency_ms": 100, "percentile": 1.0}, "percentile"),
        ({"latency_ms": 100, "percentile": 0.0}, "percentile"),
    ],
)
def test_slo_bounds(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        Slo(**kwargs)
    assert info.value.errors()[0]["loc"] == (field,)


def test_model_rejects_slo_below_fastest_profile() -> None:
    with pytest.raises(ValidationError, match="shorter than the fastest profile"):
        Model(name="m", slo=Slo(latency_ms=100, percentile=0.98), profiles={"c5.large": CPU})
    ok = Model(
        name="m",
        slo=Slo(latency_ms=600, percentile=0.98),
        profiles={"c5.large": CPU, "p2.xlarge": GPU},
    )
    assert set(ok.profiles) == {"c5.large", "p2.xlarge"}


def test_model_rejects_mismatched_profile_key_and_bad_names() -> None:
    with pytest.raises(ValidationError, match="describes instance type"):
        Model(name="m", slo=Slo(latency_ms=600, percentile=0.98), profiles={"m5.large": CPU})
    for bad in ("", "Upper", "-lead", "x" * 64, "sp ace"):
        with pytest.raises(ValidationError):
            Model(name=bad, slo=Slo(latency_ms=600, percentile=0.98))


def test_negative_prices_and_inconsistent_accelerators_rejected() -> None:
    with pytest.raises(ValidationError, match="price_per_hour"):
        offering(-0.01)
    with pytest.raises(ValidationError, match="greater than or equal"):
        InstanceType(name="x", vcpus=2, memory_gib=4, on_demand_price_per_hour=-1)
    with pytest.raises(ValidationError, match="accelerator_count"):
        InstanceType(
            name="x",
            vcpus=2,
            memory_gib=4,
            on_demand_price_per_hour=1,
            accelerator=AcceleratorKind.GPU,
        )


def test_billing_minimum_and_granularity() -> None:
    t = InstanceType(
        name="c5.large",
        vcpus=2,
        memory_gib=4,
        on_demand_price_per_hour=0.085,
        billing_granularity_s=1,
        billing_minimum_s=60,
    )
    assert t.charge_usd(0) == 0.0
    assert t.charge_usd(10) == pytest.approx(60 * 0.085 / 3600)
    assert t.charge_usd(3600) == pytest.approx(0.085)
    assert t.charge_usd(90.2) == pytest.approx(91 * 0.085 / 3600)
    hourly = t.model_copy(update={"billing_granularity_s": 3600.0, "billing_minimum_s": 3600.0})
    assert hourly.charge_usd(3601, price_per_hour=1.0) == pytest.approx(2.0)
    assert [t.billed_s(s) for s in (0, 10, 90.2)] == [0.0, 60.0, 91.0]
    assert hourly.billed_s(3601) == 7200.0


def test_instance_state_machine() -> None:
    i = Instance(id="i-1", offering=offering(), models=("m",), launched_at_s=10.0)
    r = i.transition(InstanceState.RUNNING, 20.0, endpoint="http://127.0.0.1:9")
    assert r.running_at_s == 20.0 and r.endpoint == "http://127.0.0.1:9" and i.running_at_s is None
    d = r.transition(InstanceState.DRAINING, 30.0)
    t = d.transition(InstanceState.TERMINATED, 40.0)
    assert (t.state, t.terminated_at_s, t.live) == (InstanceState.TERMINATED, 40.0, False)
    assert t.transition(InstanceState.TERMINATED, 50.0) is t
    with pytest.raises(InvalidTransition):
        t.transition(InstanceState.RUNNING, 60.0)
    with pytest.raises(InvalidTransition):
        i.transition(InstanceState.DRAINING, 60.0)
    assert i.transition(InstanceState.TERMINATED, 11.0).terminated_at_s == 11.0


def test_forecast_validation() -> None:
    f = Forecast(start_s=0, bucket_s=60, mean_rps=(1.0, 2.0), upper_rps=(2.0, 3.0))
    assert f.peak_upper_rps == 3.0
    with pytest.raises(ValidationError, match="one value per bucket"):
        Forecast(start_s=0, bucket_s=60, mean_rps=(1.0,), upper_rps=(2.0, 3.0))
    with pytest.raises(ValidationError, match="finite"):
        Forecast(start_s=0, bucket_s=60, mean_rps=(float("nan"),), upper_rps=(2.0,))
