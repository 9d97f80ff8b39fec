"""The G-ChI astrocyte model of De Pittà et al. (2009)."""

from typing import ClassVar

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ._base import AbstractCalciumModel, parameter

_UM_PER_MM = 1000.0


class GChI(AbstractCalciumModel):
    r"""G-ChI astrocyte: metabotropic glutamate receptors, IP3 turnover and IP3R calcium.

    The "glutamate–CICR–IP3 metabolism" model of De Pittà et al. (2009), in the form and
    with the parameters of Stimberg, Goodman, Brette & De Pittà (2018), example 2
    (without noise and without the exogenous IP3 flux). Units: µM, seconds; the drive
    is extracellular neurotransmitter $Y_S$ in **mM**.

    State: $\Gamma_A$ (`Gamma_A`, activated receptor fraction), $I$ (`I`, IP3, µM),
    $C$ (`C`, cytosolic Ca²⁺, µM), $h$ (`h`, IP3R de-inactivation gate).

    $$
    \begin{aligned}
    \frac{d\Gamma_A}{dt} &= O_N Y_S (1 - \Gamma_A)
        - \Omega_N \Bigl(1 + \zeta \frac{C}{C + K_{KC}}\Bigr) \Gamma_A \\
    \frac{dI}{dt} &= O_\beta \Gamma_A
        + \frac{O_\delta}{1 + I/\kappa_\delta} \frac{C^2}{C^2 + K_\delta^2}
        - O_{3K} \frac{C^4}{C^4 + K_D^4} \frac{I}{I + K_{3K}} - \Omega_{5P} I \\
    \frac{dC}{dt} &= (\Omega_C m_\infty^3 h^3 + \Omega_L)\bigl(C_T - (1 + \rho_A) C\bigr)
        - O_P \frac{C^2}{C^2 + K_P^2} \\
    \frac{dh}{dt} &= \frac{h_\infty - h}{\tau_h}
    \end{aligned}
    $$

    with $m_\infty = \frac{I}{I + d_1} \frac{C}{C + d_5}$,
    $h_\infty = \frac{Q_2}{Q_2 + C}$, $\tau_h = \frac{1}{O_2 (Q_2 + C)}$ and
    $Q_2 = d_2 \frac{I + d_1}{I + d_3}$.

    Every parameter is a field (a trainable floating-point scalar array; any positive
    finite value may be given). The defaults:

    | field | value | unit | | field | value | unit |
    |---|---|---|---|---|---|---|
    | `O_P` | 0.9 | µM/s | | `O_beta` | 5 | µM/s |
    | `K_P` | 0.1 | µM | | `O_N` | 0.3 | /(µM·s) |
    | `C_T` | 2 | µM | | `Omega_N` | 0.5 | /s |
    | `rho_A` | 0.18 | | | `K_KC` | 0.5 | µM |
    | `Omega_C` | 6 | /s | | `zeta` | 10 | |
    | `Omega_L` | 0.1 | /s | | `O_delta` | 0.2 | µM/s |
    | `d_1` | 0.13 | µM | | `kappa_delta` | 1.5 | µM |
    | `d_2` | 1.05 | µM | | `K_delta` | 0.3 | µM |
    | `O_2` | 0.2 | /(µM·s) | | `Omega_5P` | 0.1 | /s |
    | `d_3` | 0.9434 | µM | | `K_D` | 0.5 | µM |
    | `d_5` | 0.08 | µM | | `K_3K` | 1 | µM |
    | | | | | `O_3K` | 4.5 | µM/s |

    Units of the drive: `O_N` is per µM per second while $Y_S$ is given in mM, so the
    binding term uses $Y_S$ converted to µM ($\times 1000$): a 0.5 mM pulse activates
    receptors at $O_N Y_S = 150$/s, as in Brian 2, where the units are converted
    automatically.

    Default initial state: $\Gamma_A = 0$, $I = 0$, $C = 0$, $h = 0.9$.

    ??? cite "References"

        - M. De Pittà, M. Goldberg, V. Volman, H. Berry & E. Ben-Jacob (2009).
          Glutamate regulation of calcium and IP3 oscillating and pulsating dynamics in
          astrocytes. *J. Biol. Phys.* 35:383–411.
        - M. Stimberg, D. F. M. Goodman, R. Brette & M. De Pittà. Modeling
          neuron–glia interactions with the Brian 2 simulator. bioRxiv 198366;
          in *Computational Glioscience*, Springer (2019). Example 2.
    """

    state_names: ClassVar[tuple[str, ...]] = ("Gamma_A", "I", "C", "h")

    # Calcium-induced calcium release (CICR).
    O_P: Float[Array, ""] = parameter(0.9)
    K_P: Float[Array, ""] = parameter(0.1)
    C_T: Float[Array, ""] = parameter(2.0)
    rho_A: Float[Array, ""] = parameter(0.18)
    Omega_C: Float[Array, ""] = parameter(6.0)
    Omega_L: Float[Array, ""] = parameter(0.1)
    d_1: Float[Array, ""] = parameter(0.13)
    d_2: Float[Array, ""] = parameter(1.05)
    O_2: Float[Array, ""] = parameter(0.2)
    d_3: Float[Array, ""] = parameter(0.9434)
    d_5: Float[Array, ""] = parameter(0.08)
    # Receptor activation and IP3 production by PLCβ.
    O_beta: Float[Array, ""] = parameter(5.0)
    O_N: Float[Array, ""] = parameter(0.3)
    Omega_N: Float[Array, ""] = parameter(0.5)
    K_KC: Float[Array, ""] = parameter(0.5)
    zeta: Float[Array, ""] = parameter(10.0)
    # Endogenous IP3 production by PLCδ.
    O_delta: Float[Array, ""] = parameter(0.2)
    kappa_delta: Float[Array, ""] = parameter(1.5)
    K_delta: Float[Array, ""] = parameter(0.3)
    # IP3 degradation (IP-5P and IP3-3K).
    Omega_5P: Float[Array, ""] = parameter(0.1)
    K_D: Float[Array, ""] = parameter(0.5)
    K_3K: Float[Array, ""] = parameter(1.0)
    O_3K: Float[Array, ""] = parameter(4.5)

    def default_y0(self) -> dict[str, Float[Array, ""]]:
        """The default initial state: $\\Gamma_A = 0$, $I = 0$, $C = 0$, $h = 0.9$.

        **Returns:**

        A dictionary of scalar arrays in the model's dtype.
        """
        dtype = self.dtype
        return {
            "Gamma_A": jnp.asarray(0.0, dtype),
            "I": jnp.asarray(0.0, dtype),
            "C": jnp.asarray(0.0, dtype),
            "h": jnp.asarray(0.9, dtype),
        }

    def vector_field(
        self,
        t: Float[ArrayLike, ""],
        y: dict[str, Float[Array, "..."]],
        drive_value: Float[ArrayLike, "*shape"],
    ) -> dict[str, Float[Array, "..."]]:
        """The G-ChI equations (see the class docstring).

        **Arguments:**

        - `t`: time in seconds (unused: the model is autonomous apart from the drive).
        - `y`: state dictionary with keys `Gamma_A`, `I`, `C`, `h`.
        - `drive_value`: extracellular neurotransmitter $Y_S$ at time `t`, in mM
            (converted to µM internally).

        **Returns:**

        The derivatives (per second) as a dictionary with the keys of `y`.
        """
        del t
        gamma_a, ip3, c, h = y["Gamma_A"], y["I"], y["C"], y["h"]
        y_s = drive_value * _UM_PER_MM  # mM -> µM, to match the units of O_N.

        d_gamma_a = self.O_N * y_s * (1 - gamma_a) - self.Omega_N * (1 + self.zeta * c / (c + self.K_KC)) * gamma_a

        c2 = c**2
        c4 = c2**2
        j_beta = self.O_beta * gamma_a
        j_delta = self.O_delta / (1 + ip3 / self.kappa_delta) * c2 / (c2 + self.K_delta**2)
        j_3k = self.O_3K * c4 / (c4 + self.K_D**4) * ip3 / (ip3 + self.K_3K)
        j_5p = self.Omega_5P * ip3
        d_ip3 = j_beta + j_delta - j_3k - j_5p

        m_inf = ip3 / (ip3 + self.d_1) * c / (c + self.d_5)
        j_r = (self.Omega_C * m_inf**3 * h**3 + self.Omega_L) * (self.C_T - (1 + self.rho_A) * c)
        j_p = self.O_P * c2 / (c2 + self.K_P**2)
        d_c = j_r - j_p

        q_2 = self.d_2 * (ip3 + self.d_1) / (ip3 + self.d_3)
        h_inf = q_2 / (q_2 + c)
        tau_h = 1 / (self.O_2 * (q_2 + c))
        d_h = (h_inf - h) / tau_h

        return {"Gamma_A": d_gamma_a, "I": d_ip3, "C": d_c, "h": d_h}

    def calcium(self, y: dict[str, Float[Array, "..."]]) -> Float[Array, "..."]:
        """The cytosolic calcium `y["C"]` (µM)."""
        return y["C"]
