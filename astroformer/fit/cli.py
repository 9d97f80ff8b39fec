"""`astroformer fit --config fit.json`: fit neuron–astrocyte parameters described by a JSON file.

The file (every key but `free` optional)::

    {
      "problem":  {"length": 4, "dim": 3, "features": 4, "values": 2, "scale": 0.5, "seed": 0},
      "inputs":   {"q": [[...]], "k": [[...]], "v": [[...]]},          # else random, from "problem"
      "target":   {"kind": "traces", "ts": [0.01, ...] | {"start": 0.01, "stop": 2.0, "num": 16},
                   "params": {"tau_n": 0.05, "tau_s": 0.2, "tau_p": 2.0},   # simulate data from these ...
                   "data": {"x": [[[...]]], "p": [[[...]]]},               # ... or give recorded traces
                   "variables": ["x", "p"], "noise": 0.02}
                | {"kind": "softmax", "causal": true},
      "start":    {"tau_n": 0.1, "tau_s": 0.4, "tau_p": 4.0, "t_read": 1.0},  # NAParams fields
      "free":     ["tau_n", "tau_s", "tau_p"]
                | {"tau_s": "positive", "tau_p": {"bounded": [0.1, 10]}, "v_gain": "identity"},
      "optimiser": {"name": "adam" | "lbfgs" | "sgd", "learning_rate": 0.05},
      "steps": 300,
      "dtype": "float64" | "float32",
      "output": "fitted.json"
    }

The fitted parameters, the loss history and the final gradient norm are written as JSON.
"""

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

_TOP_KEYS = {"problem", "inputs", "target", "start", "free", "optimiser", "steps", "dtype", "output"}


class ConfigError(ValueError):
    """A malformed fit configuration file."""


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _transform(name, spec):
    from . import Bounded, Identity, Positive

    if spec in (None, "default"):
        return None
    if spec == "positive":
        return Positive()
    if spec == "softplus":
        return Positive("softplus")
    if spec == "identity":
        return Identity()
    if isinstance(spec, dict) and set(spec) == {"bounded"}:
        b = spec["bounded"]
        _need(
            isinstance(b, list) and len(b) == 2 and all(isinstance(x, int | float) for x in b),
            f"free.{name}.bounded: expected [lo, hi], got {b!r}",
        )
        return Bounded(float(b[0]), float(b[1]))
    raise ConfigError(
        f"free.{name}: expected 'positive', 'softplus', 'identity' or {{'bounded': [lo, hi]}}, got {spec!r}"
    )


def _times(ts):
    import numpy as np

    if isinstance(ts, dict):
        _need(set(ts) == {"start", "stop", "num"}, f"target.ts: expected keys start, stop, num, got {sorted(ts)}")
        return np.geomspace(float(ts["start"]), float(ts["stop"]), int(ts["num"]))
    _need(isinstance(ts, list) and ts, f"target.ts: expected a list of times or {{start, stop, num}}, got {ts!r}")
    return np.asarray(ts, float)


def load_config(path) -> dict:
    """Read and validate the JSON file; raises `ConfigError` naming the key, what was expected and what came."""
    path = Path(path)
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"--config: no such file {str(path)!r}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(
            f"--config: expected a readable JSON file, got {str(path)!r} ({getattr(err, 'strerror', None) or err})"
        ) from None
    except json.JSONDecodeError as err:
        raise ConfigError(
            f"--config {path}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})"
        ) from None
    _need(isinstance(cfg, dict), f"--config {path}: expected a JSON object at the top level, got {type(cfg).__name__}")
    unknown = set(cfg) - _TOP_KEYS
    _need(not unknown, f"--config {path}: unknown keys {sorted(unknown)}; expected among {sorted(_TOP_KEYS)}")
    _need("free" in cfg, f"--config {path}: missing 'free' (the parameters to fit)")
    target = cfg.setdefault("target", {"kind": "traces"})
    _need(
        isinstance(target, dict) and target.get("kind", "traces") in ("traces", "softmax"),
        f"target.kind: expected 'traces' or 'softmax', got {target!r}",
    )
    steps = cfg.setdefault("steps", 300)
    _need(isinstance(steps, int) and steps > 0, f"steps: expected a positive integer, got {steps!r}")
    _need(
        cfg.setdefault("dtype", "float64") in ("float32", "float64"),
        f"dtype: expected 'float32' or 'float64', got {cfg['dtype']!r}",
    )
    return cfg


