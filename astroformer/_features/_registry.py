"""Feature maps by name: the choices of `NeuronAstrocyteAttention(feature_map=...)`, `TrainConfig.feature_map`
and `astroformer train --feature-map`."""

from jaxtyping import PRNGKeyArray

from ._headwise import HeadwiseFeatures
from ._learned import LearnedFeatures
from ._maps import AbstractFeatureMap, PositiveRandomFeatures
from ._oprf import OptimalPositiveRandomFeatures

#: The learned maps by name, and the `LearnedFeatures` options of each (its envelope, and whether mirrored).
LEARNED_MAPS = {
    "learned": dict(envelope="fixed", mirrored=True),
    "learned-envelope": dict(envelope="learned", mirrored=True),
    "learned-unmirrored": dict(envelope="fixed", mirrored=False),
    "learned-envelope-unmirrored": dict(envelope="learned", mirrored=False),
}

#: Names accepted by `make_feature_map`.
FEATURE_MAPS = ("prf", "orthogonal", "oprf", "orthogonal-oprf", *LEARNED_MAPS)


def make_feature_map(
    name: str, in_dim: int, num_features: int, *, num_heads: int | None = None, dtype=None, key: PRNGKeyArray
) -> AbstractFeatureMap:
    """A non-negative feature map by name (frozen random maps are shared by all heads; learned ones are per head):

    - `"prf"`: `PositiveRandomFeatures` (the paper's FAVOR+ feature neurons), frozen.
    - `"orthogonal"`: `PositiveRandomFeatures(orthogonal=True)` (Choromanski et al. 2021), frozen.
    - `"oprf"`, `"orthogonal-oprf"`: `OptimalPositiveRandomFeatures` (FAVOR++, Likhosherstov et al. 2022) with
      its default $A$, frozen; i.i.d. or orthogonal directions.
    - `"learned"`: `LearnedFeatures` (Hedgehog, Zhang et al. 2024), trainable, one tuning per head
      (`HeadwiseFeatures`) when `num_heads` is given.
    - `"learned-envelope"`: `LearnedFeatures(envelope="learned")`, the same with a trainable Gaussian envelope
      (centre and per-dimension precision), per head likewise.
    - `"learned-unmirrored"`, `"learned-envelope-unmirrored"`: the same two with `mirrored=False` (M independent
      tuning directions instead of M/2 mirrored pairs).
    """
    if name == "prf":
        return PositiveRandomFeatures(in_dim, num_features, dtype=dtype, key=key)
    if name == "orthogonal":
        return PositiveRandomFeatures(in_dim, num_features, orthogonal=True, dtype=dtype, key=key)
    if name in ("oprf", "orthogonal-oprf"):
        return OptimalPositiveRandomFeatures(
            in_dim, num_features, orthogonal=name == "orthogonal-oprf", dtype=dtype, key=key
        )
    if name in LEARNED_MAPS:
        options = LEARNED_MAPS[name]

        def make(k):
            return LearnedFeatures(in_dim, num_features, **options, dtype=dtype, key=k)

        return make(key) if num_heads is None else HeadwiseFeatures.build(make, num_heads, key=key)
    raise ValueError(f"feature_map: expected one of {', '.join(FEATURE_MAPS)}, got {name!r}")
