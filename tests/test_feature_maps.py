"""Feature maps (PRF, orthogonal, OPRF, learned): unbiasedness, positivity, gradients, variance ordering,
selection by name, and distillation onto softmax attention weights."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import astroformer as af
from astroformer._attention_weights import (
    kernel_weights,
    log_astrocyte_response,
    response_excess,
    softmax_weights,
    total_variation,
)
from astroformer._features._oprf import log_relative_second_moment

RANDOM_MAPS = {
    "prf": lambda D, M, key: af.PositiveRandomFeatures(D, M, key=key),
    "orthogonal": lambda D, M, key: af.PositiveRandomFeatures(D, M, orthogonal=True, key=key),
    "oprf": lambda D, M, key: af.OptimalPositiveRandomFeatures(D, M, s=4.0, key=key),
    "oprf-positive-A": lambda D, M, key: af.OptimalPositiveRandomFeatures(D, M, A=0.05, key=key),
    "orthogonal-oprf": lambda D, M, key: af.OptimalPositiveRandomFeatures(D, M, A=-0.3, orthogonal=True, key=key),
    # Learned feature neurons at their initialisation: antithetic (mirrored) and plain positive random features.
    "learned-at-init": lambda D, M, key: af.LearnedFeatures(D, M, key=key),
    "learned-unmirrored-at-init": lambda D, M, key: af.LearnedFeatures(D, M, mirrored=False, key=key),
}


def _estimates(make, x, y, M, seeds):
    """phi(x).phi(y) for `seeds` independent draws of the map, (seeds,)."""
    keys = jax.random.split(jax.random.PRNGKey(42), seeds)
    return jax.vmap(lambda key: jnp.dot(make(x.shape[-1], M, key)(x), make(x.shape[-1], M, key)(y)))(keys)


@pytest.mark.parametrize("name", list(RANDOM_MAPS))
def test_random_maps_are_unbiased_for_exp_qk(name):
    # Moderate inputs (s = |x+y|^2 ~ 1.3) so that the variance is finite and the mean's error is estimable.
    x = jnp.array([0.5, -0.2, 0.3, 0.1])
    y = jnp.array([0.3, 0.4, 0.2, -0.3])
    est = np.asarray(_estimates(RANDOM_MAPS[name], x, y, 8, 2000), dtype=np.float64)
    exact = math.exp(float(x @ y))
    stderr = est.std() / math.sqrt(est.size)
    assert abs(est.mean() - exact) < 5 * stderr, (est.mean(), exact, stderr)
    assert stderr < 0.02 * exact  # the check is sharp: 5 standard errors is < 10% of the value


def _all_maps(D, M, key):
    maps = {name: make(D, M, key) for name, make in RANDOM_MAPS.items()}
    maps["learned"] = af.LearnedFeatures(D, M, key=key)
    maps["learned-unmirrored"] = eqx.tree_at(
        lambda m: m.b, af.LearnedFeatures(D, M, mirrored=False, key=key), jnp.linspace(-1.0, 1.0, M)
    )
    envelope = af.LearnedFeatures(D, M, envelope="learned", key=key)  # moved off its initial (fixed) envelope
    maps["learned-envelope"] = eqx.tree_at(
        lambda m: (m.mu, m.log_gamma), envelope, (jnp.linspace(-0.5, 0.5, D), jnp.linspace(-0.7, 0.4, D))
    )
    return maps


@pytest.mark.parametrize("norm", [30.0, 1e3])
def test_rates_nonnegative_and_finite_for_large_inputs(norm, getkey):
    u = jax.random.normal(getkey(), (5, 6))
    u = norm * u / jnp.linalg.norm(u, axis=-1, keepdims=True)
    for name, fm in _all_maps(6, 16, getkey()).items():
        rates = fm(u)
        assert fm.nonnegative
        assert rates.shape == (5, 16)
        assert bool(jnp.all(jnp.isfinite(rates))) and bool(jnp.all(rates >= 0)), name


def test_gradients_match_finite_differences(x64):
    # Directional derivatives of sum(c * phi(u)) along a random direction: autodiff against central differences.
    u = 0.5 * jax.random.normal(jax.random.PRNGKey(3), (3, 4))
    c = jax.random.normal(jax.random.PRNGKey(4), (3, 8))
    du = jax.random.normal(jax.random.PRNGKey(6), (3, 4))
    eps = 1e-6
    maps = _all_maps(4, 8, jax.random.PRNGKey(5))
    for name, fm in maps.items():
        assert fm(u).dtype == jnp.float64, name
        f = jax.jit(lambda u, fm=fm: jnp.sum(c * fm(u)))
        auto = jnp.sum(jax.grad(f)(u) * du)
        fd = (f(u + eps * du) - f(u - eps * du)) / (2 * eps)
        assert jnp.allclose(auto, fd, rtol=1e-6, atol=1e-9), (name, auto, fd)
    # ... and with respect to every trainable leaf of the learned maps (tuning, and the learned envelope).
    for name in ("learned", "learned-envelope", "learned-unmirrored"):
        learned = maps[name]
        params, rest = eqx.partition(learned, eqx.is_array)
        g = jax.jit(lambda p, rest=rest: jnp.sum(c * eqx.combine(p, rest)(u)))
        grads, treedef = jax.tree.flatten(jax.grad(g)(params))
        leaves = jax.tree.leaves(params)
        assert len(leaves) == (4 if name == "learned-envelope" else 2)
        for i, (leaf, grad) in enumerate(zip(leaves, grads)):  # one leaf at a time: a swapped gradient fails
            d = jax.random.normal(jax.random.PRNGKey(10 + i), leaf.shape)
            shifted = [
                jax.tree.unflatten(treedef, [x + sign * eps * d if j == i else x for j, x in enumerate(leaves)])
                for sign in (1, -1)
            ]
            fd = (g(shifted[0]) - g(shifted[1])) / (2 * eps)
            auto = jnp.sum(grad * d)
            assert jnp.allclose(auto, fd, rtol=1e-6, atol=1e-9), (name, i, auto, fd)


def test_learned_envelope_starts_as_the_fixed_one_and_its_rates_stay_bounded(getkey):
    D, M = 5, 12
    key = getkey()
    fixed = af.LearnedFeatures(D, M, key=key)
    learned = af.LearnedFeatures(D, M, envelope="learned", key=key)
    assert (fixed.envelope, learned.envelope) == ("fixed", "learned")
    u = 2.0 * jax.random.normal(getkey(), (7, D))
    assert jnp.array_equal(fixed(u), learned(u))  # same tuning, and the envelope starts at mu = 0, gamma = 1
    # The docstring's bound, M^{-1/2} exp(|b_j| +- w_j.mu + sum_d w_jd^2 / (2 gamma_d)), against the rates at many
    # inputs (some at the maximiser of each neuron, mu +- w_j / gamma, where the bound is attained).
    moved = eqx.tree_at(
        lambda m: (m.b, m.mu, m.log_gamma),
        learned,
        (jnp.linspace(-1.0, 1.0, M // 2), jnp.linspace(-0.3, 0.6, D), jnp.linspace(-1.0, 1.0, D)),
    )
    gamma = jnp.exp(moved.log_gamma)
    quad = 0.5 * jnp.sum(moved.W**2 / gamma, axis=-1)
    bound = jnp.concatenate(
        [jnp.exp(moved.b + moved.W @ moved.mu + quad), jnp.exp(-moved.b - moved.W @ moved.mu + quad)]
    )
    bound = bound / math.sqrt(M)
    argmax = jnp.concatenate([moved.mu + moved.W / gamma, moved.mu - moved.W / gamma])  # neuron j's best input
    inputs = jnp.concatenate([3.0 * jax.random.normal(getkey(), (200, D)), argmax])
    rates = moved(inputs)
    assert bool(jnp.all(rates <= bound * (1 + 1e-5)))
    assert jnp.allclose(jnp.diagonal(rates[200:]), bound, rtol=1e-5)  # attained
    assert bool(jnp.all(jnp.isfinite(moved(1e4 * inputs))))


@pytest.mark.bad_input
def test_learned_features_reject_an_unknown_envelope(getkey):
    with pytest.raises(ValueError, match="envelope: expected 'fixed' or 'learned', got 'gaussian'"):
        af.LearnedFeatures(5, 12, envelope="gaussian", key=getkey())
    with pytest.raises(TypeError, match="mirrored: expected True or False, got 'no'"):
        af.LearnedFeatures(5, 12, mirrored="no", key=getkey())


def test_unmirrored_neurons_have_their_own_directions(getkey):
    # Mirrored: neuron j + M/2 is neuron j with the opposite tuning, so rate_j * rate_{j+M/2} is the envelope squared
    # whatever the tuning. Unmirrored: M directions (W is (M, D)), any M, and no such constraint.
    D, M = 4, 7
    u = jax.random.normal(getkey(), (3, D))
    free = af.LearnedFeatures(D, M, mirrored=False, key=getkey())
    assert free.W.shape == (M, D) and free.b.shape == (M,) and free(u).shape == (3, M)
    expected = jnp.exp(u @ free.W.T - 0.5 * jnp.sum(u * u, -1, keepdims=True)) / math.sqrt(M)
    assert jnp.allclose(free(u), expected, rtol=1e-6)
    paired = af.LearnedFeatures(D, 8, key=getkey())
    envelope_sq = jnp.exp(-jnp.sum(u * u, -1, keepdims=True)) / 8
    assert jnp.allclose(paired(u)[:, :4] * paired(u)[:, 4:], jnp.broadcast_to(envelope_sq, (3, 4)), rtol=1e-5)


def test_optimal_A_minimises_the_closed_form_second_moment():
    for d, s in [(16, 8.0), (16, 24.0), (4, 1.0)]:
        A = af.optimal_A(s, d)
        grid = np.linspace(-5.0, 0.12, 200001)
        best = grid[np.argmin(np.asarray(log_relative_second_moment(grid, s, d)))]
        assert abs(A - best) < 1e-3, (d, s, A, best)
    assert af.optimal_A(0.0, 16) == 0.0
    assert abs(af.optimal_A(8.0, 16) + 0.177) < 1e-3  # the value quoted in engineering-notes (A ~ -0.18)
    with pytest.raises(ValueError, match="A: expected a finite number below 1/8"):
        af.OptimalPositiveRandomFeatures(4, 8, A=0.2, key=jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="at most one"):
        af.OptimalPositiveRandomFeatures(4, 8, A=-0.1, s=2.0, key=jax.random.PRNGKey(0))


def test_variance_ordering_prf_orthogonal_oprf_on_sharp_inputs():
    # Fixed inputs: D = 8, x = y, |x|^2 = 1, so s = |x+y|^2 = 4 and x.y = 1; M = 32 features, 1000 draws.
    # The estimators are heavy-tailed, so compare the median of |log(estimate / e^{x.y})| over draws.
    D, M, s = 8, 32, 4.0
    x = jnp.full((D,), math.sqrt(1.0 / D))
    exact = math.e
    makers = {
        "prf": RANDOM_MAPS["prf"],
        "orthogonal": RANDOM_MAPS["orthogonal"],
        "oprf": lambda D, M, key: af.OptimalPositiveRandomFeatures(D, M, s=s, key=key),
    }
    # Vmapped op by op, as the unbiasedness test runs: this test's one jitted program of constants hung inside XLA
    # (compile or run) on CI, twice at the same place; not reproduced on another machine of the same size.
    ratio = {name: np.asarray(_estimates(make, x, x, M, 1000)) / exact for name, make in makers.items()}
    med = {name: float(np.median(np.abs(np.log(r)))) for name, r in ratio.items()}
    assert med["prf"] > med["orthogonal"] > med["oprf"], med
    # Closed forms of the relative variance, (R - 1)/M: FAVOR+ (e^s - 1)/M against OPRF's; the measured variances
    # agree with them within a factor 2 in this moderate regime.
    var_prf = math.expm1(s) / M
    var_oprf = math.expm1(float(log_relative_second_moment(af.optimal_A(s, D), s, D))) / M
    assert var_prf / var_oprf > 4
    assert 0.5 < float(np.var(ratio["prf"])) / var_prf < 2
    assert 0.5 < float(np.var(ratio["oprf"])) / var_oprf < 2


def test_fit_A_prefers_negative_A_for_sharp_heads(getkey):
    q = 1.5 * jax.random.normal(getkey(), (32, 8)) / 8**0.25
    k = 1.5 * jax.random.normal(getkey(), (32, 8)) / 8**0.25
    A = af.fit_A(q, k)
    assert A < -0.05
    assert af.fit_A(jnp.zeros((4, 8)), jnp.zeros((4, 8))) == 0.0  # s = 0: FAVOR+ is optimal


def test_feature_maps_by_name_in_layers_config_and_filter(getkey):
    from astroformer.training import TrainConfig, trainable_filter

    x = jax.random.normal(getkey(), (12, 16))
    for name in af.FEATURE_MAPS:
        layer = af.make_attention("na-equilibrium", 16, 2, num_features=8, feature_map=name, key=getkey())
        if name in ("oprf", "learned", "learned-envelope"):  # a shared map runs like the default; per-head ones are new
            out = layer(x)
            assert out.shape == (12, 16) and bool(jnp.all(jnp.isfinite(out))), name
        spec = trainable_filter(layer)
        learned = name.startswith("learned")
        W_spec = spec.feature_map.maps.W if learned else spec.feature_map.W
        assert bool(W_spec) == learned, name
        if name == "learned-envelope":
            assert spec.feature_map.maps.mu and spec.feature_map.maps.log_gamma
    learned = af.make_attention("na-equilibrium", 16, 2, num_features=8, feature_map="learned", key=getkey())
    assert isinstance(learned.feature_map, af.HeadwiseFeatures) and learned.feature_map.maps.W.shape == (2, 4, 8)
    free = af.make_attention("na-equilibrium", 16, 2, num_features=8, feature_map="learned-unmirrored", key=getkey())
    assert free.feature_map.maps.W.shape == (2, 8, 8) and not free.feature_map.maps.mirrored
    with pytest.raises(ValueError, match="feature_map: expected one of"):
        af.make_attention("na-ode", 16, 2, feature_map="fourier", key=getkey())
    with pytest.raises(ValueError, match="`feature_map` must be one of"):
        TrainConfig(feature_map="fourier")
    assert TrainConfig(feature_map="oprf").feature_map == "oprf"
    with pytest.raises(ValueError, match="num_features: LearnedFeatures needs an even M"):
        af.LearnedFeatures(4, 7, key=getkey())


def test_headwise_maps_give_each_head_its_own_tuning(getkey):
    maps = [af.LearnedFeatures(4, 8, key=getkey()) for _ in range(3)]
    hw = af.HeadwiseFeatures.stack(maps)
    u = jax.random.normal(getkey(), (3, 5, 4))
    expected = jnp.stack([m(u[h]) for h, m in enumerate(maps)])
    assert jnp.allclose(hw(u), expected, rtol=1e-6)
    assert jnp.allclose(hw.for_head(jnp.int32(2))(u[2]), maps[2](u[2]), rtol=1e-6)
    with pytest.raises(ValueError, match="leading axis of num_heads=3"):
        hw(u[:2])


@pytest.mark.parametrize("envelope, mirrored", [("fixed", True), ("learned", True), ("learned", False)])
def test_distillation_lowers_the_attention_error(getkey, envelope, mirrored):
    from astroformer.training._distill import distill_heads

    H, B, L, D = 2, 4, 16, 4
    q = 1.2 * jax.random.normal(getkey(), (H, B, L, D))
    k = 1.2 * jax.random.normal(getkey(), (H, B, L, D))
    maps, first, last = distill_heads(
        q, k, 16, steps=150, learning_rate=0.05, envelope=envelope, mirrored=mirrored, key=getkey()
    )
    assert maps.maps.envelope == envelope and maps.maps.mirrored == mirrored
    initial = af.HeadwiseFeatures.build(
        lambda key: af.LearnedFeatures(D, 16, mirrored=mirrored, key=key), H, key=getkey()
    )

    def tv(hw):
        out = []
        for h in range(H):
            fm = hw.for_head(h)
            a = jax.vmap(lambda qq, kk, fm=fm: kernel_weights(fm(qq), fm(kk)))(q[h], k[h])
            out.append(total_variation(a, jax.vmap(softmax_weights)(q[h], k[h])))
        return float(jnp.median(jnp.stack(out)))

    assert bool(jnp.all(last < first))
    assert tv(maps) < 0.7 * tv(initial), (tv(maps), tv(initial))


@pytest.mark.parametrize("causal, masked", [(True, False), (False, True)])
def test_log_astrocyte_response_is_exact_where_the_response_overflows_float32(causal, masked):
    """log A_t = log sum_tau phi(q_t).phi(k_tau) in float32, for rates up to e^60 (finite) whose products reach
    e^120 (inf in float32), against the sum taken in float64 with NumPy; and the penalty response_excess is the
    mean over present queries of max(0, log A_t - cap)^2 from the same reference."""
    rng = np.random.default_rng(0)
    L, M = 12, 16
    log_q, log_k = rng.uniform(-20, 60, (L, M)), rng.uniform(-20, 60, (L, M))
    log_q[3] = -200.0  # a query whose rates all underflow: log A is log(tiny), not -inf or NaN
    mask = rng.random(L) > 0.3 if masked else None
    phi_q, phi_k = jnp.asarray(np.exp(log_q), jnp.float32), jnp.asarray(np.exp(log_k), jnp.float32)
    assert not np.isfinite(np.asarray(phi_q @ phi_k.T)).all()  # the direct float32 sum overflows
    got = np.asarray(
        log_astrocyte_response(phi_q, phi_k, causal=causal, mask=None if mask is None else jnp.asarray(mask))
    )
    allowed = np.tril(np.ones((L, L), bool)) if causal else np.ones((L, L), bool)
    if mask is not None:
        allowed &= mask[None, :]
    pair = log_q[:, None, :] + log_k[None, :, :]  # (L, L, M) in float64
    expected = np.log(np.sum(np.where(allowed[:, :, None], np.exp(pair - 100.0), 0.0), axis=(1, 2))) + 100.0
    rows = np.array([t for t in range(L) if t != 3 and allowed[t].any() and (mask is None or mask[t])])
    np.testing.assert_allclose(got[rows], expected[rows], rtol=2e-6)
    assert got[3] == pytest.approx(math.log(np.finfo(np.float32).tiny), rel=1e-6)
    # A query that sees only a tiny key, while a later key is huge: each key's own scale is factored out.
    one, keys = jnp.ones((2, 1)), jnp.asarray([[1e-30], [1e20]])
    np.testing.assert_allclose(np.asarray(kernel_weights(one, keys))[0], [1.0, 0.0])
    np.testing.assert_allclose(float(log_astrocyte_response(one, keys)[0]), math.log(1e-30), rtol=1e-6)
    cap = 70.0
    present = allowed.any(1) & (True if mask is None else mask)
    reference = np.where(present, np.maximum(got - cap, 0.0) ** 2, 0.0).sum() / present.sum()
    assert reference > 0
    np.testing.assert_allclose(
        float(response_excess(phi_q, phi_k, cap, causal=causal, mask=None if mask is None else jnp.asarray(mask))),
        reference,
        rtol=1e-5,
    )


def test_response_cap_keeps_the_fitted_rates_inside_a_ceiling(getkey):
    """Learned feature neurons started with every rate scaled by e^10 (astrocyte responses up to about e^24). The
    attention weights do not change under a common scale, and fitting them alone lets the responses drift further
    up (past e^30: the drift that overflowed float32 in distilled models); with `response_cap=15` the fit keeps
    every response under about e^15, and its attention-weight cross-entropy ends within 5% of the free fit's."""
    from astroformer._attention_weights import weights_cross_entropy
    from astroformer.fit import AttentionWeightsTarget, fit

    B, L, D, M = 4, 16, 4, 16
    q, k = 1.2 * jax.random.normal(getkey(), (B, L, D)), 1.2 * jax.random.normal(getkey(), (B, L, D))
    start = af.LearnedFeatures(D, M, mirrored=False, envelope="learned", key=getkey())
    start = eqx.tree_at(lambda m: m.b, start, start.b + 10.0)

    def worst_log_response(m):
        return float(jnp.max(jax.vmap(lambda a, b: log_astrocyte_response(m(a), m(b)))(q, k)))

    def weights_loss(m):
        return float(jnp.mean(jax.vmap(lambda a, b: weights_cross_entropy(m(a), m(b), a, b))(q, k)))

    free = ["W", "b", "mu", "log_gamma"]
    plain = fit(start, AttentionWeightsTarget(q, k), free, steps=1500, learning_rate=0.05).model
    capped = fit(start, AttentionWeightsTarget(q, k, response_cap=15.0), free, steps=1500, learning_rate=0.05).model
    assert worst_log_response(start) > 20 and worst_log_response(plain) > 28, worst_log_response(plain)
    assert worst_log_response(capped) < 15.5, worst_log_response(capped)
    assert weights_loss(capped) < 1.05 * weights_loss(plain), (weights_loss(capped), weights_loss(plain))
    with pytest.raises(ValueError, match="response_cap: expected None or a finite number, got nan"):
        AttentionWeightsTarget(q, k, response_cap=float("nan"))


