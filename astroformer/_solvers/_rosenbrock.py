r"""A linearly implicit (Rosenbrock–W) diffrax solver for many small, independent, stiff systems.

The astrocyte processes of a calcium read (docs/calcium.md) are thousands of copies of one small calcium
model (2–4 state variables each) that interact only through a weak all-to-all diffusion. Their dynamics are
stiff whenever the drive is strong (G-ChI's receptor binding relaxes at $O_N Y_S \sim 10^3$/s for
$Y_S$ = 1 mM; Li–Rinzel's open IP3 channel at $\approx 40$/s): explicit Runge–Kutta methods then either
diverge at a fixed step or need thousands of adaptive steps, and generic implicit solvers would factor one
dense Jacobian of the whole batch.

`Ros2` is the two-stage Rosenbrock–W method ROS2 of Verwer, Spee, Blom & Hundsdorfer (1999),
$\gamma = 1 + 1/\sqrt2$, with $W = I - \gamma\Delta t\,J$:

$$\begin{aligned}
W k_1 &= f(t_n, y_n) + \gamma\Delta t\,\partial_t f(t_n, y_n),\\
W k_2 &= f(t_n + \Delta t,\ y_n + \Delta t\,k_1) - 2k_1 - \gamma\Delta t\,\partial_t f(t_n, y_n),\\
y_{n+1} &= y_n + \tfrac32\Delta t\,k_1 + \tfrac12\Delta t\,k_2 .
\end{aligned}$$

(the $\partial_t f$ terms are the method applied to the autonomous system with $t$ as a state variable, whose
Jacobian row is zero). It is second order for *any* matrix $J$ (a W-method: the choice of $J$ affects
stability, never the order).
Here $J = \mathrm{diag}(\min(\partial f_i/\partial y_i, 0))$, the *dissipative part of the diagonal* of the
element-wise Jacobian, evaluated at $(t_n + \Delta t, y_n)$ (so that a drive switching on within the step is
seen), so that

- $W$ is diagonal with entries $\ge 1$: the "solves" are divisions, never singular. (With the full Jacobian,
  the self-amplifying calcium-induced calcium release, $\partial \dot C/\partial C > 0$, makes $W$ singular
  when $\gamma\Delta t\,\lambda = 1$, and the step explodes);
- every variable that relaxes fast on its own (receptor binding, gating variables, the channel and leak
  fluxes in $C$, diffusion) is treated L-stably: a component $\dot y = \lambda(y - y^*)$,
  $\lambda \ll -1/\Delta t$, goes to $y^*$ in one step ($R(\infty) = 0$), whatever the step.

The forcing's time derivative $\partial_t f$ is the secant $(f(t_n + \Delta t, y_n) - f(t_n, y_n))/\Delta t$:
this keeps second order, and unlike the exact derivative it stays bounded when the forcing changes much faster
than the step (the feature neurons' rise in $e^{-t/\tau_n}$ within the first read step).

The embedded first-order solution $y_n + \Delta t\,k_1$ (linearly implicit Euler) gives the error estimate
$\Delta t (k_1 + k_2)/2$ for adaptive step-size controllers.

Reference: J. G. Verwer, E. J. Spee, J. G. Blom & W. Hundsdorfer, "A second-order Rosenbrock method applied
to photochemical dispersion problems", SIAM J. Sci. Comput. 20:1456–1480 (1999).
"""

from collections.abc import Callable
from typing import ClassVar

import diffrax
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree

from ._magnus import unwrap_term

_GAMMA = 1.0 + 2.0**-0.5


def _stack(tree: PyTree[Array]) -> Float[Array, "... k"]:
    leaves = jax.tree.leaves(tree)
    shape = jnp.shape(leaves[0])
    if any(jnp.shape(leaf) != shape for leaf in leaves):
        raise ValueError(
            f"Ros2: expected state leaves of one shape (one scalar system per element), got "
            f"shapes {[jnp.shape(leaf) for leaf in leaves]}"
        )
    return jnp.stack(leaves, axis=-1)


def _unstack(array: Float[Array, "... k"], like: PyTree[Array]) -> PyTree[Array]:
    treedef = jax.tree.structure(like)
    return jax.tree.unflatten(treedef, [array[..., i] for i in range(array.shape[-1])])


