"""Reference tests of the neuron–astrocyte attention block (`na_attention`, `read_trajectory`).

The chain of limits of model.md §3–5, each with a stated tolerance:

1. ODE -> equilibrium: with fast neurons (tau_n / T_w -> 0) and a long read (p_bar T_r / tau_s >> 1) the
   simulated output tends to the closed-form fixed point x*; the write error is O(tau_n / T_w) and the read
   error decays like exp(-p_bar T_r / tau_s).
2. Equilibrium -> softmax: positive random features are an unbiased Monte-Carlo kernel estimate, so the
   error against softmax attention falls like M^(-1/2).
3. Full N x M state == reduced O(M) state (the exact reduction of model.md §5), both solved tightly; the
   default Magnus2 read is a second-order approximation of the same ODE.
4. Calcium: all-to-all diffusion conserves total calcium and synchronises at rate N M / tau_p.
5. Causality.

Everything here runs in float64 (a module-scoped fixture switches it on and restores it afterwards).
"""

import functools

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import astroformer as af


# float64 for the whole module (tests/conftest.py), switched back afterwards.
pytestmark = pytest.mark.usefixtures("x64_module")


def _relerr(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def _unit(x):
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def _features(key, L, D, M, N, scale=0.5):
    kq, kk, kv, kf = jax.random.split(key, 4)
    q = scale * jax.random.normal(kq, (L, D))
    k = scale * jax.random.normal(kk, (L, D))
    v = jax.random.normal(kv, (L, N))
    fm = af.PositiveRandomFeatures(D, M, key=kf)
    return fm(q), fm(k), v


# --------------------------------------------------------------------------------------------------------
# 1. ODE -> equilibrium.


@pytest.fixture(scope="module")
def settle_data():
    return _features(jax.random.PRNGKey(0), L=6, D=4, M=8, N=3)


@functools.partial(jax.jit, static_argnames=("causal", "read_steps"))
def _ode(phi_q, phi_k, v, params, causal, read_steps=64):
    return af.na_attention(phi_q, phi_k, v, params, causal=causal, read_steps=read_steps)


@functools.partial(jax.jit, static_argnames=("causal",))
def _equilibrium(phi_q, phi_k, v, params, mask, causal):
    return af.na_attention(phi_q, phi_k, v, params, causal=causal, mode="equilibrium", mask=mask)


def _p_bar(phi_q, phi_k, causal):
    g = jnp.cumsum(phi_k, axis=0) if causal else jnp.broadcast_to(jnp.sum(phi_k, axis=0), phi_k.shape)
    return jnp.mean(phi_q * g, axis=-1)


@pytest.mark.parametrize("causal", [True, False])
def test_ode_matches_equilibrium(settle_data, causal):
    phi_q, phi_k, v = settle_data
    params = af.NAParams(tau_n=1e-4, tau_s=1e-3, t_write=1.0, t_read=1.0)
    # Precondition of the limit: every read is long compared with its slowest synaptic relaxation.
    assert float(jnp.min(_p_bar(phi_q, phi_k, causal))) * params.t_read / params.tau_s > 100
    x_eq = af.na_attention(phi_q, phi_k, v, params, causal=causal, mode="equilibrium")
    x_ode = _ode(phi_q, phi_k, v, params, causal)
    # Remaining error: O(tau_n / T_w) = 1e-4 from the write, plus exp(-100) from the read.
    assert _relerr(x_ode, x_eq) < 1e-3


@pytest.mark.parametrize("causal", [True, False])
def test_ode_error_shrinks_with_read_time(settle_data, causal):
    phi_q, phi_k, v = settle_data
    x_eq = af.na_attention(phi_q, phi_k, v, af.NAParams(), causal=causal, mode="equilibrium")
    errs = [
        _relerr(_ode(phi_q, phi_k, v, af.NAParams(tau_n=1e-4, tau_s=1e-2, t_read=t), causal), x_eq)
        for t in (0.05, 0.1, 0.2)
    ]
    assert errs[0] > errs[1] > errs[2], errs
    assert errs[2] < 0.5 * errs[0], errs


@pytest.mark.parametrize("causal", [True, False])
def test_ode_error_shrinks_with_fast_neurons(settle_data, causal):
    phi_q, phi_k, v = settle_data
    x_eq = af.na_attention(phi_q, phi_k, v, af.NAParams(), causal=causal, mode="equilibrium")
    errs = [
        _relerr(_ode(phi_q, phi_k, v, af.NAParams(tau_n=tau_n, tau_s=1e-3, t_read=1.0), causal), x_eq)
        for tau_n in (1e-2, 1e-3, 1e-4)
    ]
    assert errs[0] > errs[1] > errs[2], errs
    # The write error is first order in tau_n / T_w: a decade in tau_n buys about a decade in error.
    ratios = np.array(errs[:-1]) / np.array(errs[1:])
    assert np.all((ratios > 5) & (ratios < 20)), errs


@pytest.mark.parametrize("causal", [True, False])
def test_equilibrium_with_forgetting_is_decayed_attention(causal):
    """Equilibrium with tau_f: x*_t = sum_tau F^n v phi.phi / sum_tau F^n phi.phi, n the number of *presented*
    tokens after tau (up to t, or up to L when bidirectional), F = exp(-T_w / tau_f)."""
    phi_q, phi_k, v = _features(jax.random.PRNGKey(1), L=7, D=3, M=5, N=2)
    mask = jnp.array([True, False, True, True, False, True, True])
    params = af.NAParams(tau_f=1.5, t_write=0.7)
    F = np.exp(-0.7 / 1.5)
    got = _equilibrium(phi_q, phi_k, v, params, mask, causal)
    pq, pk, vv, m = map(np.asarray, (phi_q, phi_k, v, mask))
    L = len(m)
    for t in range(L):
        end = t if causal else L - 1
        w = np.array(
            [
                F ** m[tau + 1 : end + 1].sum() * (pq[t] @ pk[tau]) if (m[tau] and tau <= end) else 0.0
                for tau in range(L)
            ]
        )
        np.testing.assert_allclose(np.asarray(got[t]), w @ vv / w.sum(), rtol=1e-12)


# --------------------------------------------------------------------------------------------------------
# 2. Equilibrium -> softmax.


def test_equilibrium_tends_to_softmax():
    # Causal only: the bidirectional equilibrium is the same normalised sum (checked against a hand-written
    # reference in test_equilibrium_with_forgetting_is_decayed_attention), and each M costs a compilation.
    causal = True
    L, D, N = 8, 4, 4
    kq, kk, kv, kf = jax.random.split(jax.random.PRNGKey(2), 4)
    # Moderate norms |q| = |k| = 0.8: the estimator's variance grows like exp(|q + k|^2).
    q = 0.8 * _unit(jax.random.normal(kq, (L, D)))
    k = 0.8 * _unit(jax.random.normal(kk, (L, D)))
    v = jax.random.normal(kv, (L, N))
    ref = af.softmax_attention(q, k, v, causal=causal)

    @functools.partial(jax.jit, static_argnums=1)
    def errors(keys, M):
        def one(key):
            fm = af.PositiveRandomFeatures(D, M, key=key)
            x = af.na_attention(fm(q), fm(k), v, af.NAParams(), causal=causal, mode="equilibrium")
            return jnp.linalg.norm(x - ref) / jnp.linalg.norm(ref)

        return jax.vmap(one)(keys)

    Ms = np.array([256, 1024, 4096, 16384])
    errs = np.array([float(jnp.mean(errors(jax.random.split(kf, 8), int(M)))) for M in Ms])
    slope = np.polyfit(np.log(Ms), np.log(errs), 1)[0]
    assert -0.75 < slope < -0.25, (slope, errs)
    assert errs[-1] < 0.03, errs


# --------------------------------------------------------------------------------------------------------
# 3. Full state == reduced state.

L_, M_, N_, D_ = 5, 6, 3, 3
TIGHT_FULL = dict(solver=diffrax.Tsit5(), stepsize_controller=diffrax.PIDController(rtol=1e-11, atol=1e-13))
TIGHT_REDUCED = dict(solver=diffrax.Tsit5(), stepsize_controller=diffrax.PIDController(rtol=1e-12, atol=1e-14))
MASK = np.array([True, True, False, True, True])


@pytest.fixture(scope="module")
def small_data():
    return _features(jax.random.PRNGKey(3), L=L_, D=D_, M=M_, N=N_)


def _small_params(tau_f):
    # Not stiff, so that explicit Tsit5 at tight tolerances is affordable; still far from equilibrium
    # (tau_n, tau_s comparable with the windows), so the test compares genuinely transient dynamics.
    return af.NAParams(tau_n=0.05, tau_s=0.05, tau_p=1.0, t_write=1.0, t_read=1.0, tau_f=tau_f)


@functools.partial(jax.jit, static_argnames=("causal",))
def _full(phi_q, phi_k, v, params, mask, causal):
    return af.na_attention(phi_q, phi_k, v, params, causal=causal, mask=mask, state="full", **TIGHT_FULL)


@functools.partial(jax.jit, static_argnames=("causal",))
def _reduced_tight(phi_q, phi_k, v, params, mask, causal):
    return af.na_attention(phi_q, phi_k, v, params, causal=causal, mask=mask, **TIGHT_REDUCED)


@functools.partial(jax.jit, static_argnames=("causal", "read_steps"))
def _reduced_magnus(phi_q, phi_k, v, params, mask, causal, read_steps=16):
    return af.na_attention(phi_q, phi_k, v, params, causal=causal, mask=mask, read_steps=read_steps)


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize(
    "tau_f, causal", [(None, True), (2.0, True), (2.0, False)], ids=["noforget-causal", "forget-causal", "forget-bidir"]
)
def test_full_state_equals_reduced_state(small_data, tau_f, causal, masked):
    phi_q, phi_k, v = small_data
    mask = jnp.asarray(MASK if masked else np.ones(L_, bool))
    params = _small_params(tau_f)
    full = _full(phi_q, phi_k, v, params, mask, causal)
    reduced = _reduced_tight(phi_q, phi_k, v, params, mask, causal)
    assert float(jnp.max(jnp.abs(reduced))) > 0.1  # a non-trivial output
    np.testing.assert_allclose(np.asarray(full), np.asarray(reduced), rtol=0, atol=1e-8)


def test_default_magnus_read_is_second_order(small_data):
    phi_q, phi_k, v = small_data
    causal = True
    mask = jnp.asarray(MASK)
    params = _small_params(2.0)
    ref = _reduced_tight(phi_q, phi_k, v, params, mask, causal)
    scale = float(jnp.max(jnp.abs(ref)))
    default_err = float(jnp.max(jnp.abs(_reduced_magnus(phi_q, phi_k, v, params, mask, causal) - ref)))
    assert default_err < 1e-4 * scale
    # Doubling the steps from the default: the error falls by about 2^2 (measured order 2.0 on this data; the
    # 8 -> 16 -> 32 sequence gives 2.3, 2.0). Two points keep the test to one extra compilation.
    err_32 = float(jnp.max(jnp.abs(_reduced_magnus(phi_q, phi_k, v, params, mask, causal, 32) - ref)))
    assert err_32 < default_err
    order = np.log2(default_err / err_32)
    assert 1.6 < order < 2.6, (order, default_err, err_32)


# --------------------------------------------------------------------------------------------------------
# 4. Calcium during a read.


def test_calcium_conserved_and_synchronises(small_data):
    phi_q, phi_k, v = small_data
    tau_p = 36.0  # N M / tau_p = 0.5 per unit time: slow enough to follow over the read
    params = af.NAParams(tau_n=0.05, tau_s=0.05, tau_p=tau_p, t_write=1.0, t_read=10.0)
    traj = af.read_trajectory(phi_q, phi_k, v, params, index=2, state="full", num_points=64, solver=diffrax.Tsit5())
    p = np.asarray(traj.p).reshape(len(traj.t), -1)
    total = p.sum(axis=1)
    assert total[0] > 1.0
    np.testing.assert_allclose(total, total[0], rtol=0, atol=1e-10)
    t = np.asarray(traj.t)
    # Every process relaxes to the conserved mean: p_ij(t) = p_bar + (p_ij(0) - p_bar) exp(-N M t / tau_p).
    p_bar = total[0] / p.shape[1]
    expected = p_bar + (p[0] - p_bar) * np.exp(-N_ * M_ / tau_p * t)[:, None]
    np.testing.assert_allclose(p, expected, rtol=0, atol=1e-6 * p_bar)
    spread = p.std(axis=1)
    keep = spread > 1e-6 * spread[0]
    assert keep.sum() > 20
    slope = np.polyfit(t[keep], np.log(spread[keep]), 1)[0]
    np.testing.assert_allclose(slope, -N_ * M_ / tau_p, rtol=1e-3)


# --------------------------------------------------------------------------------------------------------
# 5. Causality.


def _perturb_after(data, t0, key):
    """Change the queries, keys and values of every token after t0."""
    later = (jnp.arange(L_) > t0)[:, None]
    k1, k2, k3 = jax.random.split(key, 3)
    phi_q, phi_k, v = data
    phi_q = jnp.where(later, phi_q * jnp.exp(jax.random.normal(k1, phi_q.shape)), phi_q)
    phi_k = jnp.where(later, phi_k * jnp.exp(jax.random.normal(k2, phi_k.shape)), phi_k)
    v = jnp.where(later, v + jax.random.normal(k3, v.shape), v)
    return phi_q, phi_k, v


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
@pytest.mark.parametrize("kind", ["equilibrium", "ode-reduced", "ode-full"])
def test_causality(small_data, kind, causal):
    t0 = 2
    other = _perturb_after(small_data, t0, jax.random.PRNGKey(4))
    params = _small_params(2.0)  # shares the compiled solves of the tests above
    mask = jnp.ones(L_, bool)

    def run(data):
        if kind == "equilibrium":
            return _equilibrium(*data, params, mask, causal)
        if kind == "ode-reduced":
            return _reduced_magnus(*data, params, mask, causal)
        return _full(*data, params, mask, causal)

    before, after = np.asarray(run(small_data)), np.asarray(run(other))
    assert np.max(np.abs(before[t0 + 1 :] - after[t0 + 1 :])) > 1e-3  # the perturbation matters
    change = np.max(np.abs(before[: t0 + 1] - after[: t0 + 1]))
    if causal:
        assert change < 1e-12
    else:
        assert change > 1e-3


def test_decayed_recurrence_of_underflowing_factors_has_finite_gradients():
    """Fast neurons (T_w / tau_n = 1000) make the write's relaxation factor e^{-1000} underflow float32; the
    recurrence takes its log, so the state is the last input alone and the gradient (e.g. into tau_n when it is
    fitted) is finite: d y_t / d log a_t = a_t y_{t-1} = 0, d y_t / d b_t = 1."""
    from astroformer._solvers._linear import decayed_recurrence

    log_a = jnp.full((6,), -1000.0, jnp.float32)
    b = jnp.arange(1.0, 13.0, dtype=jnp.float32).reshape(6, 2)
    np.testing.assert_array_equal(decayed_recurrence(log_a, b), b)
    grad_log_a, grad_b = jax.grad(lambda la, bb: jnp.sum(decayed_recurrence(la, bb)), argnums=(0, 1))(log_a, b)
    np.testing.assert_array_equal(grad_log_a, np.zeros(6))
    np.testing.assert_array_equal(grad_b, np.ones((6, 2)))


def test_linear_recurrence_with_per_token_factor_matches_loop():
    """The recurrences of the write (window-start states, astrocyte weights) take one factor per token, (L, 1),
    broadcast over the features: the associative scan equals the sequential y_t = a_t y_{t-1} + b_t."""
    from astroformer._head._equations import window_start_states
    from astroformer._solvers._linear import linear_recurrence

    rng = np.random.default_rng(0)
    L, K = 37, 5
    a = rng.uniform(0.2, 1.0, (L, 1))
    b = rng.normal(size=(L, K))
    y, expected = np.zeros(K), []
    for t in range(L):
        y = a[t] * y + b[t]
        expected.append(y)
    np.testing.assert_allclose(linear_recurrence(jnp.asarray(a), jnp.asarray(b)), np.array(expected), rtol=1e-12)
    np.testing.assert_allclose(
        linear_recurrence(jnp.asarray(np.broadcast_to(a, (L, K))), jnp.asarray(b)), np.array(expected), rtol=1e-12
    )
    # one log factor per step: the dense (L, L) form (short sequences, every chunk) and the scan (long ones)
    from astroformer._solvers._linear import DENSE_RECURRENCE, decayed_recurrence

    np.testing.assert_allclose(decayed_recurrence(jnp.log(jnp.asarray(a[:, 0])), jnp.asarray(b)), expected, rtol=1e-12)
    reps = -(-(DENSE_RECURRENCE + 1) // L)  # longer than the dense form's limit: the associative scan
    a_long, b_long = np.tile(a, (reps, 1)), np.tile(b, (reps, 1))
    y, long_expected = np.zeros(K), []
    for t in range(len(b_long)):
        y = a_long[t] * y + b_long[t]
        long_expected.append(y)
    np.testing.assert_allclose(
        decayed_recurrence(jnp.log(jnp.asarray(a_long[:, 0])), jnp.asarray(b_long)), long_expected, rtol=1e-11
    )
    # window starts: y_t = E y_{t-1} + (1 - E) target_{t-1} over presented tokens only, from rest
    present = rng.uniform(size=L) > 0.3
    relax = 0.4
    y, starts = np.zeros(K), []
    for t in range(L):
        starts.append(y)
        if present[t]:
            y = relax * y + (1 - relax) * b[t]
    np.testing.assert_allclose(
        window_start_states(jnp.asarray(b), jnp.asarray(present), relax), np.array(starts), rtol=1e-12, atol=1e-15
    )
