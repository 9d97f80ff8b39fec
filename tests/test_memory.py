"""Memory regressions: the neuron–astrocyte block's compiled memory grows linearly in L, softmax's does not.

The temporary bytes of XLA's compiled forward+backward (`memory_analysis()`, nothing is run) at L and 2L:
a change that materialises an L×L array in the na-ode or na-equilibrium block (forward or backward) makes
the ratio approach 4 and fails; softmax attention, which does materialise one, is the check that the test
can fail. Also the longest-L search of `benchmarks/memory.py` against closed-form footprints.
"""

import jax
import jax.numpy as jnp
import pytest

import astroformer as af

L0 = 2048  # large enough that the per-token arrays dominate fixed (per-chunk) buffers; M=16, N=8 keep compiles cheap
M, N = 16, 8


def temp_bytes(kind: str, L: int) -> int:
    """Temporary bytes of the compiled gradient of sum(attention(φq, φk, v)) w.r.t. φq, φk, v (one head)."""
    params = af.NAParams(tau_s=0.01 / M)

    def loss(phi_q, phi_k, v):
        if kind == "softmax":
            return jnp.sum(af.softmax_attention(phi_q, phi_k, v))
        return jnp.sum(af.na_attention(phi_q, phi_k, v, params, mode=kind.removeprefix("na-")))

    args = [jax.ShapeDtypeStruct((L, m), jnp.float32) for m in (M, M, N)]
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(*args).compile()
    return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("kind", ["na-ode", "na-equilibrium"])
def test_block_temporary_memory_linear_in_L(kind):
    small, large = temp_bytes(kind, L0), temp_bytes(kind, 2 * L0)
    ratio = large / small
    # linear: doubling L at most 2.2x the bytes; and the bytes do grow (the measurement sees the sequence)
    assert 1.5 < ratio <= 2.2, (kind, small, large)


def test_ode_block_memory_within_twice_the_equilibrium():
    """The simulated read stores no more than twice what the closed form stores (the memory issue's goal): the
    chunked head keeps no (L, M) intermediate but the read's end z. A change that materialises the astrocyte
    weights, the initial calcium or the read's trajectory over the whole sequence again fails."""
    ode, equilibrium = temp_bytes("na-ode", L0), temp_bytes("na-equilibrium", L0)
    assert ode <= 2 * equilibrium, (ode, equilibrium)


def test_softmax_temporary_memory_superlinear_in_L():
    small, large = temp_bytes("softmax", 512), temp_bytes("softmax", 1024)
    assert large / small > 3.0, (small, large)  # the L×L scores: ~4x (at 2048 XLA's fusion of them lowers it to 2.4)


# ------------------------------------------------------------------------------ the longest-L search


@pytest.mark.parametrize("power, scale", [(1, 3_000.0), (2, 64.0), (1.5, 900.0)])
def test_longest_length_matches_closed_form(power, scale):
    from benchmarks.memory import longest_length

    budget = 2.0**30
    calls = []

    def footprint(L):
        calls.append(L)
        return int(1e6 + scale * L**power), 0.0

    found = longest_length(footprint, budget, start=256, multiple=64)
    exact = ((budget - 1e6) / scale) ** (1 / power)  # footprint(exact) = budget
    assert found["longest"] <= exact < found["first_too_long"]
    assert found["first_too_long"] - found["longest"] <= max(64, found["longest"] / 16)
    assert found["longest"] % 64 == 0
    assert len(calls) <= 12  # the power-law prediction brackets and closes in a few compiles
    assert [p["L"] for p in found["probes"]] == calls


def test_longest_length_start_too_long_and_nothing_fits():
    from benchmarks.memory import longest_length

    found = longest_length(lambda L: (L * 1000, 0.0), 500_000, start=4096, multiple=64)
    assert found["longest"] <= 500 < found["first_too_long"]
    found = longest_length(lambda L: (10**12, 0.0), 1.0, start=256, multiple=64)
    assert found["longest"] is None and found["first_too_long"] == 64
