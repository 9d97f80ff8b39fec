"""Multi-head attention layers, (L, d_model) -> (L, d_model), one per attention kind, interchangeable.

All share the query/key/value/output projections and the $D^{-1/4}$ scaling of queries and keys (model.md §2);
they differ only in what one head computes. Batch with `jax.vmap`.
"""

import abc
from typing import Literal

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from ._baselines import linear_attention, softmax_attention
from ._features._maps import AbstractFeatureMap, EluFeatures, PositiveRandomFeatures
from ._features._registry import make_feature_map
from ._head._block import na_attention
from ._head._calcium_read import CalciumCoupling, check_calcium_steps, default_coupling, na_attention_calcium
from ._head._params import NUM_FEATURES, READ_STEPS, NAParams
from ._transforms import positive, unwrap
from ._validate import check_na_layer, check_int
from .calcium import AbstractCalciumModel, DiffusiveProcesses


def _dense(layer: eqx.nn.Linear, x: Float[Array, "L d_in"]) -> Float[Array, "L d_out"]:
    # A matmul over the whole sequence (faster on CPU than vmapping a vector layer).
    y = x @ layer.weight.T
    return y if layer.bias is None else y + layer.bias  # bias is None for eqx.nn.Linear(..., use_bias=False)


class AbstractAttention(eqx.Module):
    """Shared projections of a multi-head attention layer; subclasses define one head's computation."""

    query: eqx.AbstractVar[eqx.nn.Linear]
    key: eqx.AbstractVar[eqx.nn.Linear]
    value: eqx.AbstractVar[eqx.nn.Linear]
    output: eqx.AbstractVar[eqx.nn.Linear]
    num_heads: eqx.AbstractVar[int]
    causal: eqx.AbstractVar[bool]

    @abc.abstractmethod
    def head(
        self,
        q: Float[Array, "L D"],
        k: Float[Array, "L D"],
        v: Float[Array, "L D"],
        mask: Bool[Array, " L"] | None,
        index: Array,
    ) -> Float[Array, "L D"]:
        """One head on scaled queries and keys; `index` is the head's index (for per-head parameters)."""

    def __call__(
        self, x: Float[Array, "L d_model"], mask: Bool[Array, " L"] | None = None
    ) -> Float[Array, "L d_model"]:
        """**Arguments:** `x` (L, d_model); `mask` optional (L,) booleans, False = padding.

        **Returns:** (L, d_model)."""
        if x.ndim != 2:
            raise ValueError(f"x: expected shape (L, d_model), got {tuple(x.shape)} (use jax.vmap for batches)")
        L, d_model = x.shape
        if d_model != self.query.in_features:
            raise ValueError(f"x: expected shape (L, d_model={self.query.in_features}), got {tuple(x.shape)}")
        H = self.num_heads
        D = d_model // H
        scale = D**-0.25

        def split(a):
            return a.reshape(L, H, D).transpose(1, 0, 2)

        q = split(_dense(self.query, x)) * scale
        k = split(_dense(self.key, x)) * scale
        v = split(_dense(self.value, x))
        out = jax.vmap(lambda q, k, v, i: self.head(q, k, v, mask, i))(q, k, v, jnp.arange(H))
        return _dense(self.output, out.transpose(1, 0, 2).reshape(L, d_model))


def _projections(d_model: int, num_heads: int, key: PRNGKeyArray, dtype=None):
    d_model = check_int("d_model", d_model)
    num_heads = check_int("num_heads", num_heads)
    if d_model % num_heads:
        raise ValueError(f"d_model: expected a multiple of num_heads={num_heads}, got {d_model}")
    kq, kk, kv, ko = jax.random.split(key, 4)
    return tuple(eqx.nn.Linear(d_model, d_model, key=k, dtype=dtype) for k in (kq, kk, kv, ko))


