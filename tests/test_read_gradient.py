"""The default read's custom VJP (`solve_read`): same values as diffrax's own adjoint of the same steps, and
gradients equal to central finite differences of the float64 model, parameters included (the step grid
depends on tau_p and t_read, so its derivative must flow)."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import astroformer as af

pytestmark = pytest.mark.usefixtures("x64_module")

L, M, N = 6, 4, 3


def _inputs():
    kq, kk, kv, kw = jax.random.split(jax.random.PRNGKey(3), 4)
    phi_q = jax.random.uniform(kq, (L, M), jnp.float64, 0.2, 1.5)
    phi_k = jax.random.uniform(kk, (L, M), jnp.float64, 0.2, 1.5)
    v = jax.random.normal(kv, (L, N), jnp.float64)
    w = jax.random.normal(kw, (L, N), jnp.float64)
    # tau_p / (N M) < tau_n: the first grid step follows tau_p; a short read that has not settled, and forgetting.
    params = af.NAParams(
        tau_n=jnp.asarray(0.05),
        tau_s=jnp.asarray(0.02),
        tau_p=jnp.asarray(0.3),
        t_write=jnp.asarray(1.0),
        t_read=jnp.asarray(0.4),
        tau_f=jnp.asarray(5.0),
    )
    return phi_q, phi_k, v, w, params


def _float32_inputs():
    """`_inputs()` cast to float32, the model's default dtype."""
    return jax.tree.map(lambda a: a.astype(jnp.float32), _inputs())


def _loss(adjoint=None, **kwargs):
    def loss(phi_q, phi_k, v, params, w):
        x = af.na_attention(phi_q, phi_k, v, params, read_steps=6, adjoint=adjoint, **kwargs)
        return jnp.sum(x * w)

    return loss


def test_custom_vjp_matches_diffrax_adjoint_and_finite_differences():
    phi_q, phi_k, v, w, params = _inputs()
    fast = jax.jit(jax.value_and_grad(_loss(), argnums=(0, 1, 2, 3)))
    value, grads = fast(phi_q, phi_k, v, params, w)
    # The same S Magnus2 steps as diffrax's own solve in read time (the general path): equal up to rounding.
    reference = _loss(diffrax.RecursiveCheckpointAdjoint(checkpoints=6))(phi_q, phi_k, v, params, w)
    np.testing.assert_allclose(value, reference, rtol=1e-12)

    loss = jax.jit(_loss())
    eps = 1e-6
    # Inputs: a few entries of each, against central differences.
    for arg, index in ((0, (2, 1)), (0, (5, 3)), (1, (1, 2)), (2, (3, 0))):
        args = [phi_q, phi_k, v]
        plus, minus = list(args), list(args)
        plus[arg] = args[arg].at[index].add(eps)
        minus[arg] = args[arg].at[index].add(-eps)
        fd = (loss(*plus, params, w) - loss(*minus, params, w)) / (2 * eps)
        np.testing.assert_allclose(grads[arg][index], fd, rtol=1e-6, atol=1e-10)
    # Every time constant, through the grid, the calcium rate and the coefficients.
    for name in ("tau_n", "tau_s", "tau_p", "t_write", "t_read", "tau_f"):
        value0 = getattr(params, name)
        step = eps * value0
        fd = (
            loss(phi_q, phi_k, v, _replace(params, name, value0 + step), w)
            - loss(phi_q, phi_k, v, _replace(params, name, value0 - step), w)
        ) / (2 * step)
        np.testing.assert_allclose(getattr(grads[3], name), fd, rtol=1e-5, atol=1e-10, err_msg=name)
    # The time constants held fixed (as in training): the written-out per-element adjoint, the same gradients.
    fixed = jax.jit(jax.grad(_loss(), argnums=(0, 1, 2)))(phi_q, phi_k, v, params, w)
    for got, ref in zip(fixed, grads[:3]):
        np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-13)


