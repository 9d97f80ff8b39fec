"""Memory of attention per kind against sequence length, and the longest sequence each kind can train.

Run as ``python -m benchmarks.memory [--quick] [--lengths 256 512 ...] [--budget-gib 16] [--out PATH]``.

Three measurements, float32, causal:

1. **One multi-head attention layer** per kind (B=1, H=4, head dim D=32, M=64 features per head) at every L:
   forward (``jax.vmap(layer)(x)``) and forward+backward (the gradient of ``sum(y * cot)`` with respect to
   x and all the layer's parameters). Kinds: ``softmax-batched`` (the same projections around **one**
   ``jax.nn.dot_product_attention`` call on (B, L, H, D): the cheapest XLA softmax), ``softmax`` (the
   `SoftmaxAttention` layer, heads vmapped), ``linear``, ``na-equilibrium``, ``na-ode``. For each point:

   - XLA's compiled memory analysis (``jax.jit(f).lower(...).compile().memory_analysis()``): temporary,
     argument, output and alias bytes; the *footprint* argument + output + temporary − alias is what must
     be resident at once during the call.
   - The measured peak of a fresh process running the point once (each point is its own subprocess): on CPU
     the growth of the resident set over the call (``VmHWM`` after the call, its high-water mark reset via
     ``/proc/self/clear_refs`` just before, minus ``VmRSS`` before the call, plus the argument bytes:
     compilation is not counted; the call is the process's first, so that no freed buffers of an earlier
     call hide its peak); on a GPU the device's ``peak_bytes_in_use``. Points whose compiled footprint exceeds
     ``--measure-cap-gib`` are not run (too much memory for a shared machine); their compiled numbers stay.

2. **Longest trainable sequence within a memory budget** (``--budget-gib``, default 16 GiB of a 24 GiB
   machine), per kind, from the compiled footprint of (a) the one-layer forward+backward above and (b) one
   train step (``astroformer.training.make_train_step``: loss, gradient, AdamW update) of the default
   ``astroformer train`` model (`TrainConfig()` defaults: character LM, 2 layers, d_model 64, 4 heads, M=32,
   batch 16). The search compiles, it does not extrapolate: it brackets the budget by growing L (the next
   probe predicted from a power law through the last two compiled points, at most 16× the last fitting L,
   else doubling), then shrinks the bracket (the same prediction, safeguarded into the bracket) until the
   largest fitting L and a non-fitting L at most ``max(64, L/16)`` above it have both been compiled. Every
   probe is kept in the JSON.

Output: JSON (``benchmarks/results/memory.json``) and a log–log figure of bytes against L
(``memory.png``).
"""

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from ._common import RESULTS_DIR, machine_info, pyplot, write_json

KINDS = ("softmax-batched", "softmax", "linear", "na-equilibrium", "na-ode")
PHASES = ("forward", "forward_backward")
MODEL_KINDS = ("softmax", "linear", "na-equilibrium", "na-ode")  # the kinds a `TrainConfig` accepts
GIB = 2**30
MIB = 2**20


# ------------------------------------------------------------------------------------------ the layers


def build_layer(kind: str, d_model: int, heads: int, features: int, *, key):
    """The attention layer of `kind` (`softmax-batched` is a `SoftmaxAttention`, applied by `apply_layer`)."""
    import astroformer as af

    base = "softmax" if kind == "softmax-batched" else kind
    extra = dict(num_features=features) if base.startswith("na-") else {}
    return af.make_attention(base, d_model, heads, key=key, **extra)


def _softmax_batched(layer, x):
    """`SoftmaxAttention`'s computation with all heads in one `jax.nn.dot_product_attention` call:
    x (B, L, d_model) → (B, L, d_model)."""
    B, L, d_model = x.shape
    H = layer.num_heads
    D = d_model // H
    scale = D**-0.25
    flat = x.reshape(B * L, d_model)

    def proj(lin):
        return (flat @ lin.weight.T + lin.bias).reshape(B, L, H, D)

    out = jax.nn.dot_product_attention(
        proj(layer.query) * scale, proj(layer.key) * scale, proj(layer.value), scale=1.0, is_causal=layer.causal
    )
    return (out.reshape(B * L, d_model) @ layer.output.weight.T + layer.output.bias).reshape(B, L, d_model)


