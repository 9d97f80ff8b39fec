"""Tests of the attention block with biophysical astrocyte calcium (`astroformer._head._calcium_read`).

- The abstract path is `na_attention(..., mode="ode")` exactly.
- Each calcium model in the block: finite outputs; jit equals eager; vmap equals a loop; gradients with
  respect to the drive gain and one calcium parameter equal central finite differences (fixed-step solve,
  so the output is a smooth function of the parameters).
- The O(M) reduction equals an independent literal simulation of N×M processes and synapses (scipy).
- Physical properties: the output is linear in the stored values and causal, with non-negative attention
  weights (it lies in the convex cone of the visible values; it is not normalised, see docs/calcium.md).

Everything runs in float64 (module-scoped switch, restored afterwards), on tiny shapes.
"""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import astroformer as af
from astroformer._head._calcium_read import CalciumCoupling, na_attention_calcium
from astroformer._head._write import write_reduced
from astroformer.calcium import DiffusiveProcesses, GChI, LiRinzel
from astroformer.training import trainable_filter

L, D, M, N = 5, 3, 6, 2
# Short reads in model time (T_r · time_scale = 0.5 · 4 = 2 s) keep the calcium solves cheap.
PARAMS = dict(tau_n=0.02, tau_s=0.01, t_read=0.5)
COUPLING = {"GChI": dict(gain=0.05, time_scale=4.0), "LiRinzel": dict(gain=3.0, time_scale=4.0)}
# One calcium parameter per model for the gradient check.
CALCIUM_PARAM = {"GChI": "O_beta", "LiRinzel": "r_IP3R"}


# float64 for the whole module (tests/conftest.py), switched back afterwards.
pytestmark = pytest.mark.usefixtures("x64_module")


def _problem(seed, length=L):
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(seed), 4)
    q = jax.random.normal(k1, (length, D)) * D**-0.25
    k = jax.random.normal(k2, (length, D)) * D**-0.25
    v = jax.random.normal(k3, (length, N))
    features = af.PositiveRandomFeatures(D, M, key=k4)
    return features(q), features(k), v


@pytest.fixture(scope="module")
def problem():
    return _problem(0)


def _setup(name):
    model = {"GChI": GChI, "LiRinzel": LiRinzel}[name]()
    return model, CalciumCoupling(**COUPLING[name]), af.NAParams(**PARAMS)


# --------------------------------------------------------------------------------------------------------------
# The abstract path.


@pytest.mark.parametrize("calcium", [None, "abstract", "diffusive"])
@pytest.mark.parametrize("causal", [True, False])
def test_abstract_path_is_na_attention(problem, calcium, causal):
    phi_q, phi_k, v = problem
    params = af.NAParams()
    mask = jnp.array([True, True, False, True, True])
    model = DiffusiveProcesses(n=M) if calcium == "diffusive" else calcium
    out = na_attention_calcium(phi_q, phi_k, v, params, model, causal=causal, mask=mask)
    ref = af.na_attention(phi_q, phi_k, v, params, causal=causal, mode="ode", mask=mask)
    assert out.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=0, atol=1e-12)
    # Options of the calcium solve would have no effect on the abstract path: they raise, naming the argument.
    with pytest.raises(ValueError, match="^calcium_steps: has an effect only"):
        na_attention_calcium(phi_q, phi_k, v, params, model, calcium_steps=16)
    with pytest.raises(ValueError, match="^solver: has an effect only"):
        na_attention_calcium(phi_q, phi_k, v, params, model, solver=diffrax.Tsit5())


# --------------------------------------------------------------------------------------------------------------
# Transforms, per calcium model.


@pytest.fixture(scope="module", params=["GChI", "LiRinzel"])
def setup(request):
    name = request.param
    model, coupling, params = _setup(name)

    def forward(phi_q, phi_k, v, coupling, model):
        return na_attention_calcium(phi_q, phi_k, v, params, model, coupling=coupling)

    return name, model, coupling, params, forward, eqx.filter_jit(forward)


