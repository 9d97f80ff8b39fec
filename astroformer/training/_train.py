"""The training loop: AdamW with warm-up and cosine decay, one jitted train step, periodic evaluation,
metrics in `metrics.jsonl`, atomic checksummed checkpoints and exact resumption.

A run directory holds `config.json` (the `TrainConfig`), `checkpoint.eqx` (model, optimiser state, step
and data-stream state; see `_checkpoint`) and `metrics.jsonl` (one JSON record per line: `"train"` records
with the loss of every step, `"eval"` records with the task's metric).

Data batches are a deterministic function of `(seed, step)`: batch `s` is
`task.batch("train", batch_size, seed=data_seed(seed, s))`. So a resumed run sees exactly the batches an
uninterrupted run would, and (with the restored optimiser state) produces bit-identical losses on the same
machine.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._features._headwise import HeadwiseFeatures
from ..tasks import AbstractTask, Batch, CharCorpus, get_task
from .._validate import check_int
from ._checkpoint import CheckpointError, atomic_write, check_metadata, load_checkpoint, save_checkpoint
from ._config import TrainConfig
from ._model import Transformer, trainable_filter
from ._rundir import CHECKPOINT, CONFIG, METRICS, RunWriter, check_run_dir, check_text_file
from ._signals import Interrupted, StopRequests

RUNS_ROOT = "runs"
#: `train` raises after this many consecutive steps with non-finite gradients.
MAX_SKIPPED_IN_A_ROW = 10


# ------------------------------------------------------------------------------------------ building


def data_seed(seed: int, step: int) -> int:
    """The seed of training batch `step` of a run seeded `seed`: a 32-bit hash of `(seed, step)`."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


def eval_seed(seed: int, index: int) -> int:
    """The seed of evaluation batch `index` (the same batches at every evaluation of a run)."""
    return int(np.random.SeedSequence([seed, index, 1]).generate_state(1)[0])


def build_task(config: TrainConfig) -> AbstractTask:
    """The task of `config` (for `"charlm"` with `config.text`, a corpus read from that file)."""
    kwargs = dict(config.task_kwargs)
    if config.text is not None:
        check_text_file(config.text, "text")
        kwargs["corpus"] = CharCorpus.from_file(config.text)
    return get_task(config.task, **kwargs)


def run_identity(config: TrainConfig, task: AbstractTask) -> dict[str, Any]:
    """What a checkpoint records about the run that wrote it (checked when it is loaded): the task and its
    arguments, the attention kind, the model's sizes, the seed, and `data_sha256`, the SHA-256 of the
    character corpus (charlm; `None` for the synthetic tasks, which `task_kwargs` and `seed` define)."""
    import hashlib

    corpus = getattr(task, "corpus", None)
    return {
        "task": config.task,
        "task_kwargs": config.task_kwargs,
        "attention": config.attention,
        "d_model": config.d_model,
        "num_layers": config.num_layers,
        "num_heads": config.num_heads,
        "num_features": config.num_features,
        "mlp_ratio": config.mlp_ratio,
        "tie_embeddings": config.tie_embeddings,
        "read_steps": config.read_steps,
        "data_seed": config.seed,
        "data_sha256": None if corpus is None else hashlib.sha256(corpus.text.encode("utf-8")).hexdigest(),
    }


def check_checkpoint(path, metadata: dict[str, Any], config: TrainConfig, task: AbstractTask) -> int:
    """Check a checkpoint's header against the run loading it (`run_identity`) and return its step.

    **Raises:** `CheckpointError` naming the first field that differs (for the corpus: that the text changed
    since the checkpoint was written), or a step that is not an int in [0, steps]."""
    identity = run_identity(config, task)
    data = identity.pop("data_sha256")
    check_metadata(path, metadata, identity, source=f"the run's {CONFIG}")
    if "data_sha256" in metadata and metadata["data_sha256"] != data:
        raise CheckpointError(
            f"checkpoint {str(path)!r} was trained on a corpus with SHA-256 {metadata['data_sha256']}, but "
            f"{config.text or 'the default corpus'} now has SHA-256 {data}: the text changed since"
        )
    step = metadata.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= config.steps:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has a damaged header: step must be an int in "
            f"[0, steps={config.steps}], got {step!r}"
        )
    return step


