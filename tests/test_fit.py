"""Tests of astroformer.fit: parameter recovery, noise, gradients per adjoint, weight transfer to softmax."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import astroformer as af
from astroformer.fit import (
    AttentionTarget,
    Bounded,
    Identity,
    NAModel,
    Positive,
    TraceTarget,
    fit,
    free_filter_spec,
    value_and_grad,
)

FREE = ("tau_n", "tau_s", "tau_p")
TRUE = dict(tau_n=0.05, tau_s=0.2, tau_p=2.0)
# t_read and t_write are not fitted: traces at fixed real times do not depend on T_r at all (the dynamics are
# autonomous in real time, T_r only says where the block stops), and with tau_n << T_w the stored memory
# depends on T_w only at O(tau_n / T_w) ~ e^{-T_w/tau_n}, i.e. not measurably.
STARTS = [
    dict(tau_n=0.1, tau_s=0.4, tau_p=4.0),  # every parameter 2x too large
    dict(tau_n=0.025, tau_s=0.1, tau_p=1.0),  # 2x too small
    dict(tau_n=0.1, tau_s=0.1, tau_p=4.0),
]  # mixed
NOISE = 0.02  # noise std, relative to each variable's rms
DRAWS = 5


def _problem(dtype):
    kq, kk, kv, kf = jax.random.split(jax.random.PRNGKey(0), 4)
    L, D, M, N = 4, 3, 4, 2
    q = 0.5 * jax.random.normal(kq, (L, D), dtype)
    k = 0.5 * jax.random.normal(kk, (L, D), dtype)
    v = jax.random.normal(kv, (L, N), dtype)
    fm = af.PositiveRandomFeatures(D, M, key=kf, dtype=dtype)
    ts = np.geomspace(0.01, 2.0, 16)
    return q, k, v, fm, ts


def _model(fm, **taus):
    return NAModel(params=af.NAParams(**taus), feature_map=fm)


@pytest.fixture(scope="module")
def recovery():
    """One vmapped fit over 10 (start, data) pairs: 3 starts on clean data, DRAWS noise draws from start 0,
    and 2 more starts on noise draw 0. Run in float64; results returned as NumPy."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        q, k, v, fm, ts = _problem(jnp.float64)
        clean = eqx.filter_jit(lambda m: m.traces(q, k, v, ts, variables=("x", "p")))(_model(fm, **TRUE))
        keys = jax.random.split(jax.random.PRNGKey(1), DRAWS)

        def noisy(key):
            kx, kp = jax.random.split(key)
            rms = lambda a: jnp.sqrt(jnp.mean(a**2))  # noqa: E731
            return (
                clean.x + NOISE * rms(clean.x) * jax.random.normal(kx, clean.x.shape),
                clean.p + NOISE * rms(clean.p) * jax.random.normal(kp, clean.p.shape),
            )

        draws = [noisy(key) for key in keys]
        data = [(clean.x, clean.p)] * 3 + draws + [draws[0]] * 2
        starts = STARTS + [STARTS[0]] * DRAWS + STARTS[1:]
        xs = jnp.stack([d[0] for d in data])
        ps = jnp.stack([d[1] for d in data])
        models = jax.tree.map(
            lambda *a: jnp.stack([jnp.asarray(b, jnp.float64) for b in a]), *[_model(fm, **s) for s in starts]
        )
        # Partially observed: the synapses s are hidden, and x is seen only at every other time point.
        mask_x = (np.arange(len(ts)) % 2 == 0)[:, None, None]

        def one(model, x, p):
            target = TraceTarget(q=q, k=k, v=v, ts=ts, x=x, p=p, mask_x=jnp.asarray(mask_x))
            return fit(model, target, FREE, steps=300, learning_rate=0.05)

        result = eqx.filter_vmap(one)(models, xs, ps)
        estimates = {name: np.asarray(result.params[name]) for name in FREE}
        return dict(
            estimates=estimates,
            loss=np.asarray(result.loss_history),
            grad_norm=np.asarray(result.grad_norm),
            history=result.param_history,
        )
    finally:
        jax.config.update("jax_enable_x64", previous)


