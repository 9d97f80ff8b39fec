"""Tests of astroformer.training: the model, the loop, checkpoints, resumption, sharding and sampling.

Tiny sizes throughout (one or two blocks, width 16, sequences of 8–16 tokens) so the file runs in about two
minutes on a 2-core CPU; the neuron–astrocyte read uses 4 steps.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from astroformer import ATTENTION_KINDS
from astroformer.cli import main as cli_main
from astroformer.tasks import CharCorpus
from astroformer.training import (
    CheckpointError,
    TrainConfig,
    Transformer,
    build_model,
    build_task,
    load_run,
    loss_fn,
    make_optimizer,
    make_train_step,
    read_metrics,
    resume_run,
    sample,
    sample_text,
    save_checkpoint,
    skipped_in_a_row,
    train,
    trainable_filter,
)

TINY = dict(
    task="mqar",
    task_kwargs={"seq_len": 16, "num_kv_pairs": 2, "vocab_size": 16},
    d_model=16,
    num_layers=1,
    num_heads=2,
    num_features=8,
    read_steps=4,
    batch_size=8,
    learning_rate=1e-2,
    warmup=1,
    eval_batches=1,
)


def tiny_config(**changes) -> TrainConfig:
    return TrainConfig(
        **{**TINY, "attention": "softmax", "steps": 6, "eval_every": 3, "checkpoint_every": 3, **changes}
    )


# ------------------------------------------------------------------------------------------- model


def test_batched_equals_vmap_and_padding_is_ignored(getkey):
    model = Transformer(11, 8, attention="softmax", d_model=16, num_layers=1, num_heads=2, key=getkey())
    tokens = jax.random.randint(getkey(), (3, 8), 0, 11)
    batched = eqx.filter_jit(Transformer.batched)(model, tokens)
    assert batched.shape == (3, 8, 11)
    np.testing.assert_allclose(
        batched, eqx.filter_jit(lambda m, t: jax.vmap(m)(t))(model, tokens), rtol=1e-5, atol=1e-5
    )
    # Padded positions (mask False) must not influence the others, whatever tokens they hold.
    call = eqx.filter_jit(lambda m, t, mask: m(t, mask))
    mask = jnp.arange(8) != 2
    changed = tokens[0].at[2].set((tokens[0, 2] + 1) % 11)
    a, b = call(model, tokens[0], mask), call(model, changed, mask)
    np.testing.assert_allclose(a[mask], b[mask], rtol=1e-5, atol=1e-6)
    everything = jnp.ones(8, bool)  # without the mask they would differ
    assert not np.allclose(call(model, tokens[0], everything)[3:], call(model, changed, everything)[3:])


def test_model_rejects_bad_input(getkey):
    model = Transformer(11, 8, attention="linear", d_model=16, num_layers=1, num_heads=2, key=getkey())
    with pytest.raises(ValueError, match="max_len=8"):
        model(jnp.zeros(9, jnp.int32))
    with pytest.raises(ValueError, match="attention"):
        Transformer(11, 8, attention="sigmoid", key=getkey())
    with pytest.raises(ValueError, match="d_model"):
        Transformer(11, 8, d_model=10, num_heads=4, key=getkey())


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
def test_training_lowers_the_loss(kind):
    """A few AdamW steps on one fixed batch lower its loss, for every attention kind; the frozen
    neuron–astrocyte constants and feature matrices stay bit-for-bit unchanged."""
    config = tiny_config(attention=kind, steps=12)
    task = build_task(config)
    model = build_model(config, task)
    spec = trainable_filter(model)
    optimizer = make_optimizer(config)
    trainable, frozen = eqx.partition(model, spec)
    opt_state = optimizer.init(trainable)
    step = make_train_step(optimizer, max_traces=1)
    batch = jax.tree.map(jnp.asarray, task.batch("train", 8, seed=0))
    jit_loss = eqx.filter_jit(loss_fn)
    first = float(jit_loss(model, batch))
    for _ in range(12):
        trainable, opt_state, loss, skipped = step(trainable, frozen, opt_state, batch)
        assert not skipped
    final = float(jit_loss(eqx.combine(trainable, frozen), batch))
    assert np.isfinite(final)
    assert final < 0.8 * first, (kind, first, final)
    if kind.startswith("na-"):
        for name in ("params", "feature_map"):
            before = jax.tree.leaves(getattr(model.blocks[0].attention, name))
            after = jax.tree.leaves(getattr(eqx.combine(trainable, frozen).blocks[0].attention, name))
            assert before and all(np.array_equal(x, y) for x, y in zip(before, after))


def test_train_step_compiles_once():
    config = tiny_config()
    task = build_task(config)
    model = build_model(config, task)
    optimizer = make_optimizer(config)
    trainable, frozen = eqx.partition(model, trainable_filter(model))
    opt_state = optimizer.init(trainable)
    step = make_train_step(optimizer, max_traces=1)
    for seed in range(3):  # new data and new parameters each call: no retrace
        batch = jax.tree.map(jnp.asarray, task.batch("train", 8, seed=seed))
        trainable, opt_state, _, _ = step(trainable, frozen, opt_state, batch)
    # A non-finite gradient skips the update: parameters and AdamW's state come back unchanged, and the
    # optimiser state counts the skip (so a checkpoint keeps the count).
    poisoned = eqx.tree_at(
        lambda t: t.blocks[0].mlp_out.bias, trainable, trainable.blocks[0].mlp_out.bias.at[0].set(jnp.nan)
    )
    after, after_state, loss, skipped = step(poisoned, frozen, opt_state, batch)
    assert bool(skipped) and not np.isfinite(float(loss))
    for a, b in zip(
        jax.tree.leaves((after, after_state.inner_state)), jax.tree.leaves((poisoned, opt_state.inner_state))
    ):
        np.testing.assert_array_equal(a, b)
    assert int(skipped_in_a_row(opt_state)) == 0 and int(skipped_in_a_row(after_state)) == 1
    _, again_state, _, _ = step(poisoned, frozen, after_state, batch)
    assert int(skipped_in_a_row(again_state)) == 2
    _, recovered_state, _, skipped = step(trainable, frozen, again_state, batch)  # a finite step resets it
    assert not bool(skipped) and int(skipped_in_a_row(recovered_state)) == 0
    # The guard is live: a batch of another shape needs a second trace, which it refuses.
    with pytest.raises(Exception, match="trace"):
        step(trainable, frozen, opt_state, jax.tree.map(jnp.asarray, task.batch("train", 4, seed=0)))


# ------------------------------------------------------------------------------------ runs on disk


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """An uninterrupted 6-step run (checkpoints at 3 and 6)."""
    config = tiny_config(run_dir=str(tmp_path_factory.mktemp("runs") / "full"))
    return train(config, progress=False)


def test_run_writes_metrics_and_config(full_run):
    records = read_metrics(full_run.run_dir)
    train_records = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train_records] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in train_records] == [loss for _, loss in full_run.losses]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [3, 6]
    assert TrainConfig.load(os.path.join(full_run.run_dir, "config.json")) == full_run.config


def test_resume_equals_uninterrupted(full_run, tmp_path):
    config = full_run.config.replace(run_dir=str(tmp_path / "split"))
    first = train(config, stop_at=3, progress=False)
    assert first.step == 3
    second = resume_run(config.run_dir, progress=False)
    assert second.step == 6
    losses = [r["loss"] for r in read_metrics(config.run_dir) if r["kind"] == "train"]
    expected = [loss for _, loss in full_run.losses]
    assert losses == expected  # bit-identical, not merely close
    for a, b in zip(
        jax.tree.leaves(eqx.filter(second.model, eqx.is_array)),
        jax.tree.leaves(eqx.filter(full_run.model, eqx.is_array)),
    ):
        np.testing.assert_array_equal(a, b)


def test_existing_run_dir_is_refused(full_run):
    with pytest.raises(FileExistsError, match="--resume"):
        train(full_run.config, progress=False)
    with pytest.raises(ValueError, match="at most one"):
        train(full_run.config, resume=True, overwrite=True, progress=False)
    with pytest.raises(ValueError, match="differs"):
        train(full_run.config.replace(learning_rate=0.5), resume=True, progress=False)


@pytest.mark.parametrize("damage", ["corrupt", "truncate", "header"])
def test_damaged_checkpoint_gives_clear_error(full_run, tmp_path, damage, capsys):
    run_dir = tmp_path / damage
    run_dir.mkdir()
    for name in ("config.json", "metrics.jsonl"):
        (run_dir / name).write_bytes(open(os.path.join(full_run.run_dir, name), "rb").read())
    raw = bytearray(open(os.path.join(full_run.run_dir, "checkpoint.eqx"), "rb").read())
    if damage == "corrupt":
        raw[-100] ^= 0xFF
        expected = "corrupted"
    elif damage == "truncate":
        raw = raw[: len(raw) // 2]
        expected = "truncated"
    else:
        raw = raw[:20]
        expected = "not an astroformer checkpoint"
    path = run_dir / "checkpoint.eqx"
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=expected) as info:
        load_run(run_dir)
    assert str(path) in str(info.value)
    assert cli_main(["eval", "--run-dir", str(run_dir)]) == 2
    assert expected in capsys.readouterr().err


def test_checkpoint_before_apply_if_finite_loads(full_run, tmp_path):
    # A run saved before the optimiser was wrapped in optax.apply_if_finite (bare AdamW state) and before
    # `lr` was renamed `learning_rate` loads, with the skip counter at zero, and resumes.
    config, task, model, metadata, opt_state = load_run(full_run.run_dir, with_optimizer=True)
    old = tmp_path / "old-run"
    old.mkdir()
    stored = json.loads(Path(full_run.run_dir, "config.json").read_text())
    stored["lr"] = stored.pop("learning_rate")
    stored["run_dir"] = str(old)
    (old / "config.json").write_text(json.dumps(stored))
    (old / "metrics.jsonl").write_bytes(Path(full_run.run_dir, "metrics.jsonl").read_bytes())
    save_checkpoint(old / "checkpoint.eqx", (model, opt_state.inner_state), metadata)
    _, _, loaded, _, loaded_state = load_run(old, with_optimizer=True)
    assert int(loaded_state.notfinite_count) == 0
    for a, b in zip(jax.tree.leaves((loaded, loaded_state)), jax.tree.leaves((model, opt_state))):
        np.testing.assert_array_equal(a, b)


def test_checkpoint_round_trip_and_eval(full_run, capsys):
    config, task, model, metadata = load_run(full_run.run_dir)
    assert metadata["step"] == 6 and config == full_run.config
    for a, b in zip(
        jax.tree.leaves(eqx.filter(model, eqx.is_array)), jax.tree.leaves(eqx.filter(full_run.model, eqx.is_array))
    ):
        np.testing.assert_array_equal(a, b)
    assert cli_main(["eval", "--run-dir", full_run.run_dir]) == 0
    out = capsys.readouterr().out
    final = [r for r in read_metrics(full_run.run_dir) if r["kind"] == "eval"][-1]
    assert f"accuracy {final['accuracy']:.4f}" in out  # same eval batches as during training


# ------------------------------------------------------------------------------------------ config


def test_config_json_round_trip_and_validation():
    config = tiny_config(text=None, attention="na-ode")
    assert TrainConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="attention"):
        TrainConfig(attention="sigmoid")
    with pytest.raises(ValueError, match="warmup"):
        TrainConfig(steps=10, warmup=10)
    with pytest.raises(ValueError, match="unknown field"):
        TrainConfig.from_dict({"stepz": 3})
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="text"):
        TrainConfig(task="mqar", text="x.txt")


# ----------------------------------------------------------------------------------------- parallel


_PARALLEL_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax
    from astroformer.training import TrainConfig, train
    assert len(jax.devices()) == 4, jax.devices()
    config = TrainConfig.from_json(sys.argv[1])
    one = train(config.replace(run_dir=sys.argv[2] + "/one"), progress=False)
    four = train(config.replace(run_dir=sys.argv[2] + "/four", data_parallel=True), progress=False)
    leaf = jax.tree.leaves(four.model)[0]
    print(json.dumps({"one": [l for _, l in one.losses], "four": [l for _, l in four.losses],
                      "param_devices": len(leaf.sharding.device_set),
                      "replicated": bool(leaf.sharding.is_fully_replicated)}))
""")


