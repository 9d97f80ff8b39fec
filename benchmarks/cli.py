"""`astroformer bench NAME [ARGS...]`: run a benchmark script (same as `python -m benchmarks.NAME`)."""

import importlib
import pkgutil
from pathlib import Path


def available() -> list[str]:
    here = Path(__file__).parent
    return sorted(m.name for m in pkgutil.iter_modules([str(here)]) if not m.name.startswith("_") and m.name != "cli")


def _run(args) -> int:
    names = available()
    if args.name not in names:
        raise SystemExit(f"astroformer bench: unknown benchmark {args.name!r}; expected one of {', '.join(names)}")
    module = importlib.import_module(f"benchmarks.{args.name}")
    module.main(args.rest)
    return 0


def register(subparsers) -> None:
    bench = subparsers.add_parser("bench", help="run a benchmark script (writes JSON and a PNG under "
                                  "benchmarks/results/)", description=f"Benchmarks: {', '.join(available())}")
    bench.add_argument("name", help="benchmark name: " + ", ".join(available()))
    bench.add_argument("rest", nargs="*", help="arguments passed to the benchmark (e.g. --quick); put them after --")
    bench.set_defaults(func=_run)