def build_model(config: TrainConfig, task: AbstractTask) -> Transformer:
    """A freshly initialised `Transformer` for `task`, seeded by `config.seed`."""
    attention_kwargs: dict[str, Any] | None = (
        {"read_steps": config.read_steps} if config.attention == "na-ode" else None
    )
    if config.attention.startswith("na-") and config.feature_map != "prf":
        attention_kwargs = dict(attention_kwargs or {}, feature_map=config.feature_map)
    return Transformer(
        task.vocab_size,
        task.seq_len,
        attention=config.attention,
        d_model=config.d_model,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        num_features=config.num_features,
        mlp_ratio=config.mlp_ratio,
        tie_embeddings=config.tie_embeddings,
        attention_kwargs=attention_kwargs,
        short_conv=config.short_conv,
        key=jax.random.PRNGKey(config.seed),
    )


def learning_rate_schedule(config: TrainConfig) -> optax.Schedule:
    """Linear warm-up from 0 to `learning_rate` over `warmup` steps, then cosine decay to
    `min_lr_ratio * learning_rate` at `steps`."""
    return optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, config.warmup, config.steps, end_value=config.learning_rate * config.min_lr_ratio
    )


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Global-norm clipping followed by AdamW (Loshchilov & Hutter 2019) on `learning_rate_schedule`; weight
    decay applies to matrices (ndim ≥ 2: embeddings, positions, weights) only, not to biases or LayerNorm
    gains (`decay_mask`). Wrapped in `optax.apply_if_finite`: a step whose gradients are not all finite leaves the
    parameters and AdamW's state unchanged and counts itself in the optimiser state (`notfinite_count`,
    consecutive), which is checkpointed with it. optax's own limit is set out of reach (it would apply a non-finite
    step after that many in a row): the training loop gives up at `MAX_SKIPPED_IN_A_ROW` instead, with an error."""
    adamw = optax.chain(
        optax.clip_by_global_norm(config.grad_clip),
        optax.adamw(learning_rate_schedule(config), b1=0.9, b2=0.95, weight_decay=config.weight_decay, mask=decay_mask),
    )
    return optax.apply_if_finite(adamw, max_consecutive_errors=2**31 - 1)  # the counter saturates below it


def decay_mask(params):
    """True for the leaves of `params` that weight decay applies to: matrices (ndim ≥ 2), counting the dimensions
    of a per-head feature map's leaves (`HeadwiseFeatures`) without their leading head axis, so that a learned
    map's tuning W (M/2, D) per head is decayed and its bias b and envelope (mu, log_gamma) are not."""

    def per_node(node):
        if isinstance(node, HeadwiseFeatures):
            return jax.tree.map(lambda x: x.ndim - 1 >= 2, node)
        return node.ndim >= 2

    return jax.tree.map(per_node, params, is_leaf=lambda x: isinstance(x, HeadwiseFeatures))


def skipped_in_a_row(opt_state) -> jax.Array:
    """How many steps in a row ended with non-finite gradients (`optax.apply_if_finite`'s counter); 0 for an
    optimiser without that guard (whose steps are never skipped)."""
    if isinstance(opt_state, optax.ApplyIfFiniteState):
        return opt_state.notfinite_count
    return jnp.zeros((), jnp.int32)


def _skipped(opt_state) -> jax.Array:
    """Whether the step that produced `opt_state` was skipped (`optax.apply_if_finite`); False without it."""
    if isinstance(opt_state, optax.ApplyIfFiniteState):
        return ~opt_state.last_finite
    return jnp.zeros((), bool)