class SoftmaxAttention(AbstractAttention):
    """Vanilla multi-head softmax attention (`jax.nn.dot_product_attention`)."""

    query: eqx.nn.Linear
    key: eqx.nn.Linear
    value: eqx.nn.Linear
    output: eqx.nn.Linear
    num_heads: int = eqx.field(static=True)
    causal: bool = eqx.field(static=True)

    def __init__(self, d_model: int, num_heads: int, *, causal: bool = True, dtype=None, key: PRNGKeyArray):
        self.query, self.key, self.value, self.output = _projections(d_model, num_heads, key, dtype)
        self.num_heads = num_heads
        self.causal = causal

    def head(self, q, k, v, mask, index):
        return softmax_attention(q, k, v, causal=self.causal, mask=mask)


class LinearAttention(AbstractAttention):
    """Multi-head kernelised linear attention on a feature map (default `elu + 1`)."""

    query: eqx.nn.Linear
    key: eqx.nn.Linear
    value: eqx.nn.Linear
    output: eqx.nn.Linear
    feature_map: AbstractFeatureMap
    num_heads: int = eqx.field(static=True)
    causal: bool = eqx.field(static=True)

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        *,
        feature_map: AbstractFeatureMap | None = None,
        causal: bool = True,
        dtype=None,
        key: PRNGKeyArray,
    ):
        kp, kf = jax.random.split(key)
        self.query, self.key, self.value, self.output = _projections(d_model, num_heads, kp, dtype)
        self.feature_map = EluFeatures(d_model // num_heads, dtype=dtype) if feature_map is None else feature_map
        self.num_heads = num_heads
        self.causal = causal

    def head(self, q, k, v, mask, index):
        phi = self.feature_map.for_head(index)
        return linear_attention(phi(q), phi(k), v, causal=self.causal, mask=mask)


def _calcium_fields(calcium, coupling, mode, state, solver, dtype):
    """Validate the optional calcium model and coupling of `NeuronAstrocyteAttention`; cast them to `dtype`."""
    if calcium is None or isinstance(calcium, DiffusiveProcesses):
        if coupling is not None:
            raise ValueError(
                f"coupling: has an effect only with a biophysical calcium model; expected None with "
                f"calcium={type(calcium).__name__ if calcium is not None else None}, got "
                f"{type(coupling).__name__}"
            )
        return calcium, coupling
    if not isinstance(calcium, AbstractCalciumModel):
        raise TypeError(f"calcium: expected an astroformer.calcium.AbstractCalciumModel or None, got {calcium!r}")
    if mode != "ode":
        raise ValueError(
            f"mode: a biophysical calcium model has no closed-form equilibrium; expected 'ode' "
            f"with calcium={type(calcium).__name__}, got {mode!r}"
        )
    if solver is not None:
        raise ValueError(
            f"solver: the calcium read has its own solvers (exponential steps for the synapses, "
            f"Ros2 for calcium, see calcium_steps); expected None with calcium="
            f"{type(calcium).__name__}, got {solver!r}"
        )
    if state != "reduced":
        raise ValueError(
            f"state: expected 'reduced' with calcium={type(calcium).__name__} (the calcium read "
            f"is exact in the reduced state), got {state!r}"
        )
    coupling = default_coupling(calcium) if coupling is None else coupling
    if not isinstance(coupling, CalciumCoupling):
        raise TypeError(f"coupling: expected a CalciumCoupling or None, got {type(coupling).__name__}")
    if dtype is not None:
        cast = lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a  # noqa: E731
        calcium, coupling = jax.tree.map(cast, (calcium, coupling))
    return positive(calcium), positive(coupling)


class NeuronAstrocyteAttention(AbstractAttention):
    r"""Multi-head attention whose heads are neuron–astrocyte networks (`na_attention`).

    **Arguments:**

    - `d_model`, `num_heads`: sizes; each head has D = N = d_model / num_heads.
    - `num_features`: M feature neurons per head (default 32, `NUM_FEATURES`, as in `Transformer` and
      `TrainConfig`; ignored if `feature_map` is given).
    - `feature_map`: the feature-neuron tuning (default: `PositiveRandomFeatures`, frozen), shared by all
      heads, or one per head (`HeadwiseFeatures`); or a name of `astroformer.FEATURE_MAPS` (`"prf"`,
      `"orthogonal"`, `"oprf"`, `"orthogonal-oprf"`, `"learned"`, `"learned-envelope"`, and the same two
      `-unmirrored`: see `make_feature_map`), built with `num_features`. Must be non-negative (firing rates).
    - `params`: `NAParams` for every head (scalars are broadcast to all heads). Default: `NAParams` with
      `tau_s = 0.01 / num_features`, so that reads settle whatever M (the calcium per process scales as 1/M).
    - `mode`: `"ode"` (simulate) or `"equilibrium"` (closed-form fixed point).
    - `causal`: autoregressive (True) or bidirectional.
    - `solver`, `read_steps`, ...: passed to `na_attention`.
    - `calcium`: optional biophysical calcium model of the astrocyte processes (`astroformer.calcium.GChI`,
      `LiRinzel`, ...), shared by all heads. With `mode="ode"` each head is then
      `na_attention_calcium(phi(q), phi(k), v, params_h, calcium, coupling=coupling, ...)` (docs/calcium.md):
      the synaptic decay rate during the read is $\rho_{\max} C_j^n/(C_j^n + K^n)$ of the calcium $C_j$ of
      process j, driven by $\text{gain}\cdot h_j(t) g_j$, instead of the abstract $\bar p$. `None` (default):
      the abstract astrocyte (`na_attention`). A `DiffusiveProcesses` is the abstract astrocyte too. Only
      `mode="ode"`, `state="reduced"` (exact for the calcium read) are supported with a calcium model.
      `read_steps` is passed on (the synapse equations take 2·`read_steps` − 1 exponential steps).
    - `coupling`: the `CalciumCoupling` (gain, diffusion, saturation, time scale), shared by all heads;
      default `default_coupling(calcium)`. Only with a biophysical `calcium` (otherwise `ValueError`).
    - `calcium_steps`: `None` (default): the calcium solve is adaptive (`Ros2` + `PIDController`, see
      `na_attention_calcium`); an integer S: S fixed `Ros2` steps over the read (fixed cost and memory, a
      smooth function of the parameters: use this to train). `Ros2` is stable for the fast relaxing variables
      at any step, but the self-amplifying calcium release is explicit: steps much above ~0.1 model second
      are inaccurate and can overshoot into a diverged solve, which raises.
    - `key`: PRNG key (keyword-only).

    The time constants in `params` are fields of the module; `trainable_filter` excludes them from
    optimisers (fit them with `astroformer.fit`, which works in log coordinates). The (positive) parameters of
    a biophysical `calcium` and of `coupling` are stored as `Constrained` leaves in log coordinates
    ($\theta = e^u$) and unwrapped at call time, so any optimiser that updates the module's arrays (the
    training loop's) keeps them positive; read their values with `astroformer.unwrap(layer.calcium)`.
    """

    query: eqx.nn.Linear
    key: eqx.nn.Linear
    value: eqx.nn.Linear
    output: eqx.nn.Linear
    feature_map: AbstractFeatureMap
    params: NAParams
    calcium: AbstractCalciumModel | None
    coupling: CalciumCoupling | None
    calcium_steps: int | None = eqx.field(static=True)
    num_heads: int = eqx.field(static=True)
    causal: bool = eqx.field(static=True)
    mode: str = eqx.field(static=True)
    state: str = eqx.field(static=True)
    solver: diffrax.AbstractSolver | None = eqx.field(static=True)
    read_steps: int = eqx.field(static=True)
    chunk_size: int = eqx.field(static=True)

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        *,
        num_features: int = NUM_FEATURES,
        feature_map: AbstractFeatureMap | str | None = None,
        params: NAParams | None = None,
        mode: Literal["ode", "equilibrium"] = "ode",
        state: Literal["reduced", "full"] = "reduced",
        causal: bool = True,
        solver: diffrax.AbstractSolver | None = None,
        read_steps: int = READ_STEPS,
        chunk_size: int = 64,
        calcium: AbstractCalciumModel | None = None,
        coupling: CalciumCoupling | None = None,
        calcium_steps: int | None = None,
        dtype=None,
        key: PRNGKeyArray,
    ):
        check_na_layer(
            d_model,
            num_heads,
            num_features=num_features,
            feature_map=feature_map,
            params=params,
            mode=mode,
            state=state,
            causal=causal,
            read_steps=read_steps,
            chunk_size=chunk_size,
        )
        kp, kf = jax.random.split(key)
        self.query, self.key, self.value, self.output = _projections(d_model, num_heads, kp, dtype)
        D = d_model // num_heads
        self.calcium, self.coupling = _calcium_fields(calcium, coupling, mode, state, solver, dtype)
        check_calcium_steps(calcium_steps)
        self.calcium_steps = calcium_steps
        if feature_map is None:
            feature_map = PositiveRandomFeatures(D, num_features, dtype=dtype, key=kf)
        elif isinstance(feature_map, str):
            feature_map = make_feature_map(feature_map, D, num_features, num_heads=num_heads, dtype=dtype, key=kf)
        if not feature_map.nonnegative:
            raise ValueError(
                f"feature_map: expected a non-negative feature map (firing rates), got "
                f"{type(feature_map).__name__}; use PositiveRandomFeatures or EluFeatures"
            )
        if feature_map.in_dim != D:
            raise ValueError(f"feature_map: expected in_dim = d_model / num_heads = {D}, got {feature_map.in_dim}")
        self.feature_map = feature_map
        params = NAParams(tau_s=0.01 / feature_map.num_features) if params is None else params
        self.params = jax.tree.map(lambda a: jnp.broadcast_to(jnp.asarray(a, dtype), (num_heads,)), params)
        self.num_heads = num_heads
        self.causal = causal
        self.mode = mode
        self.state = state
        self.solver = solver
        self.read_steps = read_steps
        self.chunk_size = chunk_size

    def head(self, q, k, v, mask, index):
        params = jax.tree.map(lambda a: a[index], self.params)
        phi = self.feature_map.for_head(index)
        if self.calcium is not None and not isinstance(self.calcium, DiffusiveProcesses) and self.mode == "ode":
            calcium, coupling = unwrap((self.calcium, self.coupling))
            return na_attention_calcium(
                phi(q),
                phi(k),
                v,
                params,
                calcium,
                coupling=coupling,
                causal=self.causal,
                mask=mask,
                read_steps=self.read_steps,
                chunk_size=self.chunk_size,
                calcium_steps=self.calcium_steps,
            )
        return na_attention(
            phi(q),
            phi(k),
            v,
            params,
            causal=self.causal,
            mode=self.mode,
            mask=mask,
            state=self.state,
            solver=self.solver,
            read_steps=self.read_steps,
            chunk_size=self.chunk_size,
        )


