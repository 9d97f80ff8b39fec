"""One feature-neuron tuning per attention head: a feature map whose array leaves carry a leading head axis."""

from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._maps import AbstractFeatureMap


class HeadwiseFeatures(AbstractFeatureMap):
    r"""H feature maps of one kind, one per head, stored as one map with stacked arrays ($\phi^{(h)}$ for head h).

    A multi-head layer asks `for_head(h)` for head h's tuning (`NeuronAstrocyteAttention` and `LinearAttention`
    do); calling the map directly applies head h's tuning to `u[h]`: (H, ..., D) → (H, ..., M).

    Build it with `HeadwiseFeatures.build(make, num_heads, key=key)` (`make(key)` returns one head's map) or
    `HeadwiseFeatures.stack(maps)`.
    """

    maps: AbstractFeatureMap
    num_heads: int = eqx.field(static=True)

    def __init__(self, maps: AbstractFeatureMap, num_heads: int):
        if not isinstance(maps, AbstractFeatureMap):
            raise TypeError(f"maps: expected a stacked AbstractFeatureMap, got {type(maps).__name__}")
        for leaf in jax.tree.leaves(maps):
            if eqx.is_array(leaf) and (leaf.ndim == 0 or leaf.shape[0] != num_heads):
                raise ValueError(
                    f"maps: expected every array with a leading axis of num_heads={num_heads}, "
                    f"got shape {tuple(leaf.shape)}"
                )
        self.maps = maps
        self.num_heads = num_heads

    @classmethod
    def build(
        cls, make: Callable[[PRNGKeyArray], AbstractFeatureMap], num_heads: int, *, key: PRNGKeyArray
    ) -> "HeadwiseFeatures":
        """H independent maps `make(key_h)`."""
        return cls.stack([make(k) for k in jax.random.split(key, num_heads)])

    @classmethod
    def stack(cls, maps: Sequence[AbstractFeatureMap]) -> "HeadwiseFeatures":
        """Stack H maps of one kind and one size."""
        maps = list(maps)
        if not maps:
            raise ValueError("maps: expected at least one feature map, got none")
        return cls(jax.tree.map(lambda *a: jnp.stack(a), *maps), len(maps))

    @property
    def in_dim(self) -> int:
        return self.maps.in_dim

    @property
    def num_features(self) -> int:
        return self.maps.num_features

    @property
    def nonnegative(self) -> bool:
        return self.maps.nonnegative

    @property
    def trainable(self) -> bool:
        return getattr(self.maps, "trainable", True)

    def for_head(self, index: int | Array) -> AbstractFeatureMap:
        """Head `index`'s map (`index` may be traced)."""
        return jax.tree.map(lambda a: a[index], self.maps)

    def unstack(self) -> list[AbstractFeatureMap]:
        """The H maps."""
        return [self.for_head(h) for h in range(self.num_heads)]

    def __call__(self, u: Float[Array, "H *batch D"]) -> Float[Array, "H *batch M"]:
        if u.shape[0] != self.num_heads:
            raise ValueError(f"u: expected a leading axis of num_heads={self.num_heads}, got shape {u.shape}")
        return jax.vmap(lambda h, x: self.for_head(h)(x))(jnp.arange(self.num_heads), u)