def loss_fn(model: Transformer, batch: Batch) -> jax.Array:
    r"""Mean next-token cross-entropy (nats) over the scored positions:
    $\frac{1}{|M|}\sum_{(b,t)\in M} -\log \mathrm{softmax}(z_{bt})_{y_{bt}}$."""
    logits = model.batched(jnp.asarray(batch.inputs))  # Batch holds NumPy arrays (tracers under jit)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), batch.targets)
    mask = batch.mask.astype(jnp.float32)
    return jnp.sum(nll * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def make_train_step(optimizer: optax.GradientTransformation, *, replicated_sharding=None, max_traces=None):
    """The train step `step(trainable, frozen, opt_state, batch) -> (trainable, opt_state, loss, skipped)`,
    one `eqx.filter_jit` function that compiles once per shape.

    `loss` is the batch's loss before the update. With `make_optimizer`'s `optax.apply_if_finite` (another
    optimiser gets no such guard), a step whose gradients are not all finite is skipped (`skipped` is True,
    `trainable` and AdamW's state come back unchanged, the optimiser state counts the skip), as mixed-precision
    trainers do; the loop gives up after `MAX_SKIPPED_IN_A_ROW` such steps in a row.

    **Arguments:**

    - `optimizer`: the optax transformation (`make_optimizer`).
    - `replicated_sharding`: for data-parallel training, the `NamedSharding` that keeps the updated
      parameters and optimiser state on every device.
    - `max_traces`: if set, tracing the step more often raises (`eqx.debug.assert_max_traces`).
    """

    def step(trainable, frozen, opt_state, batch):
        def f(params):
            return loss_fn(eqx.combine(params, frozen), batch)

        loss, grads = eqx.filter_value_and_grad(f)(trainable)
        updates, opt_state = optimizer.update(grads, opt_state, trainable)
        trainable = eqx.apply_updates(trainable, updates)
        if replicated_sharding is not None:
            trainable, opt_state = eqx.filter_shard((trainable, opt_state), replicated_sharding)
        return trainable, opt_state, loss, _skipped(opt_state)

    if max_traces is not None:
        step = eqx.debug.assert_max_traces(step, max_traces=max_traces)
    return eqx.filter_jit(step)


def make_eval_step(task: AbstractTask):
    """`eval_step(model, batch) -> (metric, loss)`, jitted: the task's metric (`task.metric`) and the mean
    cross-entropy in nats."""

    @eqx.filter_jit
    def eval_step(model, batch):
        logits = model.batched(batch.inputs)
        return task.metric(logits, batch), loss_fn(model, batch)

    return eval_step


def evaluate(
    model: Transformer, task: AbstractTask, *, batch_size: int, num_batches: int, seed: int, eval_step=None, mesh=None
) -> dict[str, float]:
    """The task's metric and the loss, averaged over `num_batches` batches of its eval split.

    **Returns:** `{task.metric_name: value, "loss": nats}`.
    """
    from ._parallel import shard_batch

    num_batches = check_int("num_batches (--batches)", num_batches)
    batch_size = check_int("batch_size", batch_size)
    eval_step = make_eval_step(task) if eval_step is None else eval_step
    metrics, losses = [], []
    for i in range(num_batches):
        batch = task.batch("eval", batch_size, seed=eval_seed(seed, i))
        batch = shard_batch(batch, mesh) if mesh is not None else jax.tree.map(jnp.asarray, batch)
        metric, loss = eval_step(model, batch)
        metrics.append(float(metric))
        losses.append(float(loss))
    result = {task.metric_name: float(np.mean(metrics)), "loss": float(np.mean(losses))}
    if not all(math.isfinite(value) for value in result.values()):
        raise FloatingPointError(
            f"evaluate: expected finite {task.metric_name} and loss, got {result} (the "
            "model's parameters or outputs are not finite)"
        )
    return result


# ----------------------------------------------------------------------------------------- run dirs


def default_run_dir(config: TrainConfig, root: str | os.PathLike = RUNS_ROOT) -> str:
    """`<root>/<task>-<attention>-<YYYYmmdd-HHMMSS>` (with a suffix if that exists already)."""
    base = Path(root) / f"{config.task}-{config.attention}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    while path.exists():
        path, n = Path(f"{base}-{n}"), n + 1
    return str(path)


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a run's `metrics.jsonl` (an empty list if there is none).

    A torn last line (a record cut short by a crash or a kill while it was written) is ignored with a
    `RuntimeWarning`; a damaged line elsewhere raises `ValueError` naming the file and the line."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise ValueError("expected a JSON object with an int 'step'")
        except (ValueError, UnicodeDecodeError) as error:
            if number == len(lines):  # no newline after it: written only in part
                import warnings

                warnings.warn(
                    f"{path}: ignoring the torn last line {number} ({len(line)} bytes; the run stopped "
                    "while writing it)",
                    RuntimeWarning,
                    stacklevel=2,
                )
                continue
            raise ValueError(
                f"metrics: {path} line {number} is damaged ({error}); expected one JSON record per line"
            ) from None
        if "lr" in record and "learning_rate" not in record:  # written before the key was renamed
            record["learning_rate"] = record.pop("lr")
        records.append(record)
    return records


def load_run(run_dir: str | os.PathLike, *, with_optimizer: bool = False):
    """Load a run's config and latest checkpoint.

    **Returns:** `(config, task, model, metadata)`, plus the optimiser state if `with_optimizer`.

    **Raises:** `CheckpointError` (naming the file) for a missing, truncated, corrupted or edited checkpoint,
    or one whose header does not match the run's config.json or corpus (`check_checkpoint`).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(
            f"run_dir: expected a training run directory, got {str(run_dir)!r} "
            f"({'a file' if run_dir.exists() else 'does not exist'})"
        )
    if not (run_dir / CONFIG).is_file():
        raise FileNotFoundError(f"run_dir: {str(run_dir)!r} has no {CONFIG}; is it a training run directory?")
    config = TrainConfig.load(run_dir / CONFIG)
    task = build_task(config)
    model = build_model(config, task)
    opt_state = make_optimizer(config).init(eqx.filter(model, trainable_filter(model)))
    (model, opt_state), metadata = _load_state(run_dir / CHECKPOINT, model, opt_state, config, task)
    return (config, task, model, metadata, opt_state) if with_optimizer else (config, task, model, metadata)


def _load_state(path: Path, model, opt_state, config: TrainConfig, task: AbstractTask):
    """The model and optimiser state of a run's checkpoint (`load_checkpoint` against the run's config).
    Checkpoints written before the optimiser was wrapped in `optax.apply_if_finite` hold the bare AdamW state:
    they load into the wrapper with its counters at zero."""
    check = lambda metadata: check_checkpoint(path, metadata, config, task)  # noqa: E731
    try:
        return load_checkpoint(path, (model, opt_state), check=check)
    except CheckpointError as error:
        # Only a payload that did not fit the template (raised from the deserialiser) is retried; a missing,
        # corrupted or foreign checkpoint is not read twice.
        if not isinstance(opt_state, optax.ApplyIfFiniteState) or error.__cause__ is None:
            raise
        try:
            (model, inner), metadata = load_checkpoint(path, (model, opt_state.inner_state), check=check)
        except CheckpointError:
            raise error from None
        return (model, opt_state._replace(inner_state=inner)), metadata


# ------------------------------------------------------------------------------------------ progress


class _Progress:
    """A tqdm bar if tqdm is installed (else plain prints): step, loss, tokens/s and the time left."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.enabled, self.total, self.bar = enabled, total, None
        self.every = max(1, total // 20)
        if enabled:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)
            except ImportError:
                pass

    def update(self, step: int, loss: float, tokens_per_s: float, seconds_left: float):
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_s:,.0f}", refresh=False)
        elif step % self.every == 0 or step == self.total:
            print(
                f"step {step}/{self.total}  loss {loss:.4f}  {tokens_per_s:,.0f} tok/s  {_duration(seconds_left)} left",
                flush=True,
            )

    def write(self, message: str):
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


