"""`astroformer bench NAME [-- ARGS...]`: run a benchmark script of the source checkout.

The benchmark scripts live in `benchmarks/` at the root of the repository, beside the `astroformer` package;
they are not installed with it. This command finds them next to the package (an editable install or a
checkout on `sys.path`) and runs `benchmarks.NAME.main(ARGS)`, the same as `python -m benchmarks.NAME ARGS`
from the repository root.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

#: Where the benchmark scripts are in a source checkout.
BENCHMARKS_DIR = Path(__file__).resolve().parents[1] / "benchmarks"


def available() -> list[str]:
    """The benchmark names (the modules of `benchmarks/` not starting with `_`); empty outside a checkout."""
    if not BENCHMARKS_DIR.is_dir():
        return []
    return sorted(m.name for m in pkgutil.iter_modules([str(BENCHMARKS_DIR)]) if not m.name.startswith("_"))


def _run(args) -> int:
    names = available()
    if not names:
        print(
            f"astroformer bench: error: no benchmarks/ directory beside the installed package ({BENCHMARKS_DIR}); "
            "the benchmarks ship with the source checkout: clone the repository and `pip install -e .`",
            file=sys.stderr,
        )
        return 2
    if args.name not in names:
        print(f"astroformer bench: error: NAME: expected one of {', '.join(names)}, got {args.name!r}", file=sys.stderr)
        return 2
    root = str(BENCHMARKS_DIR.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    module = importlib.import_module(f"benchmarks.{args.name}")
    result = module.main(args.rest)
    return int(result or 0)


def register(subparsers) -> None:
    """Add the `bench` subcommand to an argparse `subparsers` object."""
    names = available()
    bench = subparsers.add_parser(
        "bench",
        help="run a benchmark script of the source checkout (writes JSON and a PNG under benchmarks/results/)",
        description=f"Benchmarks: {', '.join(names) or 'none found'}",
    )
    bench.add_argument("name", help="benchmark name: " + (", ".join(names) or "none found"))
    bench.add_argument("rest", nargs="*", help="arguments passed to the benchmark (e.g. --quick); put them after --")
    bench.set_defaults(func=_run)
