"""The paper's abstract astrocyte: calcium diffusing between processes."""

from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ._base import AbstractCalciumModel, parameter


class DiffusiveProcesses(AbstractCalciumModel):
    r"""The abstract astrocyte of Kozachkov, Kastanenka & Krotov (2023).

    `n` processes, with calcium $p_k$ each, coupled by all-to-all diffusion
    ($T_{ijkl} = 1$ in the paper), plus an input term through which the drive $u(t)$
    adds calcium to every process at rate `gain` $\cdot\, u(t)$:

    $$
    \tau_p \frac{dp_k}{dt} = \sum_{l=1}^{n} (p_l - p_k) + \tau_p\,\mathrm{gain}\cdot u(t),
    $$

    i.e. $\frac{dp_k}{dt} = \frac{n}{\tau_p}(\bar p - p_k) + \mathrm{gain}\cdot u(t)$,
    with $\bar p = \frac{1}{n}\sum_l p_l$. The mean obeys
    $\bar p(t) = \bar p(0) + \mathrm{gain}\int_0^t u$ and every deviation from the mean
    decays as $e^{-n t/\tau_p}$: in the paper's read phase ($u = 0$,
    $p_{ij}(0) = \varphi_j(q) g_j$) every process converges to
    $\bar p = \frac{1}{M}\sum_j \varphi_j(q) g_j$, the softmax denominator
    (see `shared/design/model.md`, section 3).

    This class exists so that the abstract astrocyte fits the same interface as the
    biophysical models ([`astroformer.calcium.GChI`][],
    [`astroformer.calcium.LiRinzel`][]) and can be simulated by
    [`astroformer.calcium.simulate`][] for reference and plotting. Inside the attention
    block the abstract model is not integrated numerically: its solution is used in
    closed form (the expressions above), which is exact and much cheaper.

    State: `p`, a vector of shape `(n,)` (calcium of each process, arbitrary units).
    Default initial state: $p = 0$.

    **Fields:**

    - `n`: number of processes (static hyperparameter, a positive integer).
    - `tau_p`: diffusion time constant $\tau_p$ (positive; default 1).
    - `gain`: input rate per unit drive (positive; default 1).

    ??? cite "References"

        - L. Kozachkov, K. V. Kastanenka & D. Krotov (2023). Building transformers from
          neurons and astrocytes. *PNAS* 120(34):e2219150120.
        - L. Kozachkov, J.-J. Slotine & D. Krotov (2025). Neuron–astrocyte associative
          memory. *PNAS* (arXiv:2311.08135), Appendix C.
    """

    state_names: ClassVar[tuple[str, ...]] = ("p",)

    n: int = eqx.field(static=True)
    tau_p: Float[Array, ""] = parameter(1.0)
    gain: Float[Array, ""] = parameter(1.0)

    def __check_init__(self):
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise ValueError(
                f"DiffusiveProcesses.n must be a positive integer (the number of processes), but got {self.n!r}."
            )

    def default_y0(self) -> dict[str, Float[Array, " n"]]:
        """The default initial state, $p = 0$.

        **Returns:**

        `{"p": zeros((n,))}` in the model's dtype.
        """
        return {"p": jnp.zeros((self.n,), self.dtype)}

    def vector_field(
        self,
        t: Float[ArrayLike, ""],
        y: dict[str, Float[Array, " n"]],
        drive_value: Float[ArrayLike, "*shape"],
    ) -> dict[str, Float[Array, " n"]]:
        r"""All-to-all diffusion plus input.

        **Arguments:**

        - `t`: time (unused).
        - `y`: `{"p": p}` with `p` of shape `(n,)`.
        - `drive_value`: the scalar input $u(t)$.

        **Returns:**

        `{"p": dp/dt}`, with $\frac{dp_k}{dt} = \frac{1}{\tau_p}\sum_l (p_l - p_k) +
        \mathrm{gain}\cdot u(t)$.
        """
        del t
        p = y["p"]
        diffusion = (jnp.sum(p, axis=-1, keepdims=True) - self.n * p) / self.tau_p
        return {"p": diffusion + self.gain * drive_value}

    def calcium(self, y: dict[str, Float[Array, "... n"]]) -> Float[Array, "... n"]:
        """The calcium of every process, `y["p"]` (shape `(..., n)`)."""
        return y["p"]
