r"""Weight transfer that works: distil a trained softmax model's heads into neuron–astrocyte heads with learned
feature neurons, and write the result as a run directory (`astroformer eval` / `sample` load it).

For every layer (in order) and every head, learned feature neurons $\phi$ (`LearnedFeatures`, M per head) are
fitted with `astroformer.fit` to that head's softmax attention weights on training text, by the attention-weight
cross-entropy of Hedgehog (`AttentionWeightsTarget`):

$$\min_\phi\ -\frac{1}{BL}\sum_{b,t}\sum_{\tau\le t} a^{\mathrm{sm}}_{t\tau}\log a^\phi_{t\tau}.$$

Queries and keys of layer l are those the *transferred* model computes (layers < l already replaced by their
distilled equilibrium heads), so each layer is fitted on the inputs it will see. Everything else (embeddings,
projections, MLPs, norms) is copied unchanged; the astrocyte's time constants are the defaults for M. An optional
fine-tuning stage then trains the feature neurons (and, if asked, the attention layers' projections) on the
next-token loss or on the softmax model's output distribution, optionally with the attention-weight term.

    astroformer distill --run-dir SOFTMAX_RUN --out NEW_RUN [--num-features 32] [--steps 600]

Reference: Zhang, Bhatia, Kumbong & Ré, "The Hedgehog & the Porcupine", ICLR 2024; the transfer experiment of
Kozachkov, Kastanenka & Krotov, PNAS 2023.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import sys
import time
from pathlib import Path
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from .._attention import NeuronAstrocyteAttention
from .._attention_weights import response_excess
from .._features._headwise import HeadwiseFeatures
from .._head._params import NUM_FEATURES
from .._features._learned import LearnedFeatures
from .._features._registry import LEARNED_MAPS
from .._features._maps import AbstractFeatureMap
from .._errors import runtime_message
from .._validate import check_bool, check_choice, check_creatable, check_int, check_real, seed_argument
from ._checkpoint import atomic_write, save_checkpoint
from ._model import Block, Transformer, _dense, _layer_norm, trainable_filter


def layer_qkv(model: Transformer, tokens: Int[Array, "B L"]) -> list[tuple[Array, Array, Array]]:
    """Per layer: the scaled queries, keys and the values of every head, each (H, B, L, D), on a batch."""
    B, L = tokens.shape
    x = model.embed(tokens)  # the model's own input path (short convolution included)
    out = []
    for block in model.blocks:
        attn = block.attention
        H = attn.num_heads
        D = model.d_model // H
        h = _layer_norm(block.norm1, x.reshape(B * L, model.d_model))

        def split(a, H=H, D=D):
            return a.reshape(B, L, H, D).transpose(2, 0, 1, 3)

        scale = D**-0.25
        out.append(
            (split(_dense(attn.query, h)) * scale, split(_dense(attn.key, h)) * scale, split(_dense(attn.value, h)))
        )
        x = block(x, None)
    return out


def _feature_map(block: Block) -> AbstractFeatureMap:
    """The feature neurons of a student's block (its attention is a neuron–astrocyte one)."""
    assert isinstance(block.attention, NeuronAstrocyteAttention), type(block.attention)
    return block.attention.feature_map


def replace_attention(model: Transformer, layer: int, attention) -> Transformer:
    """`model` with the attention layer of block `layer` replaced."""
    return eqx.tree_at(lambda m: m.blocks[layer].attention, model, attention)


def transfer(softmax_model: Transformer, target: Transformer) -> Transformer:
    """`target` (a neuron–astrocyte `Transformer` of the same sizes) with every weight of `softmax_model` except its
    feature neurons and time constants: embeddings, the short convolution, positions, norms, MLPs and the attention
    projections."""

    def shared(m):
        leaves = [m.embedding, m.conv, m.positions, m.norm, m.head]
        for b in m.blocks:
            a = b.attention
            leaves += [b.norm1, b.norm2, b.mlp_in, b.mlp_out, a.query, a.key, a.value, a.output]
        return leaves

    return eqx.tree_at(shared, target, shared(softmax_model), is_leaf=lambda x: x is None)


