r"""What a fit matches: recorded time courses, a softmax attention head, or any user loss.

Every target is a callable `target(model) -> scalar loss` (an `AbstractTarget` or a plain function).
"""

import abc
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from .._baselines import softmax_attention
from ._model import NAModel
from ._traces import VARIABLES, Traces, check_times


class AbstractTarget(eqx.Module):
    """A loss $\\mathcal{L}(\\text{model})$ to minimise."""

    @abc.abstractmethod
    def __call__(self, model: NAModel) -> Float[Array, ""]: ...


def _masked_mse(pred, data, mask):
    """Mean of squared errors over observed entries, divided by the mean square of the observed data."""
    w = jnp.ones_like(data) if mask is None else jnp.broadcast_to(mask, data.shape).astype(data.dtype)
    count = jnp.maximum(jnp.sum(w), 1.0)
    scale = jax.lax.stop_gradient(jnp.sum(w * data**2) / count)
    scale = jnp.where(scale > 0, scale, 1.0)
    return jnp.sum(w * (pred - data) ** 2) / count / scale


_TRACE_SHAPES = {"x": ("T", "L", "N"), "p": ("T", "L", "M"), "s": ("T", "L", "N", "M"), "h": ("T", "L", "M")}


def _shape_text(symbols) -> str:
    return "(" + ", ".join(symbols) + ")"


class TraceTarget(AbstractTarget):
    r"""Match recorded time courses of the reads, possibly noisy and partially observed.

    $$\mathcal{L} = \sum_{v \in \{x, p, s, h\}} \frac{\sum m_v\,(\hat v - v)^2}{\sum m_v\,v^2},$$

    each variable's masked squared error relative to its observed mean square (so that variables of very
    different magnitudes weigh alike).

    **Fields:**

    - `q`, `k`, `v`: the inputs presented to the network ((L, D), (L, D), (L, N); with a model without a
      feature map, q and k are the feature rates (L, M)).
    - `ts` (static): the concrete real observation times, (T,).
    - `x`, `p`, `s`, `h`: recorded traces (shapes as in `Traces`: x (T, L, N), p and h (T, L, M), s (T, L, N, M),
      checked at construction against `ts`, `q` and `v`, and against the model's M when called) or `None`
      (not observed). The shape check cannot tell a transposed trace whose two axes have the same size
      (x as (T, N, L) when L == N): keep the axis order of `Traces`.
    - `mask_x`, `mask_p`, `mask_s`, `mask_h`: booleans broadcastable to the trace (True = observed), e.g.
      (T, 1, 1) to hide times or (1, 1, N) to hide neurons; `None` = all observed.
    - `token_mask`: the `mask` of `na_attention` (tokens not presented), or `None`.

    **Accuracy of the model's traces.** The model's traces are a fixed-step solve (`NAModel.substeps`
    Magnus steps between observation times, default 4), not an exact one: on the `astroformer fit` default
    problem x differs from a 512-substep solve by 9e-5 (relative) at `substeps=4`, 3e-5 at 8, 7e-6 at 16
    (second order: ×4 less per doubling; `python -m benchmarks.fit_substeps`), and by about 3e-4 from an
    independent SciPy Radau solve of the full model on another problem. Fitted to exact data, the fit's optimum therefore sits about 1e-3 (relative)
    from the true time constants: a bias of the solver, not noise. To tighten it, fit with a larger
    `substeps` (e.g. `NAModel(..., substeps=16)`, about 4× the cost of the default).
    """

    q: Float[Array, "L D"]
    k: Float[Array, "L D"]
    v: Float[Array, "L N"]
    ts: tuple[float, ...] = eqx.field(static=True, converter=lambda t: tuple(float(x) for x in check_times(t)))
    x: Float[Array, "T L N"] | None = None
    p: Float[Array, "T L M"] | None = None
    s: Float[Array, "T L N M"] | None = None
    h: Float[Array, "T L M"] | None = None
    mask_x: Bool[Array, "..."] | None = None
    mask_p: Bool[Array, "..."] | None = None
    mask_s: Bool[Array, "..."] | None = None
    mask_h: Bool[Array, "..."] | None = None
    token_mask: Bool[Array, " L"] | None = None

    def __check_init__(self):
        if all(getattr(self, name) is None for name in VARIABLES):
            raise ValueError("TraceTarget: expected at least one recorded variable among x, p, s, h; got none")
        T = len(self.ts)
        for name in ("q", "k", "v"):
            x = getattr(self, name)
            if not hasattr(x, "shape") or x.ndim != 2:
                raise ValueError(
                    f"TraceTarget.{name}: expected a 2-D array (L, {'N' if name == 'v' else 'D'}), "
                    f"got {getattr(x, 'shape', type(x).__name__)}"
                )
        L, N = self.q.shape[0], self.v.shape[1]
        M = None
        for name in VARIABLES:
            data, mask = getattr(self, name), getattr(self, "mask_" + name)
            if data is None:
                if mask is not None:
                    raise ValueError(f"TraceTarget.mask_{name}: given, but {name} was not recorded")
                continue
            expected = _TRACE_SHAPES[name]
            if not hasattr(data, "shape") or data.ndim != len(expected):
                raise ValueError(
                    f"TraceTarget.{name}: expected shape {_shape_text(expected)}, got "
                    f"{tuple(getattr(data, 'shape', ()))}"
                )
            if data.shape[0] != T:
                raise ValueError(
                    f"TraceTarget.{name}: expected {T} time points (len(ts)) on axis 0, got shape {tuple(data.shape)}"
                )
            sizes = {"T": T, "L": L, "N": N, "M": M}
            for axis, symbol in enumerate(expected):
                if symbol == "M" and M is None:
                    M = sizes["M"] = data.shape[axis]
                if data.shape[axis] != sizes[symbol]:
                    raise ValueError(
                        f"TraceTarget.{name}: expected shape {_shape_text(expected)} = "
                        f"{tuple(sizes[s] if sizes[s] is not None else s for s in expected)} (L from q, N from v"
                        f"{', M from the other traces' if symbol == 'M' else ''}), got {tuple(data.shape)}"
                    )
            if mask is not None:
                if not hasattr(mask, "dtype") or mask.dtype != bool:
                    raise ValueError(
                        f"TraceTarget.mask_{name}: expected a boolean array (True = observed), got "
                        f"{getattr(mask, 'dtype', type(mask).__name__)}"
                    )
                try:
                    np.broadcast_shapes(mask.shape, data.shape)
                except ValueError:
                    raise ValueError(
                        f"TraceTarget.mask_{name}: expected a shape broadcastable to "
                        f"{tuple(data.shape)}, got {tuple(mask.shape)}"
                    ) from None

    @classmethod
    def from_traces(cls, traces: Traces, q, k, v, *, masks: dict | None = None, token_mask=None):
        """Build a target from a `Traces` (e.g. a simulation with known parameters, plus noise)."""
        masks = {} if masks is None else masks
        for name in masks:
            if name not in VARIABLES:
                raise ValueError(f"masks: expected keys among {VARIABLES}, got {name!r}")
        fields = {name: getattr(traces, name) for name in VARIABLES}
        mask_fields = {"mask_" + name: masks.get(name) for name in VARIABLES}
        # ts goes through the field's converter, which mypy does not apply to __init__ (python/mypy#17547).
        ts = np.asarray(traces.ts)
        return cls(q=q, k=k, v=v, ts=ts, token_mask=token_mask, **fields, **mask_fields)  # type: ignore[arg-type]

    @property
    def variables(self) -> tuple[str, ...]:
        return tuple(name for name in VARIABLES if getattr(self, name) is not None)

    def __call__(self, model: NAModel) -> Float[Array, ""]:
        pred = model.traces(self.q, self.k, self.v, np.asarray(self.ts), variables=self.variables, mask=self.token_mask)
        for name in self.variables:
            got, expected = getattr(self, name).shape, getattr(pred, name).shape
            if got != expected:
                raise ValueError(
                    f"TraceTarget.{name}: expected shape {_shape_text(_TRACE_SHAPES[name])} = "
                    f"{expected} for this model (M = its number of features), got {got}"
                )
        return sum(
            _masked_mse(getattr(pred, name), getattr(self, name), getattr(self, "mask_" + name))
            for name in self.variables
        )


