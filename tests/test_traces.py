"""Trace format (read/write, errors) and the seeded generators."""

from __future__ import annotations

from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest

from mark.core.errors import InvalidValue
from traces import DATA_DIR, Trace, generators, read_trace, shipped_trace, write_trace


def test_round_trip_single_model(tmp_path: Path) -> None:
    trace = generators.mmpp(hours=1.0, seed=3)
    write_trace(tmp_path / "t.csv", trace)
    back = read_trace(tmp_path / "t.csv")
    assert back.bucket_s == 60.0 and back.models is None
    np.testing.assert_array_equal(back.timestamps_s, trace.timestamps_s)
    np.testing.assert_array_equal(back.counts, trace.counts)


def test_round_trip_many_models_drops_and_restores_zero_rows(tmp_path: Path) -> None:
    trace = generators.zipf_models(n_models=30, exponent=2.0, hours=0.5, total_peak_rps=2.0)
    assert (trace.counts == 0).any()
    write_trace(tmp_path / "z.csv", trace)
    lines = (tmp_path / "z.csv").read_text().splitlines()
    assert lines[0] == "timestamp_s,model,requests"
    assert len(lines) - 1 == int((trace.counts > 0).sum())
    back = read_trace(tmp_path / "z.csv")
    np.testing.assert_array_equal(back.total().counts, trace.total().counts)
    rare = trace.model_names[-1]
    np.testing.assert_array_equal(back.for_model(rare).counts, trace.for_model(rare).counts)
    assert back.model_names[0] == "model-0001"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("time,requests\n0,1\n", "header must name timestamp_s and requests"),
        ("timestamp_s,requests\n0,1\n60,x\n", r":3: requests 'x' is not a number"),
        ("timestamp_s,requests\n0,1\n60,-1\n", r":3: requests must be >= 0"),
        ("timestamp_s,requests\n0,1\n60,nan\n", r":3: requests must be finite"),
        ("timestamp_s,requests\n0,1\n60,1\n150,1\n", r":4: uneven timestamps"),
        ("timestamp_s,requests\n0,1\n60,1\n60,1\n", r":4: timestamps must increase"),
        ("timestamp_s,requests\n0,1,2\n", r":2: expected 2 fields, got 3"),
        ("timestamp_s,requests\n", "no rows"),
        ("timestamp_s,requests\n0,1\n", "at least two buckets"),
        ("timestamp_s,model,requests\n0,a,1\n0,a,2\n60,a,1\n", "'a' appears twice"),
        ("timestamp_s,model,requests\n0,a,1\n60,b,1\n100,a,1\n", "not on one grid"),
    ],
)
def test_malformed_files_are_rejected_with_the_line(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(InvalidValue, match=message):
        read_trace(path)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidValue, match="cannot open"):
        read_trace(tmp_path / "nope.csv")
    with pytest.raises(InvalidValue, match="no shipped trace 'nope'; shipped: "):
        shipped_trace("nope")


@pytest.mark.parametrize(
    "make",
    [
        lambda seed: generators.diurnal(days=0.5, seed=seed),
        lambda seed: generators.mmpp(seed=seed),
        lambda seed: generators.surge(days=0.5, surge_start_s=3600.0, seed=seed),
        lambda seed: generators.zipf_models(n_models=5, hours=1.0, seed=seed),
        lambda seed: generators.azure_functions(n_functions=200, keep=5, days=0.25, seed=seed),
    ],
)
def test_generators_are_seeded(make: object) -> None:
    a, b, c = make(1), make(1), make(2)  # type: ignore[operator]
    np.testing.assert_array_equal(a.counts, b.counts)
    assert not np.array_equal(a.counts, c.counts)
    assert (a.counts >= 0).all() and np.allclose(a.counts, np.round(a.counts))


def test_diurnal_shape_has_the_asked_peak_and_valley() -> None:
    times = 60.0 * np.arange(1440)
    rates = generators.diurnal_rates(times, peak_rps=160.0, peak_to_valley=4.0)
    assert rates.max() == pytest.approx(160.0, rel=1e-3)
    assert rates.min() == pytest.approx(40.0, rel=1e-3)
    assert 19 <= np.argmax(rates) / 60 <= 21  # the evening peak


def test_surge_raises_the_rate_by_its_fraction_for_its_stretch() -> None:
    kwargs = dict(days=1.0, noise=0.0, day_variation=0.0, peak_rps=100.0, peak_to_valley=1.0)
    base = generators.surge(surge_fraction=0.0, seed=5, **kwargs)  # type: ignore[arg-type]
    surged = generators.surge(
        surge_fraction=1.0,
        surge_start_s=36_000.0,
        surge_duration_s=3600.0,
        seed=5,
        **kwargs,  # type: ignore[arg-type]
    )
    inside = slice(36_000 // 60 + 5, 39_600 // 60)
    assert surged.counts[inside].mean() / base.counts[inside].mean() == pytest.approx(2.0, rel=0.02)
    np.testing.assert_array_equal(surged.counts[:590], base.counts[:590])


def test_mmpp_mean_is_between_its_states() -> None:
    trace = generators.mmpp(hours=48.0, rates_rps=(10.0, 50.0), mean_sojourn_s=600.0, seed=1)
    # Symmetric two-state chain: half the time in each state.
    assert trace.rates_rps.mean() == pytest.approx(30.0, rel=0.1)


def test_zipf_popularity() -> None:
    trace = generators.zipf_models(n_models=10, exponent=1.0, hours=24.0, noise=0.0, seed=0)
    totals = np.array([trace.for_model(n).counts.sum() for n in trace.model_names])
    assert totals[0] / totals[1] == pytest.approx(2.0, rel=0.05)
    assert totals[0] / totals[9] == pytest.approx(10.0, rel=0.1)


def test_azure_calibration_matches_the_published_statistics() -> None:
    # Shahrad et al. (ATC'20): 45% of apps invoked at most hourly, 81% at most once a minute,
    # and the 18.6% most popular account for 99.6% of invocations (we check it comes out).
    rates = NormalDist(generators.AZURE_2019_LOG10_RATE_MEAN, generators.AZURE_2019_LOG10_RATE_STD)
    assert rates.cdf(np.log10(1 / 3600)) == pytest.approx(0.45, abs=1e-9)
    assert rates.cdf(np.log10(1 / 60)) == pytest.approx(0.81, abs=1e-9)
    sample = 10 ** np.random.default_rng(0).normal(rates.mean, rates.stdev, 200_000)
    top = np.sort(sample)[::-1][: int(0.186 * sample.size)]
    assert top.sum() / sample.sum() > 0.99


def test_shipped_traces_are_small_valid_and_paper_scale() -> None:
    files = sorted(DATA_DIR.glob("*.csv"))
    assert {f.stem for f in files} >= {
        "twitter-like-diurnal-2d",
        "mmpp-4h",
        "surge-75",
        "surge-100",
        "zipf-50-models-4h",
        "azure-functions-2019-like-2d",
    }
    assert sum(f.stat().st_size for f in files) < 2_000_000
    for f in files:
        total = read_trace(f).total()
        assert total.bucket_s == 60.0
        # Tens of c5.large instances (~4.7 req/s each for Inception-v3) at the peak.
        assert 100.0 <= total.rates_rps.max() <= 260.0, f.name
    diurnal = read_trace(shipped_trace("twitter-like-diurnal-2d"))
    assert diurnal.counts.size == 2 * 1440


def test_trace_rejects_mismatched_arrays() -> None:
    with pytest.raises(InvalidValue):
        Trace(np.zeros(3), np.zeros(2), 60.0)
