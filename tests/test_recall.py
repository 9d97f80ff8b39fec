"""Recall: the short convolution of the token embeddings, the task presets and the CLI's task arguments, and
a training regression test (softmax attention must learn a tiny MQAR, so a change that breaks learning fails)."""

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from astroformer.cli import main as cli_main
from astroformer.training import TASK_PRESETS, TrainConfig, Transformer, preset_config, train
from astroformer.training._model import causal_conv


def test_causal_conv_matches_a_loop(getkey):
    e = jax.random.normal(getkey(), (2, 7, 5))
    w = jax.random.normal(getkey(), (3, 5))
    expected = np.zeros((2, 7, 5))
    for t in range(7):
        for j in range(3):
            if t - j >= 0:
                expected[:, t] += np.asarray(w[j]) * np.asarray(e[:, t - j])
    np.testing.assert_allclose(causal_conv(e, w), expected, rtol=1e-5, atol=1e-6)


def test_short_conv_model_is_causal(getkey):
    # Changing token t changes the logits at t and t+1 (the convolution reaches one token back) but never
    # before t.
    model = Transformer(13, 10, attention="softmax", d_model=16, num_layers=1, num_heads=2, short_conv=2, key=getkey())
    tokens = jax.random.randint(getkey(), (10,), 0, 13)
    call = eqx.filter_jit(lambda m, t: m(t))
    base = call(model, tokens)
    changed = call(model, tokens.at[5].set((tokens[5] + 1) % 13))
    np.testing.assert_array_equal(base[:5], changed[:5])
    assert float(jnp.max(jnp.abs(base[5:] - changed[5:]))) > 1e-4


def test_configs_saved_before_short_conv_load_without_it(tmp_path):
    data = json.loads(TrainConfig().to_json())
    del data["short_conv"]
    assert TrainConfig.from_dict(data).short_conv == 0
    assert TrainConfig().short_conv == 2
    with pytest.raises(ValueError, match=r"`short_conv` must be a non-negative int, got -1"):
        TrainConfig(short_conv=-1)


def test_presets_are_valid_configs():
    for task in TASK_PRESETS:
        config = preset_config(task)
        assert config.task == task
    config = preset_config("mqar", attention="na-ode", task_kwargs={"num_kv_pairs": 8})
    assert config.task_kwargs == {**TASK_PRESETS["mqar"]["task_kwargs"], "num_kv_pairs": 8}
    with pytest.raises(ValueError, match="`task` must be one of"):
        preset_config("nope")


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "arg, message",
    [
        ("num_kv_pairs", "--task-arg: expected KEY=VALUE"),
        ("colour=3", r"got unexpected argument\(s\) \['colour'\]"),
        ("num_kv_pairs=40", "`seq_len` must be at least 4 \\* num_kv_pairs = 160"),
        ("power_a=-1", "`power_a` must be a finite float > 0"),
    ],
)
def test_cli_task_arg_errors(tmp_path, capsys, arg, message):
    run_dir = tmp_path / "run"
    rc = cli_main(["train", "--task", "mqar", "--task-arg", arg, "--run-dir", str(run_dir), "--no-progress"])
    assert rc == 2
    assert __import__("re").search(message, capsys.readouterr().err)
    assert not run_dir.exists()


def test_softmax_learns_tiny_mqar(tmp_path):
    # The regression test of learning itself: 2 key-value pairs, 16 tokens. With the short convolution a
    # softmax transformer of one layer gets there in well under 200 steps (without it, recall needs a
    # previous-token head learnt from absolute positions, and 1,000 steps were not enough for 0.9).
    config = TrainConfig(
        task="mqar",
        task_kwargs={"vocab_size": 16, "seq_len": 16, "num_kv_pairs": 2},
        attention="softmax",
        d_model=32,
        num_layers=1,
        num_heads=2,
        batch_size=32,
        steps=150,
        learning_rate=3e-3,
        warmup=15,
        eval_every=150,
        eval_batches=4,
        checkpoint_every=0,
        run_dir=str(tmp_path / "run"),
    )
    result = train(config, progress=False)
    assert result.evals[-1]["accuracy"] >= 0.9, result.evals