@pytest.mark.slow
def test_distill_writes_a_run_that_eval_loads(tmp_path):
    from astroformer.cli import main
    from astroformer.training import TrainConfig, load_run, train
    from astroformer.training._distill import distill
    from astroformer.training.cli import register  # noqa: F401  (the CLI route exists)

    src = tmp_path / "softmax"
    config = TrainConfig(
        task="induction",
        task_kwargs={"vocab_size": 8, "seq_len": 16},
        attention="softmax",
        d_model=16,
        num_layers=1,
        num_heads=2,
        steps=3,
        warmup=1,
        batch_size=4,
        eval_every=3,
        eval_batches=1,
        checkpoint_every=0,
        run_dir=str(src),
    )
    train(config, progress=False)
    new_config, model, record = distill(
        src,
        tmp_path / "na",
        num_features=8,
        attention="na-ode",
        feature_map="learned-envelope",
        steps=20,
        batches=1,
        finetune_steps=2,
        finetune_target="teacher",
        finetune_projections=True,
        evaluate_model=False,
        log=lambda *_: None,
    )
    assert new_config.feature_map == "learned-envelope" and new_config.attention == "na-ode"
    assert record["finetune"]["target"] == "teacher" and record["finetune"]["projections"] is True
    ce = record["layers"][0]
    assert all(b < a for a, b in zip(ce["cross_entropy_initial"], ce["cross_entropy_final"]))
    _, _, teacher, _ = load_run(src)
    _, _, loaded, _ = load_run(tmp_path / "na")
    assert jnp.allclose(loaded.blocks[0].attention.feature_map.maps.W, model.blocks[0].attention.feature_map.maps.W)
    loaded_map, fitted_map = loaded.blocks[0].attention.feature_map.maps, model.blocks[0].attention.feature_map.maps
    assert jnp.allclose(loaded_map.log_gamma, fitted_map.log_gamma) and not jnp.allclose(fitted_map.log_gamma, 0.0)
    # The written na-ode run keeps the fine-tuned projections (not the teacher's).
    for name in ("query", "key", "value", "output"):
        got = getattr(loaded.blocks[0].attention, name).weight
        assert jnp.array_equal(got, getattr(model.blocks[0].attention, name).weight), name
        assert not jnp.array_equal(got, getattr(teacher.blocks[0].attention, name).weight), name
    assert main(["eval", "--run-dir", str(tmp_path / "na"), "--batches", "1"]) == 0
    assert main(["distill", "--run-dir", str(tmp_path / "na"), "--out", str(tmp_path / "x")]) == 2  # not softmax


