"""Feature (hidden) neuron tuning: maps phi: R^D -> R^M whose inner products approximate exp(q.k).

References:
    Choromanski et al., "Rethinking Attention with Performers", ICLR 2021 (positive random features).
    Rahimi & Recht, "Random Features for Large-Scale Kernel Machines", NeurIPS 2007 (Fourier features).
    Katharopoulos et al., "Transformers are RNNs", ICML 2020 (elu + 1).
"""

import abc
from typing import TYPE_CHECKING

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray
from .._validate import check_int


class AbstractFeatureMap(eqx.Module):
    """A feature-neuron tuning curve phi: (..., D) -> (..., M).

    `nonnegative` says whether its outputs are valid firing rates (required by `na_attention`).
    """

    # For the type checker these are read-only properties, which a subclass may implement as a field, a class
    # attribute or a property (HeadwiseFeatures reads them off its stacked map), as equinox allows; mypy reads
    # AbstractVar as a plain dataclass field, which a property may not override.
    if TYPE_CHECKING:

        @property
        def in_dim(self) -> int: ...
        @property
        def num_features(self) -> int: ...
        @property
        def nonnegative(self) -> bool: ...
    else:
        in_dim: eqx.AbstractVar[int]
        num_features: eqx.AbstractVar[int]
        nonnegative: eqx.AbstractClassVar[bool]

    @abc.abstractmethod
    def __call__(self, u: Float[Array, "*batch D"]) -> Float[Array, "*batch M"]: ...

    def for_head(self, index: int | Array) -> "AbstractFeatureMap":
        """The tuning of head `index` of a multi-head layer: the same map for every head, unless the map holds
        one tuning per head (`HeadwiseFeatures`)."""
        return self


def check_map_input(feature_map: AbstractFeatureMap, u) -> None:
    """Raise a `ValueError` naming `u` unless its last axis is the map's input size D (`in_dim`)."""
    shape = tuple(getattr(u, "shape", ()))
    if not shape or shape[-1] != feature_map.in_dim:
        raise ValueError(
            f"u: expected a last axis of size D = {feature_map.in_dim} ({type(feature_map).__name__}.in_dim), "
            f"got shape {shape}"
        )


def _maybe_frozen(w: Array, trainable: bool) -> Array:
    return w if trainable else jax.lax.stop_gradient(w)


class PositiveRandomFeatures(AbstractFeatureMap):
    r"""The paper's feature neurons (FAVOR+): $\phi(u) = M^{-1/2} \exp(W u - |u|^2/2)$, rows of $W \sim N(0, I_D)$,
    so that $E[\phi(q)\cdot\phi(k)] = e^{q\cdot k}$ (model.md §2). Rates are positive.

    **Arguments:**

    - `in_dim`: D, the query/key dimension.
    - `num_features`: M, the number of feature neurons.
    - `trainable`: if False (default) `W` is frozen (gradients are stopped).
    - `orthogonal`: draw the rows of `W` in orthogonal blocks (lower-variance estimate, Choromanski et al.).
    - `key`: a JAX PRNG key (keyword-only).
    """

    W: Float[Array, "M D"]
    in_dim: int = eqx.field(static=True)
    num_features: int = eqx.field(static=True)
    trainable: bool = eqx.field(static=True)
    nonnegative = True

    def __init__(
        self,
        in_dim: int,
        num_features: int,
        *,
        trainable: bool = False,
        orthogonal: bool = False,
        dtype=None,
        key: PRNGKeyArray,
    ):
        in_dim, num_features = _check_sizes(in_dim, num_features)
        dtype = jnp.result_type(float) if dtype is None else dtype
        self.W = (_orthogonal_gaussian if orthogonal else _gaussian)(key, num_features, in_dim, dtype)
        self.in_dim = in_dim
        self.num_features = num_features
        self.trainable = trainable

    def __call__(self, u: Float[Array, "*batch D"]) -> Float[Array, "*batch M"]:
        check_map_input(self, u)
        W = _maybe_frozen(self.W, self.trainable)
        return jnp.exp(u @ W.T - 0.5 * jnp.sum(u * u, axis=-1, keepdims=True)) / jnp.sqrt(self.num_features)


