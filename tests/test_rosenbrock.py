"""Tests of `Ros2`, the Rosenbrock–W solver of the calcium read (`astroformer._solvers._rosenbrock`).

- The Jacobian diagonal it uses equals `jax.jacfwd`'s for an element-wise field.
- Second order: on a nonlinear, non-stiff, non-autonomous system with a closed-form solution the global
  error falls by ~4 per halving of the step.
- L-stability: on the Prothero–Robinson problem y' = λ(y − cos t) − sin t with λ = −1e6 and steps 1e5 times
  longer than 1/|λ| it follows cos t to 1e-4, where explicit Tsit5 at the same steps blows up.
- It drives G-ChI through the Brian 2 reference protocol (adaptive steps) within the same 1e-2 µM bound as
  the default solver.

float64 (module-scoped switch, restored afterwards).
"""

from pathlib import Path

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from astroformer._solvers._rosenbrock import Ros2, jacobian_diagonal
from astroformer.calcium import GChI, pulse_train, simulate

REFERENCE = Path(__file__).parent / "data" / "gchi_protocol_a.npz"


# float64 for the whole module (tests/conftest.py), switched back afterwards.
pytestmark = pytest.mark.usefixtures("x64_module")


def test_jacobian_diagonal_matches_jacfwd():
    a = jnp.linspace(0.5, 2.0, 6).reshape(2, 3)

    def fn(y):  # element-wise, coupled within each element
        return {"u": -a * y["u"] ** 3 + y["v"], "v": jnp.sin(y["u"]) * y["v"] - y["v"] ** 2}

    y = {"u": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "v": jnp.linspace(0.1, 0.9, 6).reshape(2, 3)}
    f, d = jacobian_diagonal(fn, y)
    assert f.shape == d.shape == (2, 3, 2)
    for i, name in enumerate(sorted(y)):  # leaf order of a dict: sorted keys
        full = jax.jacfwd(lambda x: fn({**y, name: x})[name])(y[name]).reshape(6, 6)
        np.testing.assert_allclose(np.asarray(d[..., i]).ravel(), np.diag(np.asarray(full)), rtol=1e-13)
        np.testing.assert_allclose(np.asarray(f[..., i]), np.asarray(fn(y)[name]), rtol=1e-14)


def _logistic(t, y, args):
    # y' = r(t) y (1 - y), r(t) = 1 + cos t: y(t) = 1 / (1 + (1/y0 - 1) e^{-(t + sin t)})
    return {"y": (1.0 + jnp.cos(t)) * y["y"] * (1.0 - y["y"])}


def test_second_order_convergence():
    y0 = jnp.array([0.1, 0.5, 0.9])
    t1 = 3.0
    exact = 1.0 / (1.0 + (1.0 / y0 - 1.0) * np.exp(-(t1 + np.sin(t1))))
    errors = []
    for n in (20, 40, 80, 160):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(_logistic),
            Ros2(),
            0.0,
            t1,
            t1 / n,
            {"y": y0},
            stepsize_controller=diffrax.ConstantStepSize(),
            max_steps=n,
        )
        errors.append(float(jnp.max(jnp.abs(sol.ys["y"][-1] - exact))))
    ratios = np.asarray(errors[:-1]) / np.asarray(errors[1:])
    print(f"Ros2 global errors {errors}, ratios {ratios}")
    assert np.all(ratios > 3.5) and np.all(ratios < 4.5)


def _prothero_robinson(t, y, args):
    lam = -1e6
    return {"y": lam * (y["y"] - jnp.cos(t)) - jnp.sin(t)}


def test_l_stable_on_prothero_robinson():
    """Steps 1e4–1e5 times 1/|λ|, the second component starting off the slow manifold: one step relaxes it
    (R(∞) = 0), and then the solution stays on the manifold y = cos t (up to O(1/|λ|)): the forcing's time
    derivative enters the stages (as a secant), so there is no order reduction."""
    y0 = {"y": jnp.array([1.0, 2.0])}
    ts = jnp.linspace(0.0, 2.0, 11)
    for dt in (0.2, 0.1, 0.05):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(_prothero_robinson),
            Ros2(),
            0.0,
            2.0,
            dt,
            y0,
            saveat=diffrax.SaveAt(ts=ts),
            stepsize_controller=diffrax.ConstantStepSize(),
        )
        err = np.max(np.abs(np.asarray(sol.ys["y"][1:]) - np.cos(np.asarray(ts[1:]))[:, None]))
        print(f"Ros2 on Prothero–Robinson (lambda = -1e6), step {dt}: max error {err:.1e}")  # 4e-6, 5e-8, 2e-8
        assert err < 1e-4
    explicit = diffrax.diffeqsolve(
        diffrax.ODETerm(_prothero_robinson),
        diffrax.Tsit5(),
        0.0,
        2.0,
        0.1,
        y0,
        stepsize_controller=diffrax.ConstantStepSize(),
        throw=False,
    )
    assert not np.all(np.abs(np.asarray(explicit.ys["y"])) < 10.0)  # the problem is stiff: explicit fails


def test_gchi_reference_protocol_with_ros2():
    with np.load(REFERENCE) as data:
        reference = {key: np.asarray(data[key]) for key in data.files}
    drive = pulse_train(reference["pulse_times"], reference["amplitude_mM"], reference["clearance"])
    out = simulate(
        GChI(), drive, reference["t"], solver=Ros2(), stepsize_controller=diffrax.PIDController(rtol=1e-4, atol=1e-7)
    )
    errors = {key: float(np.max(np.abs(np.asarray(out[key]) - reference[key]))) for key in ("C", "I", "h")}
    print(f"G-ChI with Ros2 vs Brian 2, max abs error (µM): {errors}")  # measured 2.2e-4, 6.1e-4, 2.0e-5
    assert errors["C"] < 1e-2 and errors["I"] < 1e-2 and errors["h"] < 1e-2
