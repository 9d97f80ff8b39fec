"""Transforms of `na_attention`: jit vs eager, vmap vs a Python loop, `jax.grad` vs central finite differences
(inputs and every `NAParams` field, default reduced ODE path), and one compilation across calls.

Runs in float64 (module-scoped fixture), where central differences are accurate to about 1e-9.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import astroformer as af


# float64 for the whole module (tests/conftest.py), switched back afterwards.
pytestmark = pytest.mark.usefixtures("x64_module")


L, D, M, N = 5, 3, 6, 3
FIELDS = ("tau_n", "tau_s", "tau_p", "t_write", "t_read", "tau_f")


def _data(key):
    kq, kk, kv = jax.random.split(key, 3)
    fm = af.PositiveRandomFeatures(D, M, key=jax.random.PRNGKey(99))
    return (
        fm(0.5 * jax.random.normal(kq, (L, D))),
        fm(0.5 * jax.random.normal(kk, (L, D))),
        jax.random.normal(kv, (L, N)),
    )


def _params():
    # Transient regime (reads not settled), so that every time constant matters to the output. tau_p / (N M)
    # is kept away from tau_n: the read grid switches on min(tau_n, tau_p / NM), a kink in the parameters.
    return af.NAParams(tau_n=0.05, tau_s=0.05, tau_p=3.0, t_write=1.0, t_read=1.0, tau_f=2.0)


@pytest.fixture(scope="module")
def data():
    return _data(jax.random.PRNGKey(0))


def _block(phi_q, phi_k, v, params, causal=True):
    return af.na_attention(phi_q, phi_k, v, params, causal=causal)


_jit_block = jax.jit(_block, static_argnames=("causal",))


@pytest.mark.parametrize("mode", ["ode", "equilibrium"])
def test_jit_equals_eager(data, mode):
    params = _params()
    eager = af.na_attention(*data, params, mode=mode)
    jitted = jax.jit(lambda a, b, c, p: af.na_attention(a, b, c, p, mode=mode))(*data, params)
    assert float(jnp.max(jnp.abs(eager))) > 0.1
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), rtol=1e-12, atol=1e-12)


def test_vmap_equals_loop():
    batch = [_data(k) for k in jax.random.split(jax.random.PRNGKey(1), 3)]
    stacked = [jnp.stack(x) for x in zip(*batch)]
    params = _params()
    vmapped = jax.jit(jax.vmap(lambda a, b, c: _block(a, b, c, params)))(*stacked)
    looped = jnp.stack([_jit_block(*x, params) for x in batch])
    np.testing.assert_allclose(np.asarray(vmapped), np.asarray(looped), rtol=1e-12, atol=1e-12)


def _loss(phi_q, phi_k, v, params, weights):
    return jnp.sum(weights * _block(phi_q, phi_k, v, params))


_grad_loss = jax.jit(jax.grad(_loss, argnums=(0, 1, 2, 3)))
_jit_loss = jax.jit(_loss)


@pytest.fixture(scope="module")
def gradients(data):
    weights = jax.random.normal(jax.random.PRNGKey(2), (L, N))
    return weights, _grad_loss(*data, _params(), weights)


def _central(f, h):
    return (f(h) - f(-h)) / (2 * h)


@pytest.mark.parametrize("argnum", [0, 1, 2], ids=["phi_q", "phi_k", "v"])
def test_grad_inputs_match_finite_differences(data, gradients, argnum):
    weights, grads = gradients
    params = _params()
    x = data[argnum]
    # A random direction; multiplicative for the rates so that they stay positive.
    direction = jax.random.normal(jax.random.PRNGKey(3 + argnum), x.shape)
    if argnum < 2:
        direction = direction * x

    def f(h):
        args = list(data)
        args[argnum] = x + h * direction
        return float(_jit_loss(*args, params, weights))

    fd = _central(f, 1e-5)
    ad = float(jnp.sum(grads[argnum] * direction))
    assert abs(ad) > 1e-3
    np.testing.assert_allclose(ad, fd, rtol=1e-6)


@pytest.mark.parametrize("field", FIELDS)
def test_grad_params_match_finite_differences(data, gradients, field):
    weights, grads = gradients
    params = _params()
    value = getattr(params, field)

    def f(h):
        shifted = eqx.tree_at(lambda p: getattr(p, field), params, value * (1 + h))
        return float(_jit_loss(*data, shifted, weights))

    fd = _central(f, 1e-5) / value
    ad = float(getattr(grads[3], field))
    assert abs(ad) > 1e-4, (field, ad)
    np.testing.assert_allclose(ad, fd, rtol=1e-5)


def test_compiles_once_across_new_data():
    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def step(phi_q, phi_k, v, params, weights):
        return jax.value_and_grad(_loss, argnums=3)(phi_q, phi_k, v, params, weights)

    base = jax.tree.map(jnp.asarray, _params())  # array fields: new values must not retrace
    for i in range(3):
        data = _data(jax.random.PRNGKey(10 + i))
        params = jax.tree.map(lambda a: a * (1 + 0.1 * i), base)
        value, grads = step(*data, params, jnp.ones((L, N)))
        assert np.isfinite(float(value))
        assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