def jacobian_diagonal(
    fn: Callable[[PyTree[Array]], PyTree[Array]], y: PyTree[Array]
) -> tuple[Float[Array, "... k"], Float[Array, "... k"]]:
    r"""$f(y)$ and the diagonal of the element-wise Jacobian of `fn` at `y`, both in stacked form.

    `y` is a pytree of $k$ leaves of one shape $(\ldots)$; `fn(y)` has the same structure. Returns
    `(f, d)` with `f[..., i]` the i-th leaf of `fn(y)` (leaf order of `jax.tree.leaves`) and
    $d[\ldots, i] = \sum_{e'} \partial f_{e,i} / \partial y_{e',i}$, from the Jacobian–vector product with the
    tangent that is 1 in every element of leaf i. For an element-wise `fn` (no element depends on another)
    this is exactly $\partial f_{e,i}/\partial y_{e,i}$.
    """
    Y = _stack(y)
    k = Y.shape[-1]

    def stacked(Y):
        return _stack(fn(_unstack(Y, y)))

    f, lin = jax.linearize(stacked, Y)
    tangents = jnp.broadcast_to(jnp.eye(k, dtype=Y.dtype), Y.shape + (k,))  # [..., :, i] = e_i
    J = jax.vmap(lin, in_axes=-1, out_axes=-1)(tangents)  # J[..., r, i] = d f_r / d y_i
    return f, jnp.diagonal(J, axis1=-2, axis2=-1)


class Ros2(diffrax.AbstractAdaptiveSolver):
    r"""Second-order Rosenbrock–W solver (ROS2) with the dissipative diagonal of the element-wise Jacobian as
    its matrix (see the module docstring): L-stable for fast self-relaxing variables, never singular.

    For ODEs whose state is a pytree of leaves of one shape $(\ldots)$: every element is a small system of
    $k$ = (number of leaves) variables. The diagonal is, by default, `jacobian_diagonal` of the vector field
    (exact when elements do not interact); a vector field with a method
    `jacobian_diagonal(t, y, args) -> (f, d)` (stacked as in `jacobian_diagonal`) provides its own, for
    example to add the diagonal of a coupling between elements.

    Cost per step: one linearisation at $(t_n + \Delta t, y_n)$ with $k$ tangents (its value also gives the
    secant of the forcing) and two vector-field evaluations. Works with fixed steps (`StepTo`,
    `ConstantStepSize`) and adaptive controllers (`PIDController`; error order 2). Dense output is linear
    between steps.
    """

    term_structure: ClassVar = diffrax.AbstractTerm
    interpolation_cls: ClassVar = diffrax.LocalLinearInterpolation

    def order(self, terms):
        return 2

    def init(self, terms, t0, t1, y0, args):
        return None

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        del solver_state, made_jump
        field = unwrap_term(terms, "Ros2: expected an ODETerm").vector_field
        # The Jacobian diagonal at the end of the step, (t1, y0): a drive that switches on within the step
        # (the feature neurons' rise) is then seen by W. Its value there gives the secant of the forcing.
        if hasattr(field, "jacobian_diagonal"):
            f_end, d = field.jacobian_diagonal(t1, y0, args)
        else:
            f_end, d = jacobian_diagonal(lambda y: field(t1, y, args), y0)
        Y0 = _stack(y0)
        f0 = _stack(field(t0, y0, args))
        dt = t1 - t0
        # The explicit time dependence, as the secant over the step (see the module docstring). Steps of
        # zero length (diffrax may make them) have f_end = f0: a safe divisor keeps gradients finite there.
        f_t = (f_end - f0) / jnp.where(dt == 0, 1.0, dt)
        w = 1.0 - (_GAMMA * dt) * jnp.minimum(d, 0.0)  # W = diag(w), w >= 1
        k1 = (f0 + (_GAMMA * dt) * f_t) / w
        f1 = _stack(field(t1, _unstack(Y0 + dt * k1, y0), args))
        k2 = (f1 - 2.0 * k1 - (_GAMMA * dt) * f_t) / w
        Y1 = Y0 + dt * (1.5 * k1 + 0.5 * k2)
        y1 = _unstack(Y1, y0)
        y_error = _unstack(0.5 * dt * (k1 + k2), y0)
        return y1, y_error, dict(y0=y0, y1=y1), None, diffrax.RESULTS.successful

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)


__all__ = ["Ros2", "jacobian_diagonal"]
