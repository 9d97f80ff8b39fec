"""Tests of `astroformer.calcium`: reference traces, an independent integrator,
transforms (grad vs finite differences, jit vs eager, vmap vs loop) and input errors.

Everything here runs in float64 (a module-scoped fixture switches `jax_enable_x64` on
and restores the previous setting afterwards), except the float32 check of the default
tolerances, which switches float64 off locally.
"""

import dataclasses
import math
from pathlib import Path

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from astroformer.calcium import (
    AbstractCalciumModel,
    DiffusiveProcesses,
    GChI,
    LiRinzel,
    PulseTrain,
    pulse_train,
    simulate,
)


REFERENCE = Path(__file__).parent / "data" / "gchi_protocol_a.npz"


# float64 for the whole module (tests/conftest.py), switched back afterwards.
pytestmark = pytest.mark.usefixtures("x64_module")


def _param_names(model: AbstractCalciumModel) -> list[str]:
    return [f.name for f in dataclasses.fields(model) if not f.metadata.get("static", False)]


# --------------------------------------------------------------------------------------
# 1. G-ChI against Brian 2.


@pytest.fixture(scope="module")
def reference():
    with np.load(REFERENCE) as data:
        return {key: np.asarray(data[key]) for key in data.files}


def _reference_errors(reference, out):
    return {key: float(np.max(np.abs(np.asarray(out[key]) - reference[key]))) for key in ("C", "I", "h")}


def test_gchi_reproduces_brian2_reference(reference):
    # Tolerance 1e-2 µM over the whole 30 s (the task's acceptance bound). Brian 2's
    # RK4 at 0.1 ms and an independent LSODA solve agree to 2e-4 µM (C) and 6e-4 µM (I),
    # so a correct implementation lands near those numbers: measured 1.5e-4 (C) and
    # 5.4e-4 (I).
    drive = pulse_train(reference["pulse_times"], reference["amplitude_mM"], reference["clearance"])
    out = simulate(GChI(), drive, reference["t"])
    assert out["C"].dtype == jnp.float64
    np.testing.assert_array_equal(np.asarray(out["t"]), reference["t"])
    errors = _reference_errors(reference, out)
    print(f"G-ChI vs Brian 2, float64, max abs error (µM): {errors}")
    assert errors["C"] < 1e-2
    assert errors["I"] < 1e-2
    assert errors["h"] < 1e-2


def test_gchi_reference_float32_defaults(reference):
    # The library's default precision is float32: the default (looser) tolerances must
    # still reproduce the reference within the same 1e-2 µM (measured ~5.5e-4).
    with jax.enable_x64(False):
        model = GChI()
        assert model.dtype == jnp.float32
        drive = pulse_train(reference["pulse_times"], reference["amplitude_mM"], reference["clearance"])
        out = simulate(model, drive, reference["t"])
        assert out["C"].dtype == jnp.float32
        errors = _reference_errors(reference, out)
    print(f"G-ChI vs Brian 2, float32, max abs error (µM): {errors}")
    assert errors["C"] < 1e-2
    assert errors["I"] < 1e-2


# --------------------------------------------------------------------------------------
# 2. Li–Rinzel against an independent RK4, and conservation of calcium.

# Li–Rinzel parameters written out again (not read from the class), so that this is an
# independent check of the equations and of the defaults.
LR = dict(
    Ca_tot=2.0,
    ratio=0.185,
    r_IP3R=6.0,
    r_L=0.11,
    V=0.9,
    K=0.1,
    d1=0.13,
    d2=1.049,
    d3=0.9434,
    d5=0.08234,
    a2=0.2,
)


def _ip3_numpy(t):
    return 0.3 + 0.15 * math.sin(2 * math.pi * t / 4.0) + 0.03 * t


def _ip3_jax(t):
    return 0.3 + 0.15 * jnp.sin(2 * jnp.pi * t / 4.0) + 0.03 * t


