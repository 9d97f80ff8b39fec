"""`astroformer bench`: finds the checkout's benchmark scripts without installing them as a package."""

import importlib.util

from astroformer._bench_command import BENCHMARKS_DIR, available
from astroformer.cli import main as cli_main


def test_benchmarks_are_found_in_the_checkout_and_not_installed():
    names = available()
    expected = sorted(p.stem for p in BENCHMARKS_DIR.glob("*.py") if not p.stem.startswith("_"))
    assert names == expected and "recall" in names and "attention_speed" in names
    spec = importlib.util.find_spec("benchmarks")
    # Importable only from the checkout root (tests run there), never from site-packages.
    assert spec is None or "site-packages" not in str(spec.origin)


def test_unknown_benchmark_is_a_clear_error(capsys):
    assert cli_main(["bench", "nope"]) == 2
    err = capsys.readouterr().err
    assert "NAME: expected one of" in err and "got 'nope'" in err
