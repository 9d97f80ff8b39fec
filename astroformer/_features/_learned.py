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

**Unmirrored neurons** (`mirrored=False`, the feature maps `"learned-unmirrored"` and
`"learned-envelope-unmirrored"`): M independent tuning directions instead of M/2 mirrored pairs,

$$\phi(u) = M^{-1/2} \exp\!\big(W u + b - |u|^2/2\big),\qquad W \in \mathbb{R}^{M \times D},\ b \in \mathbb{R}^{M},$$

which at the default initialisation is the paper's (non-antithetic) positive random feature map, again unbiased for
$e^{q\cdot k}$. The pairs tie two of every M neurons to one direction; without them the same M neurons have twice
the directions. On the four trained character heads of `benchmarks.distill_envelope` this fitted softmax's weights
more closely at the same M and steps (on every head with the learned envelope, on three with the fixed one; README,
"Fidelity"); independent biases for the two halves of each pair did not.

**Learned envelope** (`envelope="learned"`, the feature map `"learned-envelope"`): the Gaussian envelope gets a
learned centre $\mu$ and per-dimension precision $\gamma = e^{\log\gamma}$,

$$\phi(u) = M^{-1/2} \exp\!\big([z,\ -z] - \tfrac12 \textstyle\sum_d \gamma_d (u_d - \mu_d)^2\big),$$

a receptive field shared by all feature neurons of the head. It multiplies every rate of a token by the same
factor, so for a key it sets how strongly that token is written at all, which the tuning $W, b$ alone can only
approximate. At initialisation ($\mu = 0$, $\gamma = 1$) it is the fixed envelope above. On the fidelity
benchmark's trained character heads it fits softmax's attention weights better at the same M and steps (README,
"Fidelity").

Reference: Zhang, Bhatia, Kumbong & Ré, "The Hedgehog & the Porcupine: Expressive Linear Attentions with
Softmax Mimicry", ICLR 2024; Choromanski et al., ICLR 2021 (the envelope).
"""

from typing import Literal

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._maps import AbstractFeatureMap, _check_sizes, _gaussian, _orthogonal_gaussian, check_map_input


class LearnedFeatures(AbstractFeatureMap):
    r"""Learned feature neurons (after Hedgehog, Zhang et al. 2024):
    $\phi(u) = M^{-1/2}\exp([Wu + b, -Wu - b] - |u|^2/2)$, or with a learned envelope
    $\phi(u) = M^{-1/2}\exp([Wu + b, -Wu - b] - \tfrac12\sum_d \gamma_d (u_d - \mu_d)^2)$; unmirrored,
    $\phi(u) = M^{-1/2}\exp(Wu + b - \dots)$ with M rows of W.

    **Arguments:**

    - `in_dim`: D; `num_features`: M, even when mirrored (M/2 tuning directions, each with a mirrored neuron).
    - `mirrored`: `True` (default, Hedgehog's $[\exp(z), \exp(-z)]$ pairs) or `False` (M independent directions:
      W is (M, D) and b (M,)).
    - `orthogonal`: initialise the rows of W in orthogonal blocks (as `PositiveRandomFeatures(orthogonal=True)`).
    - `envelope`: `"fixed"` (the positive random features' $e^{-|u|^2/2}$) or `"learned"` (trainable centre
      `mu` (D,) and log-precision `log_gamma` (D,), initialised to the fixed envelope).
    - `key`: PRNG key (keyword-only).

    **Shapes:** (..., D) → (..., M). Rates are positive and at most
    $M^{-1/2} \exp(|b_j + w_j\cdot\mu| + \tfrac12\sum_d w_{jd}^2/\gamma_d)$ whatever the input (attained at
    $u = \mu \pm w_j/\gamma$; $\mu = 0$, $\gamma = 1$ for the fixed envelope; unmirrored, neuron j's bound is
    $M^{-1/2} \exp(b_j + w_j\cdot\mu + \tfrac12\sum_d w_{jd}^2/\gamma_d)$, at $u = \mu + w_j/\gamma$): finite
    for large |u|, where they underflow to 0. The bound grows without limit as a precision $\gamma_d \to 0$ (the
    envelope then no longer confines $u_d$); no floor is imposed on it. `W`, `b` (and `mu`, `log_gamma`) are
    trainable (`trainable` is always True).
    """

    W: Float[Array, "directions D"]
    b: Float[Array, " directions"]
    mu: Float[Array, " D"] | None
    log_gamma: Float[Array, " D"] | None
    in_dim: int = eqx.field(static=True)
    num_features: int = eqx.field(static=True)
    mirrored: bool = eqx.field(static=True)
    trainable = True
    nonnegative = True

    def __init__(
        self,
        in_dim: int,
        num_features: int,
        *,
        orthogonal: bool = False,
        envelope: Literal["fixed", "learned"] = "fixed",
        mirrored: bool = True,
        dtype=None,
        key: PRNGKeyArray,
    ):
        in_dim, num_features = _check_sizes(in_dim, num_features)
        if not isinstance(mirrored, bool):
            raise TypeError(f"mirrored: expected True or False, got {mirrored!r}")
        if mirrored and num_features % 2:
            raise ValueError(
                f"num_features: LearnedFeatures needs an even M (M/2 mirrored pairs), got {num_features}; "
                "mirrored=False takes any M"
            )
        if envelope not in ("fixed", "learned"):
            raise ValueError(f"envelope: expected 'fixed' or 'learned', got {envelope!r}")
        dtype = jnp.result_type(float) if dtype is None else dtype
        directions = num_features // 2 if mirrored else num_features
        self.W = (_orthogonal_gaussian if orthogonal else _gaussian)(key, directions, in_dim, dtype)
        self.b = jnp.zeros(directions, dtype)
        learned = envelope == "learned"
        self.mu = jnp.zeros(in_dim, dtype) if learned else None
        self.log_gamma = jnp.zeros(in_dim, dtype) if learned else None
        self.in_dim = in_dim
        self.num_features = num_features
        self.mirrored = mirrored

    @property
    def envelope(self) -> str:
        """`"learned"` if the envelope has a trainable centre and precision, else `"fixed"`."""
        return "fixed" if self.mu is None else "learned"

    def __call__(self, u: Float[Array, "*batch D"]) -> Float[Array, "*batch M"]:
        check_map_input(self, u)
        z = u @ self.W.T + self.b
        if (self.mu is None) != (self.log_gamma is None):
            raise ValueError(
                "mu, log_gamma: expected both arrays (learned envelope) or both None (fixed), got one of each"
            )
        if self.mu is None or self.log_gamma is None:
            quadratic = jnp.sum(u * u, axis=-1, keepdims=True)
        else:
            quadratic = jnp.sum(jnp.exp(self.log_gamma) * (u - self.mu) ** 2, axis=-1, keepdims=True)
        envelope = 0.5 * quadratic + 0.5 * jnp.log(jnp.asarray(self.num_features, z.dtype))
        tuning = jnp.concatenate([z, -z], axis=-1) if self.mirrored else z
        return jnp.exp(tuning - envelope)