def _li_rinzel_rhs(t, c, h):
    p = LR
    ip3 = _ip3_numpy(t)
    m_inf = ip3 / (ip3 + p["d1"]) * c / (c + p["d5"])
    c_er = (p["Ca_tot"] - c) / p["ratio"]
    j_chan = p["r_IP3R"] * m_inf**3 * h**3 * (c_er - c)
    j_leak = p["r_L"] * (c_er - c)
    j_pump = p["V"] * c**2 / (c**2 + p["K"] ** 2)
    dh = p["a2"] * (p["d2"] * (ip3 + p["d1"]) / (ip3 + p["d3"]) * (1 - h) - c * h)
    return j_chan + j_leak - j_pump, dh


def _rk4_li_rinzel(c, h, t_end, dt, save_every):
    """Classic fixed-step RK4 on Python floats; returns the states every `save_every`."""
    n_steps = round(t_end / dt)
    saved = [(c, h)]
    t = 0.0
    for step in range(1, n_steps + 1):
        k1c, k1h = _li_rinzel_rhs(t, c, h)
        k2c, k2h = _li_rinzel_rhs(t + dt / 2, c + dt / 2 * k1c, h + dt / 2 * k1h)
        k3c, k3h = _li_rinzel_rhs(t + dt / 2, c + dt / 2 * k2c, h + dt / 2 * k2h)
        k4c, k4h = _li_rinzel_rhs(t + dt, c + dt * k3c, h + dt * k3h)
        c += dt / 6 * (k1c + 2 * k2c + 2 * k3c + k4c)
        h += dt / 6 * (k1h + 2 * k2h + 2 * k3h + k4h)
        t = step * dt
        if step % save_every == 0:
            saved.append((c, h))
    return np.array(saved)