def test_layer_qkv_sees_what_the_model_computes(getkey):
    """The queries, keys and values that distillation fits are those of the model's own forward pass: with a short
    convolution of the embeddings, softmax attention on `layer_qkv`'s first layer, through the output projection,
    equals the layer applied to the input written out here by hand (embedding, causal convolution as a loop,
    positions, layer norm)."""
    from astroformer.training import Transformer
    from astroformer.training._distill import layer_qkv

    model = Transformer(11, 8, attention="softmax", d_model=16, num_layers=1, num_heads=2, short_conv=3, key=getkey())
    model = eqx.tree_at(lambda m: m.conv, model, jax.random.normal(getkey(), model.conv.shape))
    tokens = jax.random.randint(getkey(), (2, 8), 0, 11)
    q, k, v = layer_qkv(model, tokens)[0]  # (H, B, L, D)
    e = np.asarray(model.embedding)[np.asarray(tokens)]
    w = np.asarray(model.conv)
    conv = np.zeros_like(e)
    for t in range(e.shape[1]):
        for j in range(w.shape[0]):
            if t - j >= 0:
                conv[:, t] += w[j] * e[:, t - j]
    x = jnp.asarray(conv + np.asarray(model.positions)[:8])
    block = model.blocks[0]
    expected = jax.vmap(lambda xb: block.attention(jax.vmap(block.norm1)(xb)))(x)
    causal = jnp.tril(jnp.ones((8, 8), bool))
    weights = jax.nn.softmax(jnp.where(causal, jnp.einsum("hbld,hbmd->hblm", q, k), -jnp.inf), axis=-1)
    heads = jnp.einsum("hblm,hbmd->bhld", weights, v)
    out = heads.transpose(0, 2, 1, 3).reshape(2, 8, 16) @ block.attention.output.weight.T + block.attention.output.bias
    np.testing.assert_allclose(np.asarray(out), np.asarray(expected), rtol=1e-4, atol=1e-5)