def run(cfg: dict, *, progress=None) -> dict:
    """Run the fit that `cfg` (from `load_config`) describes; returns the JSON-ready result."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from .. import NAParams, PositiveRandomFeatures
    from . import AttentionTarget, NAModel, TraceTarget, fit

    dtype = jnp.float64 if cfg["dtype"] == "float64" else jnp.float32
    prob = {"length": 4, "dim": 3, "features": 4, "values": 2, "scale": 0.5, "seed": 0, **cfg.get("problem", {})}
    kq, kk, kv, kf, kn = jax.random.split(jax.random.PRNGKey(int(prob["seed"])), 5)
    L, D, M, N = (int(prob[n]) for n in ("length", "dim", "features", "values"))
    if "inputs" in cfg:
        try:
            q, k, v = (jnp.asarray(cfg["inputs"][n], dtype) for n in ("q", "k", "v"))
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"inputs: expected numeric arrays q (L, D), k (L, D), v (L, N); {err}") from None
        L, D = q.shape
    else:
        q = prob["scale"] * jax.random.normal(kq, (L, D), dtype)
        k = prob["scale"] * jax.random.normal(kk, (L, D), dtype)
        v = jax.random.normal(kv, (L, N), dtype)
    target_cfg = cfg["target"]
    softmax = target_cfg.get("kind", "traces") == "softmax"
    feature_map = PositiveRandomFeatures(D, M, trainable=softmax, key=kf, dtype=dtype)
    try:
        start = NAParams(**cfg.get("start", {}))
    except TypeError as err:
        raise ConfigError(
            f"start: expected NAParams fields (tau_n, tau_s, tau_p, t_write, t_read, tau_f); {err}"
        ) from None
    model = NAModel(params=start, feature_map=feature_map, causal=bool(target_cfg.get("causal", True)))

    target: AttentionTarget | TraceTarget
    if softmax:
        target = AttentionTarget(q, k, v, causal=model.causal)
    else:
        _need("ts" in target_cfg, "target.ts: missing (the observation times of the traces)")
        ts = _times(target_cfg["ts"])
        variables = tuple(target_cfg.get("variables", ["x", "p"]))
        if "data" in target_cfg:
            _need(
                isinstance(target_cfg["data"], dict),
                f"target.data: expected an object of recorded traces, got {target_cfg['data']!r}",
            )
            data = {}
            for n, a in target_cfg["data"].items():
                try:
                    data[n] = jnp.asarray(np.asarray(a, dtype=float), dtype)
                except (TypeError, ValueError):
                    raise ConfigError(
                        f"target.data.{n}: expected a rectangular numeric array (T, L, ...), got "
                        "ragged or non-numeric nested lists"
                    ) from None
        else:
            _need("params" in target_cfg, "target: expected 'data' (recorded traces) or 'params' (to simulate)")
            truth = NAModel(params=NAParams(**target_cfg["params"]), feature_map=feature_map)
            sim = truth.traces(q, k, v, ts, variables=variables)
            noise = float(target_cfg.get("noise", 0.0))
            data = {}
            for n, key in zip(variables, jax.random.split(kn, len(variables))):
                clean = getattr(sim, n)
                data[n] = clean + noise * jnp.sqrt(jnp.mean(clean**2)) * jax.random.normal(key, clean.shape, dtype)
        try:
            target = TraceTarget(q=q, k=k, v=v, ts=ts, **data)
        except TypeError as err:
            raise ConfigError(f"target.data: expected keys among x, p, s, h; {err}") from None

    free = cfg["free"]
    if isinstance(free, dict):
        free = {name: _transform(name, spec) for name, spec in free.items()}
    opt_cfg = {"name": "adam", "learning_rate": 0.05, **cfg.get("optimiser", {})}
    makers = {
        "adam": lambda: optax.adam(opt_cfg["learning_rate"]),
        "sgd": lambda: optax.sgd(opt_cfg["learning_rate"]),
        "lbfgs": lambda: optax.lbfgs(),
    }
    _need(opt_cfg["name"] in makers, f"optimiser.name: expected one of {sorted(makers)}, got {opt_cfg['name']!r}")
    result = fit(model, target, free, optimiser=makers[opt_cfg["name"]](), steps=cfg["steps"], progress=progress)
    fitted = {
        name: np.asarray(value).tolist()
        for name, value in zip(result.free, (eval_name(result.model, n) for n in result.free))
    }
    return {
        "fitted": fitted,
        "loss_history": np.asarray(result.loss_history).tolist(),
        "final_loss": float(result.loss),
        "grad_norm": float(result.grad_norm),
        "steps": cfg["steps"],
    }


def eval_name(model, name: str):
    import functools

    return functools.reduce(getattr, name.split("."), model)


def _output_path(args, cfg) -> Path:
    """The output file, checked before fitting: its directory exists and is writable, it is not a directory."""
    import os

    path = Path(args.output or cfg.get("output") or "fitted.json")
    flag = "--output" if args.output else "output"
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError(
            f"{flag}: expected a file in an existing directory, got {str(path)!r} "
            f"({str(parent)!r} {'is not a directory' if parent.exists() else 'does not exist'})"
        )
    if path.is_dir():
        raise ConfigError(f"{flag}: expected a file path, got {str(path)!r}, which is a directory")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError(f"{flag}: expected a writable path, got {str(path)!r} (permission denied)")
    return path


def _main(args) -> int:
    try:
        cfg = load_config(args.config)
        path = _output_path(args, cfg)
    except ConfigError as err:
        print(f"astroformer fit: error: {err}", file=sys.stderr)
        return 2
    import jax

    if cfg["dtype"] == "float64":
        jax.config.update("jax_enable_x64", True)  # the command line's own process only
    progress: Callable[[int, Any], None] | None
    try:
        from tqdm import tqdm

        bar = tqdm(total=cfg["steps"], desc="fit", unit="step")

        def update(step: int, loss: Any) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss):.3e}", refresh=False)

        progress = update
    except ImportError:  # pragma: no cover - tqdm is optional
        bar, progress = None, None
    try:
        out = run(cfg, progress=progress)
    except (ValueError, TypeError, RuntimeError) as err:  # ConfigError, and the library's own checks
        from .._errors import runtime_message

        print(f"astroformer fit: error: {runtime_message(err)}", file=sys.stderr)
        return 2
    finally:
        if bar is not None:
            bar.close()
    path.write_text(json.dumps(out, indent=1))
    print(f"final loss {out['final_loss']:.3e}, gradient norm {out['grad_norm']:.2e}")
    for name, value in out["fitted"].items():
        print(f"  {name} = {value if isinstance(value, float) else '<array>'}")
    print(f"wrote {path}")
    return 0


def register(subparsers) -> None:
    """Add the `fit` subcommand to the `astroformer` command line."""
    p = subparsers.add_parser(
        "fit",
        help="fit time constants, gains or feature tuning by gradient descent",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--config", required=True, help="JSON file describing the target and the free parameters")
    p.add_argument("--output", default=None, help="where to write the fitted parameters (JSON)")
    p.set_defaults(func=_main)


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="astroformer")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
