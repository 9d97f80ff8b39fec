"""A decoder-only transformer language model whose attention kind is a constructor choice.

Token embedding (optionally through a short causal convolution, see `Transformer`) + learned positions →
`num_layers` pre-norm blocks (x ← x + Attn(LN(x)); x ← x + MLP(LN(x)))
→ final LayerNorm → output head (tied to the embedding by default), as in GPT-2 / nanoGPT. Only the
attention layer differs between kinds (`astroformer.make_attention`); everything else is identical, so a
comparison between kinds compares attention alone.

Dense layers act on flattened `(batch·L, d)` arrays (faster on CPU than vmapping a vector layer); only the
attention is vmapped over the batch.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from .._attention import ATTENTION_KINDS, AbstractAttention, _dense, make_attention
from .._head._params import NUM_FEATURES


def _layer_norm(norm: eqx.nn.LayerNorm, x: Float[Array, "n d"]) -> Float[Array, "n d"]:
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + norm.eps)
    # weight and bias are None for eqx.nn.LayerNorm(..., use_weight=False, use_bias=False)
    if norm.weight is not None:
        y = y * norm.weight
    return y if norm.bias is None else y + norm.bias


def causal_conv(e: Float[Array, "B L d"], w: Float[Array, "K d"]) -> Float[Array, "B L d"]:
    r"""Depthwise causal convolution along the sequence: $e'_t = \sum_{j=0}^{K-1} w_j \odot e_{t-j}$, with
    $e_{t-j} = 0$ before the first position (position t never sees t+1 or later)."""
    out = w[0] * e
    for j in range(1, min(w.shape[0], e.shape[1])):
        out = out.at[:, j:].add(w[j] * e[:, :-j])
    return out


class Block(eqx.Module):
    """One pre-norm transformer block: $x \\leftarrow x + \\mathrm{Attn}(\\mathrm{LN}(x))$, then
    $x \\leftarrow x + W_2\\,\\mathrm{gelu}(W_1\\,\\mathrm{LN}(x))$.

    **Arguments:**

    - `attention`: the multi-head attention layer, (L, d_model) → (L, d_model).
    - `d_model`, `mlp_ratio`: the MLP has hidden width `mlp_ratio * d_model`.
    - `key`: PRNG key (keyword-only).
    """

    norm1: eqx.nn.LayerNorm
    attention: AbstractAttention
    norm2: eqx.nn.LayerNorm
    mlp_in: eqx.nn.Linear
    mlp_out: eqx.nn.Linear

    def __init__(self, attention: AbstractAttention, d_model: int, mlp_ratio: int, *, key: PRNGKeyArray):
        k1, k2 = jax.random.split(key)
        self.norm1 = eqx.nn.LayerNorm(d_model)
        self.attention = attention
        self.norm2 = eqx.nn.LayerNorm(d_model)
        self.mlp_in = eqx.nn.Linear(d_model, mlp_ratio * d_model, key=k1)
        self.mlp_out = eqx.nn.Linear(mlp_ratio * d_model, d_model, key=k2)

    def __call__(self, x: Float[Array, "B L d"], mask: Bool[Array, "B L"] | None) -> Float[Array, "B L d"]:
        B, L, d = x.shape
        h = _layer_norm(self.norm1, x.reshape(B * L, d)).reshape(B, L, d)
        if mask is None:
            x = x + jax.vmap(self.attention)(h)
        else:
            x = x + jax.vmap(self.attention)(h, mask)
        flat = x.reshape(B * L, d)
        flat = flat + _dense(self.mlp_out, jax.nn.gelu(_dense(self.mlp_in, _layer_norm(self.norm2, flat))))
        return flat.reshape(B, L, d)


class Transformer(eqx.Module):
    r"""A decoder-only (causal) transformer language model.

    **Arguments:**

    - `vocab_size`: number of token ids V.
    - `max_len`: the longest sequence it reads (learned positions).
    - `attention`: one of `astroformer.ATTENTION_KINDS` (`"softmax"`, `"linear"`, `"na-equilibrium"`,
      `"na-ode"`).
    - `d_model`, `num_layers`, `num_heads`: sizes; `d_model` must be a multiple of `num_heads`.
    - `num_features`: M feature neurons per head (neuron–astrocyte kinds only).
    - `mlp_ratio`: MLP hidden width / d_model.
    - `tie_embeddings`: if True the output head is the transposed token embedding.
    - `attention_kwargs`: extra keyword arguments for `make_attention`.
    - `short_conv`: width K of a depthwise causal convolution of the token embeddings,
      $e'_t = \sum_{j=0}^{K-1} w_j \odot e_{t-j}$ (learned per channel, initialised to ones), applied before the
      positions are added; 0 disables it. With K ≥ 2 every position also sees the token before it, so a
      recall lookup (find the key, read the value that followed it) is one attention read instead of a
      two-layer circuit whose previous-token head must first be learnt from absolute positions — the short
      convolution of H3, Hyena and Based (Zoology). It is the same for every attention kind.
    - `key`: PRNG key (keyword-only).

    Call on one sequence: `model(tokens)` with `tokens` int (L,), L ≤ max_len, returns logits (L, V);
    an optional `mask` (L,) booleans marks padding (False). For a batch use `model.batched(tokens)` with
    (B, L) tokens (the same numbers as `jax.vmap(model)`, with the dense layers on flattened arrays).

    The frozen parts of the neuron–astrocyte heads (their time constants and, by default, the random feature
    matrix) are arrays of the model; `trainable_filter` says which leaves an optimiser should update.
    """

    embedding: Float[Array, "V d"]
    positions: Float[Array, "max_len d"]
    blocks: tuple[Block, ...]
    norm: eqx.nn.LayerNorm
    head: eqx.nn.Linear | None
    conv: Float[Array, "K d"] | None
    vocab_size: int = eqx.field(static=True)
    max_len: int = eqx.field(static=True)
    d_model: int = eqx.field(static=True)
    attention_kind: str = eqx.field(static=True)

    def __init__(
        self,
        vocab_size: int,
        max_len: int,
        *,
        attention: str = "softmax",
        d_model: int = 64,
        num_layers: int = 2,
        num_heads: int = 4,
        num_features: int = NUM_FEATURES,
        mlp_ratio: int = 4,
        tie_embeddings: bool = True,
        attention_kwargs: dict | None = None,
        short_conv: int = 0,
        key: PRNGKeyArray,
    ):
        for name, value in (
            ("vocab_size", vocab_size),
            ("max_len", max_len),
            ("d_model", d_model),
            ("num_layers", num_layers),
            ("num_heads", num_heads),
            ("num_features", num_features),
            ("mlp_ratio", mlp_ratio),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Transformer: `{name}` must be a positive int, got {value!r}")
        if isinstance(short_conv, bool) or not isinstance(short_conv, int) or short_conv < 0:
            raise ValueError(f"Transformer: `short_conv` must be a non-negative int (0: none), got {short_conv!r}")
        if attention not in ATTENTION_KINDS:
            raise ValueError(f"Transformer: `attention` must be one of {', '.join(ATTENTION_KINDS)}, got {attention!r}")
        if d_model % num_heads:
            raise ValueError(f"Transformer: `d_model` must be a multiple of num_heads={num_heads}, got {d_model}")
        ke, kp, kh, *kb = jax.random.split(key, 3 + 2 * num_layers)
        self.embedding = 0.02 * jax.random.normal(ke, (vocab_size, d_model))
        self.positions = 0.01 * jax.random.normal(kp, (max_len, d_model))
        blocks = []
        for i in range(num_layers):
            features: dict[str, Any] = dict(num_features=num_features) if attention.startswith("na-") else {}
            attn = make_attention(
                attention,
                d_model,
                num_heads,
                causal=True,
                key=kb[2 * i],
                **features,
                **(attention_kwargs or {}),
            )
            blocks.append(Block(attn, d_model, mlp_ratio, key=kb[2 * i + 1]))
        self.blocks = tuple(blocks)
        self.norm = eqx.nn.LayerNorm(d_model)
        self.head = None if tie_embeddings else eqx.nn.Linear(d_model, vocab_size, key=kh)
        self.conv = jnp.ones((short_conv, d_model)) if short_conv else None
        self.vocab_size = vocab_size
        self.max_len = max_len
        self.d_model = d_model
        self.attention_kind = attention

    def embed(self, tokens: Int[Array, "B L"]) -> Float[Array, "B L d"]:
        """The input of the first block: token embeddings through the short causal convolution (if any), plus
        the learned positions. tokens (B, L) → (B, L, d_model)."""
        x = self.embedding[tokens]
        if self.conv is not None:
            x = causal_conv(x, self.conv)
        return x + self.positions[: tokens.shape[1]]

    def batched(self, tokens: Int[Array, "B L"], mask: Bool[Array, "B L"] | None = None) -> Float[Array, "B L V"]:
        """Logits for a batch of sequences: tokens (B, L) → (B, L, V); `mask` (B, L), False = padding."""
        if tokens.ndim != 2:
            raise ValueError(f"tokens: expected shape (batch, L), got {tuple(tokens.shape)}")
        B, L = tokens.shape
        if L > self.max_len:
            raise ValueError(f"tokens: expected at most max_len={self.max_len} positions, got L={L}")
        if not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise TypeError(f"tokens: expected integer token ids, got dtype {tokens.dtype}")
        if mask is not None and tuple(mask.shape) != (B, L):
            raise ValueError(f"mask: expected shape {(B, L)} like tokens, got {tuple(mask.shape)}")
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x, mask)
        flat = _layer_norm(self.norm, x.reshape(B * L, self.d_model))
        logits = flat @ self.embedding.T if self.head is None else _dense(self.head, flat)
        return logits.reshape(B, L, self.vocab_size)

    def __call__(self, tokens: Int[Array, " L"], mask: Bool[Array, " L"] | None = None) -> Float[Array, "L V"]:
        """Logits for one sequence: tokens (L,) → (L, V); `mask` (L,), False = padding. Batch with vmap."""
        if tokens.ndim != 1:
            raise ValueError(
                f"tokens: expected shape (L,), got {tuple(tokens.shape)} "
                "(use jax.vmap or Transformer.batched for batches)"
            )
        return self.batched(tokens[None], None if mask is None else mask[None])[0]


def trainable_filter(model: eqx.Module):
    """A pytree of booleans like `model`: True for the leaves an optimiser should update.

    Every inexact array is trainable except the neuron–astrocyte time constants (`NAParams`, fixed physical
    constants; see its docstring) and the matrices of feature maps built with `trainable=False` (already
    gradient-stopped; excluding them also keeps weight decay from shrinking them). The parameters of a
    biophysical calcium model and its coupling are trainable: the layer stores them as `Constrained` leaves in
    log coordinates, so the optimiser updates log θ and θ stays positive.
    """
    from .._attention import NeuronAstrocyteAttention

    spec = jax.tree.map(eqx.is_inexact_array, model)

    def is_na(x):
        return isinstance(x, NeuronAstrocyteAttention)

    def freeze(node, sub):
        if not is_na(node):
            return sub
        sub = eqx.tree_at(lambda a: a.params, sub, replace=jax.tree.map(lambda _: False, sub.params))
        if not getattr(node.feature_map, "trainable", True):
            sub = eqx.tree_at(lambda a: a.feature_map, sub, replace=jax.tree.map(lambda _: False, sub.feature_map))
        return sub

    return jax.tree.map(freeze, model, spec, is_leaf=is_na)