def test_transfer_copies_the_input_path(getkey):
    """The student gets the teacher's whole input path (embedding, short convolution, positions): its embedded
    input equals the teacher's."""
    from astroformer.training import Transformer
    from astroformer.training._distill import transfer

    sizes = dict(d_model=16, num_layers=1, num_heads=2, short_conv=2)
    teacher = Transformer(11, 8, attention="softmax", **sizes, key=getkey())
    teacher = eqx.tree_at(lambda m: m.conv, teacher, jax.random.normal(getkey(), teacher.conv.shape))
    student = transfer(teacher, Transformer(11, 8, attention="na-equilibrium", num_features=8, **sizes, key=getkey()))
    tokens = jax.random.randint(getkey(), (2, 8), 0, 11)
    np.testing.assert_array_equal(np.asarray(student.embed(tokens)), np.asarray(teacher.embed(tokens)))


def test_attention_cross_entropy_of_a_student_matches_numpy(getkey):
    """The fine-tuning's attention term: per layer and head, -1/L sum_t sum_{tau<=t} a_sm log a_phi from the
    queries and keys written out with NumPy (softmax of q.k against the normalised phi(q).phi(k)), averaged."""
    from astroformer.training import Transformer
    from astroformer.training._distill import attention_cross_entropy, layer_qkv

    H, L = 2, 8
    student = Transformer(
        11,
        L,
        attention="na-equilibrium",
        num_features=8,
        d_model=16,
        num_layers=2,
        num_heads=H,
        attention_kwargs=dict(feature_map="learned"),
        key=getkey(),
    )
    tokens = jax.random.randint(getkey(), (3, L), 0, 11)
    got = float(attention_cross_entropy(student, tokens))
    causal = np.tril(np.ones((L, L), bool))
    losses = []
    for block, (q, k, _) in zip(student.blocks, layer_qkv(student, tokens)):
        fm = block.attention.feature_map
        for h in range(H):
            for b in range(tokens.shape[0]):
                qq, kk = np.asarray(q[h, b], np.float64), np.asarray(k[h, b], np.float64)
                logits = np.where(causal, qq @ kk.T, -np.inf)
                sm = np.exp(logits - logits.max(1, keepdims=True))
                sm /= sm.sum(1, keepdims=True)
                kern = np.where(causal, np.asarray(fm.for_head(h)(q[h, b]) @ fm.for_head(h)(k[h, b]).T, np.float64), 0)
                a = kern / kern.sum(1, keepdims=True)
                losses.append(-np.sum(np.where(causal, sm * np.log(np.where(causal, a, 1.0)), 0.0)) / L)
    np.testing.assert_allclose(got, np.mean(losses), rtol=1e-4)


