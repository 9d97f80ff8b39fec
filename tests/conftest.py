"""Shared fixtures. float64 is switched on only inside tests that ask for it (the `x64` fixture)."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import jax
import pytest


@pytest.fixture
def getkey():
    """A seeded source of fresh PRNG keys: `getkey()` returns a new key each call."""
    state = {"key": jax.random.PRNGKey(0)}

    def _getkey():
        state["key"], sub = jax.random.split(state["key"])
        return sub

    return _getkey


def _float64():
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


@pytest.fixture
def x64():
    """Run the test in float64, restoring the previous precision afterwards."""
    yield from _float64()


@pytest.fixture(scope="module")
def x64_module():
    """Run a whole test module in float64 (use with `pytestmark = pytest.mark.usefixtures("x64_module")`),
    restoring the previous precision afterwards."""
    yield from _float64()