def test_recovers_time_constants_from_clean_traces(recovery, x64):
    for name in FREE:
        est = recovery["estimates"][name][:3]
        starts = np.array([s[name] for s in STARTS])
        assert np.all(np.maximum(starts / TRUE[name], TRUE[name] / starts) >= 2 - 1e-12)  # >= 2x off
        np.testing.assert_allclose(est, TRUE[name], rtol=1e-2, err_msg=name)
        # the per-step history starts at the start values and ends at the estimates
        hist = np.asarray(recovery["history"][name])[:3]
        np.testing.assert_allclose(hist[:, 0], starts, rtol=1e-12)
        np.testing.assert_allclose(hist[:, -1], est, rtol=1e-12)
    loss = recovery["loss"][:3]
    assert np.all(loss[:, -1] < 1e-6 * loss[:, 0])


def test_noisy_fits_lie_within_noise_spread(recovery, x64):
    for name in FREE:
        est = recovery["estimates"][name]
        draws = est[3 : 3 + DRAWS]
        mean, std = draws.mean(), draws.std(ddof=1)
        assert 0 < std < 0.05 * TRUE[name], (name, std)  # noise moves the fit, but only a little
        # the truth lies within the spread of the repeated draws (no bias beyond the noise)
        assert abs(mean - TRUE[name]) < 3 * std, (name, mean, std)
        # multi-start on draw 0: every start reaches the same minimum, far inside the spread
        multi = np.concatenate([draws[:1], est[3 + DRAWS :]])
        assert np.ptp(multi) < 0.05 * std, (name, multi, std)


GRAD_FREE = {"tau_n": Positive(), "tau_s": Positive("softplus"), "tau_p": Bounded(0.1, 10.0), "qk_gain": Identity()}
GRAD_AT = (STARTS[2]["tau_n"], STARTS[2]["tau_s"], STARTS[2]["tau_p"], 1.3)