class RandomFourierFeatures(AbstractFeatureMap):
    r"""Trigonometric random features: $\phi(u) = e^{|u|^2/2} (M/2)^{-1/2} [\sin(Wu), \cos(Wu)]$, so that
    $E[\phi(q)\cdot\phi(k)] = e^{q\cdot k}$. Signed, so not valid firing rates: use them with
    `linear_attention` or for kernel studies; `na_attention` refuses negative rates.

    `num_features` must be even (M/2 frequencies).
    """

    W: Float[Array, "half D"]
    in_dim: int = eqx.field(static=True)
    num_features: int = eqx.field(static=True)
    trainable: bool = eqx.field(static=True)
    nonnegative = False

    def __init__(self, in_dim: int, num_features: int, *, trainable: bool = False, dtype=None, key: PRNGKeyArray):
        in_dim, num_features = _check_sizes(in_dim, num_features)
        if num_features % 2:
            raise ValueError(f"RandomFourierFeatures: num_features must be even, got {num_features}")
        dtype = jnp.result_type(float) if dtype is None else dtype
        self.W = _gaussian(key, num_features // 2, in_dim, dtype)
        self.in_dim = in_dim
        self.num_features = num_features
        self.trainable = trainable

    def __call__(self, u: Float[Array, "*batch D"]) -> Float[Array, "*batch M"]:
        check_map_input(self, u)
        W = _maybe_frozen(self.W, self.trainable)
        wu = u @ W.T
        scale = jnp.exp(0.5 * jnp.sum(u * u, axis=-1, keepdims=True)) / jnp.sqrt(self.num_features / 2)
        return scale * jnp.concatenate([jnp.sin(wu), jnp.cos(wu)], axis=-1)


class EluFeatures(AbstractFeatureMap):
    r"""The linear-attention map $\phi(u) = \mathrm{elu}(u) + 1$ (Katharopoulos et al. 2020); M = D.

    With `trainable=True` a learned D×D projection precedes it (identity at initialisation).
    """

    W: Float[Array, "D D"] | None
    in_dim: int = eqx.field(static=True)
    num_features: int = eqx.field(static=True)
    nonnegative = True

    def __init__(self, in_dim: int, *, trainable: bool = False, dtype=None, key: PRNGKeyArray | None = None):
        in_dim, _ = _check_sizes(in_dim, in_dim)
        dtype = jnp.result_type(float) if dtype is None else dtype
        self.W = jnp.eye(in_dim, dtype=dtype) if trainable else None
        self.in_dim = in_dim
        self.num_features = in_dim

    def __call__(self, u: Float[Array, "*batch D"]) -> Float[Array, "*batch M"]:
        check_map_input(self, u)
        if self.W is not None:
            u = u @ self.W.T
        return jax.nn.elu(u) + 1.0


def _check_sizes(in_dim, num_features) -> tuple[int, int]:
    return check_int("in_dim", in_dim), check_int("num_features", num_features)


def _gaussian(key, rows, cols, dtype):
    return jax.random.normal(key, (rows, cols), dtype)


def _orthogonal_gaussian(key, rows, cols, dtype):
    """Blocks of orthogonal rows with chi-distributed norms (Choromanski et al. 2021, ORF).

    Each block is a Haar-distributed orthogonal matrix: the Q of a Gaussian matrix's QR with its columns' signs
    fixed by diag(R) (Mezzadri 2007). Without the sign fix Q is not Haar, its rows are not uniform on the
    sphere, and the estimate of e^{q.k} is biased."""
    n_blocks = -(-rows // cols)
    kq, kn = jax.random.split(key)

    def haar(k):
        Q, R = jnp.linalg.qr(jax.random.normal(k, (cols, cols), dtype))
        return (Q * jnp.where(jnp.diagonal(R) < 0, -1.0, 1.0).astype(dtype)).T

    blocks = [haar(k) for k in jax.random.split(kq, n_blocks)]
    W = jnp.concatenate(blocks, axis=0)[:rows]
    norms = jnp.linalg.norm(jax.random.normal(kn, (rows, cols), dtype), axis=-1, keepdims=True)
    return W * norms
