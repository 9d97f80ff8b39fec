"""Smoke tests of every benchmark script's `--quick` mode: it runs, and its JSON holds sane values.

Marked `slow` (each script compiles its own functions in a fresh process): the default `pytest` run skips
them, and `.ci/run` runs them in a second step (`python -m pytest -q -m slow`).
"""

import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run_quick(name: str, tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / f"{name}.json"
    proc = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", "--quick", "--out", str(out), *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.exists() and out.with_suffix(".png").exists()
    with open(out) as f:
        data = json.load(f)
    assert data["machine"]["jax"]
    return data


def finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_solver_overhead_quick(tmp_path):
    data = run_quick("solver_overhead", tmp_path)
    assert data["max_abs_difference_diffrax_vs_scan"] < 1e-5  # the same steps give the same numbers
    assert set(data["ratio_diffrax_over_scan"]) == {
        "read/forward",
        "read/forward+backward",
        "block/forward",
        "block/forward+backward",
    }
    for case in data["cases"].values():
        assert all(finite_positive(t) for t in case["times"]) and case["median"] >= case["min"]
    assert all(finite_positive(r) for r in data["ratio_diffrax_over_scan"].values())
    by_predecessor = data["forward_by_predecessor"]
    assert set(by_predecessor["median_s"]) == {"after_heaviest_case", "after_itself"}
    for medians in by_predecessor["median_s"].values():
        assert set(medians) == {"read/diffrax", "read/scan", "block/diffrax", "block/scan"}
        assert all(finite_positive(t) for t in medians.values())
    assert all(finite_positive(r) for r in by_predecessor["slowdown_after_heaviest_case"].values())


def test_work_precision_quick(tmp_path):
    data = run_quick("work_precision", tmp_path)
    magnus = {r["name"]: r for r in data["rows"] if r["name"].startswith("Magnus2") and r.get("relative_error")}
    assert len(magnus) >= 3
    errors = [magnus[k]["relative_error"] for k in sorted(magnus, key=lambda n: int(n.split("(")[1][:-1]))]
    assert errors[-1] < errors[0]  # more steps, smaller error
    assert errors[-1] < 1e-4
    assert 0 <= data["equilibrium_vs_reference"] < 1


def test_fidelity_quick(tmp_path):
    data = run_quick("fidelity", tmp_path, "--run-dir", str(tmp_path / "run"))
    rows = data["normalisers"]
    by_map = {}
    for r in rows:
        by_map.setdefault(r["map"], []).append(r)
        assert -1 <= r["normaliser_correlation"] <= 1 and r["normaliser_median_relative_error"] >= 0
        assert 0 <= r["attention_tv_median"] <= 1
    assert {"prf", "orthogonal", "oprf", "orthogonal-oprf", "learned"} <= set(by_map)
    for per_map in by_map.values():
        assert [r["M"] for r in per_map] == sorted(r["M"] for r in per_map)
    # OPRF's A minimises the closed-form variance and A = 0 is PRF, so it can never be worse than PRF.
    prf = {r["M"]: r["normaliser_closed_form_relative_variance_median"] for r in by_map["prf"]}
    for r in by_map["oprf"]:
        if r["M"] in prf:
            assert r["normaliser_closed_form_relative_variance_median"] <= prf[r["M"]] * (1 + 1e-6)
    baseline = data["softmax_bits_per_char"]
    assert finite_positive(baseline)
    for d in data["downstream"]:
        assert finite_positive(d["bits_per_char"])
        if "relative_to_softmax" in d:
            assert d["relative_to_softmax"] == pytest.approx(d["bits_per_char"] / baseline - 1, abs=1e-6)


def test_train_tasks_quick(tmp_path):
    data = run_quick("train_tasks", tmp_path, "--tasks", "mqar", "--kinds", "softmax", "na-ode", "--steps", "5")
    assert {r["attention"] for r in data["results"]} == {"softmax", "na-ode"}
    for r in data["results"]:
        assert 0 <= r["value"] <= 1 and finite_positive(r["tokens_per_s"])
    assert finite_positive(data["na_ode_speed_relative_to_softmax"]["mqar"])


def test_calcium_attention_quick(tmp_path):
    data = run_quick("calcium_attention", tmp_path)
    assert set(data["models"]) == {"abstract", "GChI", "LiRinzel"}
    abstract = [e for row in data["models"]["abstract"]["rel_eq"] for e in row]
    assert max(abstract) < 0.05  # the abstract astrocyte reaches the random-feature equilibrium
    assert 0 < data["equilibrium_vs_softmax"] < 10


def test_calcium_training_quick(tmp_path):
    data = run_quick("calcium_training", tmp_path)
    names = [r["name"] for r in data["results"]]
    assert names == ["softmax", "na-ode (abstract)", "na-ode + G-ChI", "na-ode + Li-Rinzel"]
    for r in data["results"]:
        assert r["diverged_at_step"] is None, r["name"]
        assert len(r["losses"]) == data["sizes"]["steps"] and all(math.isfinite(x) for x in r["losses"])
        assert 0 <= r["accuracy"] <= 1 and r["skipped_steps"] == 0
    for r in data["results"][2:]:  # the calcium parameters were trained (moved from their initial values)
        assert max(abs(c) for c in r["calcium_params_log_change"].values()) > 0


def test_recall_quick(tmp_path):
    data = run_quick("recall", tmp_path)
    runs = {(r["attention"], r["num_features"]): r for r in data["results"]}
    assert set(runs) == {("softmax", None), ("na-equilibrium", 16)}
    assert runs[("softmax", None)]["accuracy"] >= 0.9  # 2 pairs: softmax learns it within the quick budget
    table = data["summary"]["table"]
    for row in table:
        assert row["mean"] == pytest.approx(sum(row["accuracies"]) / len(row["accuracies"]))
    within = data["summary"]["within_5_points_of_softmax"]["na-equilibrium"]["2"]
    assert within["softmax"] == pytest.approx(runs[("softmax", None)]["accuracy"])
    assert (within["smallest_M_within_5_points"] == 16) == (
        runs[("na-equilibrium", 16)]["accuracy"] >= runs[("softmax", None)]["accuracy"] - 0.05
    )


def test_memory_quick(tmp_path):
    data = run_quick("memory", tmp_path)
    cfg = data["config"]
    for L in cfg["lengths"]:
        for kind in data["kinds"]:
            rec = data["layer"][str(L)][kind]
            fwd, fb = rec["forward"]["compiled"], rec["forward_backward"]["compiled"]
            assert fwd["footprint"] == fwd["argument"] + fwd["output"] + fwd["temp"] - fwd["alias"]
            assert 0 < fwd["footprint"] <= fb["footprint"], (L, kind)
            measured = rec["forward_backward"]["measured"]  # run (tiny), in a fresh process
            assert measured["output_finite"] and finite_positive(measured["peak_total"]), (L, kind)
    budget = cfg["budget_gib"] * 2**30
    for kind, found in data["longest"]["layer"].items():
        assert found["footprint_longest"] <= budget < found["footprint_first_too_long"], kind
        assert found["longest"] < found["first_too_long"]
    model_budget = cfg["model_budget_gib"] * 2**30
    for kind, found in data["longest"]["model"].items():
        assert found["footprint_longest"] <= model_budget < found["footprint_first_too_long"], kind
    # softmax's L×L scores: within the same budget it reaches a shorter L than the equilibrium block
    assert (
        data["longest"]["layer"]["softmax-batched"]["longest"] < data["longest"]["layer"]["na-equilibrium"]["longest"]
    )


def test_long_context_quick(tmp_path):
    data = run_quick("long_context", tmp_path)
    budget = data["budget_mib"] * 2**20
    assert data["L_long"] == data["factor"] * data["L_softmax"]
    assert data["softmax_search"]["footprint_longest"] <= budget
    assert data["at_L_long"]["softmax"]["footprint"] > budget  # softmax does not fit the long context
    for run in data["runs"]:
        assert finite_positive(run["bits_per_char"]) and run["steps"] == data["config"]["steps"]
        assert run["footprint"] <= budget
        assert run["context"] == (data["L_softmax"] if run["attention"] == "softmax" else data["L_long"])


def test_read_schemes_quick(tmp_path):
    data = run_quick("read_schemes", tmp_path)
    rows = {row["case"]: row["relative_error"] for row in data["rows"]}
    settled, transient = rows["layer default (N=32, M=64)"], rows["tau_n = tau_s = 0.1 T_r"]
    default = "Magnus2, geometric grid (default)"
    assert settled[default]["8"] < 1e-9  # a read that settles: Magnus2 is exact up to the reference's tolerance
    for errors in transient.values():  # a transient read: every scheme converges as the steps double
        assert 0 < errors["8"] < errors["4"] < 1


def test_distill_envelope_quick(tmp_path):
    data = run_quick("distill_envelope", tmp_path)
    assert set(data["maps"]) == {"learned", "learned-envelope", "learned-unmirrored", "learned-envelope-unmirrored"}
    for row in data["maps"].values():
        for key in ("tv_median_per_head", "train_tv_median_per_head"):
            assert len(row[key]) == 4 and all(0 <= tv <= 1 for tv in row[key])
        assert all(last < first for first, last in zip(row["loss_first_per_head"], row["loss_last_per_head"]))


def test_train_compile_in_fresh_processes(tmp_path):
    """`--processes 2`: two cold compiles of the default train step per kind, each run kept and summarised."""
    out = tmp_path / "train_compile.json"
    command = [sys.executable, "-m", "benchmarks.train_compile", "--kinds", "softmax", "na-equilibrium"]
    proc = subprocess.run(
        [*command, "--repeats", "1", "--processes", "2", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["processes"] == 2 and len(data["runs"]) == 2
    for kind in ("softmax", "na-equilibrium"):
        compile_s = data["summary"][kind]["compile_s"]
        values = [run["kinds"][kind]["compile_s"] for run in data["runs"]]
        assert compile_s["values"] == values and all(finite_positive(v) for v in values)
        assert compile_s["min"] == min(values) and compile_s["max"] == max(values)
    assert data["summary"]["softmax"]["throughput_ratio_to_softmax"]["values"] == [1.0, 1.0]


def test_read_profile_quick(tmp_path):
    out = tmp_path / "read_profile.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.read_profile", "--quick", "--repeats", "2", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        # the script's own default, not the test session's (conftest turns keeping freed memory off)
        env={k: v for k, v in os.environ.items() if k != "ASTROFORMER_KEEP_HOST_MEMORY"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out) as f:
        data = json.load(f)
    # timed with freed host memory kept, as the other speed benchmarks and `astroformer train` (glibc only)
    assert data["machine"]["freed_host_memory_kept"] is (platform.libc_ver()[0] == "glibc")
    cases = data["cases"]
    assert set(cases) == {
        "na-ode",
        "na-equilibrium",
        "na-ode/write",
        "na-ode/read",
        "na-ode/readout",
        "floor/read",
        "floor/inputs",
        "softmax",
    }
    for name, case in cases.items():
        phases = ("forward",) if name.startswith("floor/") else ("forward", "forward_backward")
        assert set(case["ratio_to_softmax"]) == set(phases)  # the floor is a forward only
        for phase in phases:
            assert len(case[phase]["times"]) == 2 and all(finite_positive(t) for t in case[phase]["times"])
            assert finite_positive(case["ratio_to_softmax"][phase]) and finite_positive(case[f"compile_s_{phase}"])
    assert "forward_backward" not in cases["floor/read"] and "forward_backward" not in cases["floor/inputs"]
    assert cases["softmax"]["ratio_to_softmax"] == {"forward": 1.0, "forward_backward": 1.0}
