"""Shared helpers of the benchmark scripts: machine/version information, timing, JSON output.

Timing follows the usual JAX recipe: one `jax.jit` around everything, a warm-up call (compilation, measured
separately), then the median of repeated calls, each ended by `jax.block_until_ready`.
"""

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    """Versions, CPU and device information of this run, as a JSON-serialisable dict."""
    import diffrax
    import equinox
    import numpy

    import astroformer
    from astroformer._host_memory import freed_host_memory_kept

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": _load_average(),
        "jax": jax.__version__,
        "jaxlib": getattr(jax.lib, "__version__", None) or _jaxlib_version(),
        "equinox": equinox.__version__,
        "diffrax": diffrax.__version__,
        "numpy": numpy.__version__,
        "astroformer": astroformer.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "x64": bool(jax.config.jax_enable_x64),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "freed_host_memory_kept": freed_host_memory_kept(),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def add_host_memory_argument(parser) -> None:
    """`--release-host-memory`: measure with the C allocator's defaults instead of
    `astroformer.keep_freed_host_memory` (the default of these scripts, as of `astroformer train`)."""
    parser.add_argument(
        "--release-host-memory",
        action="store_true",
        help="leave the C allocator's defaults: freed large blocks are unmapped, so XLA's temporaries above 32 MiB"
        " page-fault afresh at every call (default: keep them, as `astroformer train` does)",
    )


def apply_host_memory_argument(args) -> None:
    """Keep freed host memory (`astroformer.keep_freed_host_memory`) unless `--release-host-memory` was given.
    Call before anything is compiled; `machine_info()` records the outcome."""
    if not args.release_host_memory:
        from astroformer import keep_freed_host_memory

        keep_freed_host_memory()


def _jaxlib_version() -> str | None:
    try:
        import jaxlib

        return jaxlib.__version__
    except Exception:  # pragma: no cover - informational only
        return None


def compile_time(fn: Callable, *args) -> tuple[float, Callable]:
    """Lower and compile the jitted `fn` at `args`; returns (seconds, compiled callable)."""
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    return time.perf_counter() - start, compiled


def time_call(fn: Callable, *args) -> float:
    """Seconds taken by one call of `fn(*args)`, waiting for the result (`jax.block_until_ready`)."""
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def time_fn(fn: Callable, *args, warmup: int = 1, repeats: int = 5) -> dict[str, Any]:
    """Warm up `fn` then time `repeats` calls: returns {"times": [...], "median": ..., "min": ...} (seconds)."""
    if repeats < 1:
        raise ValueError(f"repeats: expected a positive integer, got {repeats}")
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = [time_call(fn, *args) for _ in range(repeats)]
    return summarise(times)


def summarise(times: list[float]) -> dict[str, Any]:
    """Raw times (seconds) with their median and minimum."""
    return {"times": list(times), "median": statistics.median(times), "min": min(times)}


def finite_or_none(x: float) -> float | None:
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


def write_json(data: dict[str, Any], path: str | os.PathLike | None = None, name: str = "results.json") -> Path:
    """Write `data` as indented JSON to `path` (default `benchmarks/results/<name>`); returns the path."""
    path = RESULTS_DIR / name if path is None else Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=1, default=_jsonable)
        f.write("\n")
    return path


def _jsonable(x):
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def run_python(code: str, timeout: float = 600.0, env: dict[str, str] | None = None) -> str:
    """Run `code` in a fresh Python process (e.g. in float64) and return its stdout."""
    full_env = dict(os.environ, **(env or {}))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=full_env)
    if out.returncode != 0:
        raise RuntimeError(f"subprocess failed (exit {out.returncode}):\n{out.stderr[-4000:]}")
    return out.stdout


def pyplot():
    """`matplotlib.pyplot` on the non-interactive Agg backend, or a clear error if matplotlib is missing."""
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError("the benchmark figures need matplotlib: pip install 'astroformer[plot]'") from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