def test_finite_jit_equals_eager_vmap_equals_loop(setup):
    name, model, coupling, params, forward, jitted = setup
    batch = [_problem(seed) for seed in (1, 2)]
    eager = [forward(*inputs, coupling, model) for inputs in batch]
    for out in eager:
        assert out.shape == (L, N)
        assert np.all(np.isfinite(np.asarray(out)))
    np.testing.assert_allclose(
        np.asarray(jitted(*batch[0], coupling, model)), np.asarray(eager[0]), rtol=1e-10, atol=1e-12
    )
    stacked = [jnp.stack(arrays) for arrays in zip(*batch)]
    vmapped = eqx.filter_jit(jax.vmap(forward, in_axes=(0, 0, 0, None, None)))(*stacked, coupling, model)
    # Adaptive steps are chosen per batch element inside vmap, so the loop is reproduced to round-off.
    np.testing.assert_allclose(np.asarray(vmapped), np.stack([np.asarray(e) for e in eager]), rtol=1e-9, atol=1e-11)


def test_gradient_matches_finite_differences(problem, setup):
    name, model, coupling, params, _, _ = setup
    phi_q, phi_k, v = problem
    pname = CALCIUM_PARAM[name]
    weights = jax.random.normal(jax.random.PRNGKey(7), (L, N))
    n_steps = 400

    @eqx.filter_jit
    def loss(theta):
        gain, value = theta
        cp = eqx.tree_at(lambda c: c.gain, coupling, gain)
        md = eqx.tree_at(lambda m: getattr(m, pname), model, value)
        out = na_attention_calcium(
            phi_q,
            phi_k,
            v,
            params,
            md,
            coupling=cp,
            stepsize_controller=diffrax.ConstantStepSize(),
            dt0=1.0 / n_steps,
            max_steps=n_steps,
        )
        return jnp.sum(weights * out)

    theta = (coupling.gain, getattr(model, pname))
    grads = eqx.filter_jit(jax.grad(loss))(theta)
    for i in range(2):
        eps = 1e-5 * float(theta[i])
        plus = list(theta)
        minus = list(theta)
        plus[i] = theta[i] + eps
        minus[i] = theta[i] - eps
        fd = (float(loss(tuple(plus))) - float(loss(tuple(minus)))) / (2 * eps)
        print(f"{name} d/d{('gain', pname)[i]}: autodiff {float(grads[i]):.10g}, finite difference {fd:.10g}")
        assert abs(fd) > 1e-6  # the parameter matters
        np.testing.assert_allclose(float(grads[i]), fd, rtol=1e-5)


# --------------------------------------------------------------------------------------------------------------
# The reduction against a literal N×M simulation.


def test_reduction_equals_literal_network(problem, setup):
    """One query, read with scipy's Radau on the literal state (h (M), x (N), one calcium model per synapse ij
    (N, M), s (N, M)), all-to-all diffusion over the N·M processes."""
    from scipy.integrate import solve_ivp

    name, model, coupling, params, _, _ = setup
    phi_q, phi_k, v = problem
    t = 3
    out = na_attention_calcium(
        phi_q,
        phi_k,
        v,
        params,
        model,
        coupling=coupling,
        read_steps=256,
        solver=diffrax.Tsit5(),
        stepsize_controller=diffrax.PIDController(rtol=1e-10, atol=1e-12),
    )
    memory = write_reduced(phi_k, v, params, jnp.ones(L, bool))
    c = memory.hebbian_trace(t)
    g = memory.astrocyte_weights()[t]
    names = model.state_names
    y0 = model.default_y0()
    sizes = [M, N] + [N * M] * (len(names) + 1)

    def unpack(y):
        parts = jnp.split(y, np.cumsum(sizes)[:-1])
        h, x, s = parts[0], parts[1], parts[-1].reshape(N, M)
        calcium = {n: p.reshape(N, M) for n, p in zip(names, parts[2:-1])}
        return h, x, calcium, s

    @jax.jit
    def rhs(y):
        h, x, y_ca, s = unpack(y)
        drive = coupling.gain * jnp.broadcast_to(h * g, (N, M))
        dy = model.vector_field(0.0, y_ca, drive)
        C = model.calcium(y_ca)
        dy["C"] = dy["C"] + coupling.diffusion * (jnp.mean(C) - C)
        rate = coupling.rate_max * C**coupling.hill / (C**coupling.hill + coupling.half_saturation**coupling.hill)
        dh = (phi_q[t] - h) / params.tau_n
        dx = (s @ h - x) / params.tau_n
        ds = (c - rate * s) / params.tau_s
        return jnp.concatenate([dh, dx] + [coupling.time_scale * dy[n].ravel() for n in names] + [ds.ravel()])

    y_init = np.concatenate([np.zeros(M + N)] + [np.full(N * M, float(y0[n])) for n in names] + [np.zeros(N * M)])
    jac = jax.jit(jax.jacfwd(rhs))
    sol = solve_ivp(
        lambda _, y: np.asarray(rhs(y)),
        (0.0, float(params.t_read)),
        y_init,
        method="Radau",
        rtol=1e-10,
        atol=1e-12,
        jac=lambda _, y: np.asarray(jac(y)),
    )
    assert sol.success
    x_literal = sol.y[M : M + N, -1]
    err = np.max(np.abs(np.asarray(out[t]) - x_literal)) / np.max(np.abs(x_literal))
    print(f"{name}: reduced vs literal N×M read, relative error {err:.2e}")
    # Magnus2 with 511 steps: global error O(Δu²) ~ 1e-6 relative; a wrong drive, diffusion scale or rate
    # would show up at the percent level.
    assert err < 1e-5


