"""`NAModel`: one neuron–astrocyte head with everything a fit may tune, as one Equinox module."""

import diffrax
import equinox as eqx
from jaxtyping import Array, ArrayLike, Bool, Float

from .._features._maps import AbstractFeatureMap
from .._head._block import na_attention
from .._head._params import NAParams
from ._traces import Traces, read_traces


class NAModel(eqx.Module):
    r"""A neuron–astrocyte attention head $(q, k, v) \mapsto x(T_r)$ with input gains (model.md §2–3):

    $$\phi_q = \phi(a\,q),\quad \phi_k = \phi(a\,k),\quad v' = b\,v,\quad
      \text{outputs} = \texttt{na\_attention}(\phi_q, \phi_k, v', \text{params}).$$

    **Fields:**

    - `params`: the `NAParams` (time constants).
    - `feature_map`: the feature-neuron tuning $\phi$ (an `AbstractFeatureMap`, non-negative), or `None` when
      the inputs q and k are already feature-neuron rates (shape (L, M)).
    - `qk_gain`: scalar gain $a$ on queries and keys (a temperature: $\phi(aq)\cdot\phi(ak) \approx
      e^{a^2 q\cdot k}$).
    - `v_gain`: scalar gain $b$ on the values.
    - `causal` (static): causal attention.
    - `adjoint` (static): the diffrax adjoint for the read (`None`: the library default,
      `RecursiveCheckpointAdjoint` with one checkpoint per step). With `diffrax.ForwardMode()` differentiate
      with `jax.jacfwd` (`fit` does so by itself).
    - `read_steps` (static): `Magnus2` steps of each read of `__call__`.
    - `substeps` (static): `Magnus2` steps between observation times in `traces`.
    """

    params: NAParams
    feature_map: AbstractFeatureMap | None = None
    qk_gain: Float[ArrayLike, ""] = 1.0
    v_gain: Float[ArrayLike, ""] = 1.0
    causal: bool = eqx.field(static=True, default=True)
    adjoint: diffrax.AbstractAdjoint | None = eqx.field(static=True, default=None)
    read_steps: int = eqx.field(static=True, default=16)
    substeps: int = eqx.field(static=True, default=4)

    def __check_init__(self):
        if not isinstance(self.params, NAParams):
            raise TypeError(f"NAModel.params: expected an astroformer.NAParams, got {type(self.params).__name__}")
        if self.feature_map is not None:
            if not isinstance(self.feature_map, AbstractFeatureMap):
                raise TypeError(
                    f"NAModel.feature_map: expected an AbstractFeatureMap or None, "
                    f"got {type(self.feature_map).__name__}"
                )
            if not self.feature_map.nonnegative:
                raise ValueError(
                    f"NAModel.feature_map: expected a non-negative feature map (firing rates), "
                    f"got {type(self.feature_map).__name__}"
                )

    def features(self, q: Float[Array, "L D"], k: Float[Array, "L D"], v: Float[Array, "L N"]):
        """The network's inputs $(\\phi(aq), \\phi(ak), bv)$."""
        if self.feature_map is None:
            phi_q, phi_k = self.qk_gain * q, self.qk_gain * k
        else:
            phi_q, phi_k = self.feature_map(q * self.qk_gain), self.feature_map(k * self.qk_gain)
        return phi_q, phi_k, self.v_gain * v

    def __call__(
        self,
        q: Float[Array, "L D"],
        k: Float[Array, "L D"],
        v: Float[Array, "L N"],
        *,
        mask: Bool[Array, " L"] | None = None,
    ) -> Float[Array, "L N"]:
        """Outputs $x(T_r)$ of every read, (L, N)."""
        phi_q, phi_k, v = self.features(q, k, v)
        return na_attention(
            phi_q,
            phi_k,
            v,
            self.params,
            causal=self.causal,
            mode="ode",
            mask=mask,
            adjoint=self.adjoint,
            read_steps=self.read_steps,
        )

    def traces(
        self,
        q: Float[Array, "L D"],
        k: Float[Array, "L D"],
        v: Float[Array, "L N"],
        ts,
        *,
        variables: tuple[str, ...] = ("x", "p", "s"),
        mask: Bool[Array, " L"] | None = None,
    ) -> Traces:
        """Time courses of every read at the real times `ts` (see `read_traces`)."""
        phi_q, phi_k, v = self.features(q, k, v)
        return read_traces(
            phi_q,
            phi_k,
            v,
            self.params,
            ts,
            causal=self.causal,
            mask=mask,
            variables=variables,
            adjoint=self.adjoint,
            substeps=self.substeps,
        )


__all__ = ["NAModel"]