# ------------------------------------------------------------------------------------------ the loop


@dataclasses.dataclass
class TrainResult:
    """What `train` returns: the trained `model`, its `config`, `run_dir`, the `step` reached, the `losses`
    of the steps run by this call (`(step, loss)` pairs) and the `evals` records of this call."""

    model: Transformer
    config: TrainConfig
    run_dir: str
    step: int
    losses: list[tuple[int, float]]
    evals: list[dict[str, Any]]
    seconds: float


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    stop_at: int | None = None,
    progress: bool = True,
    max_traces: int | None = 1,
    check_memory: bool = True,
) -> TrainResult:
    """Train a `Transformer` on `config.task`, writing metrics and checkpoints to `config.run_dir`.

    **Arguments:**

    - `config`: the `TrainConfig` (with `run_dir=None`, a fresh `runs/<task>-<attention>-<timestamp>`).
    - `resume`: continue the run in `config.run_dir` from its checkpoint. The stored `config.json` must equal
      `config` (use `resume_run` to take the stored one). The losses continue exactly as an uninterrupted run's.
    - `overwrite`: replace a run already in `config.run_dir` (by default that raises `FileExistsError`). The
      old run is deleted only once the new one has written its first checkpoint; until then it is kept in
      `.previous-run/` and restored if the new run fails or is killed.
    - `stop_at`: stop (with a checkpoint) after this many steps instead of `config.steps`; the learning-rate
      schedule still runs to `config.steps`, so resuming later continues the same run.
    - `progress`: show a progress bar and evaluation lines.
    - `max_traces`: the train step may be traced at most this often (1: it compiles once); `None` disables it.
    - `check_memory`: estimate the memory of the model and batch first (`_memory.check_memory`) and raise
      `MemoryEstimateError` if it exceeds the memory available.

    **Returns:** a `TrainResult`.

    Everything (config, data, run directory, checkpoint header, memory) is checked before anything is
    written; a run that fails before its first step leaves the directory as it was. SIGINT (Ctrl-C) and
    SIGTERM stop the run after the step in progress (also during the first step's compilation) with a
    checkpoint of the last completed step, a message, and `Interrupted` (a `KeyboardInterrupt`); so does any
    error after at least one step. Resuming from that checkpoint is bit-exact.
    """
    with StopRequests() as stop:  # from the start: a Ctrl-C while building or compiling is not lost either
        return _train(
            config,
            resume=resume,
            overwrite=overwrite,
            stop_at=stop_at,
            progress=progress,
            max_traces=max_traces,
            check_memory=check_memory,
            stop=stop,
        )