def apply_layer(kind: str, layer, x):
    """The layer on a batch x (B, L, d_model)."""
    if kind == "softmax-batched":
        return _softmax_batched(layer, x)
    return jax.vmap(layer)(x)


def layer_function(kind: str, phase: str):
    """The jitted forward `f(layer, x)` or forward+backward `g(layer, x, cot)` (gradient of sum(y·cot) with
    respect to the layer's parameters and x)."""
    if phase == "forward":
        return jax.jit(lambda layer, x: apply_layer(kind, layer, x))
    if phase == "forward_backward":

        def loss(layer, x, cot):
            return jnp.sum(apply_layer(kind, layer, x) * cot)

        return jax.jit(jax.grad(loss, argnums=(0, 1)))
    raise ValueError(f"phase: expected one of {', '.join(PHASES)}, got {phase!r}")


def analysis_record(compiled) -> dict:
    """The compiled memory analysis as a dict of bytes, with the footprint argument + output + temp − alias."""
    m = getattr(compiled, "compiled", compiled).memory_analysis()  # an equinox `Compiled` wraps jax's
    rec = {
        name: int(getattr(m, f"{name}_size_in_bytes"))
        for name in ("temp", "argument", "output", "alias", "generated_code")
    }
    rec["footprint"] = rec["argument"] + rec["output"] + rec["temp"] - rec["alias"]
    return rec


def layer_args(phase: str, L: int, cfg: dict, *, abstract: bool):
    """(layer, x[, cot]) of a one-layer point; `abstract` gives `jax.ShapeDtypeStruct`s for x and cot."""
    d_model = cfg["heads"] * cfg["head_dim"]
    kl, kx, kc = jax.random.split(jax.random.PRNGKey(cfg.get("seed", 0)), 3)
    shape = (cfg["batch"], L, d_model)
    if abstract:
        x = cot = jax.ShapeDtypeStruct(shape, jnp.float32)
    else:
        x = jax.random.normal(kx, shape, jnp.float32)
        cot = jax.random.normal(kc, shape, jnp.float32)
    return kl, x, cot


def compile_layer(kind: str, phase: str, L: int, cfg: dict):
    """Compile one point without allocating its inputs: returns (compiled, analysis record, compile seconds)."""
    kl, x, cot = layer_args(phase, L, cfg, abstract=True)
    layer = build_layer(kind, cfg["heads"] * cfg["head_dim"], cfg["heads"], cfg["features"], key=kl)
    fn = layer_function(kind, phase)
    args = (layer, x) if phase == "forward" else (layer, x, cot)
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    return compiled, analysis_record(compiled), time.perf_counter() - start


# ------------------------------------------------------------------ the measured peak (one fresh process)