def _replace(params, name, value):
    return af.NAParams(
        **{
            n: (value if n == name else getattr(params, n))
            for n in ("tau_n", "tau_s", "tau_p", "t_write", "t_read", "tau_f")
        }
    )


def _two_heads(params):
    """`params` and a second head with other time constants, stacked (as the layer holds them)."""
    other = af.NAParams(
        tau_n=jnp.asarray(0.01),
        tau_s=jnp.asarray(0.05),
        tau_p=jnp.asarray(2.0),
        t_write=jnp.asarray(1.0),
        t_read=jnp.asarray(1.0),
        tau_f=jnp.asarray(3.0),
    )
    return af.NAParams.stack([params, other])


def test_vmap_over_heads_with_their_own_parameters():
    """vmapped over heads with per-head parameters (as `NeuronAstrocyteAttention` calls it): each head equals its
    own unbatched call, values and gradients."""
    phi_q, phi_k, v, w, params = _inputs()
    heads = _two_heads(params)
    stack = lambda a: jnp.stack([a, a[::-1]])  # noqa: E731
    loss = _loss()
    grad = jax.jit(jax.grad(loss, argnums=(0, 3)))
    batched = jax.jit(jax.vmap(grad))(stack(phi_q), stack(phi_k), stack(v), heads, stack(w))
    for h in range(2):
        one = jax.tree.map(lambda a: a[h], heads)
        single = grad(stack(phi_q)[h], stack(phi_k)[h], stack(v)[h], one, stack(w)[h])
        for b, s in zip(jax.tree.leaves(batched), jax.tree.leaves(single)):
            np.testing.assert_allclose(b[h], s, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("argnums", [(0, 1, 2, 3), (0, 1, 2)], ids=["time-constants", "time-constants-fixed"])
def test_chunked_read_matches_diffrax_adjoint_over_many_queries(argnums):
    """More queries than `QUERY_CHUNK` and not a multiple of it (the forward solves and the backward sweeps run
    chunk by chunk, the last chunk short): values and gradients equal diffrax's own solve and adjoint of the
    whole read at once, vmapped over two heads with their own parameters. With the time constants held fixed
    (as in training), the read's backward takes its written-out per-element adjoint. The causal head runs the
    sequence as one chunk (`chunk_size`), so the read sees all Lq queries at once."""
    from astroformer._head._read import QUERY_CHUNK

    Lq = QUERY_CHUNK * 2 + 5
    kq, kk, kv, kw = jax.random.split(jax.random.PRNGKey(7), 4)
    H = 2
    phi_q = jax.random.uniform(kq, (H, Lq, M), jnp.float64, 0.2, 1.5)
    phi_k = jax.random.uniform(kk, (H, Lq, M), jnp.float64, 0.2, 1.5)
    v = jax.random.normal(kv, (H, Lq, N), jnp.float64)
    w = jax.random.normal(kw, (H, Lq, N), jnp.float64)
    _, _, _, _, params = _inputs()
    heads = _two_heads(params)

    def total(adjoint):
        one = jax.value_and_grad(_loss(adjoint, chunk_size=Lq), argnums=argnums)
        return jax.jit(jax.vmap(one))(phi_q, phi_k, v, heads, w)

    (value, grads), (ref_value, ref_grads) = total(None), total(diffrax.RecursiveCheckpointAdjoint(checkpoints=6))
    np.testing.assert_allclose(value, ref_value, rtol=1e-12)
    for got, ref in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)