def _train(config, *, resume, overwrite, stop_at, progress, max_traces, check_memory, stop) -> TrainResult:
    from ._memory import check_memory as _check_memory
    from ._parallel import make_mesh, replicate, replicated, shard_batch

    if not isinstance(config, TrainConfig):
        raise TypeError(f"config: expected a TrainConfig, got {type(config).__name__}")
    if config.run_dir is None:
        if resume:
            raise ValueError("config.run_dir: expected the directory of the run to resume, got None")
        config = config.replace(run_dir=default_run_dir(config))
    if stop_at is not None and not (isinstance(stop_at, int) and 0 < stop_at <= config.steps):
        raise ValueError(f"stop_at: expected an int in [1, steps={config.steps}] or None, got {stop_at!r}")
    run_dir = check_run_dir(config.run_dir, resume=resume, overwrite=overwrite)
    if resume:
        stored = TrainConfig.load(run_dir / CONFIG)
        if stored.replace(run_dir=None) != config.replace(run_dir=None):
            diff = {
                f.name: (getattr(stored, f.name), getattr(config, f.name))
                for f in dataclasses.fields(config)
                if f.name != "run_dir" and getattr(stored, f.name) != getattr(config, f.name)
            }
            raise ValueError(
                f"config: differs from the stored {run_dir / CONFIG} in (stored, given) {diff}; "
                "resume with the stored config (resume_run) or start a new run"
            )
    writer = jax.process_index() == 0

    task = build_task(config)  # reads and checks the data before anything is written
    if check_memory:
        _check_memory(config, task)
    model = build_model(config, task)
    optimizer = make_optimizer(config)
    spec = trainable_filter(model)
    opt_state = optimizer.init(eqx.filter(model, spec))
    identity = run_identity(config, task)
    start = 0
    if resume:
        (model, opt_state), metadata = _load_state(run_dir / CHECKPOINT, model, opt_state, config, task)
        start = int(metadata["step"])

    mesh = None
    if config.data_parallel:
        mesh = make_mesh()
        if config.batch_size % mesh.devices.size:
            raise ValueError(
                f"batch_size: expected a multiple of the {mesh.devices.size} devices for "
                f"data-parallel training, got {config.batch_size}"
            )
        model, opt_state = replicate((model, opt_state), mesh)
    trainable, frozen = eqx.partition(model, spec)
    step_fn = make_train_step(
        optimizer, replicated_sharding=None if mesh is None else replicated(mesh), max_traces=max_traces
    )
    eval_step = make_eval_step(task)
    schedule = learning_rate_schedule(config)
    end = config.steps if stop_at is None else stop_at
    tokens_per_step = config.batch_size * task.seq_len

    def log(record):
        if writer:  # one write of one whole line: a crash tears at most the last record (read_metrics)
            with open(run_dir / METRICS, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def checkpoint(step):
        if writer:
            save_checkpoint(
                run_dir / CHECKPOINT,
                (eqx.combine(trainable, frozen), opt_state),
                {
                    **identity,
                    "step": step,
                    "next_data_step": step,
                    "steps": config.steps,
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                },
            )
            files.committed()

    def run_eval(step):
        result = evaluate(
            eqx.combine(trainable, frozen),
            task,
            batch_size=config.batch_size,
            num_batches=config.eval_batches,
            seed=config.seed,
            eval_step=eval_step,
            mesh=mesh,
        )
        record = {"kind": "eval", "step": step, **result}
        log(record)
        bar.write(f"step {step}: eval {task.metric_name} {result[task.metric_name]:.4f}  loss {result['loss']:.4f}")
        return record

    losses, evals = [], []
    began = time.perf_counter()
    timed_from, timed_steps = None, 0
    step = start
    bar = None
    if stop.requested:
        message = "stopped before the first step; nothing was written"
        print(f"\ninterrupted: {message}", file=sys.stderr)
        raise Interrupted(message, signum=stop.signum, step=start)
    with RunWriter(run_dir, resume=resume or not writer) as files:
        if resume and writer:  # drop records past the checkpoint (written after it, before an interruption)
            kept = [r for r in read_metrics(run_dir) if r["step"] <= start]
            atomic_write(run_dir / METRICS, "".join(json.dumps(r) + "\n" for r in kept).encode())
        elif writer:
            config.save(run_dir / CONFIG)
        bar = _Progress(end, start, progress)
        try:
            while step < end and not stop.requested:
                batch = task.batch("train", config.batch_size, seed=data_seed(config.seed, step))
                batch = shard_batch(batch, mesh) if mesh is not None else jax.tree.map(jnp.asarray, batch)
                new_trainable, new_opt_state, loss, skipped = step_fn(trainable, frozen, opt_state, batch)
                loss, skipped = float(loss), bool(skipped)
                if not math.isfinite(loss):
                    raise FloatingPointError(
                        f"loss: expected a finite value, got {loss} at step {step + 1}; lower --learning-rate (now "
                        f"{config.learning_rate}) or --grad-clip (now {config.grad_clip})"
                    )
                in_a_row = int(skipped_in_a_row(new_opt_state))
                if skipped:
                    bar.write(f"step {step + 1}: non-finite gradient, update skipped")
                if in_a_row >= MAX_SKIPPED_IN_A_ROW:
                    raise FloatingPointError(
                        f"gradients: expected finite values, got NaN/inf in {in_a_row} steps in a row "
                        f"(up to step {step + 1}); lower --learning-rate (now {config.learning_rate}) or --grad-clip (now "
                        f"{config.grad_clip})"
                    )
                trainable, opt_state = new_trainable, new_opt_state
                step += 1
                now = time.perf_counter()
                if timed_from is None:  # the first step includes compilation
                    timed_from = now
                    rate, left = float("nan"), float("nan")
                else:
                    timed_steps += 1
                    per_step = (now - timed_from) / timed_steps
                    rate, left = tokens_per_step / per_step, per_step * (end - step)
                losses.append((step, loss))
                log(
                    {
                        "kind": "train",
                        "step": step,
                        "loss": loss,
                        "learning_rate": float(schedule(step - 1)),
                        "skipped": skipped,
                        "tokens_per_s": None if math.isnan(rate) else rate,
                        "seconds": now - began,
                    }
                )
                bar.update(step, loss, 0.0 if math.isnan(rate) else rate, left)
                if step % config.eval_every == 0 or step == config.steps:
                    evals.append(run_eval(step))
                if (config.checkpoint_every and step % config.checkpoint_every == 0) or step == end:
                    checkpoint(step)
        except BaseException as error:  # keep the last completed step of a run that made progress
            bar.close()
            if step > start:
                try:
                    checkpoint(step)
                    print(
                        f"\n{'interrupted' if isinstance(error, KeyboardInterrupt) else 'stopped by an error'}: "
                        f"checkpoint of step {step} written to {run_dir / CHECKPOINT}; continue with "
                        f"`astroformer train --run-dir {run_dir} --resume`",
                        file=sys.stderr,
                    )
                except Exception as failure:  # noqa: BLE001 - report, keep the original error
                    print(f"\ncould not write a checkpoint of step {step}: {failure}", file=sys.stderr)
            raise
        bar.close()
        if stop.requested:
            if step > start:
                checkpoint(step)
                message = (
                    f"checkpoint of step {step} written to {run_dir / CHECKPOINT}; continue with "
                    f"`astroformer train --run-dir {run_dir} --resume`"
                )
            else:
                message = "stopped before the first step; nothing was written"
                files.rollback()
            print(f"\ninterrupted: {message}", file=sys.stderr)
            raise Interrupted(message, signum=stop.signum, step=step)
    return TrainResult(
        model=eqx.combine(trainable, frozen),
        config=config,
        run_dir=str(run_dir),
        step=step,
        losses=losses,
        evals=evals,
        seconds=time.perf_counter() - began,
    )


def resume_run(run_dir: str | os.PathLike, **kwargs) -> TrainResult:
    """Continue the run in `run_dir` with its stored config (keyword arguments go to `train`)."""
    config = TrainConfig.load(Path(run_dir) / CONFIG).replace(run_dir=str(run_dir))
    return train(config, resume=True, **kwargs)
