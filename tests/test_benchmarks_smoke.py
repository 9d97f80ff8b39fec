"""Smoke test of `benchmarks/attention_speed.py --quick`: it runs, and its JSON is complete and consistent."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # runs in CI through `pytest -m slow`

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("softmax", "softmax-batched", "linear", "na-equilibrium", "na-ode", "na-ode-fixed-tau")


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "attention_speed.json"
    env = dict(os.environ, MPLBACKEND="Agg")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.attention_speed", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out) as f:
        return json.load(f), out


def _positive_finite(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_quick_writes_json_and_plot(quick_results):
    data, path = quick_results
    assert path.with_suffix(".png").stat().st_size > 0
    for field in ("config", "machine", "lengths", "read_steps", "accuracy", "dtype"):
        assert field in data, field
    assert data["machine"]["jax"] and data["machine"]["backend"]
    assert sorted(int(L) for L in data["lengths"]) == sorted(data["config"]["lengths"])


def test_times_positive_and_ratios_consistent(quick_results):
    data, _ = quick_results
    repeats = data["config"]["repeats"]
    for L in data["config"]["lengths"]:
        rec = data["lengths"][str(L)]
        assert set(KINDS) <= set(rec), (L, sorted(rec))
        for kind, r in rec.items():
            assert r["output_finite"], (L, kind)
            for phase in ("forward", "forward_backward"):
                times = r[phase]["times"]
                assert len(times) == repeats
                assert all(_positive_finite(t) for t in times), (L, kind, phase, times)
                assert r[phase]["median"] == pytest.approx(sorted(times)[len(times) // 2])
                assert r[phase]["min"] == min(times)
                assert _positive_finite(r["compile_s"][phase])
                ratio = r[phase]["median"] / rec["softmax"][phase]["median"]
                assert r["ratio_to_softmax"][phase] == pytest.approx(ratio, rel=1e-9)
                fastest = min(rec[k][phase]["median"] for k in ("softmax", "softmax-batched"))
                assert r["ratio_to_fastest_softmax"][phase] == pytest.approx(r[phase]["median"] / fastest, rel=1e-9)
        assert rec["softmax"]["ratio_to_softmax"]["forward"] == pytest.approx(1.0)


def test_accuracy_fields_sane(quick_results):
    data, _ = quick_results
    acc = data["accuracy"]
    full = acc["na_ode_vs_full_float64"]["relative_error_float32_default"]
    red = acc["na_ode_float32_vs_reduced_float64"]
    # float32 against a tight float64 solve: at rounding level, far below 1 but not exactly 0
    assert 0 < full < 1e-3
    assert 0 < red["relative_error_float32_default"] < 1e-3
    sweep = red["relative_error_float64_magnus2_by_read_steps"]
    assert sweep and all(0 <= e < 1e-2 for e in sweep.values())
