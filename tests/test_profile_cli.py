"""`mark profile` through a real `mark worker`: a worker paced to a known T(b) = a + c*b is
measured back within 5%, the entry it writes is a valid measured profile, and the recorded native
measurement of the shipped demo model is faster than every pace the catalog gives it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import mark.core.catalog
from mark.core.catalog import load_catalog
from mark.core.types import Profile

A_MS, C_MS = 200.0, 50.0


def _mark(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mark.apps.cli", *args],
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_profile_measures_a_known_synthetic_line_within_five_percent(tmp_path: Path) -> None:
    paced = {"m": {"instance_type": "synthetic", "max_batch": 8,
                   "latency_ms": {"1": A_MS + C_MS, "8": A_MS + 8 * C_MS}}}  # fmt: skip
    out = tmp_path / "m.json"
    done = _mark(
        "profile",
        "--model", "m=builtin:mlp",
        "--instance-type", "synthetic",
        "--batch-sizes", "1,2,4,8",
        "--warmup", "1",
        "--repeats", "5",
        "--worker-arg=--instance-type=synthetic",
        f"--worker-arg=--profiles={json.dumps(paced)}",
        "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    entry = json.loads(out.read_text())
    profile = Profile.model_validate(entry["profile"])
    assert profile.a_ms == pytest.approx(A_MS, rel=0.05)
    assert profile.c_ms == pytest.approx(C_MS, rel=0.05)
    assert not profile.estimated and "mark profile" in profile.source
    assert sorted(profile.latency_ms) == [1, 2, 4, 8] and profile.max_batch == 8
    assert [p["samples"] for p in entry["fit"]["points"]] == [5, 5, 5, 5]
    assert entry["fit"]["a_ms"] == pytest.approx(profile.a_ms, abs=1e-3)
    assert "T(b) =" in done.stdout


def test_profile_rejects_bad_batch_sizes() -> None:
    done = _mark("profile", "--model", "builtin:mlp", "--batch-sizes", "0,2")
    assert done.returncode == 2
    assert "batch-sizes" in done.stderr


def test_the_demo_paces_are_slower_than_the_model_measured_at_native_speed() -> None:
    """A worker paces a model to its catalog profile by waiting, so a pace faster than the
    model itself runs could not be kept: every paced demo profile must be at least the
    native time `mark profile` recorded (mark/core/catalog/measured_profiles.json)."""
    recorded = json.loads(
        (Path(mark.core.catalog.__file__).parent / "measured_profiles.json").read_text()
    )
    (native,) = [e for e in recorded["entries"] if e["artifact"] == "builtin:mlp"]
    assert native["estimated"] is False and recorded["date"]
    paced = load_catalog().model(native["model"]).profiles
    assert paced
    for profile in paced.values():
        for batch, ms in native["latency_ms"].items():
            assert profile.service_ms(int(batch)) >= ms, (profile.instance_type, batch)