RESPONSE_CAP = float(np.log(np.finfo(np.float32).max)) / 2
r"""Default ceiling of $\log A_t$, the astrocyte response $\phi(q_t)\cdot\sum_\tau\phi(k_\tau)$, during distillation:
half of float32's range ($e^{44.4}$ against $e^{88.7}$), so that what the read multiplies and sums on top of the
response (values, M features) has room before it overflows."""


def distill_heads(
    q: Float[Array, "H B L D"],
    k: Float[Array, "H B L D"],
    num_features: int,
    *,
    steps: int,
    learning_rate: float,
    key,
    normaliser_weight: float = 0.0,
    orthogonal: bool = False,
    envelope: Literal["fixed", "learned"] = "fixed",
    mirrored: bool = True,
    response_cap: float | None = None,
) -> tuple[HeadwiseFeatures, Array, Array]:
    """Fit `LearnedFeatures` to every head's softmax weights (one `astroformer.fit` per head, vmapped); `envelope`
    (`"fixed"` or `"learned"`) and `mirrored` are `LearnedFeatures`' options: a learned envelope is fitted too.
    `normaliser_weight` and `response_cap` are `AttentionWeightsTarget`'s.

    **Returns:** `(maps, initial_loss, final_loss)`, per head (H,) the fitted target's loss before and after the
    fit, without the response penalty (`response_excess`; the fit's objective includes it)."""
    from ..fit import AttentionWeightsTarget, fit

    H, _, _, D = q.shape
    maps = HeadwiseFeatures.build(
        lambda k_: LearnedFeatures(
            D, num_features, orthogonal=orthogonal, envelope=envelope, mirrored=mirrored, key=k_
        ),
        H,
        key=key,
    )
    free = [f.name for f in dataclasses.fields(maps.maps) if eqx.is_array(getattr(maps.maps, f.name))]

    def one(m, qh, kh):
        objective = AttentionWeightsTarget(qh, kh, normaliser_weight=normaliser_weight, response_cap=response_cap)
        fitted = fit(m, objective, free, steps=steps, learning_rate=learning_rate).model
        reported = AttentionWeightsTarget(qh, kh, normaliser_weight=normaliser_weight)  # without the penalty
        return fitted, reported(m), reported(fitted)

    fitted, first, last = eqx.filter_vmap(one)(maps.maps, q, k)
    return HeadwiseFeatures(fitted, H), first, last