def _learned_student(task, key, feature_map="learned"):
    """A one-layer, two-head na-equilibrium model with learned feature neurons (M = 8) for `task`."""
    from astroformer.training import Transformer

    return Transformer(
        task.vocab_size,
        16,
        attention="na-equilibrium",
        num_features=8,
        d_model=16,
        num_layers=1,
        num_heads=2,
        attention_kwargs=dict(feature_map=feature_map),
        key=key,
    )


def test_finetuning_with_the_attention_term_keeps_the_heads_closer_to_softmax(getkey):
    """Fine-tuning the feature neurons on the next-token loss alone is free to move their attention weights away
    from softmax's; with the attention term (weight 10) the student's attention cross-entropy ends lower."""
    from astroformer.tasks import get_task
    from astroformer.training._distill import _finetune_features, attention_cross_entropy

    task = get_task("induction", vocab_size=8, seq_len=16)
    student = _learned_student(task, getkey())
    tokens = jnp.asarray(task.batch("train", 8, seed=1).inputs)
    before = float(attention_cross_entropy(student, tokens))
    plain, _, _ = _finetune_features(student, task, 40, 3e-2, 8, 0)
    joint, _, _ = _finetune_features(student, task, 40, 3e-2, 8, 0, attention_weight=10.0)
    ce_plain, ce_joint = (float(attention_cross_entropy(m, tokens)) for m in (plain, joint))
    assert ce_joint < before and ce_joint < ce_plain, (before, ce_plain, ce_joint)