@pytest.fixture(scope="module")
def finite_differences():
    """Central differences (float64) of the trace loss in the unconstrained coordinates of GRAD_FREE."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        q, k, v, fm, ts = _problem(jnp.float64)
        data = eqx.filter_jit(lambda m: m.traces(q, k, v, ts, variables=("x", "p", "s")))(_model(fm, **TRUE))
        target = TraceTarget.from_traces(data, q, k, v)
        model = NAModel(params=af.NAParams(**STARTS[2]), feature_map=fm, qk_gain=1.3)
        transforms = list(GRAD_FREE.values())

        @jax.jit
        def loss_at(u):
            values = [t.forward(x) for t, x in zip(transforms, u)]
            m = eqx.tree_at(lambda m: (m.params.tau_n, m.params.tau_s, m.params.tau_p, m.qk_gain), model, values)
            return target(m)

        u0 = jnp.array([t.inverse(jnp.asarray(x, jnp.float64)) for t, x in zip(transforms, GRAD_AT)])
        eps = 1e-5
        fd = [float((loss_at(u0.at[i].add(eps)) - loss_at(u0.at[i].add(-eps))) / (2 * eps)) for i in range(len(u0))]
        return dict(target=target, fm=fm, loss=float(loss_at(u0)), fd=dict(zip(GRAD_FREE, fd)))
    finally:
        jax.config.update("jax_enable_x64", previous)


@pytest.mark.parametrize(
    "adjoint",
    [diffrax.RecursiveCheckpointAdjoint(), diffrax.DirectAdjoint(), diffrax.ForwardMode()],
    ids=["recursive", "direct", "forward"],
)
def test_gradient_matches_finite_differences(adjoint, finite_differences, x64):
    ref = finite_differences
    model = NAModel(params=af.NAParams(**STARTS[2]), feature_map=ref["fm"], qk_gain=1.3, adjoint=adjoint)
    loss, grads = value_and_grad(model, ref["target"], GRAD_FREE)
    np.testing.assert_allclose(loss, ref["loss"], rtol=1e-12)
    for name, fd in ref["fd"].items():
        grad = float(grads[name])  # keyed by the names as given in GRAD_FREE
        assert abs(grad - fd) <= 1e-6 * abs(fd) + 1e-9, (name, grad, fd)


def test_fit_to_softmax_head_beats_untuned_network(getkey, x64):
    L, D, M, N = 8, 4, 16, 4
    q = 0.6 * jax.random.normal(getkey(), (L, D))
    k = 0.6 * jax.random.normal(getkey(), (L, D))
    v = jax.random.normal(getkey(), (L, N))
    target = AttentionTarget(q, k, v, causal=True)
    # A finite read window that leaves the synapses short of equilibrium (p_bar T_r / tau_s ~ 1).
    untuned = NAModel(
        params=af.NAParams(tau_s=0.05, t_read=0.05),
        feature_map=af.PositiveRandomFeatures(D, M, trainable=True, key=getkey()),
    )
    before = float(target(untuned))
    result = fit(untuned, target, ["tau_s", "qk_gain", "v_gain", "feature_map.W"], steps=100, learning_rate=0.05)
    after = float(target(result.model))
    np.testing.assert_allclose(after, result.loss_history[-1], rtol=1e-10)
    assert np.isfinite(after) and after < 0.5 * before, (before, after)
    # frozen leaves are untouched
    assert result.model.params.t_read == untuned.params.t_read


def test_free_parameters_and_errors(getkey):
    fm = af.PositiveRandomFeatures(3, 4, key=getkey())
    model = _model(fm, **TRUE)
    spec = free_filter_spec(model, ["params.tau_s", "qk_gain"])
    free, frozen = eqx.partition(model, spec)
    assert free.params.tau_s == TRUE["tau_s"] and free.params.tau_n is None and free.qk_gain == 1.0
    assert frozen.params.tau_s is None and frozen.params.tau_n == TRUE["tau_n"]
    target = lambda m: m.params.tau_s  # noqa: E731
    with pytest.raises(ValueError, match="tau_x"):
        fit(model, target, ["tau_x"])
    with pytest.raises(ValueError, match="trainable=True"):
        fit(model, target, ["feature_map.W"])
    with pytest.raises(ValueError, match="tau_f"):
        fit(model, target, ["tau_f"])
    with pytest.raises(ValueError, match="steps"):
        fit(model, target, ["tau_s"], steps=0)
    with pytest.raises(ValueError, match="strictly increasing"):
        TraceTarget(q=jnp.ones((2, 3)), k=jnp.ones((2, 3)), v=jnp.ones((2, 2)), ts=[0.2, 0.1], x=jnp.ones((2, 2, 2)))
    with pytest.raises(ValueError, match="time points"):
        TraceTarget(
            q=jnp.ones((2, 3)), k=jnp.ones((2, 3)), v=jnp.ones((2, 2)), ts=[0.1, 0.2, 0.3], x=jnp.ones((2, 2, 2))
        )


def test_transforms_round_trip(x64):
    x = jnp.array([1e-3, 0.3, 2.0, 50.0])
    for t in (Positive(), Positive("softplus"), Bounded(1e-4, 100.0), Identity()):
        np.testing.assert_allclose(t.forward(t.inverse(x)), x, rtol=1e-12)
    with pytest.raises(ValueError, match="positive"):
        Positive().inverse(jnp.array([-1.0]))
    with pytest.raises(ValueError, match="inside"):
        Bounded(0.0, 1.0).inverse(jnp.array([2.0]))
    with pytest.raises(ValueError, match="lo < hi"):
        Bounded(1.0, 0.0)


def test_traces_match_na_attention_at_end_of_read(x64):
    """Second implementation: the trace helper's x at t = T_r equals the block's output, and p relaxes to the
    softmax denominator p_bar."""
    q, k, v, fm, ts = _problem(jnp.float64)
    model = NAModel(params=af.NAParams(**TRUE, t_read=float(ts[-1])), feature_map=fm, read_steps=256)
    fine = NAModel(params=model.params, feature_map=fm, substeps=32)
    traces = eqx.filter_jit(lambda m: m.traces(q, k, v, ts, variables=("x", "p")))(fine)
    out = eqx.filter_jit(lambda m: m(q, k, v))(model)
    np.testing.assert_allclose(traces.x[-1], out, rtol=1e-4, atol=1e-6)
    # calcium is conserved (its mean over processes is p_bar at every time) and has synchronised by t = 2
    p_mean = traces.p.mean(axis=-1)
    np.testing.assert_allclose(p_mean, jnp.broadcast_to(p_mean[-1], p_mean.shape), rtol=1e-12)
    np.testing.assert_allclose(
        traces.p[-1], jnp.broadcast_to(p_mean[-1][:, None], traces.p[-1].shape), rtol=1e-3
    )  # e^{-NM t/tau_p} = e^{-8}


def test_cli_rejects_malformed_config(tmp_path, capsys):
    from astroformer.fit.cli import main

    cases = {
        '{"free": [': "not valid JSON",
        "[1, 2]": "JSON object",
        '{"steps": 3}': "missing 'free'",
        '{"free": ["tau_s"], "steps": 0}': "steps: expected a positive integer",
        '{"free": ["tau_s"], "bogus": 1}': "unknown keys",
        '{"free": ["tau_s"], "target": {"kind": "video"}}': "target.kind",
        # every key is read against the schema's annotations, at any depth
        '{"free": ["tau_s"], "problem": {"length": "4"}}': "problem.length: expected an integer, got '4'",
        '{"free": ["tau_s"], "problem": {"lenght": 4}}': "problem: unknown keys ['lenght']",
        '{"free": ["tau_s"], "target": {"ts": {"start": 0.1, "stop": 1}}}': "target.ts: missing 'num'",
        '{"free": ["tau_s"], "target": {"ts": [0.1, "a"], "params": {}}}': "target.ts[1]: expected a number, got 'a'",
        '{"free": ["tau_s"], "optimiser": {"name": "rmsprop"}}': "optimiser.name: expected 'adam' or",
        '{"free": {"tau_s": {"bounded": [1]}}}': "free.tau_s.bounded: expected [lo, hi], finite with lo < hi, got [1]",
        '{"free": ["tau_s"], "steps": true}': "steps: expected an integer, got True",
        '{"free": {"tau_s": {"bounded": [2, 1]}}}': "free.tau_s.bounded: expected [lo, hi], finite with lo < hi",
        '{"free": ["tau_s"], "target": {"ts": [], "params": {}}}': "target.ts: expected finite, non-negative",
        '{"free": ["tau_s"], "target": {"ts": 5, "params": {}}}': "target.ts: expected a list or an object",
    }
    for text, message in cases.items():
        path = tmp_path / "fit.json"
        path.write_text(text)
        assert main(["fit", "--config", str(path)]) == 2
        assert message in capsys.readouterr().err
    assert main(["fit", "--config", str(tmp_path / "missing.json")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_cli_example_recovers_tau_s(tmp_path, capsys):
    """`astroformer fit --config examples/fit_traces.json` (the README's example) fits tau_s from 0.4 back to
    the 0.2 that simulated its traces, and writes the result where --output says. The float64 it runs in is
    switched off again afterwards (left on, later float32 tests met float64 parameters)."""
    import json
    from pathlib import Path

    from astroformer.fit.cli import main

    example = Path(__file__).resolve().parents[1] / "examples" / "fit_traces.json"
    output = tmp_path / "fitted.json"
    assert main(["fit", "--config", str(example), "--output", str(output)]) == 0
    out = json.loads(output.read_text())
    config = json.loads(example.read_text())
    assert len(out["loss_history"]) == config["steps"] + 1
    assert out["final_loss"] < 1e-6 * out["loss_history"][0]
    np.testing.assert_allclose(out["fitted"]["params.tau_s"], config["target"]["params"]["tau_s"], rtol=1e-3)
    assert "params.tau_s" in capsys.readouterr().out
    assert not jax.config.jax_enable_x64


def test_cli_rejects_non_finite_and_out_of_range_values(tmp_path, capsys):
    """JSON's NaN / Infinity (which `json.loads` accepts) and out-of-range sizes, rates and seeds are refused
    before anything is computed, each naming its key; the output file is then not written."""
    from astroformer.fit.cli import main

    base = '"free": ["tau_s"], "target": {"ts": [0.1, 0.2], "params": {}}'
    cases = {
        f'{{{base}, "optimiser": {{"learning_rate": NaN}}}}': "optimiser.learning_rate: expected a finite number",
        f'{{{base}, "optimiser": {{"learning_rate": -0.1}}}}': "optimiser.learning_rate: expected a positive number",
        f'{{{base}, "problem": {{"scale": Infinity}}}}': "problem.scale: expected a finite number",
        f'{{{base}, "problem": {{"length": 0}}}}': "problem.length: expected a positive integer, got 0",
        f'{{{base}, "problem": {{"dim": -2}}}}': "problem.dim: expected a positive integer, got -2",
        f'{{{base}, "problem": {{"seed": 100000000000000000000}}}}': "problem.seed: expected an integer in [0, 2**31)",
        '{"free": ["tau_s"], "target": {"ts": [0.1], "params": {}, "noise": -1}}': "target.noise: expected a non-negative",
        '{"free": ["tau_s"], "target": {"ts": [0.1], "params": {"tau_zz": 1}}}': "target.params: expected NAParams fields",
        '{"free": ["tau_s"], "start": {"tau_s": NaN}, "target": {"ts": [0.1], "params": {}}}': "start.tau_s: expected a finite",
    }
    output = tmp_path / "out.json"
    for text, message in cases.items():
        path = tmp_path / "fit.json"
        path.write_text(text)
        assert main(["fit", "--config", str(path), "--output", str(output)]) == 2, text
        assert message in capsys.readouterr().err, text
        assert not output.exists()


def test_cli_never_overwrites_its_output_or_config_unasked(tmp_path, capsys):
    """An existing output is replaced only with --overwrite, and the config file never is."""
    from astroformer.fit.cli import main

    config = tmp_path / "fit.json"
    text = '{"free": ["tau_s"], "steps": 1, "target": {"ts": [0.1, 0.2], "params": {}}}'
    config.write_text(text)
    assert main(["fit", "--config", str(config), "--output", str(config), "--overwrite"]) == 2
    assert "other than the config" in capsys.readouterr().err and config.read_text() == text
    output = tmp_path / "mine.json"
    output.write_text("keep me")
    assert main(["fit", "--config", str(config), "--output", str(output)]) == 2
    assert "already exists" in capsys.readouterr().err and output.read_text() == "keep me"


def test_fit_refuses_a_bad_learning_rate_and_says_when_the_loss_diverges():
    """A non-finite learning rate is refused up front; a finite one so large that a trace fit diverges raises,
    naming the step where the loss stopped being finite, instead of returning NaN parameters."""
    from astroformer.fit import NAModel, TraceTarget, fit

    kq, kk, kv = jax.random.split(jax.random.key(1), 3)
    phi_q, phi_k = jax.random.uniform(kq, (6, 8)), jax.random.uniform(kk, (6, 8))
    v = jax.random.normal(kv, (6, 2))
    ts = jnp.linspace(0.02, 1.0, 5)
    truth = NAModel(af.NAParams(tau_n=0.05, tau_s=0.2, tau_p=1.0))
    target = TraceTarget.from_traces(truth.traces(phi_q, phi_k, v, ts, variables=("x",)), phi_q, phi_k, v)
    start = NAModel(af.NAParams(tau_n=0.1, tau_s=0.4, tau_p=1.0))
    for bad in (float("inf"), float("nan"), 0.0):
        with pytest.raises(ValueError, match="learning_rate: expected a positive finite number"):
            fit(start, target, ["tau_s"], steps=1, learning_rate=bad)
    with pytest.raises(RuntimeError, match=r"fit: the loss became nan at step \d of 2 .* lower learning_rate"):
        fit(start, target, ["tau_s"], steps=2, learning_rate=1e10)