def test_vmapped_layer_forward_compiles_over_many_queries():
    """The forward alone of a batch through the layer, L a multiple of `QUERY_CHUNK` (the read's chunks and the
    causal readout's then have the same layout): XLA's CPU compiler once rejected it (an HLO verifier error on
    the readout's dot) while forward+backward compiled. Checked against the same layer on one sequence at a time."""
    from astroformer._head._read import QUERY_CHUNK

    L = 2 * QUERY_CHUNK
    layer = af.make_attention("na-ode", 16, 2, num_features=8, key=jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (2, L, 16))
    batched = jax.jit(lambda m, x: jax.vmap(m)(x))(layer, x)
    one = jax.jit(lambda m, x: m(x))
    np.testing.assert_allclose(batched, jnp.stack([one(layer, x[0]), one(layer, x[1])]), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("chunk_size", [5, 64], ids=["five-chunks", "one-chunk"])
def test_chunked_head_with_a_mask_matches_the_whole_sequence_form(chunk_size):
    """The default causal head runs write, astrocyte weights, read and readout chunk by chunk, carrying the
    neurons' window states, g and the readout's state (`_causal_ode_chunks`). With absent tokens and a length
    that is not a multiple of the chunk, values and gradients (inputs and every time constant) equal the
    whole-sequence form solved by diffrax with its own adjoint."""
    Lm = 23
    kq, kk, kv, kw = jax.random.split(jax.random.PRNGKey(11), 4)
    phi_q = jax.random.uniform(kq, (Lm, M), jnp.float64, 0.2, 1.5)
    phi_k = jax.random.uniform(kk, (Lm, M), jnp.float64, 0.2, 1.5)
    v = jax.random.normal(kv, (Lm, N), jnp.float64)
    w = jax.random.normal(kw, (Lm, N), jnp.float64)
    mask = jnp.ones(Lm, bool).at[jnp.array([0, 4, 5, 17])].set(False)
    _, _, _, _, params = _inputs()

    def loss(adjoint):
        def f(phi_q, phi_k, v, params):
            x = af.na_attention(
                phi_q, phi_k, v, params, mask=mask, read_steps=6, adjoint=adjoint, chunk_size=chunk_size
            )
            return jnp.sum(x * w)

        return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3)))(phi_q, phi_k, v, params)

    (value, grads), (ref_value, ref_grads) = loss(None), loss(diffrax.RecursiveCheckpointAdjoint(checkpoints=6))
    assert abs(float(ref_value)) > 0.1
    np.testing.assert_allclose(value, ref_value, rtol=1e-12)
    for got, ref in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)


def test_chunked_head_promotes_mixed_dtypes_like_the_whole_sequence_form():
    """Inputs of different float dtypes (float32 keys, float64 queries and values) are promoted once for the
    whole stream, so the chunks' carries keep one dtype; the result equals the whole-sequence form's on the
    promoted inputs (which itself would write the float32 keys in float32)."""
    phi_q, phi_k, v, _, params = _inputs()
    phi_k32 = phi_k.astype(jnp.float32)
    chunked = af.na_attention(phi_q, phi_k32, v, params, read_steps=6, chunk_size=4)
    whole = af.na_attention(
        phi_q,
        phi_k32.astype(jnp.float64),
        v,
        params,
        read_steps=6,
        adjoint=diffrax.RecursiveCheckpointAdjoint(checkpoints=6),
    )
    assert chunked.dtype == whole.dtype == jnp.float64
    np.testing.assert_allclose(chunked, whole, rtol=1e-12)