def test_finetuning_frees_what_it_is_asked_to_and_distils_the_teachers_outputs(getkey):
    """The fine-tuning trains the feature neurons, and the attention's projections only with `projections`; every
    other weight stays, unless `everything` frees them all. With a teacher its loss is the cross-entropy against
    the teacher's next-token distribution (checked at the first step against NumPy from both models' logits)."""
    from astroformer.tasks import get_task
    from astroformer.training import Transformer
    from astroformer.training._distill import _finetune_features

    task = get_task("induction", vocab_size=8, seq_len=16)
    sizes = dict(d_model=16, num_layers=1, num_heads=2)
    teacher = Transformer(task.vocab_size, 16, attention="softmax", **sizes, key=getkey())
    student = Transformer(
        task.vocab_size,
        16,
        attention="na-equilibrium",
        num_features=8,
        **sizes,
        attention_kwargs=dict(feature_map="learned"),
        key=getkey(),
    )
    plain, _, _ = _finetune_features(student, task, 2, 1e-2, 4, 0)
    tuned, losses, report = _finetune_features(student, task, 2, 1e-2, 4, 0, teacher=teacher, projections=True)
    assert report == {"stopped": None, "skipped_steps": 0} and len(losses) == 2

    def same(a, b):
        return all(bool(jnp.array_equal(x, y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

    a0, ap, at = (m.blocks[0].attention for m in (student, plain, tuned))
    assert not same(ap.feature_map, a0.feature_map) and not same(at.feature_map, a0.feature_map)
    assert same(ap.query, a0.query) and same(ap.key, a0.key)
    assert all(not same(getattr(at, n), getattr(a0, n)) for n in ("query", "key", "value", "output"))
    assert same(ap.value, a0.value) and same(ap.output, a0.output)
    for m in (plain, tuned):
        assert same(m.blocks[0].mlp_in, student.blocks[0].mlp_in) and same(m.blocks[0].norm1, student.blocks[0].norm1)
        assert same(m.embedding, student.embedding)
    whole, _, _ = _finetune_features(student, task, 2, 1e-2, 4, 0, teacher=teacher, everything=True)
    assert not same(whole.blocks[0].mlp_in, student.blocks[0].mlp_in) and not same(whole.embedding, student.embedding)
    assert not same(whole.blocks[0].attention.query, a0.query)
    batch = task.batch("train", 4, seed=50_000)
    log_p = np.asarray(jax.nn.log_softmax(student.batched(jnp.asarray(batch.inputs)), axis=-1), np.float64)
    target = np.asarray(jax.nn.softmax(teacher.batched(jnp.asarray(batch.inputs)), axis=-1), np.float64)
    mask = np.asarray(batch.mask, np.float64)
    expected = -np.sum(np.sum(target * log_p, axis=-1) * mask) / mask.sum()
    np.testing.assert_allclose(losses[0], expected, rtol=1e-5)


def test_finetuning_with_a_response_cap_brings_the_responses_under_it(getkey):
    """Fine-tuning a student (unmirrored learned features) whose rates were all scaled by e^12, so that its
    astrocyte responses reach about e^30: with `response_cap=10` its penalty (recomputed here from the returned
    model) falls from over 50 to under 1% of that; without the cap, only what the next-token loss happens to do
    to the scale, and the penalty stays ten times higher at least. The penalty's gradient reaches the query
    projection (queries that grow are one way to overflow); the attention cross-entropy's does not."""
    from astroformer.tasks import get_task
    from astroformer.training._distill import _finetune_features, _head_terms

    task = get_task("induction", vocab_size=8, seq_len=16)
    student = _learned_student(task, getkey(), "learned-envelope-unmirrored")
    student = eqx.tree_at(
        lambda m: m.blocks[0].attention.feature_map.maps.b, student, student.blocks[0].attention.feature_map.maps.b + 12
    )
    tokens = jnp.asarray(task.batch("train", 8, seed=1).inputs)
    before = float(_head_terms(student, tokens, response_cap=10.0)[1])
    capped, _, _ = _finetune_features(student, task, 40, 0.1, 8, 0, response_cap=10.0)
    plain, _, _ = _finetune_features(student, task, 40, 0.1, 8, 0)
    after, untouched = (float(_head_terms(m, tokens, response_cap=10.0)[1]) for m in (capped, plain))
    assert before > 50 and after < 0.01 * before and after < 0.1 * untouched, (before, after, untouched)

    # The penalty reaches the queries and keys (the query projection's gradient); the cross-entropy does not.
    def query_gradient(which):  # 0: the cross-entropy, 1: the penalty
        grads = eqx.filter_grad(lambda m: _head_terms(m, tokens, response_cap=10.0)[which])(student)
        return grads.blocks[0].attention.query.weight

    assert bool(jnp.any(query_gradient(1) != 0)) and bool(jnp.all(query_gradient(0) == 0))


def test_finetuning_that_overflows_stops_and_keeps_the_last_finite_model(getkey):
    """A rate far too high with the projections free makes the learned feature rates overflow float32 at the second
    step (the model's runtime check raises). The fine-tuning stops there, names the failed check, and returns the
    parameters whose loss was the last finite one: recomputed, that loss comes back."""
    from astroformer.tasks import get_task
    from astroformer.training._distill import _finetune_features
    from astroformer.training._train import loss_fn

    task = get_task("induction", vocab_size=8, seq_len=16)
    student = _learned_student(task, getkey())
    kept, losses, report = _finetune_features(student, task, 4, 1e3, 4, 0, projections=True)
    stopped = report["stopped"]
    assert stopped is not None and stopped["step"] == len(losses) + 1 and 1 <= len(losses) < 4, (losses, report)
    # the model's own input check (phi_q or phi_k), not the optimiser's skip limit
    assert stopped["reason"].startswith("phi_") and "expected finite values" in stopped["reason"], stopped
    last = float(loss_fn(kept, task.batch("train", 4, seed=50_000 + len(losses) - 1)))
    np.testing.assert_allclose(last, losses[-1], rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            dict(finetune_target="labels", finetune_steps=1),
            "finetune_target: expected one of 'next-token', 'teacher', got 'labels'",
        ),
        (
            dict(finetune_attention_weight=float("inf"), finetune_steps=1),
            "finetune_attention_weight: expected a finite",
        ),
        (dict(finetune_attention_weight=-1.0, finetune_steps=1), "finetune_attention_weight: expected a finite"),
        (dict(finetune_steps=-1), "finetune_steps: expected an integer >= 0"),
        (dict(finetune_target="teacher"), "finetune_target: only used by the fine-tuning"),
        (dict(finetune_projections=True), "finetune_projections: only used by the fine-tuning"),
        (dict(finetune_all=True), "finetune_all: only used by the fine-tuning"),
        (
            dict(feature_map="prf"),
            "feature_map: expected one of 'learned', 'learned-envelope', 'learned-unmirrored', "
            "'learned-envelope-unmirrored', got 'prf'",
        ),
        (dict(num_features=7), "num_features: expected an even M .* the -unmirrored feature maps take any M"),
        (dict(response_cap=float("inf")), "response_cap: expected None or a finite number, got inf"),
    ],
)
def test_distill_rejects_bad_fine_tuning_options(tmp_path, kwargs, match):
    """Checked before any run is read: the message names the argument, what was expected and what came."""
    from astroformer.training._distill import distill

    with pytest.raises(ValueError, match=match):
        distill(tmp_path / "missing", tmp_path / "out", **kwargs)
