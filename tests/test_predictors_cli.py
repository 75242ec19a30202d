"""`mark trace gen` and `mark forecast-eval` end to end, and the entry-point plugin seam."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mark.apps.cli import main
from mark.apps.commands.forecast_eval import parse_duration_s
from predictors import available_forecasters, create_forecaster
from traces import read_trace

REPO = Path(__file__).resolve().parents[1]


def test_trace_gen_then_forecast_eval(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace_path = tmp_path / "mmpp.csv"
    assert (
        main(["trace", "gen", "mmpp", "--hours", "2", "--seed", "9", "--out", str(trace_path)]) == 0
    )
    assert "120 buckets of 60 s" in capsys.readouterr().out
    assert read_trace(trace_path).counts.size == 120
    out = tmp_path / "eval"
    code = main(
        [
            "forecast-eval",
            "--trace",
            str(trace_path),
            "--predictors",
            "last,ewma,moving-max",
            "--horizon",
            "5m",
            "--warmup",
            "10m",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "MAPE" in printed and "best by pinball loss" in printed
    document = json.loads((out / "forecast_eval.json").read_text())
    assert [r["predictor"] for r in document["results"]] == ["last", "ewma", "moving-max"]
    assert document["horizon_buckets"] == 5
    assert document["best"] in {"last", "ewma", "moving-max"}
    for r in document["results"]:
        assert 0.0 <= r["under_rate"] <= 1.0 and r["mape_pct"] > 0
    assert (out / "forecast_eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("kind", ["diurnal", "surge", "zipf", "azure"])
def test_every_generator_kind_writes_a_readable_trace(tmp_path: Path, kind: str) -> None:
    extra = {
        "diurnal": ["--days", "0.1"],
        "surge": ["--days", "0.1", "--surge-start-s", "3600"],
        "zipf": ["--hours", "0.5", "--n-models", "4"],
        "azure": ["--days", "0.1", "--n-functions", "100", "--keep", "3"],
    }[kind]
    path = tmp_path / f"{kind}.csv"
    assert main(["trace", "gen", kind, "--out", str(path), *extra]) == 0
    assert read_trace(path).total().counts.size > 0


def test_forecast_eval_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp_s,requests\n0,1\n60,-3\n")
    assert main(["forecast-eval", "--trace", str(bad)]) == 2
    assert "requests must be >= 0" in capsys.readouterr().err
    assert main(["forecast-eval", "--trace", "mmpp-4h", "--horizon", "90s"]) == 2
    assert "not a whole number of 60 s buckets" in capsys.readouterr().err
    assert main(["forecast-eval", "--trace", "mmpp-4h", "--predictors", "nope"]) == 2
    assert "unknown forecaster 'nope'" in capsys.readouterr().err


def test_parse_duration() -> None:
    assert parse_duration_s("5m") == 300.0
    assert parse_duration_s("300") == 300.0
    assert parse_duration_s("1.5h") == 5400.0


def test_console_script_runs_forecast_eval_on_a_shipped_trace(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mark.apps.cli",
            "forecast-eval",
            "--trace",
            "mmpp-4h",
            "--predictors",
            "last",
            "--horizon",
            "2m",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "mmpp-4h: 240 buckets" in done.stdout


def test_entry_point_plugin_is_found_and_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real installed-distribution layout on sys.path: importlib.metadata reads it as is.
    (tmp_path / "mark_test_plugin.py").write_text(
        "from predictors.simple import LastValue\n\n"
        "class Doubling(LastValue):\n"
        "    name = 'doubling'\n\n"
        "    def _mean_path(self, horizon_buckets):\n"
        "        return 2 * super()._mean_path(horizon_buckets)\n"
    )
    dist = tmp_path / "mark_test_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mark-test-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[mark.forecasters]\n"
        "doubling = mark_test_plugin:Doubling\n"
        "last = mark_test_plugin:Doubling\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    names = available_forecasters()
    assert names[-1] == "doubling" and names.count("last") == 1  # built-ins win
    forecaster = create_forecaster("doubling", bucket_s=10.0)
    forecaster.observe(0.0, 30.0)
    assert forecaster.forecast(2).mean_rps == (6.0, 6.0)
    assert type(create_forecaster("last")).__module__ == "predictors.simple"