@pytest.mark.parametrize("lead", [(L,), (2, L)])
def test_relaxing_sweep_matches_the_generic_sweep(lead):
    """The abstract astrocyte's reverse sweep (per-element step, per-step scalars, the calcium mean broadcast over
    the features before the steps and its cotangent summed back after them): the same cotangents, of the same
    shapes, as the generic step-by-step sweep of the field."""
    from astroformer._head._read import ReducedReadField, RelaxingCalcium, _relaxing_sweep, _sweep, read_grid

    *_, params = _inputs()
    kq, kg, kp, kc = jax.random.split(jax.random.PRNGKey(7), 4)
    phi_q = jax.random.uniform(kq, (*lead, M), jnp.float64, 0.2, 1.5)
    p0 = phi_q * jax.random.uniform(kg, (*lead, M), jnp.float64, 0.2, 1.5)
    p_bar = jax.random.uniform(kp, (*lead, 1), jnp.float64, 0.5, 2.0)
    source = RelaxingCalcium(p0=p0, p_bar=p_bar, kappa=N * M * params.t_read / params.tau_p)
    field = ReducedReadField(phi_q=phi_q, source=source, params=params)
    grid = read_grid(params, N, M, 6, jnp.float64)
    cotangent = tuple(jax.random.normal(k, (*lead, M), jnp.float64) for k in jax.random.split(kc))
    generic = _sweep(field, grid, cotangent)
    fast = _relaxing_sweep(field, grid, cotangent, shared=True)
    assert fast[0].source.p_bar.shape == p_bar.shape
    assert jax.tree.structure(fast) == jax.tree.structure(generic)
    for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(generic)):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)
    # Shared inputs not differentiated: the written-out per-element adjoint, the shared cotangents zero.
    written = _relaxing_sweep(field, grid, cotangent, shared=False)
    assert jax.tree.structure(written) == jax.tree.structure(generic)
    per_element = lambda f: (f.phi_q, f.source.p0, f.source.p_bar)  # noqa: E731
    for a, b in zip(per_element(written[0]), per_element(generic[0])):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)
    for a in [*jax.tree.leaves(written[0].params), written[0].source.kappa, written[1]]:
        assert not np.any(a)


def _slopes_by_quadrature(alpha, beta, n=64):
    """The alpha-derivatives of (e^{-alpha}, psi, E_1, E_2) from their integral forms (`_special`), differentiated
    under the integral sign and integrated by Gauss-Legendre quadrature (float64 NumPy): independent of the
    closed forms."""
    w01, x01 = (lambda x, w: (w / 2, (x + 1) / 2))(*np.polynomial.legendre.leggauss(n))
    dpsi = -np.sum(w01 * x01 * np.exp(-alpha * x01))
    de1 = -np.sum(w01 * (1 - x01) * np.exp(-(1 - x01) * alpha - x01 * beta))
    b = x01[:, None]
    a = b * x01[None, :]  # a in [0, b]: weight b
    de2 = -np.sum(w01[:, None] * w01[None, :] * b * (b - a) * np.exp(-(b - a) * alpha - (1 - b) * beta))
    return -np.exp(-alpha), dpsi, de1, de2


def _beta_slopes_by_quadrature(alpha, beta, n=64):
    """The beta-derivatives of (E_1, E_2) from their integral forms, as `_slopes_by_quadrature`."""
    w01, x01 = (lambda x, w: (w / 2, (x + 1) / 2))(*np.polynomial.legendre.leggauss(n))
    de1 = -np.sum(w01 * x01 * np.exp(-(1 - x01) * alpha - x01 * beta))
    b = x01[:, None]
    a = b * x01[None, :]  # a in [0, b]: weight b
    de2 = -np.sum(w01[:, None] * w01[None, :] * b * (1 - b) * np.exp(-(b - a) * alpha - (1 - b) * beta))
    return de1, de2


def _values_by_quadrature(alpha, beta, n=64):
    """(e^{-alpha}, psi(alpha), E_1, E_2) from their integral forms by Gauss-Legendre quadrature (float64 NumPy)."""
    w01, x01 = (lambda x, w: (w / 2, (x + 1) / 2))(*np.polynomial.legendre.leggauss(n))
    psi = np.sum(w01 * np.exp(-alpha * x01))
    e1 = np.sum(w01 * np.exp(-(1 - x01) * alpha - x01 * beta))
    b = x01[:, None]
    a = b * x01[None, :]  # a in [0, b]: weight b
    e2 = np.sum(w01[:, None] * w01[None, :] * b * np.exp(-(b - a) * alpha - (1 - b) * beta))
    return np.exp(-alpha), psi, e1, e2


# Every branch point: the Taylor branches below 0.1 (E_2) and 1/2 (psi, psi'), ties, both orders.
NODES = (0.0, 1e-6, 1e-3, 0.05, 0.0999, 0.1, 0.1001, 0.3, 0.4999, 0.5, 0.5001, 1.0, 3.0, 20.0)