def test_sharded_training_equals_single_device(tmp_path):
    """Four CPU devices, batch split four ways: the same losses as one device to 1e-5 relative over 3 steps
    (only the order of float32 sums differs)."""
    config = tiny_config(steps=3, eval_every=3, batch_size=8)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", _PARALLEL_SCRIPT, config.to_json(), str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["param_devices"] == 4 and result["replicated"]
    assert len(result["one"]) == 3
    np.testing.assert_allclose(result["four"], result["one"], rtol=1e-5)


# ----------------------------------------------------------------------------------------- sampling


@pytest.fixture(scope="module")
def char_model():
    corpus = CharCorpus.from_text("the quick brown fox jumps over the lazy dog\n" * 4)
    model = Transformer(
        corpus.vocab_size, 8, attention="softmax", d_model=16, num_layers=1, num_heads=2, key=jax.random.PRNGKey(3)
    )
    return corpus, model


def test_sampling_is_deterministic_and_in_vocabulary(char_model):
    corpus, model = char_model
    a = sample_text(model, corpus, "the ", 40, temperature=1.5, seed=1)
    b = sample_text(model, corpus, "the ", 40, temperature=1.5, seed=1)
    c = sample_text(model, corpus, "the ", 40, temperature=1.5, seed=2)
    assert a == b and len(a) == 40
    assert a != c
    assert set(a) <= set(corpus.chars)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        sample_text(model, corpus, "XYZ", 5)