def test_default_ros2_solve_matches_tight_explicit_solve(problem, setup):
    """The default calcium solve (`Ros2`, adaptive) against explicit Tsit5 at rtol 1e-10 on the same read grid:
    an independent integrator of the same equations."""
    name, model, coupling, params, forward, jitted = setup
    phi_q, phi_k, v = problem
    out = jitted(phi_q, phi_k, v, coupling, model)
    ref = na_attention_calcium(
        phi_q,
        phi_k,
        v,
        params,
        model,
        coupling=coupling,
        solver=diffrax.Tsit5(),
        stepsize_controller=diffrax.PIDController(rtol=1e-10, atol=1e-12),
    )
    err = float(jnp.max(jnp.abs(out - ref)) / jnp.max(jnp.abs(ref)))
    print(f"{name}: default Ros2 (rtol 1e-6) vs Tsit5 (rtol 1e-10), relative error {err:.2e}")
    assert err < 1e-4


def test_fixed_calcium_steps_converge_to_adaptive_solve(problem, setup):
    """`calcium_steps=S` (fixed Ros2 steps, for training) approaches the adaptive solve as S grows, at second
    order; bad values are refused."""
    name, model, coupling, params, forward, jitted = setup
    phi_q, phi_k, v = problem
    ref = na_attention_calcium(
        phi_q,
        phi_k,
        v,
        params,
        model,
        coupling=coupling,
        solver=diffrax.Tsit5(),
        stepsize_controller=diffrax.PIDController(rtol=1e-10, atol=1e-12),
    )
    errors = []
    for steps in (32, 64, 128):
        out = na_attention_calcium(phi_q, phi_k, v, params, model, coupling=coupling, calcium_steps=steps)
        errors.append(float(jnp.max(jnp.abs(out - ref)) / jnp.max(jnp.abs(ref))))
    print(f"{name}: calcium_steps 32, 64, 128: relative errors {errors}")
    # measured: G-ChI 8.1e-2, 2.4e-2, 7.4e-3; Li–Rinzel 1.6e-2, 5.6e-3, 1.8e-3 (ratios 3.0–3.4)
    assert errors[-1] < 1e-2
    assert errors[1] / errors[2] > 2.5 and errors[0] / errors[1] > 2.5
    with pytest.raises(ValueError, match="calcium_steps"):
        na_attention_calcium(phi_q, phi_k, v, params, model, coupling=coupling, calcium_steps=3)
    with pytest.raises(ValueError, match="calcium_steps"):
        na_attention_calcium(
            phi_q,
            phi_k,
            v,
            params,
            model,
            coupling=coupling,
            calcium_steps=16,
            stepsize_controller=diffrax.PIDController(rtol=1e-3, atol=1e-6),
        )


# --------------------------------------------------------------------------------------------------------------
# Physical properties.


