"""Shared fixtures. float64 is switched on only inside tests that ask for it (the `x64` fixture)."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")
# The CLI's `train` keeps freed host memory process-wide (`astroformer.keep_freed_host_memory`); tests that call it
# in-process must not change the allocator of the whole test session (tests/test_host_memory.py checks it in
# subprocesses of its own).
os.environ.setdefault("ASTROFORMER_KEEP_HOST_MEMORY", "0")

import jax
import jaxtyping
import pytest


@pytest.fixture(autouse=True)
def _own_error_messages(request):
    """Tests marked `bad_input` check the message astroformer itself raises for bad input. The test-time shape
    checker (`--jaxtyping-packages` in pyproject) would reject such input first, with its own message; a user
    runs without it, so it is switched off for these tests only."""
    if request.node.get_closest_marker("bad_input") is None:
        yield
        return
    previous = jaxtyping.config.jaxtyping_disable
    jaxtyping.config.update("jaxtyping_disable", True)
    yield
    jaxtyping.config.update("jaxtyping_disable", previous)


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


SMALL_HEAD = (4, 5, 3)  # L, M, N of `small_head`


@pytest.fixture(scope="session")
def small_head():
    """One small head's inputs (phi_q (L, M) and phi_k (L, M) positive rates, v (L, N)), L, M, N = SMALL_HEAD:
    shared by the input-check tests."""
    import jax.numpy as jnp

    L, M, N = SMALL_HEAD
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    return (
        jnp.exp(jax.random.normal(k1, (L, M))),
        jnp.exp(jax.random.normal(k2, (L, M))),
        jax.random.normal(k3, (L, N)),
    )