def _proc_status() -> dict[str, int]:
    """VmRSS and VmHWM of this process in bytes ({} where /proc is missing)."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    name, value = line.split(":")
                    out[name] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def _reset_peak_rss() -> bool:
    """Reset this process's resident-set high-water mark (Linux ≥ 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure_point(kind: str, phase: str, L: int, cfg: dict, measure_cap: float) -> dict:
    """Compile one point, and run it once if its compiled footprint is at most `measure_cap` bytes.

    Meant to run in a fresh process (`run_point`): the peak it reports then belongs to this point alone."""
    compiled, analysis, seconds = compile_layer(kind, phase, L, cfg)
    rec = {"compiled": analysis, "compile_s": seconds, "measured": None}
    if analysis["footprint"] > measure_cap:
        rec["measured_skipped"] = (
            f"compiled footprint {analysis['footprint'] / GIB:.2f} GiB > cap {measure_cap / GIB:.2f} GiB"
        )
        return rec
    kl, x, cot = layer_args(phase, L, cfg, abstract=False)
    layer = build_layer(kind, cfg["heads"] * cfg["head_dim"], cfg["heads"], cfg["features"], key=kl)
    args = (layer, x) if phase == "forward" else (layer, x, cot)
    jax.block_until_ready((x, cot))
    # No warm-up call: buffers it freed could stay in the process's heap and hide the next call's peak.
    device = jax.devices()[0]
    measured = {"backend": jax.default_backend()}
    if jax.default_backend() == "cpu":
        measured["hwm_reset"] = _reset_peak_rss()
        before = _proc_status()
        start = time.perf_counter()
        out = jax.block_until_ready(compiled(*args))
        measured["seconds"] = time.perf_counter() - start
        after = _proc_status()
        if before and after:
            measured["rss_before"] = before["VmRSS"]
            measured["rss_peak"] = after["VmHWM"]
            measured["peak_increase"] = after["VmHWM"] - before["VmRSS"] if measured["hwm_reset"] else None
            if measured["peak_increase"] is not None:  # comparable with the compiled footprint
                measured["peak_total"] = measured["peak_increase"] + analysis["argument"]
    else:
        start = time.perf_counter()
        out = jax.block_until_ready(compiled(*args))
        measured["seconds"] = time.perf_counter() - start
        stats = device.memory_stats() or {}
        measured["device_peak_bytes_in_use"] = stats.get("peak_bytes_in_use")
        measured["device_bytes_in_use"] = stats.get("bytes_in_use")
        measured["peak_total"] = stats.get("peak_bytes_in_use")  # the inputs are on the device too
    measured["output_finite"] = bool(all(jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(out)))
    rec["measured"] = measured
    return rec


def run_point(kind: str, phase: str, L: int, cfg: dict, measure_cap: float, timeout: float) -> dict:
    """`measure_point` in a fresh Python process (so that the measured peak is this point's alone)."""
    code = (
        "import json, sys; from benchmarks.memory import measure_point; "
        f"r = measure_point({kind!r}, {phase!r}, {L}, json.loads({json.dumps(cfg)!r}), {measure_cap!r}); "
        "print('RESULT ' + json.dumps(r))"
    )
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH", "")) if p)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code],
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=root,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    return {"error": f"exit {proc.returncode}: {proc.stderr[-1500:]}"}


# ---------------------------------------------------------------------------- the train step of a model


@dataclasses.dataclass(frozen=True)
class _Shape:
    """What `astroformer.training.build_model` reads from a task: its vocabulary size and sequence length."""

    vocab_size: int
    seq_len: int


def compile_train_step(kind: str, L: int, config=None) -> tuple[dict, float]:
    """Compile one train step (`make_train_step`) of the `TrainConfig` model (default: `TrainConfig()` with
    `attention=kind`) at sequence length L; returns (analysis record, compile seconds)."""
    import equinox as eqx
    import numpy as np

    from astroformer.tasks import Batch, get_task
    from astroformer.training import TrainConfig, build_model, make_optimizer, make_train_step, trainable_filter

    config = (TrainConfig() if config is None else config).replace(attention=kind)
    vocab = get_task(config.task, **config.task_kwargs).vocab_size
    model = build_model(config, _Shape(vocab, L))
    optimizer = make_optimizer(config)
    spec = trainable_filter(model)
    trainable, frozen = eqx.partition(model, spec)
    opt_state = optimizer.init(eqx.filter(model, spec))
    tokens = np.zeros((config.batch_size, L), np.int32)
    batch = Batch(inputs=tokens, targets=tokens, mask=np.ones_like(tokens, dtype=bool))
    batch = jax.tree.map(jnp.asarray, batch)
    step = make_train_step(optimizer)
    start = time.perf_counter()
    compiled = step.lower(trainable, frozen, opt_state, batch).compile()
    return analysis_record(compiled), time.perf_counter() - start


# ---------------------------------------------------------------------------------- the longest L search


def _predict(points: list[tuple[int, int]], budget: float) -> float | None:
    """L at which a power law through the two compiled points nearest the budget reaches `budget` bytes."""
    if len(points) < 2:
        return None
    near = sorted(points, key=lambda p: abs(math.log(p[1] / budget)))[:2]
    (L1, b1), (L2, b2) = sorted(near)
    if L1 == L2 or b1 <= 0 or b2 <= b1:
        return None
    slope = math.log(b2 / b1) / math.log(L2 / L1)
    return L2 * (budget / b2) ** (1 / slope)


