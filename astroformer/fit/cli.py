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

The schema is the dataclasses below (`FitConfig` and its sections): every key and value is read against their
annotations, so an error names the key's path, what was expected and what came (`problem.length: expected an
integer, got '4'`). The fitted parameters, the loss history and the final gradient norm are written as JSON.
"""

import dataclasses
import json
import math
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal


class ConfigError(ValueError):
    """A malformed fit configuration file."""


# ------------------------------------------------------------------------------------------------ the schema
# The file's schema is these dataclasses: `_read` checks every key and value against the fields' annotations,
# so each section is declared once and its checks follow from the declaration.


@dataclasses.dataclass(frozen=True)
class Problem:
    """A random problem (used where `inputs` is absent): q, k (length, dim), v (length, values)."""

    length: int = 4
    dim: int = 3
    features: int = 4
    values: int = 2
    scale: float = 0.5
    seed: int = 0

    def __post_init__(self):
        for name in ("length", "dim", "features", "values"):
            if getattr(self, name) < 1:
                raise ConfigError(f"problem.{name}: expected a positive integer, got {getattr(self, name)!r}")
        if not self.scale > 0:
            raise ConfigError(f"problem.scale: expected a positive number, got {self.scale!r}")
        from .._validate import MAX_SEED

        if not 0 <= self.seed < MAX_SEED:
            raise ConfigError(f"problem.seed: expected an integer in [0, 2**31), got {self.seed!r}")


@dataclasses.dataclass(frozen=True)
class Inputs:
    """Given inputs: numeric arrays q (L, D), k (L, D), v (L, N)."""

    q: list[Any]
    k: list[Any]
    v: list[Any]


@dataclasses.dataclass(frozen=True)
class TimeGrid:
    """`num` geometrically spaced observation times from `start` to `stop`."""

    start: float
    stop: float
    num: int

    def __post_init__(self):
        if not (0 < self.start < self.stop < math.inf) or self.num < 2:
            raise ConfigError(
                f"target.ts: expected 0 < start < stop (finite) and num >= 2, got start={self.start}, "
                f"stop={self.stop}, num={self.num}"
            )


@dataclasses.dataclass(frozen=True)
class Target:
    """What to fit: traces (recorded `data`, or simulated from `params`) or a softmax head's outputs."""

    kind: Literal["traces", "softmax"] = "traces"
    ts: list[float] | TimeGrid | None = None
    params: dict[str, float] | None = None
    data: dict[str, list[Any]] | None = None
    variables: list[str] = dataclasses.field(default_factory=lambda: ["x", "p"])
    noise: float = 0.0
    causal: bool = True

    def __post_init__(self):
        if not self.noise >= 0:
            raise ConfigError(f"target.noise: expected a non-negative number, got {self.noise!r}")
        ts = self.ts
        if isinstance(ts, list) and not (
            ts and all(map(math.isfinite, ts)) and ts[0] >= 0 and all(a < b for a, b in zip(ts, ts[1:]))
        ):
            raise ConfigError(f"target.ts: expected finite, non-negative, strictly increasing times, got {ts!r}")


@dataclasses.dataclass(frozen=True)
class Optimiser:
    name: Literal["adam", "lbfgs", "sgd"] = "adam"
    learning_rate: float = 0.05

    def __post_init__(self):
        if not self.learning_rate > 0:
            raise ConfigError(f"optimiser.learning_rate: expected a positive number, got {self.learning_rate!r}")


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """The whole file; `free` is the one required key."""

    free: str | list[str] | dict[str, Any]
    problem: Problem = Problem()
    inputs: Inputs | None = None
    target: Target = Target()
    start: dict[str, float] = dataclasses.field(default_factory=dict)
    optimiser: Optimiser = Optimiser()
    steps: int = 300
    dtype: Literal["float32", "float64"] = "float64"
    output: str | None = None

    def __post_init__(self):  # the checks that span fields, before anything is computed
        if self.steps < 1:
            raise ConfigError(f"steps: expected a positive integer, got {self.steps!r}")
        if isinstance(self.free, dict):
            for name, spec in self.free.items():
                _transform(name, spec)
        if self.target.kind == "traces":
            if self.target.ts is None:
                raise ConfigError("target.ts: missing (the observation times of the traces)")
            if self.target.data is None and self.target.params is None:
                raise ConfigError("target: expected 'data' (recorded traces) or 'params' (to simulate)")


def _describe(tp) -> str:
    if dataclasses.is_dataclass(tp):
        return f"an object with keys among {[f.name for f in dataclasses.fields(tp)]}"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return " or ".join(map(repr, args))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is list:
        return "a list"
    if origin is dict:
        return "an object"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}.get(
        tp, str(tp)
    )


def _json_kind(tp) -> str:
    """Which JSON value a type is read from: "object", "array" or "scalar"."""
    if dataclasses.is_dataclass(tp) or tp is dict or typing.get_origin(tp) is dict:
        return "object"
    return "array" if tp is list or typing.get_origin(tp) is list else "scalar"


def _read(tp, value, where: str):
    """`value` (parsed JSON) as type `tp`; raises `ConfigError` naming `where`, what was expected and what came."""

    def fail():
        raise ConfigError(f"{where}: expected {_describe(tp)}, got {value!r}")

    if tp is Any:
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            fail()
        names = {f.name: f for f in dataclasses.fields(tp)}
        here = f"{where}: " if where else ""
        unknown = set(value) - set(names)
        if unknown:
            raise ConfigError(f"{here}unknown keys {sorted(unknown)}; expected among {sorted(names)}")
        required = [n for n, f in names.items() if f.default is f.default_factory is dataclasses.MISSING]
        for n in required:
            if n not in value:
                raise ConfigError(f"{here}missing {n!r}")
        hints = typing.get_type_hints(tp)
        return tp(**{n: _read(hints[n], v, f"{where}.{n}" if where else n) for n, v in value.items()})
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return value if value in args else fail()
    if origin in (typing.Union, types.UnionType):
        same_kind = [
            a for a in args if _json_kind(a) == _json_kind(type(value)) and (a is not type(None) or value is None)
        ]
        if len(same_kind) == 1:  # the value can only mean this option: its own error is the precise one
            return _read(same_kind[0], value, where)
        for option in args:
            try:
                return _read(option, value, where)
            except ConfigError:
                continue
        fail()
    if origin is list:
        if not isinstance(value, list):
            fail()
        return [_read(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            fail()
        return {n: _read(args[1], v, f"{where}.{n}") for n, v in value.items()}
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):  # JSON's NaN / Infinity extensions, which json.loads accepts
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is type(None) and value is None:
        return None
    if tp in (int, bool, str) and type(value) is tp:
        return value
    fail()


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
        bounds = _read(list[float], spec["bounded"], f"free.{name}.bounded")
        if len(bounds) != 2 or not all(map(math.isfinite, bounds)) or not bounds[0] < bounds[1]:
            raise ConfigError(f"free.{name}.bounded: expected [lo, hi], finite with lo < hi, got {spec['bounded']!r}")
        return Bounded(*bounds)
    raise ConfigError(
        f"free.{name}: expected 'positive', 'softplus', 'identity' or {{'bounded': [lo, hi]}}, got {spec!r}"
    )


def _times(ts):
    import numpy as np

    if isinstance(ts, TimeGrid):
        return np.geomspace(ts.start, ts.stop, ts.num)
    return np.asarray(ts, float)


def load_config(path) -> FitConfig:
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
    if not isinstance(cfg, dict):
        raise ConfigError(f"--config {path}: expected a JSON object at the top level, got {type(cfg).__name__}")
    if "free" not in cfg:
        raise ConfigError(f"--config {path}: missing 'free' (the parameters to fit)")
    return _read(FitConfig, cfg, "")


def run(cfg: FitConfig, *, progress=None) -> dict:
    """Run the fit that `cfg` (from `load_config`) describes; returns the JSON-ready result."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from .. import NAParams, PositiveRandomFeatures
    from . import AttentionTarget, NAModel, TraceTarget, fit

    dtype = jnp.float64 if cfg.dtype == "float64" else jnp.float32
    prob = cfg.problem
    kq, kk, kv, kf, kn = jax.random.split(jax.random.PRNGKey(prob.seed), 5)
    L, D, M, N = prob.length, prob.dim, prob.features, prob.values
    if cfg.inputs is not None:
        try:
            q, k, v = (jnp.asarray(getattr(cfg.inputs, n), dtype) for n in ("q", "k", "v"))
        except (TypeError, ValueError, OverflowError) as err:
            raise ConfigError(f"inputs: expected numeric arrays q (L, D), k (L, D), v (L, N); {err}") from None
        for name, arr in zip("qkv", (q, k, v)):
            if arr.ndim != 2 or not arr.size:
                raise ConfigError(
                    f"inputs.{name}: expected a non-empty 2-D array ({'L, N' if name == 'v' else 'L, D'}), "
                    f"got shape {tuple(arr.shape)}"
                )
            if not bool(jnp.all(jnp.isfinite(arr))):
                raise ConfigError(f"inputs.{name}: expected finite numbers, got NaN or inf")
        if k.shape != q.shape or v.shape[0] != q.shape[0]:
            raise ConfigError(
                f"inputs: expected q and k of one shape (L, D) and v of L rows, got q {tuple(q.shape)}, "
                f"k {tuple(k.shape)}, v {tuple(v.shape)}"
            )
        L, D = q.shape
    else:
        q = prob.scale * jax.random.normal(kq, (L, D), dtype)
        k = prob.scale * jax.random.normal(kk, (L, D), dtype)
        v = jax.random.normal(kv, (L, N), dtype)
    target_cfg = cfg.target
    softmax = target_cfg.kind == "softmax"
    feature_map = PositiveRandomFeatures(D, M, trainable=softmax, key=kf, dtype=dtype)
    try:
        start = NAParams(**cfg.start)
    except (TypeError, ValueError) as err:
        raise ConfigError(
            f"start: expected NAParams fields (tau_n, tau_s, tau_p, t_write, t_read, tau_f) with positive values; {err}"
        ) from None
    model = NAModel(params=start, feature_map=feature_map, causal=target_cfg.causal)

    target: AttentionTarget | TraceTarget
    if softmax:
        target = AttentionTarget(q, k, v, causal=model.causal)
    else:
        assert target_cfg.ts is not None  # FitConfig checked it
        ts = _times(target_cfg.ts)
        variables = tuple(target_cfg.variables)
        if target_cfg.data is not None:
            data = {}
            for n, a in target_cfg.data.items():
                try:
                    data[n] = jnp.asarray(np.asarray(a, dtype=float), dtype)
                except (TypeError, ValueError, OverflowError):
                    raise ConfigError(
                        f"target.data.{n}: expected a rectangular numeric array (T, L, ...), got "
                        "ragged or non-numeric nested lists"
                    ) from None
                if not bool(jnp.all(jnp.isfinite(data[n]))):
                    raise ConfigError(f"target.data.{n}: expected finite numbers, got NaN or inf")
        else:
            assert target_cfg.params is not None  # FitConfig checked it
            try:
                truth_params = NAParams(**target_cfg.params)
            except (TypeError, ValueError) as err:
                raise ConfigError(
                    "target.params: expected NAParams fields (tau_n, tau_s, tau_p, t_write, t_read, tau_f) with "
                    f"positive values; {err}"
                ) from None
            truth = NAModel(params=truth_params, feature_map=feature_map)
            sim = truth.traces(q, k, v, ts, variables=variables)
            data = {}
            for n, key in zip(variables, jax.random.split(kn, len(variables))):
                clean = getattr(sim, n)
                data[n] = clean + target_cfg.noise * jnp.sqrt(jnp.mean(clean**2)) * jax.random.normal(
                    key, clean.shape, dtype
                )
        try:
            target = TraceTarget(q=q, k=k, v=v, ts=ts, **data)
        except TypeError as err:
            raise ConfigError(f"target.data: expected keys among x, p, s, h; {err}") from None

    free = cfg.free
    if isinstance(free, dict):
        free = {name: _transform(name, spec) for name, spec in free.items()}
    makers = {
        "adam": lambda: optax.adam(cfg.optimiser.learning_rate),
        "sgd": lambda: optax.sgd(cfg.optimiser.learning_rate),
        "lbfgs": lambda: optax.lbfgs(),
    }
    result = fit(model, target, free, optimiser=makers[cfg.optimiser.name](), steps=cfg.steps, progress=progress)
    fitted = {
        name: np.asarray(value).tolist()
        for name, value in zip(result.free, (eval_name(result.model, n) for n in result.free))
    }
    return {
        "fitted": fitted,
        "loss_history": np.asarray(result.loss_history).tolist(),
        "final_loss": float(result.loss),
        "grad_norm": float(result.grad_norm),
        "steps": cfg.steps,
    }


def eval_name(model, name: str):
    import functools

    return functools.reduce(getattr, name.split("."), model)


def _output_path(args, cfg) -> Path:
    """The output file, checked before fitting: its directory exists and is writable, it is not a directory, it
    is not the config file, and an existing file is replaced only with `--overwrite`."""
    import os

    given = args.output if args.output is not None else cfg.output
    flag = "--output" if args.output is not None else "output"
    if given is not None and not given.strip():
        raise ConfigError(f"{flag}: expected a file path, got an empty string")
    path = Path("fitted.json" if given is None else given)
    if path.exists() and Path(args.config).exists() and path.resolve() == Path(args.config).resolve():
        raise ConfigError(f"{flag}: expected a file other than the config, got {str(path)!r}, which is --config")
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
    if path.exists() and not args.overwrite:
        raise ConfigError(f"{flag}: {str(path)!r} already exists; choose another output or replace it with --overwrite")
    return path


def _main(args) -> int:
    try:
        cfg = load_config(args.config)
        path = _output_path(args, cfg)
    except ConfigError as err:
        print(f"astroformer fit: error: {err}", file=sys.stderr)
        return 2
    import jax

    x64 = jax.config.read("jax_enable_x64")  # restored below: main() may be called from a Python session
    if cfg.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    progress: Callable[[Any, Any], None] | None
    try:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, desc="fit", unit="step")

        def update(step: Any, loss: Any) -> None:  # JAX scalars, from jax.debug.callback
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
        jax.config.update("jax_enable_x64", x64)
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
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=_main)


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="astroformer")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
