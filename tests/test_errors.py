"""Errors for people, and robustness of the default configuration on adversarial (stiff) inputs, in the
default float32.

Shape, dtype, mask and option errors are raised at trace time (`ValueError`/`TypeError`). NaN/inf/negative
inputs are runtime checks (`eqx.error_if`): eagerly or under `eqx.filter_jit` they raise
`equinox.EquinoxRuntimeError`; under `jax.jit` a `jax.errors.JaxRuntimeError`; both are `RuntimeError`s whose
message names the argument.
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import astroformer as af


from conftest import SMALL_HEAD

pytestmark = pytest.mark.bad_input  # every test here checks an error message of astroformer's own

L, M, N = SMALL_HEAD


@pytest.fixture(scope="module")
def inputs(small_head):
    return small_head


def _call(inputs, **changes):
    names = ("phi_q", "phi_k", "v")
    args = {n: changes.pop(n, x) for n, x in zip(names, inputs)}
    params = changes.pop("params", af.NAParams())
    changes.setdefault("mode", "equilibrium")
    return af.na_attention(args["phi_q"], args["phi_k"], args["v"], params, **changes)


@pytest.mark.parametrize(
    "name, change, match",
    [
        ("phi_k", lambda x: x[:3], r"phi_k: expected 4 rows"),
        ("phi_k", lambda x: x[:, :4], r"phi_k: expected 5 columns"),
        ("v", lambda x: x[:3], r"v: expected 4 rows"),
        ("phi_q", lambda x: x[None], r"phi_q: expected a 2-D array"),
        ("phi_q", lambda x: x[:, :4], r"phi_k: expected 4 columns"),  # the keys no longer match the queries
    ],
)
def test_mismatched_shapes(inputs, name, change, match):
    x = dict(zip(("phi_q", "phi_k", "v"), inputs))[name]
    with pytest.raises(ValueError, match=match):
        _call(inputs, **{name: change(x)})


def test_integer_dtype(inputs):
    with pytest.raises(TypeError, match=r"phi_q: expected a floating dtype"):
        _call(inputs, phi_q=inputs[0].astype(jnp.int32))


@pytest.mark.parametrize("mask", [jnp.ones(3, bool), jnp.ones((1, L), bool), jnp.ones(L)], ids=["short", "2d", "float"])
def test_bad_mask(inputs, mask):
    with pytest.raises(ValueError, match=r"mask: expected a boolean array of shape \(4,\)"):
        _call(inputs, mask=mask)


@pytest.mark.parametrize("option, value", [("mode", "softmax"), ("state", "partial")])
def test_bad_option_strings(inputs, option, value):
    with pytest.raises(ValueError, match=rf"{option}: expected one of .* got '{value}'"):
        _call(inputs, **{option: value})


def test_params_type(inputs):
    with pytest.raises(TypeError, match=r"params: expected an astroformer.NAParams"):
        _call(inputs, params={"tau_n": 1.0})


@pytest.mark.parametrize(
    "field, value",
    [
        ("tau_n", 0),
        ("tau_s", -1),
        ("t_read", float("nan")),
        ("t_write", float("inf")),
        ("tau_p", -1e-3),
        ("tau_f", 0.0),
    ],
)
def test_bad_time_constants(field, value):
    with pytest.raises(ValueError, match=rf"NAParams.{field}: expected a positive, finite time constant"):
        af.NAParams(**{field: value})


@pytest.mark.parametrize(
    "name, bad, match",
    [
        ("phi_q", lambda x: x.at[1, 2].set(jnp.nan), r"phi_q: expected finite values"),
        ("phi_k", lambda x: x.at[0, 0].set(jnp.inf), r"phi_k: expected finite values"),
        ("v", lambda x: x.at[3, 1].set(-jnp.inf), r"v: expected finite values"),
        ("phi_k", lambda x: x.at[2, 0].set(-0.5), r"phi_k: expected non-negative firing rates"),
        ("phi_q", lambda x: x.at[0, 4].set(-1e-3), r"phi_q: expected non-negative firing rates"),
    ],
)
@pytest.mark.parametrize("how", ["eager", "filter_jit", "jit"])
def test_bad_values_raise_at_runtime(inputs, name, bad, match, how):
    x = dict(zip(("phi_q", "phi_k", "v"), inputs))[name]
    f = functools.partial(_call, inputs)
    if how == "filter_jit":
        f = eqx.filter_jit(f)
    elif how == "jit":
        f = jax.jit(f)
    with pytest.raises(RuntimeError, match=match):
        jax.block_until_ready(f(**{name: bad(x)}))


def test_ode_mode_checks_values_too(inputs):
    with pytest.raises(RuntimeError, match=r"phi_k: expected non-negative firing rates"):
        af.na_attention(inputs[0], inputs[1].at[0, 0].set(-1.0), inputs[2], af.NAParams(), mode="ode")


def test_baselines_name_arguments(inputs):
    phi_q, phi_k, v = inputs
    with pytest.raises(ValueError, match=r"k: expected 4 rows"):
        af.softmax_attention(phi_q, phi_k[:3], v)
    with pytest.raises(ValueError, match=r"mask: expected a boolean array"):
        af.linear_attention(phi_q, phi_k, v, mask=jnp.ones(5, bool))
    with pytest.raises(RuntimeError, match=r"phi_q: expected finite values"):
        af.linear_attention(phi_q.at[0, 0].set(jnp.nan), phi_k, v)


def test_layer_and_feature_errors():
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match=r"kind: expected one of"):
        af.make_attention("performer", 8, 2, key=key)
    with pytest.raises(ValueError, match=r"d_model: expected a multiple of num_heads=3"):
        af.make_attention("softmax", 8, 3, key=key)
    # Arguments that would have no effect on a kind raise instead of being dropped.
    with pytest.raises(ValueError, match=r"^num_features: has an effect only on the neuron-astrocyte kinds"):
        af.make_attention("softmax", 8, 2, num_features=32, key=key)
    with pytest.raises(ValueError, match=r"^params: has an effect only on the neuron-astrocyte kinds"):
        af.make_attention("linear", 8, 2, params=af.NAParams(), key=key)
    with pytest.raises(ValueError, match=r"num_features must be even"):
        af.RandomFourierFeatures(4, 7, key=key)
    with pytest.raises(ValueError, match=r"num_features: expected a positive integer"):
        af.PositiveRandomFeatures(4, 0, key=key)
    with pytest.raises(ValueError, match=r"feature_map: expected in_dim = d_model / num_heads = 4"):
        af.NeuronAstrocyteAttention(8, 2, feature_map=af.PositiveRandomFeatures(3, 8, key=key), key=key)
    layer = af.make_attention("softmax", 8, 2, key=key)
    with pytest.raises(ValueError, match=r"x: expected shape \(L, d_model\)"):
        layer(jnp.ones((2, 3, 8)))


def test_read_trajectory_errors(inputs):
    with pytest.raises(ValueError, match=r"index: expected a query index in \[-4, 4\), got 4"):
        af.read_trajectory(*inputs, af.NAParams(), index=4)
    with pytest.raises(ValueError, match=r"state: expected one of"):
        af.read_trajectory(*inputs, af.NAParams(), state="reduce")


# --------------------------------------------------------------------------------------------------------
# Stiffness: adversarial inputs in float32 with the default solver.


@functools.partial(jax.jit, static_argnames=("causal",))
def _value_and_grads(phi_q, phi_k, v, params, causal):
    def loss(phi_q, phi_k, v, params):
        out = af.na_attention(phi_q, phi_k, v, params, causal=causal)
        return jnp.mean(out**2), out

    return jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True)(phi_q, phi_k, v, params)


@pytest.fixture(scope="module")
def adversarial():
    """|q| = |k| = 3 (q.k spans -9..9, kernel values e^{+-9}); the first key anti-aligned with the first
    query (calcium p_bar ~ e^{-9} / M for the first causal read); M N = 512 * 64."""
    Lx, Dx, Mx, Nx = 8, 8, 512, 64
    kq, kk, kv, kf = jax.random.split(jax.random.PRNGKey(5), 4)
    unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    q = 3.0 * unit(jax.random.normal(kq, (Lx, Dx)))
    k = 3.0 * unit(jax.random.normal(kk, (Lx, Dx))).at[0].set(-q[0])
    v = jax.random.normal(kv, (Lx, Nx))
    fm = af.PositiveRandomFeatures(Dx, Mx, key=kf)
    phi_q, phi_k = fm(q), fm(k)
    assert phi_q.dtype == jnp.float32
    return phi_q, phi_k, v


@pytest.mark.parametrize(
    "params",
    [
        af.NAParams(),
        af.NAParams(tau_p=1e-6),  # N M / tau_p ~ 3e10: calcium synchronises in ~1e-11
        af.NAParams(tau_n=1e-6, tau_s=1e-7, tau_p=1e-9),
    ],
    ids=["default", "tau_p-tiny", "all-tiny"],
)
def test_adversarial_inputs_finite(adversarial, params):
    phi_q, phi_k, v = adversarial
    p_bar_first = float(jnp.mean(phi_q[0] * phi_k[0]))
    assert p_bar_first < 1e-5  # the first read really has almost no calcium
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)  # one compilation for all cases
    (value, out), grads = _value_and_grads(phi_q, phi_k, v, params, causal=True)
    assert np.isfinite(float(value))
    assert np.all(np.isfinite(np.asarray(out)))
    for g in jax.tree.leaves(grads):
        assert np.all(np.isfinite(np.asarray(g)))
    # Far from NaN-free noise: outputs stay within a few times the value range.
    assert float(jnp.max(jnp.abs(out))) < 10 * float(jnp.max(jnp.abs(v)))


def test_traced_nonpositive_time_constant_raises_under_jit():
    """Inside jit the time constants are traced: the runtime check still refuses a negative or NaN value."""
    fm = af.PositiveRandomFeatures(4, 8, key=jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (5, 4))
    run = eqx.filter_jit(lambda s: af.na_attention(fm(x), fm(x), x, af.NAParams(tau_s=s)))
    assert jnp.all(jnp.isfinite(run(jnp.asarray(1e-3))))
    for bad in (-1.0, float("nan")):
        with pytest.raises(RuntimeError, match="params.tau_s: expected a positive, finite time constant"):
            run(jnp.asarray(bad))


@pytest.mark.parametrize("x", [1e-3, 0.5, 30.0, 1e9])
def test_special_functions_have_finite_gradients_for_any_stiffness(x):
    """Regression: the Taylor branches once overflowed (x^5) for very stiff steps, and the unselected branch's
    inf times a zero cotangent made NaN gradients in training. Checked against the exact value's derivative."""
    from astroformer._solvers._special import exp_mean2, exp_mean3, magnus_exponentials, psi

    x = jnp.float32(x)
    y = jnp.float32(0.5)
    for f in (
        psi,
        lambda a: exp_mean2(a, y),
        lambda a: exp_mean3(a, y),
        lambda a: magnus_exponentials(a, y)[3],
        lambda a: magnus_exponentials(y, a)[2],
    ):
        value, grad = jax.value_and_grad(f)(x)
        assert jnp.isfinite(value) and jnp.isfinite(grad)
    # psi'(x) = (e^{-x}(1 + x) - 1) / x^2 -> -1/x^2 for large x.
    expected = (np.exp(-float(x)) * (1 + float(x)) - 1) / float(x) ** 2
    np.testing.assert_allclose(float(jax.grad(psi)(x)), expected, rtol=2e-2, atol=1e-9)
