r"""Learned feature neurons (after Hedgehog): trainable tuning with an exponential nonlinearity, distilled so that
the linear attention they produce has softmax's attention *weights*.

$$z = W u + b,\qquad \phi(u) = M^{-1/2} \exp\!\big([z,\ -z] - |u|^2/2\big) \in \mathbb{R}^M,
  \qquad W \in \mathbb{R}^{M/2 \times D},\ b \in \mathbb{R}^{M/2}.$$

M/2 neurons with exponential tuning $e^{w_j\cdot u + b_j}$ and M/2 mirrored ones $e^{-w_j\cdot u - b_j}$ (Hedgehog's
$[\exp(z), \exp(-z)]$), with the Gaussian envelope $e^{-|u|^2/2}$ of the paper's positive random features. At the
default initialisation ($W \sim N(0, I)$, $b = 0$) it *is* an antithetic positive random feature map:
$E[\phi(q)\cdot\phi(k)] = e^{q\cdot k}$. Training then moves the tuning freely.

What it approximates: the attention weights $\phi(q)\cdot\phi(k_\tau) / \sum_{\tau'}\phi(q)\cdot\phi(k_{\tau'})$ are
unchanged by any rescaling of $\phi(q)$, so distillation on attention weights alone (Hedgehog's loss) fits the
weights only; the astrocyte response $\phi(q_t)\cdot\sum_\tau\phi(k_\tau)$ is an estimate of the softmax
normaliser only at initialisation, or when the normaliser is part of the loss
(`AttentionWeightsTarget(normaliser_weight=...)`).

Hedgehog itself normalises each half with a softmax over the features; on this library's trained character
heads the unnormalised form above reached a lower attention-weight cross-entropy at the same M and steps.

Reference: Zhang, Bhatia, Kumbong & Ré, "The Hedgehog & the Porcupine: Expressive Linear Attentions with
Softmax Mimicry", ICLR 2024; Choromanski et al., ICLR 2021 (the envelope).
"""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._maps import AbstractFeatureMap, _check_sizes, _gaussian, _orthogonal_gaussian


class LearnedFeatures(AbstractFeatureMap):
    r"""Learned feature neurons (after Hedgehog, Zhang et al. 2024):
    $\phi(u) = M^{-1/2}\exp([Wu + b, -Wu - b] - |u|^2/2)$.

    **Arguments:**

    - `in_dim`: D; `num_features`: M, even (M/2 tuning directions, each with a mirrored neuron).
    - `orthogonal`: initialise the rows of W in orthogonal blocks (as `PositiveRandomFeatures(orthogonal=True)`).
    - `key`: PRNG key (keyword-only).

    **Shapes:** (..., D) → (..., M). Rates are positive and at most $M^{-1/2} e^{|w_j|^2/2 + |b_j|}$ whatever the
    input (finite for large |u|; they underflow to 0 far from every $w_j$). `W` and `b` are trainable
    (`trainable` is always True).
    """

    W: Float[Array, "half D"]
    b: Float[Array, " half"]
    in_dim: int = eqx.field(static=True)
    num_features: int = eqx.field(static=True)
    trainable = True
    nonnegative = True

    def __init__(self, in_dim: int, num_features: int, *, orthogonal: bool = False, dtype=None, key: PRNGKeyArray):
        in_dim, num_features = _check_sizes(in_dim, num_features)
        if num_features % 2:
            raise ValueError(f"num_features: LearnedFeatures needs an even M (M/2 mirrored pairs), got {num_features}")
        dtype = jnp.result_type(float) if dtype is None else dtype
        self.W = (_orthogonal_gaussian if orthogonal else _gaussian)(key, num_features // 2, in_dim, dtype)
        self.b = jnp.zeros(num_features // 2, dtype)
        self.in_dim = in_dim
        self.num_features = num_features

    def __call__(self, u: Float[Array, "*batch D"]) -> Float[Array, "*batch M"]:
        z = u @ self.W.T + self.b
        envelope = 0.5 * jnp.sum(u * u, axis=-1, keepdims=True) + 0.5 * jnp.log(jnp.asarray(self.num_features, z.dtype))
        return jnp.exp(jnp.concatenate([z, -z], axis=-1) - envelope)