def test_li_rinzel_against_numpy_rk4_and_conservation():
    t_end, dt, save_every = 12.0, 5e-4, 200  # RK4 at 0.5 ms, compared every 0.1 s.
    ts = np.arange(round(t_end / (dt * save_every)) + 1) * dt * save_every
    expected = _rk4_li_rinzel(0.073, 0.793, t_end, dt, save_every)

    model = LiRinzel()
    out = simulate(model, _ip3_jax, ts)
    c, h = np.asarray(out["C"]), np.asarray(out["h"])
    err_c = np.max(np.abs(c - expected[:, 0]))
    err_h = np.max(np.abs(h - expected[:, 1]))
    print(f"Li–Rinzel vs RK4: max abs error C {err_c:.2e} µM, h {err_h:.2e}")
    # The trace must actually move (a calcium transient), or the test checks nothing.
    assert np.ptp(c) > 0.1
    # RK4's own error at 0.5 ms is ~1e-9; the adaptive solve at the default rtol 1e-6
    # dominates (measured 2.5e-6 µM in C, 2e-7 in h). 2e-5 leaves an 8x margin.
    assert err_c < 2e-5
    assert err_h < 2e-5

    total = c + model.ratio_ER_cyt * np.asarray(model.er_calcium(out))
    np.testing.assert_allclose(total, LR["Ca_tot"], rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------
# 3. Transforms: grad vs central finite differences, jit vs eager, vmap vs loop.

# Tight tolerances so that the discretisation error (which also moves with the
# parameters) is far below the finite-difference resolution.
TIGHT = dict(stepsize_controller=diffrax.PIDController(rtol=1e-11, atol=1e-13), max_steps=4096)
SHORT_TS = np.linspace(0.0, 3.0, 31)
PULSES = np.array([0.5, 1.5, 2.5])


def _calcium_loss(model, out):
    c = model.calcium(out)
    return jnp.mean(c**2) + jnp.mean(jnp.asarray(SHORT_TS) * c)


@pytest.fixture(scope="module")
def gchi_forward():
    @eqx.filter_jit
    def forward(model, drive):
        return simulate(model, drive, SHORT_TS, **TIGHT)

    return forward


@pytest.fixture(scope="module")
def li_rinzel_forward():
    @eqx.filter_jit
    def forward(model):
        return simulate(model, _ip3_jax, SHORT_TS, **TIGHT)

    return forward


def _check_grad_against_fd(params, loss, wheres, eps=1e-5):
    """Compare p·∂L/∂p from reverse mode with a relative central difference in p.

    `params` is any pytree (a model, or a (model, drive) pair), `loss` a scalar function
    of it and `wheres` maps a label to a function selecting one scalar leaf of `params`.
    """
    grads = eqx.filter_jit(eqx.filter_grad(loss))(params)
    scaled_grad, scaled_fd = {}, {}
    for label, where in wheres.items():
        value = where(params)
        scaled_grad[label] = float(value * where(grads))
        up = eqx.tree_at(where, params, value * (1 + eps))
        down = eqx.tree_at(where, params, value * (1 - eps))
        scaled_fd[label] = float(loss(up) - loss(down)) / (2 * eps)
    assert all(np.isfinite(g) for g in scaled_grad.values())
    largest = max(abs(fd) for fd in scaled_fd.values())
    assert largest > 0
    worst = 0.0
    for label in wheres:
        g, fd = scaled_grad[label], scaled_fd[label]
        worst = max(worst, abs(g - fd) / (abs(fd) + largest * 1e-1))
        assert abs(g - fd) <= 1e-5 * abs(fd) + 1e-6 * largest, (label, g, fd)
    print(f"grad vs FD: worst relative mismatch {worst:.1e} over {len(wheres)} leaves")
    return scaled_grad


def _model_wheres(model, prefix=lambda p: p):
    return {name: (lambda p, name=name: getattr(prefix(p), name)) for name in _param_names(model)}


def test_gchi_grad_matches_finite_differences(gchi_forward):
    params = (GChI(), pulse_train(PULSES, 0.5, 40.0))

    def loss(params):
        model, drive = params
        return _calcium_loss(model, gchi_forward(model, drive))

    wheres = _model_wheres(params[0], prefix=lambda p: p[0])
    wheres["drive.amplitude"] = lambda p: p[1].amplitude
    wheres["drive.decay"] = lambda p: p[1].decay
    scaled = _check_grad_against_fd(params, loss, wheres)
    assert len(scaled) == 23 + 2


def test_li_rinzel_grad_matches_finite_differences(li_rinzel_forward):
    def loss(m):
        return _calcium_loss(m, li_rinzel_forward(m))

    model = LiRinzel()
    scaled = _check_grad_against_fd(model, loss, _model_wheres(model))
    assert len(scaled) == 11


def test_gchi_jit_equals_eager(gchi_forward):
    drive = pulse_train(PULSES, 0.5, 40.0)
    model = GChI()
    eager = simulate(model, drive, SHORT_TS, **TIGHT)
    jitted = gchi_forward(model, drive)
    assert eager.keys() == jitted.keys() == {"Gamma_A", "I", "C", "h", "t"}
    for key in eager:
        assert eager[key].shape == (len(SHORT_TS),)
        np.testing.assert_allclose(eager[key], jitted[key], rtol=1e-12, atol=1e-15)


def test_gchi_vmap_over_amplitudes_equals_loop(gchi_forward):
    model = GChI()
    amplitudes = jnp.array([0.1, 0.5, 2.0])

    @eqx.filter_jit
    def batched(amplitudes):
        return jax.vmap(lambda a: simulate(model, pulse_train(PULSES, a, 40.0), SHORT_TS, **TIGHT))(amplitudes)

    out = batched(amplitudes)
    assert out["C"].shape == (3, len(SHORT_TS))
    for i, a in enumerate(amplitudes):
        single = gchi_forward(model, pulse_train(PULSES, a, 40.0))
        for key in ("Gamma_A", "I", "C", "h"):
            # Batched adaptive solves step together (the batch takes the union of
            # steps), so agreement is to the solver tolerance, not to roundoff.
            np.testing.assert_allclose(out[key][i], single[key], rtol=1e-8, atol=1e-10)
    # Different drives give different calcium.
    assert float(jnp.max(out["C"][2] - out["C"][0])) > 1e-3


# --------------------------------------------------------------------------------------
# The abstract diffusive astrocyte, the pulse train and the model interface.


def test_diffusive_processes_closed_form():
    # dp_k/dt = (1/tau_p) sum_l (p_l - p_k) + gain * u  with constant u: the mean grows
    # linearly and deviations from it decay as exp(-n t / tau_p).
    model = DiffusiveProcesses(n=3, tau_p=2.0, gain=0.5)
    p0 = jnp.array([1.0, 0.0, 2.0])
    ts = np.linspace(0.0, 2.0, 11)
    out = simulate(model, lambda t: 0.4, ts, y0={"p": p0})
    assert out["p"].shape == (11, 3)
    mean = 1.0 + 0.5 * 0.4 * ts
    expected = mean[:, None] + (np.asarray(p0) - 1.0)[None, :] * np.exp(-3 * ts / 2.0)[:, None]
    np.testing.assert_allclose(out["p"], expected, rtol=1e-6, atol=1e-8)
    np.testing.assert_array_equal(model.calcium(out), out["p"])


def test_pulse_train_values():
    drive = pulse_train(jnp.array([1.0, 2.0]), 0.5, 40.0)
    assert isinstance(drive, PulseTrain)
    assert float(drive(0.999)) == 0.0
    np.testing.assert_allclose(float(drive(1.0)), 0.5)
    np.testing.assert_allclose(float(drive(2.5)), 0.5 * (np.exp(-60.0) + np.exp(-20.0)))
    # Finite gradient at and before the pulse (double `where`).
    g = jax.grad(lambda t: drive(t))(-100.0)
    assert np.isfinite(float(g)) and float(g) == 0.0


def test_models_interface():
    for model in (GChI(), LiRinzel(), DiffusiveProcesses(n=4)):
        y0 = model.default_y0()
        assert tuple(y0) == model.state_names
        dy = model.vector_field(0.0, y0, 0.1)
        assert dy.keys() == y0.keys()
        for key in y0:
            assert dy[key].shape == y0[key].shape
            assert np.all(np.isfinite(np.asarray(dy[key])))
    # Parameters are trainable leaves.
    assert len(jax.tree_util.tree_leaves(eqx.filter(GChI(), eqx.is_inexact_array))) == 23


# --------------------------------------------------------------------------------------
# 4. Bad input.


def test_negative_parameter_raises():
    with pytest.raises(ValueError, match=r"GChI\.O_P .*positive.*-1\.0"):
        GChI(O_P=-1.0)
    with pytest.raises(ValueError, match=r"LiRinzel\.d5 .*positive.*nan"):
        LiRinzel(d5=float("nan"))
    with pytest.raises(ValueError, match=r"DiffusiveProcesses\.n"):
        DiffusiveProcesses(n=0)
    with pytest.raises(ValueError, match=r"pulse_train.*decay"):
        pulse_train(jnp.array([1.0]), 0.5, -40.0)
    # Traced values cannot be checked and are accepted (e.g. inside jit or grad).
    assert float(jax.jit(lambda x: GChI(O_P=x).O_P)(-1.0)) == -1.0


def test_unknown_y0_key_raises():
    with pytest.raises(ValueError, match=r"`y0`.*\['Ca'\].*LiRinzel"):
        simulate(LiRinzel(), _ip3_jax, SHORT_TS, y0={"C": 0.1, "Ca": 0.1})
    with pytest.raises(ValueError, match=r"`y0\['p'\]`.*shape \(3,\)"):
        simulate(DiffusiveProcesses(n=3), lambda t: 0.0, SHORT_TS, y0={"p": jnp.ones(4)})


@pytest.mark.bad_input
def test_bad_ts_raises():
    with pytest.raises(ValueError, match=r"`ts` must be strictly increasing.*ts\[1\]"):
        simulate(LiRinzel(), _ip3_jax, np.array([0.0, 1.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"`ts` must be strictly increasing"):
        simulate(LiRinzel(), _ip3_jax, np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match=r"`ts` must be finite"):
        simulate(LiRinzel(), _ip3_jax, np.array([0.0, np.inf]))
    with pytest.raises(ValueError, match=r"`ts` must be a 1-D"):
        simulate(LiRinzel(), _ip3_jax, np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"at least two"):
        simulate(LiRinzel(), _ip3_jax, np.array([0.0]))


def test_out_of_steps_raises_runtime_error():
    with pytest.raises(RuntimeError, match=r"ran out of steps.*max_steps=4.*Increase"):
        simulate(LiRinzel(), _ip3_jax, SHORT_TS, max_steps=4)