def test_linear_causal_nonnegative_weights(problem, setup):
    """The astrocyte sees only phi(q) and g, never the values, so x is linear in v: with one-hot values the
    outputs are the attention weights W (L, L); they must be non-negative (rates and drives are), zero on
    future tokens (causal), and reproduce x = W v for any v."""
    name, model, coupling, params, forward, jitted = setup
    phi_q, phi_k, v = problem
    W = jitted(phi_q, phi_k, jnp.eye(L), coupling, model)  # N = L here
    x = jitted(phi_q, phi_k, v, coupling, model)
    np.testing.assert_allclose(np.asarray(W @ v), np.asarray(x), rtol=1e-8, atol=1e-10)
    assert np.all(np.asarray(W) >= -1e-12)
    np.testing.assert_array_equal(np.triu(np.asarray(W), 1), 0.0)
    assert np.all(np.diag(np.asarray(W)) > 0)
    print(f"{name}: row sums of the attention weights (1 for exact attention): {np.asarray(W.sum(1)).round(3)}")


# --------------------------------------------------------------------------------------------------------------
# The multi-head layer `NeuronAstrocyteAttention(calcium=...)`.

D_MODEL, HEADS, M_LAYER = 4, 2, 3


@pytest.fixture(scope="module")
def calcium_layer():
    coupling = CalciumCoupling(**COUPLING["GChI"])
    layer = af.make_attention(
        "na-ode",
        D_MODEL,
        HEADS,
        num_features=M_LAYER,
        params=af.NAParams(**PARAMS),
        calcium=GChI(),
        coupling=coupling,
        read_steps=8,
        key=jax.random.PRNGKey(3),
    )
    x = jax.random.normal(jax.random.PRNGKey(4), (L, D_MODEL))
    mask = jnp.array([True, True, False, True, True])
    return layer, x, mask


def test_layer_with_calcium_equals_heads_by_hand(calcium_layer):
    """The layer's output equals projections + `na_attention_calcium` per head + output projection, written
    out independently here."""
    layer, x, mask = calcium_layer
    assert isinstance(layer, af.NeuronAstrocyteAttention) and isinstance(layer.calcium, GChI)
    out = eqx.filter_jit(layer)(x, mask)
    Dh = D_MODEL // HEADS

    def dense(lin, a):
        return a @ np.asarray(lin.weight).T + np.asarray(lin.bias)

    q, k, v = (dense(lin, np.asarray(x)) for lin in (layer.query, layer.key, layer.value))
    heads = []
    for h in range(HEADS):
        cols = slice(h * Dh, (h + 1) * Dh)
        params = jax.tree.map(lambda a: a[h], layer.params)
        heads.append(
            na_attention_calcium(
                layer.feature_map(jnp.asarray(q[:, cols]) * Dh**-0.25),
                layer.feature_map(jnp.asarray(k[:, cols]) * Dh**-0.25),
                jnp.asarray(v[:, cols]),
                params,
                GChI(),
                coupling=af.unwrap(layer.coupling),
                causal=True,
                mask=mask,
                read_steps=8,
            )
        )
    ref = dense(layer.output, np.concatenate([np.asarray(o) for o in heads], axis=1))
    assert out.shape == (L, D_MODEL)
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-9, atol=1e-11)
    # The calcium model matters: the abstract layer with the same weights gives something else.
    abstract = eqx.tree_at(lambda a: a.calcium, layer, None, is_leaf=lambda n: n is None)
    assert np.max(np.abs(np.asarray(abstract(x, mask)) - ref)) > 1e-3