def longest_length(
    footprint,
    budget: float,
    *,
    start: int,
    known: dict[int, int] | None = None,
    multiple: int = 64,
    resolution: float = 1 / 16,
    max_length: int = 2**24,
    log=None,
) -> dict:
    """The largest L (a multiple of `multiple`) whose `footprint(L)` (bytes, from a compile) is ≤ `budget`.

    Brackets the budget, then narrows the bracket to `max(multiple, resolution * lo)`; each probe's L is predicted by
    a power law through the nearest two compiled points and kept inside the bracket (see the module
    docstring). `known` holds footprints already compiled. Returns {"longest", "first_too_long", "probes"}.
    """
    points = dict(known or {})
    probes = []

    def probe(L):
        nonlocal last
        last = L
        if L not in points:
            b, seconds = footprint(L)
            points[L] = b
            probes.append({"L": L, "footprint": b, "compile_s": seconds})
            if log:
                log(f"    L={L}: {b / GIB:.3f} GiB ({'fits' if b <= budget else 'too large'}, {seconds:.1f} s)")
        return points[L]

    def fit(L):
        return points[L] <= budget

    def round_down(x):
        return max(multiple, int(x) // multiple * multiple)

    last_width = last = None
    probe(round_down(start))
    if not fit(round_down(start)):  # the start is already too long: halve until one fits
        L = round_down(start)
        while not fit(L):
            if L == multiple:
                return {"longest": None, "first_too_long": L, "probes": probes}
            L = round_down(L // 2)
            probe(L)
    while True:
        lo = max(L for L in points if fit(L))
        too_long = [L for L in points if not fit(L)]
        hi = min(too_long) if too_long else None
        if hi is not None and hi - lo <= max(multiple, resolution * lo):
            return {
                "longest": lo,
                "first_too_long": hi,
                "probes": probes,
                "footprint_longest": points[lo],
                "footprint_first_too_long": points[hi],
            }
        if lo >= max_length:
            return {
                "longest": lo,
                "first_too_long": None,
                "probes": probes,
                "footprint_longest": points[lo],
                "note": f"max_length {max_length} reached",
            }
        guess = _predict(list(points.items()), budget)
        if hi is None:  # grow: just above the predicted crossing (the next probe may then close the bracket)
            upper = min(16 * lo, max_length)
            L = round_down(guess * 1.01) + multiple if guess and guess > lo else 2 * lo
            L = min(max(L, lo + multiple), upper)
        else:  # narrow: straddle the predicted crossing (just below it after a probe that did not fit, just
            # above after one that fitted); the midpoint when the last probe did not halve the bracket
            width = hi - lo
            halved = last_width is None or width <= last_width / 2
            if guess and halved:
                L = round_down(guess * 0.99) if not fit(last) else round_down(guess * 1.01) + multiple
            else:
                L = (lo + hi) // 2
            L = round_down(min(max(L, lo + multiple), hi - multiple))
            if L <= lo:
                L = lo + multiple
            last_width = width
        probe(L)


def _search(footprint, budget, **kwargs) -> dict:
    """`longest_length`, with a failure recorded (not raised) so that the other kinds still run."""
    try:
        return longest_length(footprint, budget, **kwargs)
    except Exception as error:  # e.g. a compile that runs out of memory
        return {"longest": None, "error": f"{type(error).__name__}: {str(error)[:1000]}"}


# ------------------------------------------------------------------------------------------------ summary


def goals(results: dict) -> dict:
    """The issue's targets, evaluated on the compiled forward+backward footprint (temporary bytes too)."""
    layer = results["layer"]
    lengths = sorted(int(L) for L in layer)
    out = {}

    def value(L, kind, field="footprint"):
        rec = layer[str(L)].get(kind, {}).get("forward_backward", {})
        return rec.get("compiled", {}).get(field)

    ratios = {
        L: value(L, "na-ode") / value(L, "na-equilibrium")
        for L in lengths
        if value(L, "na-ode") and value(L, "na-equilibrium")
    }
    out["na_ode_over_na_equilibrium_fwd_bwd"] = {
        "by_L": {str(L): r for L, r in ratios.items()},
        "target": "<= 2 at every L",
        "met": bool(ratios) and max(ratios.values()) <= 2,
    }
    growth = {}
    for kind in KINDS:
        for field in ("footprint", "temp"):
            pairs = [(L, value(L, kind, field)) for L in lengths if value(L, kind, field)]
            growth.setdefault(kind, {})[field] = {
                f"{a}->{b}": math.log(vb / va) / math.log(b / a) for (a, va), (b, vb) in zip(pairs, pairs[1:])
            }
    out["log_log_slope_fwd_bwd"] = growth
    slopes = list(growth["na-ode"]["temp"].values())
    out["na_ode_linear_in_L"] = {
        "target": "log-log slope of the temporary bytes <= log2(2.2) = 1.14 between consecutive lengths",
        "max_slope": max(slopes) if slopes else None,
        "met": bool(slopes) and max(slopes) <= math.log2(2.2),
    }
    Lmax = lengths[-1]
    if value(Lmax, "softmax-batched") and value(Lmax, "na-ode"):
        r = value(Lmax, "softmax-batched") / value(Lmax, "na-ode")
        out["softmax_batched_over_na_ode_at_longest_L"] = {
            "L": Lmax,
            "ratio": r,
            "target": ">= 10 at L=16384",
            "met": bool(Lmax >= 16384 and r >= 10),
        }
    return out


# --------------------------------------------------------------------------------------------------- plot


COLOURS = {"softmax-batched": "C0", "softmax": "C9", "linear": "C1", "na-equilibrium": "C2", "na-ode": "C3"}


def plot(results: dict, path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    budget = results["config"]["budget_gib"] * GIB
    for ax, phase, title in zip(axes, PHASES, ("forward", "forward + backward")):
        for kind in KINDS:
            comp, meas = [], []
            for L, rec in results["layer"].items():
                r = rec.get(kind, {}).get(phase, {})
                if "compiled" in r:
                    comp.append((int(L), r["compiled"]["footprint"]))
                m = r.get("measured") or {}
                if m.get("peak_total"):
                    meas.append((int(L), m["peak_total"]))
            if comp:
                Ls, bs = zip(*sorted(comp))
                ax.plot(Ls, [b / MIB for b in bs], "o-", color=COLOURS[kind], label=f"{kind} (compiled)")
            if meas:
                Ls, bs = zip(*sorted(meas))
                ax.plot(
                    Ls, [b / MIB for b in bs], "x--", color=COLOURS[kind], alpha=0.7, label=f"{kind} (measured peak)"
                )
        ax.axhline(budget / MIB, color="k", lw=0.8, ls=":", label=f"budget {budget / GIB:g} GiB")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length L")
        ax.set_ylabel("MiB (argument + output + temporary)")
        ax.set_title(f"one layer, {title}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    ax = axes[2]
    names, values, labels = [], [], []
    for target, title in (("layer", "one layer"), ("model", "default model")):
        for kind, rec in results.get("longest", {}).get(target, {}).items():
            if rec.get("longest"):
                names.append(f"{kind}\n{title}")
                values.append(rec["longest"])
                labels.append(f"{rec['longest']:,}")
    if values:
        bars = ax.barh(
            range(len(values)),
            values,
            color=[COLOURS[n.split()[0]] for n in names],
            hatch=["//" if n.endswith("model") else "" for n in names],
        )
        ax.set_yticks(range(len(values)), names, fontsize=7)
        ax.set_xscale("log", base=2)
        for bar, label in zip(bars, labels):
            ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, " " + label, va="center", fontsize=7)
        ax.set_xlabel("longest L")
    ax.set_title(f"longest trainable L within {budget / GIB:g} GiB (compiled)")
    cfg = results["config"]
    fig.suptitle(
        f"memory on {results['machine']['backend'].upper()}: B={cfg['batch']}, H={cfg['heads']}, "
        f"D={cfg['head_dim']}, M={cfg['features']}, causal, float32"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------- main


PARTS = ("layer", "layer-search", "model-search")


def merge(paths: list[Path]) -> dict:
    """Combine the JSON of runs with different `--parts` (same configuration) into one result."""
    results = None
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        if results is None:
            results = data
            results["merged_from"] = list(data.get("merged_from", []))  # a merged file keeps its own sources
            continue
        for L, rec in data.get("layer", {}).items():
            for kind, phases in rec.items():
                results["layer"].setdefault(L, {}).setdefault(kind, {}).update(phases)
        for key, value in data.get("longest", {}).items():
            if isinstance(value, dict) and isinstance(results["longest"].get(key), dict):
                results["longest"][key].update(value)
            else:
                results["longest"][key] = value
        for key in ("layer_seconds", "search_seconds", "model_search_seconds"):
            if key in data:
                results[key] = data[key]
        results["merged_from"].append(
            {"path": str(path), "parts": data["config"].get("parts"), "machine": data["machine"]}
        )
    return results


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and budget (CI smoke test)")
    parser.add_argument("--lengths", type=int, nargs="+", help="sequence lengths (default 1024 4096 16384)")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, help="attention kinds (default all)")
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=PARTS,
        default=list(PARTS),
        help="what to run: the one-layer points, the one-layer longest-L search (it starts from "
        "the points run here), the default model's longest-L search (default all)",
    )
    parser.add_argument("--budget-gib", type=float, help="memory budget of the longest-L search (default 16)")
    parser.add_argument(
        "--measure-cap-gib",
        type=float,
        help="run a point to measure its peak only if its compiled footprint is below this (default 4 GiB)",
    )
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed per point subprocess")
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        help="combine the JSON files of runs with different --parts into --out and plot it",
    )
    parser.add_argument(
        "--seed-json",
        type=Path,
        help="a previous run's JSON (same configuration) whose one-layer points seed the search",
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "memory.json", help="JSON path")
    args = parser.parse_args(argv)

    if args.merge:
        results = merge(args.merge)
        if all(k in results["kinds"] for k in ("na-ode", "na-equilibrium", "softmax-batched")) and results["layer"]:
            results["goals"] = goals(results)
        path = write_json(results, args.out)
        plot(results, path.with_suffix(".png"))
        return results

    if args.quick:  # the searches only for a cheap kind of each growth (na-ode compiles take minutes)
        cfg = dict(
            batch=1,
            heads=2,
            head_dim=8,
            features=16,
            lengths=[64, 128],
            budget_gib=1 / 64,
            measure_cap_gib=0.5,
            model_budget_gib=1 / 16,
            model_start=64,
            model=dict(d_model=16, num_layers=1, num_heads=2, num_features=8, batch_size=2),
            search_kinds=["softmax-batched", "softmax", "na-equilibrium"],
        )
    else:
        cfg = dict(
            batch=1,
            heads=4,
            head_dim=32,
            features=64,
            lengths=[1024, 4096, 16384],
            budget_gib=16.0,
            measure_cap_gib=4.0,
            model_budget_gib=None,
            model_start=1024,
            model={},
            search_kinds=list(KINDS),
        )
    if args.lengths:
        cfg["lengths"] = sorted(args.lengths)
    if args.budget_gib is not None:
        cfg["budget_gib"] = args.budget_gib
    if args.measure_cap_gib is not None:
        cfg["measure_cap_gib"] = args.measure_cap_gib
    if cfg["model_budget_gib"] is None:
        cfg["model_budget_gib"] = cfg["budget_gib"]
    cfg["parts"] = list(args.parts)
    kinds = tuple(args.kinds) if args.kinds else KINDS
    search_kinds = [k for k in kinds if k in cfg["search_kinds"]]
    results = {
        "benchmark": "memory",
        "config": cfg,
        "kinds": list(kinds),
        "dtype": "float32",
        "footprint": "argument + output + temp - alias bytes of the compiled call (XLA memory_analysis)",
        "measured": "peak_total: on CPU the resident-set growth over one call (VmHWM after it, the "
        "high-water mark reset just before, minus VmRSS before it) plus the argument bytes, in "
        "a fresh process per point; on a GPU the device's peak_bytes_in_use",
        "machine": machine_info(),
        "layer": {},
        "longest": {},
    }

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    t_start = time.perf_counter()
    cap = cfg["measure_cap_gib"] * GIB
    layer_cfg = {k: cfg[k] for k in ("batch", "heads", "head_dim", "features")}
    if "layer" in args.parts:
        for L in cfg["lengths"]:
            rec = results["layer"].setdefault(str(L), {})
            for kind in kinds:
                for phase in PHASES:
                    r = run_point(kind, phase, L, layer_cfg, cap, args.timeout)
                    rec.setdefault(kind, {})[phase] = r
                    if "error" in r:
                        log(f"L={L} {kind} {phase}: {r['error']}")
                        continue
                    m = r.get("measured") or {}
                    peak = m.get("peak_total")
                    log(
                        f"L={L:6d} {kind:16s} {phase:16s} compiled {r['compiled']['footprint'] / MIB:10.1f} MiB "
                        f"(temp {r['compiled']['temp'] / MIB:10.1f})  measured "
                        f"{'-' if peak is None else f'{peak / MIB:10.1f}'} MiB  compile {r['compile_s']:.1f} s"
                    )
            write_json(results, args.out)
        results["layer_seconds"] = time.perf_counter() - t_start
        if all(k in kinds for k in ("na-ode", "na-equilibrium", "softmax-batched")):
            results["goals"] = goals(results)

    if "layer-search" in args.parts:
        t0 = time.perf_counter()
        budget = cfg["budget_gib"] * GIB
        results["longest"]["budget_gib"] = cfg["budget_gib"]
        layer_found = results["longest"].setdefault("layer", {})
        for kind in search_kinds:
            log(f"longest L, one layer, {kind}:")
            seeds = [results["layer"]]
            if args.seed_json:
                with open(args.seed_json) as f:
                    seeds.append(json.load(f)["layer"])
            known = {
                int(L): rec[kind]["forward_backward"]["compiled"]["footprint"]
                for layer in seeds
                for L, rec in layer.items()
                if "compiled" in rec.get(kind, {}).get("forward_backward", {})
            }

            def footprint(L, kind=kind):
                _, analysis, seconds = compile_layer(kind, "forward_backward", L, layer_cfg)
                return analysis["footprint"], seconds

            start = max(known) if known else cfg["lengths"][-1]
            layer_found[kind] = _search(footprint, budget, start=start, known=known, log=log)
            log(f"  -> {layer_found[kind]['longest']}")
            write_json(results, args.out)
        results["search_seconds"] = time.perf_counter() - t0
    if "model-search" in args.parts:
        from astroformer.training import TrainConfig

        t0 = time.perf_counter()
        default = TrainConfig(**cfg["model"])  # the `astroformer train` default (smaller with --quick)
        model_budget = cfg["model_budget_gib"] * GIB
        results["longest"]["model_budget_gib"] = cfg["model_budget_gib"]
        results["longest"]["model_config"] = {
            k: v for k, v in default.to_dict().items() if k not in ("run_dir", "attention")
        }
        found = results["longest"].setdefault("model", {})
        for kind in [k for k in MODEL_KINDS if k in search_kinds]:
            log(f"longest L, default model train step, {kind}:")

            def footprint(L, kind=kind):
                analysis, seconds = compile_train_step(kind, L, default)
                return analysis["footprint"], seconds

            found[kind] = _search(footprint, model_budget, start=cfg["model_start"], log=log)
            log(f"  -> {found[kind]['longest']}")
            write_json(results, args.out)
        results["model_search_seconds"] = time.perf_counter() - t0
    results["benchmark_seconds"] = time.perf_counter() - t_start
    path = write_json(results, args.out)
    plot(results, path.with_suffix(".png"))
    log(f"wrote {path} and {path.with_suffix('.png')}")
    return results


if __name__ == "__main__":
    main()
