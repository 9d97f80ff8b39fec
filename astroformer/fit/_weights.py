r"""`AttentionWeightsTarget`: fit feature neurons so that their kernel reproduces a softmax head's attention
weights (Hedgehog distillation, Zhang et al., ICLR 2024):

$$\mathcal{L}(\phi) = -\frac{1}{BL}\sum_{b,t}\sum_{\tau\le t} a^{\mathrm{sm}}_{t\tau}\,\log a^{\phi}_{t\tau}$$

over B sequences of one head's (scaled) queries and keys (`astroformer._attention_weights`), optionally plus
$\lambda$ times the mean squared log-error of the astrocyte response against the softmax normaliser,
$\big(\log \phi(q_t)\cdot\sum_{\tau\le t}\phi(k_\tau) - \log\sum_{\tau\le t} e^{q_t\cdot k_\tau}\big)^2$
(the weights alone do not constrain the normaliser), and optionally a penalty on astrocyte responses above a cap
(`response_cap`).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from .._attention_weights import log_normaliser_mse, response_excess, weights_cross_entropy
from .._features._maps import AbstractFeatureMap
from .._validate import check_real
from ._model import NAModel
from ._targets import AbstractTarget


class AttentionWeightsTarget(AbstractTarget):
    r"""Cross-entropy of a feature map's attention weights against softmax's, averaged over sequences.

    **Fields:** `q`, `k` (B, L, D) or (L, D): one head's queries and keys (already scaled by $D^{-1/4}$),
    `mask` (B, L) / (L,) or `None`, `causal` (static), `normaliser_weight` $\lambda \ge 0$ (static; default 0:
    attention weights only, Hedgehog's loss), `response_cap` (static; default `None`): if a number, the loss also
    has `response_excess`, $\max(0, \log A_t - \mathrm{cap})^2$ averaged over queries, $A_t$ the astrocyte
    response $\phi(q_t)\cdot\sum_\tau\phi(k_\tau)$: zero below the cap, it bounds the scale of the rates from
    above, softly, which the attention weights leave free (they do not change when all rates are scaled).

    The model may be an `AbstractFeatureMap` (fit its leaves `"W"`, `"b"`, ...) or an `NAModel` (fit
    `"feature_map.W"`, ...; its `qk_gain` scales q and k first).
    """

    q: Float[Array, "*B L D"]
    k: Float[Array, "*B L D"]
    mask: Bool[Array, "*B L"] | None
    causal: bool = eqx.field(static=True)
    normaliser_weight: float = eqx.field(static=True)
    response_cap: float | None = eqx.field(static=True)

    def __init__(
        self,
        q,
        k,
        *,
        mask=None,
        causal: bool = True,
        normaliser_weight: float = 0.0,
        response_cap: float | None = None,
    ):
        q, k = jnp.asarray(q), jnp.asarray(k)
        if q.ndim not in (2, 3) or q.shape != k.shape:
            raise ValueError(
                f"q, k: expected two (B, L, D) or (L, D) arrays of one shape, got {tuple(q.shape)} and {tuple(k.shape)}"
            )
        if mask is not None and tuple(mask.shape) != tuple(q.shape[:-1]):
            raise ValueError(f"mask: expected shape {tuple(q.shape[:-1])}, got {tuple(mask.shape)}")
        if not (isinstance(normaliser_weight, (int, float)) and normaliser_weight >= 0):
            raise ValueError(f"normaliser_weight: expected a number >= 0, got {normaliser_weight!r}")
        self.q, self.k, self.mask, self.causal = q, k, mask, causal
        self.normaliser_weight = float(normaliser_weight)
        self.response_cap = check_real("response_cap", response_cap, positive=None, or_none=True)

    def __call__(self, model) -> Float[Array, ""]:
        if isinstance(model, NAModel):
            phi, gain = model.feature_map, model.qk_gain
        elif isinstance(model, AbstractFeatureMap):
            phi, gain = model, 1.0
        else:
            raise TypeError(f"model: expected an AbstractFeatureMap or an NAModel, got {type(model).__name__}")
        q, k = gain * self.q, gain * self.k
        batched = q.ndim == 3
        q, k = (q, k) if batched else (q[None], k[None])
        mask = self.mask if (self.mask is None or batched) else self.mask[None]

        def one(qb, kb, mb):
            phi_q, phi_k = phi(qb), phi(kb)
            loss = weights_cross_entropy(phi_q, phi_k, qb, kb, causal=self.causal, mask=mb)
            if self.normaliser_weight:
                loss = loss + self.normaliser_weight * log_normaliser_mse(
                    phi_q, phi_k, qb, kb, causal=self.causal, mask=mb
                )
            if self.response_cap is not None:
                loss = loss + response_excess(phi_q, phi_k, self.response_cap, causal=self.causal, mask=mb)
            return loss

        if mask is None:
            return jnp.mean(jax.vmap(lambda a, b: one(a, b, None))(q, k))
        return jnp.mean(jax.vmap(one)(q, k, mask))


__all__ = ["AttentionWeightsTarget"]