class AttentionTarget(AbstractTarget):
    r"""Reproduce the outputs of an attention head (weight transfer with dynamics, the paper's experiment):

    $$\mathcal{L} = \frac{\sum_{t,i} (x_{t,i}(T_r) - y_{t,i})^2}{\sum_{t,i} y_{t,i}^2},\qquad
      y = \mathrm{softmax}(q K^\top) V \text{ by default}.$$

    **Fields:** `q`, `k` (L, D), `v` (L, N) (q and k already scaled by $D^{-1/4}$), `outputs` (L, N) (default:
    `softmax_attention(q, k, v, causal=causal, mask=mask)`), `mask` (L,) or `None`, `causal` (static).
    """

    q: Float[Array, "L D"]
    k: Float[Array, "L D"]
    v: Float[Array, "L N"]
    outputs: Float[Array, "L N"]
    mask: Bool[Array, " L"] | None
    causal: bool = eqx.field(static=True)

    def __init__(self, q, k, v, *, outputs=None, mask=None, causal: bool = True):
        self.q, self.k, self.v = q, k, v
        self.outputs = softmax_attention(q, k, v, causal=causal, mask=mask) if outputs is None else outputs
        if self.outputs.shape != v.shape:
            raise ValueError(f"outputs: expected shape {tuple(v.shape)} (as v), got {tuple(self.outputs.shape)}")
        self.mask = mask
        self.causal = causal

    def __call__(self, model: NAModel) -> Float[Array, ""]:
        if model.causal != self.causal:
            raise ValueError(f"model: expected causal={self.causal} like the target head, got {model.causal}")
        pred = model(self.q, self.k, self.v, mask=self.mask)
        w = jnp.ones(self.v.shape[0]) if self.mask is None else self.mask.astype(pred.dtype)
        return jnp.sum(w[:, None] * (pred - self.outputs) ** 2) / jnp.sum(w[:, None] * self.outputs**2)


class LossTarget(AbstractTarget):
    """A user-supplied loss: `loss(model) -> scalar` (must be JAX-traceable)."""

    loss: Callable = eqx.field(static=True)

    def __check_init__(self):
        if not callable(self.loss):
            raise TypeError(f"loss: expected a callable loss(model) -> scalar, got {type(self.loss).__name__}")

    def __call__(self, model: NAModel) -> Float[Array, ""]:
        value = jnp.asarray(self.loss(model))
        if value.shape != ():
            raise ValueError(f"loss: expected a scalar loss, got shape {value.shape}")
        return value


def as_target(target) -> AbstractTarget:
    if isinstance(target, AbstractTarget):
        return target
    if callable(target):
        return LossTarget(target)
    raise TypeError(
        f"target: expected an AbstractTarget or a callable loss(model) -> scalar, got {type(target).__name__}"
    )


__all__ = ["AbstractTarget", "AttentionTarget", "LossTarget", "TraceTarget"]
