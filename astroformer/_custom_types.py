"""Type aliases shared across astroformer (shapes use jaxtyping's string syntax)."""

from typing import TypeAlias

from jaxtyping import Array, ArrayLike, Bool, Float

Scalar: TypeAlias = Float[ArrayLike, ""]
"""A positive scalar (Python float or 0-d array)."""

SeqFeatures: TypeAlias = Float[Array, "seq feat"]
SeqValues: TypeAlias = Float[Array, "seq value"]
SeqMask: TypeAlias = Bool[Array, " seq"]

__all__ = ["Array", "Bool", "Float", "Scalar", "SeqFeatures", "SeqValues", "SeqMask"]