ATTENTION_KINDS = ("softmax", "linear", "na-equilibrium", "na-ode")


def make_attention(
    kind: str,
    d_model: int,
    num_heads: int,
    *,
    causal: bool = True,
    num_features: int | None = None,
    params: NAParams | None = None,
    key: PRNGKeyArray,
    **kwargs,
) -> AbstractAttention:
    """Build an attention layer by name: one of `ATTENTION_KINDS`. Extra keyword arguments go to the class.

    `num_features` (default `NUM_FEATURES` = 32) and `params` are the neuron–astrocyte kinds' (M feature neurons
    per head, the time constants); given for `"softmax"` or `"linear"`, where they would have no effect, they raise `ValueError`.
    """
    if kind in ("softmax", "linear"):
        for name, value in (("num_features", num_features), ("params", params)):
            if value is not None:
                raise ValueError(
                    f"{name}: has an effect only on the neuron-astrocyte kinds; expected None with "
                    f"kind={kind!r}, got {value!r}"
                )
    if kind == "softmax":
        return SoftmaxAttention(d_model, num_heads, causal=causal, key=key, **kwargs)
    if kind == "linear":
        return LinearAttention(d_model, num_heads, causal=causal, key=key, **kwargs)
    if kind in ("na-equilibrium", "na-ode"):
        return NeuronAstrocyteAttention(
            d_model,
            num_heads,
            num_features=NUM_FEATURES if num_features is None else num_features,
            params=params,
            mode="ode" if kind == "na-ode" else "equilibrium",
            causal=causal,
            key=key,
            **kwargs,
        )
    raise ValueError(f"kind: expected one of {', '.join(ATTENTION_KINDS)}, got {kind!r}")
