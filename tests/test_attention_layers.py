"""Multi-head attention layers, feature maps, and the (chunked) linear-attention algebra.

Layers run in the default float32; the feature-map and linear-attention references use float64 (`x64`).
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import astroformer as af
from astroformer._solvers._linear import linear_attention_state


D_MODEL, HEADS, L = 8, 2, 6
# Padding in the middle: later (causal) and all (bidirectional) positions must ignore it.
MASK = np.array([True, True, False, True, True, True])


def _layer(kind, causal=True):
    features = dict(num_features=16) if kind.startswith("na-") else {}
    return af.make_attention(kind, D_MODEL, HEADS, causal=causal, key=jax.random.PRNGKey(0), **features)


@pytest.fixture(scope="module")
def x():
    return jax.random.normal(jax.random.PRNGKey(1), (3, L, D_MODEL))


@functools.partial(jax.jit, static_argnames=("kind", "causal"))
def _apply(x, mask, kind, causal=True):
    return _layer(kind, causal)(x, mask)


@pytest.mark.parametrize("kind", af.ATTENTION_KINDS)
def test_layer_shape_jit_vmap(x, kind):
    # (jit vs eager is covered for the block itself in test_transforms.py; eager layers cost ~30 s here.)
    layer = _layer(kind)
    mask = jnp.ones(L, bool)
    jitted = _apply(x[0], mask, kind)
    assert jitted.shape == (L, D_MODEL) and jitted.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(jitted)))
    batched = jax.jit(jax.vmap(lambda xb: layer(xb, mask)))(x)
    looped = jnp.stack([_apply(xb, mask, kind) for xb in x])
    assert batched.shape == (3, L, D_MODEL)
    np.testing.assert_allclose(np.asarray(batched), np.asarray(looped), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("kind", af.ATTENTION_KINDS)
def test_padding_mask(x, kind, causal):
    """Changing the padded token changes no output at any other position."""
    mask = jnp.asarray(MASK)
    other = x[0].at[2].set(10.0 * x[1, 2])
    a = np.asarray(_apply(x[0], mask, kind, causal))
    b = np.asarray(_apply(other, mask, kind, causal))
    keep = MASK.copy()
    np.testing.assert_allclose(a[keep], b[keep], rtol=1e-5, atol=1e-5)
    # ...whereas without the mask it does change them (so the check above is not vacuous).
    c = np.asarray(_apply(other, jnp.ones(L, bool), kind, causal))
    later = np.arange(L) > 2 if causal else keep
    assert np.max(np.abs(a[later] - c[later])) > 1e-3


@pytest.mark.parametrize("causal", [True, False])
def test_na_equilibrium_equals_linear_attention(x, causal):
    key = jax.random.PRNGKey(2)
    na = af.NeuronAstrocyteAttention(D_MODEL, HEADS, num_features=16, mode="equilibrium", causal=causal, key=key)
    lin = af.LinearAttention(D_MODEL, HEADS, feature_map=na.feature_map, causal=causal, key=key)
    for name in ("query", "key", "value", "output"):
        assert np.array_equal(getattr(na, name).weight, getattr(lin, name).weight)
    mask = jnp.asarray(MASK)
    call = eqx.filter_jit(lambda layer, xs, m: layer(xs, m))
    np.testing.assert_allclose(
        np.asarray(call(na, x[0], mask)), np.asarray(call(lin, x[0], mask)), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("causal", [True, False])
def test_softmax_layer_equals_hand_written(x, causal):
    layer = _layer("softmax", causal)
    mask = jnp.asarray(MASK)
    xs = np.asarray(x[0], np.float64)
    W = {
        n: (np.asarray(getattr(layer, n).weight, np.float64), np.asarray(getattr(layer, n).bias, np.float64))
        for n in ("query", "key", "value", "output")
    }
    proj = {n: xs @ w.T + b for n, (w, b) in W.items() if n != "output"}
    Dh = D_MODEL // HEADS
    heads = []
    for h in range(HEADS):
        sl = slice(h * Dh, (h + 1) * Dh)
        scores = proj["query"][:, sl] @ proj["key"][:, sl].T / np.sqrt(Dh)
        allowed = MASK[None, :] & (np.tril(np.ones((L, L), bool)) if causal else True)
        scores = np.where(allowed, scores, -np.inf)
        w = np.exp(scores - scores.max(axis=1, keepdims=True))
        heads.append((w / w.sum(axis=1, keepdims=True)) @ proj["value"][:, sl])
    expected = np.concatenate(heads, axis=1) @ W["output"][0].T + W["output"][1]
    np.testing.assert_allclose(np.asarray(layer(x[0], mask)), expected, rtol=1e-4, atol=1e-5)


def test_na_rejects_signed_features():
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match=r"feature_map: expected a non-negative feature map .*RandomFourier"):
        af.NeuronAstrocyteAttention(D_MODEL, HEADS, feature_map=af.RandomFourierFeatures(4, 16, key=key), key=key)


# --------------------------------------------------------------------------------------------------------
# Feature maps.


@pytest.mark.parametrize("cls", [af.PositiveRandomFeatures, af.RandomFourierFeatures])
def test_features_estimate_exponential_kernel(x64, cls):
    """phi(q).phi(k) is a sum of M i.i.d. terms (PRF: one per feature; RFF: one per frequency, the sin and cos
    pair) with mean exp(q.k)/M each: check the estimate within 5 standard errors, measured from the terms."""
    D, M = 4, 2**16
    fm = cls(D, M, key=jax.random.PRNGKey(3))
    kq, kk = jax.random.split(jax.random.PRNGKey(4))
    q = 0.5 * jax.random.normal(kq, (5, D))
    k = 0.5 * jax.random.normal(kk, (5, D))
    terms = np.asarray(fm(q) * fm(k))  # (5, M)
    if cls is af.RandomFourierFeatures:
        terms = terms[:, : M // 2] + terms[:, M // 2 :]
    estimate = terms.sum(axis=1)
    stderr = terms.std(axis=1) * np.sqrt(terms.shape[1])
    exact = np.exp(np.sum(np.asarray(q) * np.asarray(k), axis=1))
    assert np.all(np.abs(estimate - exact) < 5 * stderr), (estimate, exact, stderr)
    assert np.all(stderr < 0.02 * exact)  # and the tolerance is tight


@pytest.mark.parametrize("cls", [af.PositiveRandomFeatures, af.RandomFourierFeatures])
def test_frozen_and_trainable_feature_weights(cls):
    u = jax.random.normal(jax.random.PRNGKey(5), (3, 4))
    loss = eqx.filter_grad(lambda fm: jnp.sum(fm(u)))  # (sum phi^2 is W-independent for Fourier features)
    frozen = loss(cls(4, 8, key=jax.random.PRNGKey(6)))
    trainable = loss(cls(4, 8, trainable=True, key=jax.random.PRNGKey(6)))
    assert np.all(np.asarray(frozen.W) == 0)
    assert np.max(np.abs(np.asarray(trainable.W))) > 1e-3


def test_positive_features_are_positive():
    fm = af.PositiveRandomFeatures(4, 32, key=jax.random.PRNGKey(7))
    assert fm.nonnegative and bool(jnp.all(fm(3.0 * jax.random.normal(jax.random.PRNGKey(8), (10, 4))) > 0))


# --------------------------------------------------------------------------------------------------------
# Linear attention: chunked causal algorithm vs naive O(L^2) references.


@functools.partial(jax.jit, static_argnames=("chunk_size",))
def _linear(phi_q, phi_k, v, mask, chunk_size):
    return af.linear_attention(phi_q, phi_k, v, causal=True, mask=mask, chunk_size=chunk_size)


@functools.partial(jax.jit, static_argnames=("causal",))
def _state(q, keys, values, log_decay, causal):
    return linear_attention_state(q, keys, values, log_decay, causal=causal, chunk_size=4)


@pytest.mark.parametrize("chunk_size", [4, 5, 64])
def test_linear_attention_chunked_matches_naive(x64, chunk_size):
    Lx, M, N = 13, 6, 3  # 13 is not a multiple of 4 or 5
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(9), 3)
    phi_q = jnp.exp(jax.random.normal(k1, (Lx, M)))
    phi_k = jnp.exp(jax.random.normal(k2, (Lx, M)))
    v = jax.random.normal(k3, (Lx, N))
    mask = np.ones(Lx, bool)
    mask[[3, 7, 8]] = False
    got = _linear(phi_q, phi_k, v, jnp.asarray(mask), chunk_size)
    pq, pk, vv = map(np.asarray, (phi_q, phi_k, v))
    scores = (pq @ pk.T) * (np.tril(np.ones((Lx, Lx), bool)) & mask[None, :])
    expected = scores @ vv / scores.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-12)


@pytest.mark.parametrize("causal", [True, False])
def test_linear_attention_state_with_decay_matches_loop(x64, causal):
    R, Lx, M, N = 2, 11, 4, 3
    ks = jax.random.split(jax.random.PRNGKey(10), 4)
    q = jax.random.normal(ks[0], (Lx, M))
    keys = jax.random.normal(ks[1], (R, Lx, M))
    values = jax.random.normal(ks[2], (R, Lx, N))
    log_decay = -jax.random.exponential(ks[3], (Lx,))  # non-positive
    log_decay = log_decay.at[4].set(0.0)
    got = np.asarray(_state(q, keys, values, log_decay, causal))
    qn, kn, vn, ln = map(np.asarray, (q, keys, values, log_decay))
    S = np.zeros((M, N))
    states = []
    for t in range(Lx):  # S_t = e^{l_t} S_{t-1} + sum_r k_rt v_rt^T
        S = np.exp(ln[t]) * S + sum(np.outer(kn[r, t], vn[r, t]) for r in range(R))
        states.append(S)
    expected = np.stack([qn[t] @ (states[t] if causal else states[-1]) for t in range(Lx)])
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


def test_linear_attention_state_gradient_matches_dense(x64):
    """The chunk scan's rematerialised backward pass against autodiff of the dense O(L^2) form (L not a
    multiple of the chunk, a decay-free token, two streams)."""
    R, Lx, M, N = 2, 11, 4, 3
    ks = jax.random.split(jax.random.PRNGKey(11), 5)
    q = jax.random.normal(ks[0], (Lx, M))
    keys = jax.random.normal(ks[1], (R, Lx, M))
    values = jax.random.normal(ks[2], (R, Lx, N))
    log_decay = (-jax.random.exponential(ks[3], (Lx,))).at[4].set(0.0)
    cotangent = jax.random.normal(ks[4], (Lx, N))

    def dense(q, keys, values, log_decay):
        A = jnp.cumsum(log_decay)
        causal = jnp.tril(jnp.ones((Lx, Lx), bool))
        w = jnp.where(causal, jnp.exp(jnp.where(causal, A[:, None] - A[None, :], 0.0)), 0.0)
        return jnp.einsum("tm,rsm,ts,rsn->tn", q, keys, w, values)

    def loss(f):
        return lambda *args: jnp.sum(f(*args) * cotangent)

    chunked = functools.partial(_state, causal=True)
    args = (q, keys, values, log_decay)
    np.testing.assert_allclose(np.asarray(chunked(*args)), np.asarray(dense(*args)), rtol=1e-10, atol=1e-12)
    got = jax.grad(loss(chunked), argnums=(0, 1, 2, 3))(*args)
    expected = jax.grad(loss(dense), argnums=(0, 1, 2, 3))(*args)
    for name, g, e in zip(("q", "keys", "values", "log_decay"), got, expected):
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=1e-10, atol=1e-12, err_msg=name)