def test_magnus_exponential_slopes_match_quadrature_and_autodiff():
    """The read's hand-written adjoint differentiates `magnus_exponentials` in alpha (and E_1, E_2 in beta) by
    closed forms: they equal quadrature of the integral forms (every branch: small and large nodes, ties, both
    orders) and autodiff of the stable forms; their values are `magnus_exponentials`' own and equal quadrature
    too (float64 and float32); and they stay finite for very stiff steps."""
    from astroformer._solvers._special import magnus_exponentials, magnus_exponentials_and_slopes

    pairs = (
        [(a, b) for a in NODES for b in NODES] + [(a, a * (1 + 1e-7)) for a in NODES] + [(a * 1.001, a) for a in NODES]
    )
    alpha, beta = (jnp.asarray(v, jnp.float64) for v in zip(*pairs))
    values, slopes, slopes_b = magnus_exponentials_and_slopes(alpha, beta)
    for mine, theirs in zip(values, magnus_exponentials(alpha, beta)):
        np.testing.assert_array_equal(mine, theirs)
    reference = np.array([_values_by_quadrature(a, b) for a, b in pairs]).T
    for k in range(4):
        np.testing.assert_allclose(values[k], reference[k], rtol=1e-12, atol=1e-15, err_msg=f"value {k}")
    values32 = magnus_exponentials(alpha.astype(jnp.float32), beta.astype(jnp.float32))
    for k in range(4):
        np.testing.assert_allclose(values32[k], reference[k], rtol=2e-6, atol=1e-8, err_msg=f"float32 value {k}")
    expected = np.array([_slopes_by_quadrature(a, b) for a, b in pairs]).T
    for k in range(4):
        np.testing.assert_allclose(slopes[k], expected[k], rtol=1e-10, atol=1e-14, err_msg=f"slope {k}")
    _, autodiff = jax.jvp(lambda x: magnus_exponentials(x, beta), (alpha,), (jnp.ones_like(alpha),))
    for k in range(4):
        np.testing.assert_allclose(slopes[k], autodiff[k], rtol=1e-6, atol=1e-12, err_msg=f"slope {k}")
    # float32, against the float64 quadrature: within a few hundred ulps even where the branches cancel.
    _, slopes32, slopes_b32 = magnus_exponentials_and_slopes(alpha.astype(jnp.float32), beta.astype(jnp.float32))
    for k in range(4):
        np.testing.assert_allclose(slopes32[k], expected[k], rtol=5e-4, atol=1e-7, err_msg=f"float32 slope {k}")
    # The beta-slopes of E_1 and E_2 (the read's per-step scalars' cotangents, when fitting time constants):
    # quadrature, autodiff in beta, float32.
    expected_b = np.array([_beta_slopes_by_quadrature(a, b) for a, b in pairs]).T
    _, autodiff_b = jax.jvp(lambda y: magnus_exponentials(alpha, y), (beta,), (jnp.ones_like(beta),))
    for k in range(2):
        np.testing.assert_allclose(slopes_b[k], expected_b[k], rtol=1e-10, atol=1e-14, err_msg=f"beta slope {k}")
        np.testing.assert_allclose(slopes_b[k], autodiff_b[k + 2], rtol=1e-6, atol=1e-12, err_msg=f"beta slope {k}")
        np.testing.assert_allclose(slopes_b32[k], expected_b[k], rtol=5e-4, atol=1e-7, err_msg=f"f32 beta slope {k}")
    # Stiff steps (the default layer's alpha reaches about 2e5): float32 against float64, and psi' against its
    # closed form (e^{-x}(1 + x) - 1) / x^2.
    big = np.concatenate([np.geomspace(20.0, 2e5, 101), [1e9]])
    for b in (0.0, 0.5, 3.0):
        _, s64, _ = magnus_exponentials_and_slopes(jnp.asarray(big), jnp.float64(b))
        _, s32, _ = magnus_exponentials_and_slopes(jnp.asarray(big, jnp.float32), jnp.float32(b))
        np.testing.assert_allclose(s64[1], (np.exp(-big) * (1 + big) - 1) / big**2, rtol=1e-12)
        for k in range(4):
            assert np.all(np.isfinite(s32[k]))
            np.testing.assert_allclose(s32[k], s64[k], rtol=1e-5, atol=1e-30, err_msg=f"stiff slope {k}, beta {b}")
    # ... and the beta-slopes there, with beta large too (E_1's where e^{-lo} is kept; E_2's everywhere)
    for b in (0.0, 0.5, 3.0, 50.0, 400.0):
        (*_, e2_64), _, b64 = magnus_exponentials_and_slopes(jnp.asarray(big), jnp.float64(b))
        _, _, b32 = magnus_exponentials_and_slopes(jnp.asarray(big, jnp.float32), jnp.float32(b))
        assert all(np.all(np.isfinite(a)) for a in (*b64, *b32))
        np.testing.assert_allclose(b32[1], b64[1], rtol=1e-5, atol=1e-30, err_msg=f"stiff dE_2/dbeta, beta {b}")
        assert np.max(np.abs(np.asarray(b32[0], np.float64) - b64[0]) / np.asarray(e2_64)) < 1e-6, b


