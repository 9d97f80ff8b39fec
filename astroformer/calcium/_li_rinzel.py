"""The Li–Rinzel (1994) IP3R calcium model."""

from typing import ClassVar

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ._base import AbstractCalciumModel, parameter


class LiRinzel(AbstractCalciumModel):
    r"""Li–Rinzel astrocyte calcium: IP3 receptor channel, SERCA pump and ER leak.

    The two-variable reduction by Li & Rinzel (1994) of the De Young–Keizer IP3
    receptor model, with the classic parameter set used by NEST's `astrocyte_lr_1994`.
    Units: µM and seconds. State: $C$ (`C`, cytosolic Ca²⁺, µM) and $h$ (`h`, the
    IP3R inactivation gate). The drive is the IP3 concentration $I$ in µM (in NEST it
    is a state variable of its own; here it is given, so that any IP3 model or signal
    can drive the channel).

    $$
    \begin{aligned}
    m_\infty &= \frac{I}{I + d_1} \frac{C}{C + d_5} \\
    C_{ER} &= \frac{C_{tot} - C}{\rho_{ER}} \\
    J_{chan} &= r_{IP3R}\, m_\infty^3 h^3 (C_{ER} - C) \\
    J_{leak} &= r_L (C_{ER} - C) \\
    J_{pump} &= V_{SERCA} \frac{C^2}{C^2 + K_{SERCA}^2} \\
    \frac{dC}{dt} &= J_{chan} + J_{leak} - J_{pump} \\
    \frac{dh}{dt} &= a_2 \Bigl(d_2 \frac{I + d_1}{I + d_3} (1 - h) - C h\Bigr)
    \end{aligned}
    $$

    Total calcium is conserved by construction: $C + \rho_{ER} C_{ER} = C_{tot}$, where
    $\rho_{ER}$ (`ratio_ER_cyt`) is the ER/cytosol volume ratio. Use
    [`astroformer.calcium.LiRinzel.er_calcium`][] for $C_{ER}$.

    Parameters (fields; trainable floating-point scalar arrays, positive and finite):

    | field | default | unit | meaning |
    |---|---|---|---|
    | `Ca_tot` | 2.0 | µM | total free calcium, per cytosolic volume |
    | `ratio_ER_cyt` | 0.185 | | ER/cytosol volume ratio $\rho_{ER}$ |
    | `r_IP3R` | 6.0 | /s | maximal IP3R flux rate |
    | `r_L` | 0.11 | /s | ER leak rate |
    | `V_SERCA` | 0.9 | µM/s | maximal SERCA uptake |
    | `K_SERCA` | 0.1 | µM | SERCA half-activation |
    | `d1` | 0.13 | µM | IP3 dissociation constant |
    | `d2` | 1.049 | µM | Ca²⁺ inactivation dissociation constant |
    | `d3` | 0.9434 | µM | IP3 dissociation constant |
    | `d5` | 0.08234 | µM | Ca²⁺ activation dissociation constant |
    | `a2` | 0.2 | /(µM·s) | IP3R Ca²⁺ inactivation binding rate |

    Default initial state: $C = 0.073$ µM, $h = 0.793$ (NEST's defaults for
    `astrocyte_lr_1994`, after Nadkarni & Jung 2003).

    !!! note

        The parameter values are NEST's (converted from ms to s), but the fluxes are
        written as above, in the classic rate form. NEST's implementation instead
        multiplies $J_{chan}$ and $J_{leak}$ by $\rho_{ER}$, defines
        $C_{ER} = C_{tot} + (C_{tot} - C)/\rho_{ER}$ and clips $C$ to
        $[0, C_{tot}(1 + \rho_{ER})]$ inside the vector field, so its traces differ from
        these.

    ??? cite "References"

        - Y.-X. Li & J. Rinzel (1994). Equations for InsP3 receptor-mediated
          [Ca²⁺]ᵢ oscillations derived from a detailed kinetic model: a Hodgkin–Huxley
          like formalism. *J. Theor. Biol.* 166:461–473.
        - S. Nadkarni & P. Jung (2003). Spontaneous oscillations of dressed neurons: a
          new mechanism for epilepsy? *Phys. Rev. Lett.* 91:268101.
        - NEST Simulator, model `astrocyte_lr_1994`.
    """

    state_names: ClassVar[tuple[str, ...]] = ("C", "h")

    Ca_tot: Float[Array, ""] = parameter(2.0)
    ratio_ER_cyt: Float[Array, ""] = parameter(0.185)
    r_IP3R: Float[Array, ""] = parameter(6.0)
    r_L: Float[Array, ""] = parameter(0.11)
    V_SERCA: Float[Array, ""] = parameter(0.9)
    K_SERCA: Float[Array, ""] = parameter(0.1)
    d1: Float[Array, ""] = parameter(0.13)
    d2: Float[Array, ""] = parameter(1.049)
    d3: Float[Array, ""] = parameter(0.9434)
    d5: Float[Array, ""] = parameter(0.08234)
    a2: Float[Array, ""] = parameter(0.2)

    def default_y0(self) -> dict[str, Float[Array, ""]]:
        """The default initial state: $C = 0.073$ µM, $h = 0.793$.

        **Returns:**

        A dictionary of scalar arrays in the model's dtype.
        """
        dtype = self.dtype
        return {"C": jnp.asarray(0.073, dtype), "h": jnp.asarray(0.793, dtype)}

    def er_calcium(self, y: dict[str, Float[Array, "..."]]) -> Float[Array, "..."]:
        r"""The ER calcium $C_{ER} = (C_{tot} - C)/\rho_{ER}$ (µM).

        **Arguments:**

        - `y`: a state dictionary (leaves may carry leading time/batch axes).

        **Returns:**

        $C_{ER}$, with the shape of `y["C"]`.
        """
        return (self.Ca_tot - y["C"]) / self.ratio_ER_cyt

    def vector_field(
        self,
        t: Float[ArrayLike, ""],
        y: dict[str, Float[Array, "..."]],
        drive_value: Float[ArrayLike, "*shape"],
    ) -> dict[str, Float[Array, "..."]]:
        """The Li–Rinzel equations (see the class docstring).

        **Arguments:**

        - `t`: time in seconds (unused: the model is autonomous apart from the drive).
        - `y`: state dictionary with keys `C`, `h`.
        - `drive_value`: the IP3 concentration $I$ at time `t`, in µM.

        **Returns:**

        The derivatives (per second) as a dictionary with the keys of `y`.
        """
        del t
        c, h = y["C"], y["h"]
        ip3 = drive_value
        m_inf = ip3 / (ip3 + self.d1) * c / (c + self.d5)
        c_er = self.er_calcium(y)
        j_chan = self.r_IP3R * m_inf**3 * h**3 * (c_er - c)
        j_leak = self.r_L * (c_er - c)
        j_pump = self.V_SERCA * c**2 / (c**2 + self.K_SERCA**2)
        d_c = j_chan + j_leak - j_pump
        q_2 = self.d2 * (ip3 + self.d1) / (ip3 + self.d3)
        d_h = self.a2 * (q_2 * (1 - h) - c * h)
        return {"C": d_c, "h": d_h}

    def calcium(self, y: dict[str, Float[Array, "..."]]) -> Float[Array, "..."]:
        """The cytosolic calcium `y["C"]` (µM)."""
        return y["C"]