def test_greedy_sampling_matches_a_python_loop(char_model):
    """top_k=1 is greedy decoding; compare with argmax over the last max_len tokens, one call at a time
    (covers the sliding window past max_len=8)."""
    corpus, model = char_model
    prompt = list(corpus.encode("the q"))
    drawn = np.asarray(sample(model, np.asarray(prompt), 12, top_k=1, key=jax.random.PRNGKey(0)))
    call = eqx.filter_jit(lambda m, t: m(t))
    context = list(prompt)
    for _ in range(12):
        context.append(int(jnp.argmax(call(model, jnp.asarray(context[-8:], jnp.int32))[-1])))
    assert drawn.tolist() == context[len(prompt) :]


def test_weight_decay_shrinks_matrices_only_per_head_maps_included():
    # With zero gradients an AdamW step is the decay alone: x -> x (1 - lr wd). One learned feature map per head
    # stacks its leaves on a head axis, so its bias b (H, M/2) and envelope (H, D) must not count as matrices.
    config = TrainConfig(feature_map="learned-envelope", learning_rate=0.1, warmup=0, weight_decay=0.5, steps=10)
    model = build_model(config, build_task(config))
    trainable = eqx.filter(model, trainable_filter(model))
    trainable = eqx.tree_at(  # b, mu and log_gamma start at 0, where decay would change nothing
        lambda m: [getattr(m.blocks[0].attention.feature_map.maps, name) for name in ("b", "mu", "log_gamma")],
        trainable,
        replace_fn=lambda x: x + 1.0,
    )
    optimizer = make_optimizer(config)
    grads = jax.tree.map(jnp.zeros_like, trainable)
    updates, _ = optimizer.update(grads, optimizer.init(trainable), trainable)
    moved = eqx.apply_updates(trainable, updates)
    fm, fm_moved = trainable.blocks[0].attention.feature_map.maps, moved.blocks[0].attention.feature_map.maps
    for name in ("b", "mu", "log_gamma"):
        np.testing.assert_array_equal(getattr(fm_moved, name), getattr(fm, name), err_msg=name)
    np.testing.assert_allclose(fm_moved.W, fm.W * (1 - 0.1 * 0.5), rtol=1e-6)
    emb, emb_moved = jax.tree.leaves(trainable)[0], jax.tree.leaves(moved)[0]
    assert emb.ndim == 2 and not np.allclose(emb_moved, emb)