def test_magnus_exponentials_where_both_nodes_are_large():
    """Both nodes large (e^{-lo} below the square root of the smallest normal number, lo > 43.7 in float32):
    E_1 is taken with e^{-(hi - lo)} = 0, so its error must stay negligible beside E_2, next to which it enters
    the step, and autodiff's gradient must stay finite. Also: a scalar beta gives the values of the broadcast one."""
    from astroformer._solvers._special import magnus_exponentials, magnus_exponentials_and_slopes

    grid = np.geomspace(30.0, 300.0, 41)
    # float32 nodes, and the float64 reference at the same (rounded) nodes
    a, b = (g.ravel().astype(np.float32).astype(np.float64) for g in np.meshgrid(grid, grid, indexing="ij"))
    values64, slopes64, _ = magnus_exponentials_and_slopes(jnp.asarray(a), jnp.asarray(b))
    values32, slopes32, _ = magnus_exponentials_and_slopes(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
    e2 = np.asarray(values64[3])
    for k in (0, 1, 3):
        np.testing.assert_allclose(
            values32[k], values64[k], rtol=1e-6, atol=np.finfo(np.float32).tiny, err_msg=f"value {k}"
        )
    assert np.max(np.abs(np.asarray(values32[2], np.float64) - np.asarray(values64[2])) / e2) < 1e-12
    assert np.max(np.abs(np.asarray(slopes32[2], np.float64) - np.asarray(slopes64[2])) / np.abs(slopes64[3])) < 1e-12
    np.testing.assert_allclose(slopes32[3], slopes64[3], rtol=2e-5)
    for dtype in (jnp.float32, jnp.float64):
        grads = jax.grad(lambda x, y: sum(jnp.sum(v) for v in magnus_exponentials(x, y)), argnums=(0, 1))(
            jnp.asarray(a, dtype), jnp.asarray(b, dtype)
        )
        assert all(np.all(np.isfinite(g)) for g in grads)
    alpha = jnp.asarray(np.concatenate([[0.0], np.geomspace(1e-6, 2e5, 200)]))
    for beta in (0.0, 0.05, 3.0, 60.0):
        scalar = magnus_exponentials(alpha, jnp.float64(beta))
        full = magnus_exponentials(alpha, jnp.full_like(alpha, beta))
        for k in range(4):
            np.testing.assert_allclose(scalar[k], full[k], rtol=1e-14, atol=1e-300)


@pytest.mark.parametrize("queries", ["one-chunk", "query-chunks"])
def test_backward_follows_what_is_differentiated(monkeypatch, queries):
    """The read's backward takes the written-out adjoint in every case, and asks it for the per-step scalars'
    cotangents exactly when the time constants are differentiated: not when they are not asked for or are held
    fixed with `stop_gradient` (as training holds them), with L at most `QUERY_CHUNK` and above it (the chunked
    backward). Autodiff of the step (`_reverse_sweep`) is never traced for the abstract astrocyte."""
    from astroformer._head import _read

    traced = []

    def spy(f, name=None):
        def wrapped(*args, **kwargs):
            traced.append(name or ("with scalars" if kwargs["shared"] else "per element"))
            return f(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(_read, "_element_sweep", spy(_read._element_sweep))
    monkeypatch.setattr(_read, "_reverse_sweep", spy(_read._reverse_sweep, "autodiff"))
    phi_q, phi_k, v, w, params = _inputs()
    if queries == "query-chunks":
        reps = _read.QUERY_CHUNK // L + 1
        phi_q, phi_k, v, w = (jnp.tile(a, (reps, 1)) for a in (phi_q, phi_k, v, w))
    loss = _loss(chunk_size=phi_q.shape[0])
    cases = {
        "time constants": (lambda q, p: loss(q, phi_k, v, p, w), {"with scalars"}),
        "inputs only": (lambda q, p: loss(q, phi_k, v, params, w), {"per element"}),
        "stop_gradient": (lambda q, p: loss(q, phi_k, v, jax.lax.stop_gradient(p), w), {"per element"}),
    }
    for name, (f, expected) in cases.items():
        traced.clear()
        jax.grad(f, argnums=(0, 1))(phi_q, params)
        assert set(traced) == expected, name


@pytest.mark.parametrize(
    "kind",
    ["default", "diffrax-adjoint", "calcium"],
)
def test_float32_model_keeps_its_dtype_under_x64(kind):
    """With float64 switched on (as here), a float32 model's read stays float32, forward and backward: diffrax's
    times default to float64 and it promotes the state to them, which once made the read float64 and its custom
    VJP fail on cotangents of the wrong dtype. The values equal the same model run with float64 off."""
    phi_q, phi_k, v, w, params = _float32_inputs()

    def loss(phi_q, params):
        if kind == "calcium":
            x = af.na_attention_calcium(phi_q, phi_k, v, params, read_steps=4)
        else:
            adjoint = diffrax.RecursiveCheckpointAdjoint(checkpoints=6) if kind == "diffrax-adjoint" else None
            x = af.na_attention(phi_q, phi_k, v, params, read_steps=6, adjoint=adjoint)
        return jnp.sum(x * w), x

    grad = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))
    (g_q, g_params), x = grad(phi_q, params)
    assert x.dtype == jnp.float32 and g_q.dtype == jnp.float32
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(g_params))
    with jax.enable_x64(False):
        (r_q, r_params), r_x = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))(phi_q, params)
    np.testing.assert_allclose(x, r_x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g_q, r_q, rtol=1e-4, atol=1e-6)
    for g, r in zip(jax.tree.leaves(g_params), jax.tree.leaves(r_params), strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-3, atol=1e-6)


def test_float32_full_model_keeps_its_dtype_under_x64():
    """The literal model (`state="full"`) in float32 with an explicit solver, as its docstring allows, with float64
    switched on: its write and read solves stay float32 (they once failed in the write's scan, whose carry came
    back float64), with the values of the same call with float64 off."""
    phi_q, phi_k, v, _, params = _float32_inputs()

    def run():
        return af.na_attention(
            phi_q[:4],
            phi_k[:4],
            v[:4],
            params,
            state="full",
            solver=diffrax.Tsit5(),
            stepsize_controller=diffrax.PIDController(rtol=1e-5, atol=1e-7),
        )

    x = run()
    assert x.dtype == jnp.float32
    with jax.enable_x64(False):
        reference = run()
    np.testing.assert_allclose(x, reference, rtol=1e-5, atol=1e-6)