def distill(
    run_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    num_features: int = NUM_FEATURES,
    attention: str = "na-ode",
    feature_map: str = "learned",
    steps: int = 600,
    learning_rate: float = 0.05,
    batches: int = 8,
    batch_size: int | None = None,
    normaliser_weight: float = 0.0,
    finetune_steps: int = 0,
    finetune_learning_rate: float = 3e-3,
    finetune_attention_weight: float = 0.0,
    finetune_target: str = "next-token",
    finetune_projections: bool = False,
    finetune_all: bool = False,
    response_cap: float | None = RESPONSE_CAP,
    seed: int = 0,
    evaluate_model: bool = True,
    overwrite: bool = False,
    log=print,
):
    r"""Distil the softmax run in `run_dir` into a neuron–astrocyte run in `out` (learned feature neurons).

    **Arguments:**

    - `run_dir`: a run directory of a trained softmax model (`config.json`, `checkpoint.eqx`).
    - `out`: the new run directory (must not hold a run unless `overwrite`).
    - `num_features`: M learned feature neurons per head (even, unless `-unmirrored`).
    - `attention`: `"na-ode"` (simulated reads) or `"na-equilibrium"`: the kind written to the new config.
    - `feature_map`: `"learned"` (default: `LearnedFeatures` with the positive random features' fixed envelope
      $e^{-|u|^2/2}$) or `"learned-envelope"` (its Gaussian envelope is fitted too: lower attention-weight error,
      not lower bits/char, on the README's fidelity runs), or either with `-unmirrored` (`mirrored=False`).
    - `steps`, `learning_rate`: Adam steps and rate of each head's fit.
    - `batches`, `batch_size`: training text used for the fit (default batch size: the run's).
    - `normaliser_weight`: $\lambda$ of `AttentionWeightsTarget`: 0 fits the attention weights only
      (Hedgehog); $\lambda > 0$ also fits the astrocyte response to the softmax normaliser.
    - `finetune_steps`, `finetune_learning_rate`: after the per-head fits, Adam steps on the fine-tuning loss
      (training batches, equilibrium reads; see the next three) that update the feature neurons (Hedgehog's
      second stage, by default restricted to the feature neurons). 0: no fine-tuning, and the three options
      below must keep their defaults.
    - `finetune_attention_weight`: $\mu \ge 0$; the fine-tuning loss is the `finetune_target` loss plus $\mu$
      times the attention-weight cross-entropy of every head against softmax of the student's own queries and
      keys (averaged over layers and heads), so that fine-tuning does not trade the heads' fidelity for
      bits/char. With `finetune_projections` the queries and keys move too, so the term then keeps the heads
      softmax-like rather than close to the teacher's heads. 0: the target's loss only.
    - `finetune_target`: `"next-token"` (the training text's next characters) or `"teacher"` (the softmax model's
      next-token distribution: the cross-entropy against it, i.e. knowledge distillation of its outputs).
    - `finetune_projections`: also fine-tune the attention layers' projections (query, key, value, output;
      Hedgehog's second stage trains the whole model, this frees only the attention layers). Default: the
      feature neurons only, every transferred weight stays the softmax model's.
    - `finetune_all`: fine-tune every trainable weight of the student (embeddings, norms, MLPs, attention and
      feature neurons), as Hedgehog's second stage does.
    - `response_cap`: both stages' losses get the penalty $\max(0, \log A_t - \mathrm{cap})^2$, averaged over
      queries and sequences (each head's own fit), then heads and layers (the fine-tuning), $A_t$ the astrocyte
      response $\phi(q_t)\cdot\sum_\tau\phi(k_\tau) = M\bar p_t$. Attention weights do not change when a head's
      rates are all scaled, and without a ceiling the fine-tuning let them grow until a float32 read overflowed on
      some text (`RESPONSE_CAP`, the default, is half of float32's range; a soft bound on the training text, not
      a guarantee elsewhere). `None`: no penalty. The record's `response_excess_final` is each head's penalty
      after its fit.
    - `seed`: seeds the feature initialisation and the choice of training windows.
    - `evaluate_model`: evaluate the distilled model (and the softmax one) on the run's eval split and record
      both in `metrics.jsonl`.

    **Returns:** `(config, model, record)`: the new `TrainConfig`, the distilled `Transformer` and the distill
    record (per-layer, per-head cross-entropies before and after the fit; bits/char or accuracy if evaluated).
    """
    from ._train import (
        CHECKPOINT,
        CONFIG,
        METRICS,
        build_model,
        evaluate,
        load_run,
        make_optimizer,
    )

    if attention not in ("na-ode", "na-equilibrium"):
        raise ValueError(f"attention: expected 'na-ode' or 'na-equilibrium', got {attention!r}")
    num_features, steps, batches = (
        check_int(name, value)
        for name, value in (("num_features", num_features), ("steps", steps), ("batches", batches))
    )
    finetune_steps = check_int("finetune_steps", finetune_steps, minimum=0)
    check_real("learning_rate", learning_rate)  # inf or 1e30 turned every fit into NaN, written with exit 0
    check_real("finetune_learning_rate", finetune_learning_rate)
    check_real("normaliser_weight", normaliser_weight, positive=False)
    response_cap = check_real("response_cap", response_cap, positive=None, or_none=True)
    if (
        isinstance(finetune_attention_weight, bool)
        or not isinstance(finetune_attention_weight, numbers.Real)
        or not (math.isfinite(finetune_attention_weight) and finetune_attention_weight >= 0)
    ):
        raise ValueError(f"finetune_attention_weight: expected a finite number >= 0, got {finetune_attention_weight!r}")
    check_choice("finetune_target", finetune_target, ("next-token", "teacher"))
    check_choice("feature_map", feature_map, tuple(LEARNED_MAPS))
    check_bool("finetune_projections", finetune_projections)
    check_bool("finetune_all", finetune_all)
    if not finetune_steps:
        for name, value, default in (
            ("finetune_attention_weight", finetune_attention_weight, 0.0),
            ("finetune_target", finetune_target, "next-token"),
            ("finetune_projections", finetune_projections, False),
            ("finetune_all", finetune_all, False),
        ):
            if value != default:
                raise ValueError(
                    f"{name}: only used by the fine-tuning; expected finetune_steps > 0 (--finetune-steps), "
                    f"got finetune_steps=0 and {name}={value!r}"
                )
    if num_features % 2 and LEARNED_MAPS[feature_map]["mirrored"]:
        raise ValueError(
            f"num_features: expected an even M (learned features come in mirrored pairs), got {num_features}; "
            "the -unmirrored feature maps take any M"
        )
    out = _check_out(out, run_dir, overwrite)
    config, task, teacher, _ = load_run(run_dir)
    if config.attention != "softmax":
        raise ValueError(f"run_dir: expected a softmax run to distil, got attention={config.attention!r}")
    batch_size = config.batch_size if batch_size is None else batch_size
    tokens = jnp.concatenate(
        [jnp.asarray(task.batch("train", batch_size, seed=10_000 + seed * 1000 + i).inputs) for i in range(batches)]
    )
    new_config = config.replace(
        attention=attention, feature_map=feature_map, num_features=num_features, run_dir=str(out)
    )
    # Distil on a copy read at equilibrium (exact kernel attention: the inputs of the next layer, cheaply).
    student = transfer(teacher, build_model(new_config.replace(attention="na-equilibrium"), task))
    key = jax.random.PRNGKey(seed)
    record: dict[str, Any] = {
        "kind": "distill",
        "source": str(run_dir),
        "num_features": num_features,
        "feature_map": feature_map,
        "steps": steps,
        "learning_rate": learning_rate,
        "normaliser_weight": normaliser_weight,
        "response_cap": response_cap,
        "sequences": int(tokens.shape[0]),
        "layers": [],
    }
    start = time.perf_counter()
    for layer in range(len(student.blocks)):
        # Inputs of this layer in the student with the layers before it already distilled.
        q, k, _ = jax.jit(layer_qkv)(student, tokens)[layer]
        maps, first, last = distill_heads(
            q,
            k,
            num_features,
            steps=steps,
            learning_rate=learning_rate,
            normaliser_weight=normaliser_weight,
            response_cap=response_cap,
            **LEARNED_MAPS[feature_map],
            key=jax.random.fold_in(key, layer),
        )
        if not np.all(np.isfinite(np.asarray(last))):
            raise RuntimeError(
                f"distill: the fit of layer {layer}'s heads diverged (final attention-weight cross-entropy per head "
                f"{np.asarray(last).tolist()}); lower the learning rate (--learning-rate, now {learning_rate}). "
                "Nothing was written."
            )
        student = eqx.tree_at(lambda m: _feature_map(m.blocks[layer]), student, maps)  # called at once: no late binding
        record["layers"].append(
            {"cross_entropy_initial": np.asarray(first).tolist(), "cross_entropy_final": np.asarray(last).tolist()}
        )
        if response_cap is not None:
            excess = eqx.filter_vmap(lambda m, qh, kh: _response_penalty(m, qh, kh, response_cap))(maps.maps, q, k)
            record["layers"][-1]["response_excess_final"] = np.asarray(excess).tolist()
        log(
            f"layer {layer}: attention-weight cross-entropy per head {np.round(np.asarray(first), 3).tolist()} "
            f"-> {np.round(np.asarray(last), 3).tolist()}"
        )
    if finetune_steps:
        student, losses, report = _finetune_features(
            student,
            task,
            finetune_steps,
            finetune_learning_rate,
            batch_size,
            seed,
            attention_weight=finetune_attention_weight,
            teacher=teacher if finetune_target == "teacher" else None,
            projections=finetune_projections,
            everything=finetune_all,
            response_cap=response_cap,
        )
        record["finetune"] = {
            "steps": finetune_steps,
            "learning_rate": finetune_learning_rate,
            "attention_weight": finetune_attention_weight,
            "target": finetune_target,
            "projections": bool(finetune_projections),
            "all": bool(finetune_all),
            "loss_first": losses[0] if losses else None,
            "loss_last": losses[-1] if losses else None,
            "steps_done": len(losses),
            "skipped_steps": report["skipped_steps"],
            "stopped": report["stopped"],
        }
        stopped = report["stopped"]
        what = (
            "whole model"
            if finetune_all
            else "feature neurons and attention projections"
            if finetune_projections
            else "feature neurons"
        )
        if stopped is not None:
            log(
                f"fine-tuning stopped at step {stopped['step']} of {finetune_steps}: {stopped['reason']}; kept the "
                f"model of step {len(losses)} (the last with a finite loss); lower --finetune-learning-rate (now "
                f"{finetune_learning_rate}) to go further"
            )
        if losses:
            skips = f" ({report['skipped_steps']} skipped: non-finite gradients)" if report["skipped_steps"] else ""
            log(f"fine-tuned the {what} for {len(losses)} steps{skips}: loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    record["seconds"] = time.perf_counter() - start
    if attention != "na-equilibrium":  # the same weights in the na-ode model (its read parameters differ)
        student = eqx.tree_at(
            lambda m: [b.attention.feature_map for b in m.blocks],
            transfer(student, build_model(new_config, task)),
            [_feature_map(b) for b in student.blocks],
        )
    out.mkdir(parents=True, exist_ok=True)
    new_config.save(out / CONFIG)
    opt_state = make_optimizer(new_config).init(eqx.filter(student, trainable_filter(student)))
    save_checkpoint(
        out / CHECKPOINT,
        (student, opt_state),
        {
            "step": 0,
            "data_seed": new_config.seed,
            "next_data_step": 0,
            "task": new_config.task,
            "attention": new_config.attention,
            "distilled_from": str(run_dir),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        },
    )
    if evaluate_model:
        kw = {"batch_size": config.batch_size, "num_batches": config.eval_batches, "seed": config.seed}
        record["eval"] = evaluate(student, task, **kw)
        record["eval_softmax"] = evaluate(teacher, task, **kw)
        log(
            f"{task.metric_name}: distilled {record['eval'][task.metric_name]:.4f}, softmax "
            f"{record['eval_softmax'][task.metric_name]:.4f}"
        )
    atomic_write(out / METRICS, (json.dumps(record) + "\n").encode())
    return new_config, student, record


def _check_out(out, run_dir, overwrite: bool) -> Path:
    """`out` as a `Path`, checked before any work: not the teacher's directory, not holding a run (unless
    `overwrite`) or anything else that is not a run (`check_run_dir`), and creatable."""
    from ._rundir import RUN_FILES, check_run_dir

    out = check_run_dir(out, resume=False, overwrite=True, name="out", flag="--out")  # empty, a file, not a run's
    if out.resolve() == Path(run_dir).resolve():
        raise ValueError(
            f"out: expected a new directory, got {str(out)!r}, which is the softmax run (--run-dir) itself"
        )
    if not overwrite and any((out / name).exists() for name in RUN_FILES):
        raise FileExistsError(
            f"out: {str(out)!r} already holds a run; pass overwrite=True (--overwrite) or choose another --out"
        )
    check_creatable("out", out)
    return out


def _response_penalty(m: AbstractFeatureMap, q: Float[Array, "B L D"], k: Float[Array, "B L D"], cap: float):
    """`response_excess` of one head's feature map, the mean over the B sequences (causal)."""
    return jnp.mean(jax.vmap(lambda a, b: response_excess(m(a), m(b), cap))(q, k))


def _head_terms(
    model: Transformer, tokens: Int[Array, "B L"], *, cross_entropy: bool = True, response_cap: float | None = None
) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """`(attention cross-entropy, response penalty)` of a student, means over layers, heads and sequences, from one
    pass over the layers; a term not asked for (`cross_entropy=False`, `response_cap=None`) is 0.

    The cross-entropy is taken against softmax of the student's own queries and keys, held fixed (no gradient
    flows into them); the penalty, `response_excess`, reaches them: growing queries and keys are one way in which
    the responses overflow when the projections are fine-tuned."""
    from ..fit import AttentionWeightsTarget

    ce, excess = [], []
    zero = jnp.zeros(())
    for block, (q, k, _) in zip(model.blocks, layer_qkv(model, tokens)):
        maps = _feature_map(block)
        if not isinstance(maps, HeadwiseFeatures):
            raise TypeError(f"model: expected HeadwiseFeatures in every block, got {type(maps).__name__}")

        def per_head(m, qh, kh):
            q0, k0 = jax.lax.stop_gradient(qh), jax.lax.stop_gradient(kh)
            c = AttentionWeightsTarget(q0, k0)(m) if cross_entropy else zero
            e = zero if response_cap is None else _response_penalty(m, qh, kh, response_cap)
            return c, e

        c, e = eqx.filter_vmap(per_head)(maps.maps, q, k)
        ce.append(jnp.mean(c))
        excess.append(jnp.mean(e))
    return jnp.mean(jnp.stack(ce)), jnp.mean(jnp.stack(excess))


def attention_cross_entropy(model: Transformer, tokens: Int[Array, "B L"]) -> Float[Array, ""]:
    r"""Mean over layers, heads and sequences of the attention-weight cross-entropy (`AttentionWeightsTarget`)
    of a student's feature neurons against softmax of its own queries and keys (held fixed: no gradient flows
    into them).

    Every block's attention must be a `NeuronAstrocyteAttention` with `HeadwiseFeatures`."""
    return _head_terms(model, tokens)[0]


def _finetune_features(
    model: Transformer,
    task,
    steps: int,
    learning_rate: float,
    batch_size: int,
    seed: int,
    *,
    attention_weight: float = 0.0,
    teacher: Transformer | None = None,
    projections: bool = False,
    everything: bool = False,
    response_cap: float | None = None,
):
    """Adam on the next-token loss (or, with `teacher`, the cross-entropy against the teacher's next-token
    distribution), plus `attention_weight` times `attention_cross_entropy` and, if `response_cap` is a number, the
    astrocyte-response penalty (`_head_terms`), over the feature-neuron leaves (and the attention layers' query,
    key, value and output projections if `projections`; every trainable leaf, as `train` trains them, if
    `everything`).

    Returns `(model, losses, report)`. A step whose gradients are not all finite is skipped, leaving the
    parameters unchanged (`optax.apply_if_finite`; `MAX_SKIPPED_IN_A_ROW` in a row end the fine-tuning). A step
    that fails a runtime check of the model (e.g. learned feature rates that overflow float32 once the free
    queries and keys have grown) or whose loss is not finite ends the fine-tuning early instead of losing the
    run: `model` is then the last one whose loss was finite. `losses` holds the loss of every completed step,
    skipped ones included; `report` is `{"stopped": None or {"step": i, "reason": ...}, "skipped_steps": n}`."""
    import optax

    from ._train import MAX_SKIPPED_IN_A_ROW, loss_fn, skipped_in_a_row

    def free_parts(m):
        names = ("feature_map", "query", "key", "value", "output") if projections else ("feature_map",)
        return [getattr(b.attention, name) for b in m.blocks for name in names]

    if everything:  # what `train` trains
        spec = trainable_filter(model)
    else:
        spec = jax.tree.map(lambda _: False, model)
        parts = free_parts(model)
        spec = eqx.tree_at(free_parts, spec, [jax.tree.map(eqx.is_inexact_array, part) for part in parts])
    free, frozen = eqx.partition(model, spec)
    optimiser = optax.apply_if_finite(optax.adam(learning_rate), max_consecutive_errors=2**31 - 1)  # we stop first
    state = optimiser.init(free)

    def objective(free, frozen, teacher, batch):
        student = eqx.combine(free, frozen)
        tokens = jnp.asarray(batch.inputs)
        if teacher is None:
            loss = loss_fn(student, batch)
        else:
            target = jax.nn.softmax(teacher.batched(tokens).astype(jnp.float32), axis=-1)
            nll = optax.softmax_cross_entropy(student.batched(tokens).astype(jnp.float32), target)
            mask = jnp.asarray(batch.mask, jnp.float32)
            loss = jnp.sum(nll * mask) / jnp.maximum(jnp.sum(mask), 1.0)
        if attention_weight or response_cap is not None:
            ce, excess = _head_terms(student, tokens, cross_entropy=bool(attention_weight), response_cap=response_cap)
            loss = loss + attention_weight * ce + excess
        return loss

    # The frozen weights and the teacher are arguments, not constants closed over: XLA would otherwise embed
    # every one of their arrays in the compiled step.
    @eqx.filter_jit
    def step(free, frozen, teacher, state, batch):
        loss, grads = eqx.filter_value_and_grad(objective)(free, frozen, teacher, batch)
        updates, state = optimiser.update(grads, state, free)
        return eqx.apply_updates(free, updates), state, loss

    losses: list[float] = []
    stopped, good, skipped = None, free, 0  # `good`: the parameters of the last finite loss
    for i in range(steps):
        batch = task.batch("train", batch_size, seed=50_000 + seed * 10_000 + i)
        try:
            new_free, new_state, loss = step(free, frozen, teacher, state, batch)
            loss = float(loss)
        except eqx.EquinoxRuntimeError as error:  # a runtime check of the model failed on these parameters
            stopped = {"step": i + 1, "reason": runtime_message(error)}
            break
        if not math.isfinite(loss):
            stopped = {"step": i + 1, "reason": f"loss: expected a finite value, got {loss}"}
            break
        in_a_row = int(skipped_in_a_row(new_state))
        skipped += in_a_row > 0
        if in_a_row >= MAX_SKIPPED_IN_A_ROW:
            stopped = {
                "step": i + 1,
                "reason": f"gradients: expected finite values, got NaN/inf {in_a_row} steps in a row",
            }
            break
        losses.append(loss)
        good, free, state = free, new_free, new_state
    report = {"stopped": stopped, "skipped_steps": skipped}
    return eqx.combine(free if stopped is None else good, frozen), losses, report


# ------------------------------------------------------------------------------------------ command line


def register(subparsers) -> None:
    """Add `astroformer distill` to an argparse `subparsers` object."""
    p = subparsers.add_parser(
        "distill",
        help="distil a trained softmax run into neuron-astrocyte heads with learned feature neurons",
        description="Fit learned feature neurons (Hedgehog) to every head's softmax attention weights on "
        "training text and write a neuron-astrocyte run directory (astroformer eval/sample load it).",
    )
    p.add_argument("--run-dir", required=True, help="the run directory of a trained softmax model")
    p.add_argument("--out", required=True, help="the new run directory")
    p.add_argument(
        "--num-features",
        "--features",
        type=int,
        default=NUM_FEATURES,
        help=f"learned feature neurons M per head (default {NUM_FEATURES})",
    )
    p.add_argument(
        "--attention",
        choices=["na-ode", "na-equilibrium"],
        default="na-ode",
        help="attention kind of the new run (default na-ode)",
    )
    p.add_argument(
        "--feature-map",
        choices=list(LEARNED_MAPS),
        default="learned",
        help="learned feature neurons with the fixed envelope of positive random features (default) or with a "
        "fitted Gaussian envelope (learned-envelope); -unmirrored: M independent tuning directions instead of "
        "M/2 mirrored pairs",
    )
    p.add_argument("--steps", type=int, default=600, help="Adam steps per head (default 600)")
    p.add_argument("--learning-rate", "--lr", type=float, default=0.05, help="learning rate of the fits (default 0.05)")
    p.add_argument("--batches", type=int, default=8, help="training batches used for the fit (default 8)")
    p.add_argument(
        "--normaliser-weight",
        type=float,
        default=0.0,
        help="also fit the astrocyte response to the softmax normaliser with this weight (default 0)",
    )
    p.add_argument(
        "--finetune-steps",
        type=int,
        default=0,
        help="then fine-tune the feature neurons (see --finetune-target, --finetune-projections, "
        "--finetune-attention-weight) for so many steps (default 0: no fine-tuning)",
    )
    p.add_argument(
        "--finetune-learning-rate",
        "--finetune-lr",
        type=float,
        default=3e-3,
        help="learning rate of the fine-tuning (default 3e-3)",
    )
    p.add_argument(
        "--finetune-attention-weight",
        type=float,
        default=0.0,
        help="add this weight times the heads' attention-weight cross-entropy to the fine-tuning loss (default 0)",
    )
    p.add_argument(
        "--finetune-target",
        choices=["next-token", "teacher"],
        default="next-token",
        help="fine-tune on the text's next characters or on the softmax model's next-token distribution "
        "(default next-token)",
    )
    p.add_argument(
        "--finetune-projections",
        action="store_true",
        help="also fine-tune the attention layers' projections (query, key, value, output; default: the feature "
        "neurons only)",
    )
    p.add_argument(
        "--finetune-all",
        action="store_true",
        help="fine-tune every weight of the student (embeddings, norms, MLPs, attention, feature neurons)",
    )
    p.add_argument(
        "--response-cap",
        type=_cap_argument,
        default=RESPONSE_CAP,
        help="penalise astrocyte responses above e^CAP in both stages, so the model's float32 reads do not "
        f"overflow (default {RESPONSE_CAP:.1f}, half of float32's range; 'none': no penalty)",
    )
    p.add_argument("--seed", type=seed_argument, default=0)
    p.add_argument("--no-eval", action="store_true", help="do not evaluate the distilled model")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.set_defaults(func=_distill_command)


def _cap_argument(text: str) -> float | None:
    """`--response-cap`: a number, or `none`."""
    import argparse

    if text.strip().lower() == "none":
        return None
    try:
        return check_real("--response-cap", float(text), positive=None)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a finite number or 'none', got {text!r}") from None


def _distill_command(args) -> int:
    from ._checkpoint import CheckpointError

    try:
        distill(
            args.run_dir,
            args.out,
            num_features=args.num_features,
            attention=args.attention,
            feature_map=args.feature_map,
            steps=args.steps,
            learning_rate=args.learning_rate,
            batches=args.batches,
            normaliser_weight=args.normaliser_weight,
            finetune_steps=args.finetune_steps,
            finetune_learning_rate=args.finetune_learning_rate,
            finetune_attention_weight=args.finetune_attention_weight,
            finetune_target=args.finetune_target,
            finetune_projections=args.finetune_projections,
            finetune_all=args.finetune_all,
            response_cap=args.response_cap,
            seed=args.seed,
            evaluate_model=not args.no_eval,
            overwrite=args.overwrite,
        )
    except (ValueError, TypeError, RuntimeError, FileExistsError, FileNotFoundError, CheckpointError) as error:
        print(f"astroformer distill: error: {runtime_message(error)}", file=sys.stderr)
        return 2
    print(f"run directory: {args.out}")
    return 0