def test_layer_with_calcium_gradients(calcium_layer):
    layer, x, mask = calcium_layer
    weights = jax.random.normal(jax.random.PRNGKey(5), (L, D_MODEL))

    @eqx.filter_jit
    @eqx.filter_grad
    def grad(layer):
        return jnp.sum(weights * layer(x, mask))

    g = grad(layer)
    # The calcium and coupling parameters are stored in log coordinates: the gradient is on `raw`.
    for name, value in [
        ("coupling.gain", g.coupling.gain.raw),
        ("calcium.O_beta", g.calcium.O_beta.raw),
        ("query.weight", g.query.weight),
    ]:
        value = np.asarray(value)
        print(f"d/d{name}: {value.ravel()[:3]}")
        assert np.all(np.isfinite(value)), name
        assert np.any(value != 0), name
    # A step far too large for raw parameters (it would send the gain to -3.7 if applied to θ itself) keeps
    # every calcium and coupling parameter positive: what `astroformer train`'s optimiser sees is log θ.
    spec = trainable_filter(layer)
    assert spec.calcium.O_beta.raw and spec.coupling.gain.raw and not spec.params.tau_n
    step = jax.tree.map(lambda d, t: -20.0 * d / (np.abs(d).max() + 1e-30) if t else None, g, spec)
    stepped = eqx.apply_updates(layer, step)
    theta = af.unwrap((stepped.calcium, stepped.coupling))
    before = af.unwrap((layer.calcium, layer.coupling))
    assert all(np.all(np.asarray(a) > 0) and np.isfinite(np.asarray(a)).all() for a in jax.tree.leaves(theta))
    moved = [
        float(np.abs(np.log(np.asarray(a) / np.asarray(b))).max())
        for a, b in zip(jax.tree.leaves(theta), jax.tree.leaves(before))
    ]
    assert max(moved) > 1.0  # the step did move them, by more than a factor e


def test_layer_calcium_defaults_and_errors():
    key = jax.random.PRNGKey(0)
    layer = af.NeuronAstrocyteAttention(D_MODEL, HEADS, num_features=M_LAYER, calcium=LiRinzel(), key=key)
    assert float(layer.coupling.gain.value) == 3.0  # default_coupling(LiRinzel())
    assert isinstance(af.unwrap(layer.calcium), LiRinzel)
    # The log coordinate round-trips: the unwrapped model is the one given.
    np.testing.assert_allclose(float(af.unwrap(layer.calcium).r_IP3R), 6.0, rtol=1e-6)
    plain = af.NeuronAstrocyteAttention(D_MODEL, HEADS, num_features=M_LAYER, key=key)
    assert plain.calcium is None and plain.coupling is None
    with pytest.raises(ValueError, match="mode"):
        af.NeuronAstrocyteAttention(D_MODEL, HEADS, calcium=GChI(), mode="equilibrium", key=key)
    with pytest.raises(ValueError, match="state"):
        af.NeuronAstrocyteAttention(D_MODEL, HEADS, calcium=GChI(), state="full", key=key)
    with pytest.raises(TypeError, match="calcium"):
        af.NeuronAstrocyteAttention(D_MODEL, HEADS, calcium="gchi", key=key)
    with pytest.raises(TypeError, match="coupling"):
        af.NeuronAstrocyteAttention(D_MODEL, HEADS, calcium=GChI(), coupling=dict(gain=1.0), key=key)
    # Arguments that would have no effect raise instead of being ignored.
    with pytest.raises(ValueError, match="coupling"):
        af.NeuronAstrocyteAttention(D_MODEL, HEADS, coupling=CalciumCoupling(gain=1.0), key=key)
    with pytest.raises(ValueError, match="solver"):
        af.NeuronAstrocyteAttention(D_MODEL, HEADS, calcium=GChI(), solver=af.Magnus2(), key=key)


def test_diverged_calcium_solve_raises_and_ros2_stays_stable():
    """On the fixed grid used for training (`calcium_steps=64`), explicit Tsit5 blows up on G-ChI's stiff
    receptor binding (unnormalised random features make drives of tens of mM): that must raise, not be mapped
    to a zero synaptic rate by the saturating function (which kept the forward pass finite before). The
    default solver, `Ros2`, stays finite on the same grid, with finite gradients."""
    L, D, M = 8, 4, 16
    ks = jax.random.split(jax.random.PRNGKey(0), 4)
    fm = af.PositiveRandomFeatures(D, M, key=ks[0])
    q, k, v = (jax.random.normal(kk, (L, D)) for kk in ks[1:])
    params = af.NAParams(tau_s=0.01 / M)
    with pytest.raises(Exception, match="calcium solve diverged"):
        jax.block_until_ready(
            af.na_attention_calcium(fm(q), fm(k), v, params, GChI(), solver=diffrax.Tsit5(), calcium_steps=64)
        )

    def loss(v):
        return jnp.sum(af.na_attention_calcium(fm(q), fm(k), v, params, GChI(), calcium_steps=64) ** 2)

    value, grad = jax.value_and_grad(loss)(v)
    assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad)))
