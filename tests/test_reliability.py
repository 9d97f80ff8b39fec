"""Nothing lost, nothing silently wrong: run directories, checkpoints, interrupts, numeric guards and the
command line's error style, each test reproducing a misuse a user can make.

Tiny sizes throughout (one block of width 16, 16-token sequences, 6 steps) so that the whole file compiles
a handful of small train steps; the subprocess test of the command line is marked slow.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import astroformer as af
from astroformer._errors import runtime_message
from astroformer.cli import main as cli_main
from astroformer.training import CheckpointError, TrainConfig, build_task, load_run, read_metrics, resume_run, train
from astroformer.training import _train as train_module
from astroformer.training._memory import MemoryEstimateError, check_memory, estimate_memory
from astroformer.training._rundir import PREVIOUS, check_run_dir
from astroformer.training._signals import Interrupted
from conftest import SMALL_HEAD

TINY = dict(
    task="mqar",
    task_kwargs={"seq_len": 16, "num_kv_pairs": 2, "vocab_size": 16},
    attention="softmax",
    d_model=16,
    num_layers=1,
    num_heads=2,
    num_features=8,
    read_steps=4,
    batch_size=8,
    learning_rate=1e-2,
    warmup=1,
    eval_batches=1,
    steps=6,
    eval_every=3,
    checkpoint_every=3,
)


def tiny_config(**changes) -> TrainConfig:
    return TrainConfig(**{**TINY, **changes})


def _files(run_dir) -> dict:
    return {name: open(os.path.join(run_dir, name), "rb").read() for name in sorted(os.listdir(run_dir))}


def _params(model):
    return jax.tree.leaves(eqx.filter(model, eqx.is_array))


@pytest.fixture(scope="module", autouse=True)
def shared_steps():
    """Runs of this module with equal optimiser settings (and equal tasks) share one compiled train step (and
    eval step) instead of compiling their own: `make_optimizer` returns one object per setting, and the steps
    are cached by that object (by the task's repr for the eval step)."""
    optimizers, steps = {}, {}
    make_optimizer, make_train_step, make_eval_step = (
        train_module.make_optimizer,
        train_module.make_train_step,
        train_module.make_eval_step,
    )

    def optimizer(config):
        key = (
            config.learning_rate,
            config.warmup,
            config.steps,
            config.min_lr_ratio,
            config.weight_decay,
            config.grad_clip,
        )
        if key not in optimizers:
            optimizers[key] = make_optimizer(config)
        return optimizers[key]

    def train_step(optimizer, **kwargs):
        key = ("train", id(optimizer), tuple(sorted(kwargs.items())))
        if key not in steps:
            steps[key] = make_train_step(optimizer, **kwargs)
        return steps[key]

    def eval_step(task):
        key = ("eval", repr(task))
        if key not in steps:
            steps[key] = make_eval_step(task)
        return steps[key]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_module, "make_optimizer", optimizer)
        patch.setattr(train_module, "make_train_step", train_step)
        patch.setattr(train_module, "make_eval_step", eval_step)
        yield


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """An uninterrupted 6-step run (checkpoints at 3 and 6): the reference for resumption and the run that
    misuses try to damage."""
    return train(tiny_config(run_dir=str(tmp_path_factory.mktemp("runs") / "full")), progress=False, max_traces=None)


@pytest.fixture
def old_run(full_run, tmp_path):
    """A copy of the full run, to be replaced or damaged."""
    path = tmp_path / "old"
    shutil.copytree(full_run.run_dir, path)
    return path


# ------------------------------------------------------------------------------------ run directories


def test_overwrite_with_bad_data_keeps_the_old_run(old_run, capsys):
    before = _files(old_run)
    for text in ("missing.txt", str(old_run)):  # a file that does not exist; a directory
        rc = cli_main(
            ["train", "--overwrite", "--run-dir", str(old_run), "--task", "charlm", "--text", text, "--no-progress"]
        )
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and "text:" in err and text in err
        assert _files(old_run) == before
    with pytest.raises(ValueError, match="seq_len"):
        train(tiny_config(run_dir=str(old_run), task_kwargs={"seq_len": 0}), overwrite=True, progress=False)
    assert _files(old_run) == before


def _failing_step(*args, **kwargs):
    def step(*args):
        raise RuntimeError("the first step failed")

    return step


def test_failed_first_step_restores_the_replaced_run_and_leaves_no_new_dir(old_run, tmp_path, monkeypatch):
    before = _files(old_run)
    monkeypatch.setattr(train_module, "make_train_step", _failing_step)
    with pytest.raises(RuntimeError, match="first step failed"):
        train(tiny_config(run_dir=str(old_run), learning_rate=5e-3), overwrite=True, progress=False)
    assert _files(old_run) == before and not (old_run / PREVIOUS).exists()
    fresh = tmp_path / "fresh" / "run"
    with pytest.raises(RuntimeError, match="first step failed"):
        train(tiny_config(run_dir=str(fresh)), progress=False)
    assert not fresh.parent.exists()  # nor the parent it had to create


def test_killed_replacement_is_recovered(old_run):
    # What a replacement killed (SIGKILL) before its first checkpoint leaves: the old run in .previous-run/,
    # the new run's config and metrics.
    before = _files(old_run)
    (old_run / PREVIOUS).mkdir()
    for name in before:
        os.replace(old_run / name, old_run / PREVIOUS / name)
    (old_run / "config.json").write_text(tiny_config(learning_rate=5e-3).to_json())
    (old_run / "metrics.jsonl").write_text('{"kind": "train", "step": 1, "loss": 1.0}\n')
    with pytest.warns(RuntimeWarning, match="restored"):
        check_run_dir(old_run, resume=True, overwrite=False)
    assert _files(old_run) == before and not (old_run / PREVIOUS).exists()


def test_run_without_checkpoint_gives_one_message(tmp_path, capsys):
    run_dir = tmp_path / "killed"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(tiny_config().to_json())
    messages = []
    for flag in (["--resume"], []):
        assert cli_main(["train", "--run-dir", str(run_dir), *flag, "--no-progress"]) == 2
        messages.append(capsys.readouterr().err)
    assert messages[0] == messages[1] and "stopped before its first checkpoint" in messages[0]
    assert "--overwrite" in messages[0] and "--checkpoint-every" in messages[0]


def test_a_directory_that_is_not_a_run_is_never_replaced(tmp_path, capsys):
    """A directory with the user's own `config.json` is not a run: `train` refuses it even with --overwrite
    (which would move the file away and delete it), and leaves every file as it was. An empty --run-dir (the
    current directory) is refused too."""
    user = tmp_path / "mine"
    user.mkdir()
    (user / "config.json").write_text('{"my": "settings"}')
    (user / "notes.txt").write_text("keep")
    before = _files(user)
    for flag in ([], ["--overwrite"]):
        assert cli_main(["train", "--run-dir", str(user), *flag, "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert "not an astroformer run's" in err and "choose another --run-dir" in err, err
        assert _files(user) == before
    with pytest.raises(ValueError, match="run_dir: expected a directory path, got an empty string"):
        check_run_dir("", resume=False, overwrite=False)


def test_distill_checks_its_output_before_any_work(full_run, tmp_path, capsys):
    """`astroformer distill --out` is checked before the teacher is even loaded: never the teacher's own
    directory (which --overwrite used to replace), not a file, not under a file, not a run unless --overwrite."""
    teacher = _files(full_run.run_dir)
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out, match in (
        (full_run.run_dir, "which is the softmax run (--run-dir) itself"),
        (afile, "out: expected a directory, got"),
        (afile / "sub", "is not a directory"),
        (full_run.run_dir + "/../" + os.path.basename(full_run.run_dir), "itself"),
    ):
        for flag in ([], ["--overwrite"]):
            assert cli_main(["distill", "--run-dir", full_run.run_dir, "--out", str(out), *flag]) == 2
            err = capsys.readouterr().err
            assert match in err, (out, flag, err)
    assert _files(full_run.run_dir) == teacher and afile.read_text() == "x"
    copy = tmp_path / "copy"
    shutil.copytree(full_run.run_dir, copy)
    assert cli_main(["distill", "--run-dir", full_run.run_dir, "--out", str(copy)]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_seeds_out_of_range_are_refused_by_every_command(full_run, capsys):
    for argv in (
        ["train", "--seed", "99999999999999999999"],
        ["sample", "--run-dir", full_run.run_dir, "--seed", "-1"],
        ["distill", "--run-dir", full_run.run_dir, "--out", "x", "--seed", str(2**31)],
        ["simulate", "--seed", "1e3"],
    ):
        if argv[0] == "train":  # TrainConfig's own check: the command's error, exit 2
            assert cli_main(argv) == 2
        else:  # argparse's check of the flag's type: exit 2 with usage
            with pytest.raises(SystemExit) as exit_info:
                cli_main(argv)
            assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert "seed" in err and ("2**31" in err or "expected an integer" in err), (argv, err)


def test_a_relative_text_path_is_stored_absolute(tmp_path, monkeypatch):
    """`--text corpus.txt` is stored as an absolute path, so that `eval` and `sample` find the corpus from any
    directory."""
    seen = {}

    def fake_train(config, **kwargs):
        seen["config"] = config
        raise ValueError("stop here")

    (tmp_path / "corpus.txt").write_text("abc\n" * 100)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(train_module, "train", fake_train)
    assert cli_main(["train", "--text", "corpus.txt", "--run-dir", str(tmp_path / "r")]) == 2
    assert seen["config"].text == str(tmp_path / "corpus.txt")


def test_fit_checks_the_output_path_before_fitting(tmp_path, capsys):
    config = tmp_path / "fit.json"
    config.write_text(json.dumps({"free": ["tau_s"], "target": {"kind": "softmax"}, "steps": 1}))
    for output, message in ((tmp_path / "missing" / "out.json", "does not exist"), (tmp_path, "directory")):
        assert cli_main(["fit", "--config", str(config), "--output", str(output)]) == 2
        err = capsys.readouterr().err
        assert "--output" in err and message in err and err.count("\n") == 1


# ---------------------------------------------------------------------------------------- checkpoints


def test_edited_checkpoint_header_is_refused(old_run):
    path = old_run / "checkpoint.eqx"
    raw = path.read_bytes()
    path.write_bytes(raw.replace(b'"step": 6', b'"step": 5'))
    with pytest.raises(CheckpointError, match="corrupted or was edited"):
        load_run(old_run)


@pytest.mark.parametrize(
    "field, value",
    [
        ("attention", "linear"),
        ("seed", 1),
        ("num_features", 4),
        ("task_kwargs", {"seq_len": 16, "num_kv_pairs": 3, "vocab_size": 16}),
    ],
)
def test_checkpoint_of_another_run_is_refused(old_run, field, value, capsys):
    config = json.loads((old_run / "config.json").read_text())
    config[field] = value
    (old_run / "config.json").write_text(json.dumps(config))
    name = "data_seed" if field == "seed" else field
    with pytest.raises(CheckpointError, match=f"does not belong to this run: it was written with {name}="):
        load_run(old_run)
    assert cli_main(["eval", "--run-dir", str(old_run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and name in err


def test_changed_text_is_detected(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("abcabcabd " * 100)
    config = TrainConfig(task="charlm", text=str(text), task_kwargs={"seq_len": 16}, steps=6, warmup=1)
    metadata = {**train_module.run_identity(config, build_task(config)), "step": 6}
    train_module.check_checkpoint("ckpt", metadata, config, build_task(config))  # the same text: accepted
    for step in (7, 2.5, "6", -1):
        with pytest.raises(CheckpointError, match="step must be an int"):
            train_module.check_checkpoint("ckpt", {**metadata, "step": step}, config, build_task(config))
    text.write_text("abcabcabe " * 100)
    with pytest.raises(CheckpointError, match="the text changed since"):
        train_module.check_checkpoint("ckpt", metadata, config, build_task(config))


def test_checkpoint_that_is_a_directory(old_run, capsys):
    os.remove(old_run / "checkpoint.eqx")
    (old_run / "checkpoint.eqx").mkdir()
    assert cli_main(["eval", "--run-dir", str(old_run)]) == 2
    assert "is a directory" in capsys.readouterr().err
    with pytest.raises(ValueError, match="got a directory"):
        check_run_dir(old_run, resume=True, overwrite=False)


def test_torn_metrics_line(full_run, old_run, tmp_path):
    metrics = old_run / "metrics.jsonl"
    records = read_metrics(old_run)
    metrics.write_bytes(metrics.read_bytes() + b'{"kind": "train", "st')
    with pytest.warns(RuntimeWarning, match="torn last line"):
        assert read_metrics(old_run) == records
    lines = metrics.read_bytes().split(b"\n")
    metrics.write_bytes(b"\n".join([lines[0], b"garbage", *lines[1:]]))
    with pytest.raises(ValueError, match="line 2 is damaged"):
        read_metrics(old_run)
    # A damaged sibling run is skipped by the comparison of the command line, not fatal.
    from astroformer.training.cli import _latest_run

    assert _latest_run(tmp_path, full_run.config, "softmax", exclude=tmp_path / "other") is None


# ----------------------------------------------------------------------------------------- interrupts


def _signal_at(monkeypatch, signals: dict):
    """Send `signals[step]` (a list of signals) to this process while the batch of `step` is being drawn."""
    original = train_module.data_seed

    def data_seed(seed, step):
        for signum in signals.get(step, ()):
            os.kill(os.getpid(), signum)
        return original(seed, step)

    monkeypatch.setattr(train_module, "data_seed", data_seed)


# SIGTERM while step 1 is drawn (the step then compiles): the run stops after it. Two SIGINTs at once: the
# second only repeats that the checkpoint is coming.
@pytest.mark.parametrize(
    "signals", [{0: [signal.SIGTERM]}, {2: [signal.SIGINT, signal.SIGINT]}], ids=["sigterm-first-step", "sigint-twice"]
)
def test_signal_writes_a_checkpoint_and_resume_is_bit_exact(full_run, tmp_path, monkeypatch, capfd, signals):
    config = full_run.config.replace(run_dir=str(tmp_path / "split"), checkpoint_every=0)
    _signal_at(monkeypatch, signals)
    first = min(signals)
    with pytest.raises(Interrupted) as info:
        train(config, progress=False, max_traces=None)
    assert info.value.signum == signals[first][0] and info.value.step == first + 1
    err = capfd.readouterr().err
    assert f"checkpoint of step {first + 1} written" in err
    assert ("already stopping" in err) == (len(signals[first]) > 1)
    monkeypatch.undo()
    resumed = resume_run(config.run_dir, progress=False, max_traces=None)
    losses = [r["loss"] for r in read_metrics(config.run_dir) if r["kind"] == "train"]
    assert losses == [loss for _, loss in full_run.losses]  # bit-identical
    for a, b in zip(_params(resumed.model), _params(full_run.model), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("signum, every", [(signal.SIGTERM, 0), (signal.SIGKILL, 2)], ids=["sigterm", "sigkill"])
def test_cli_signal_then_resume_is_bit_exact(tmp_path, signum, every):
    """The real command line, stopped by SIGTERM (a final checkpoint) or SIGKILL (the last periodic one of
    --checkpoint-every), then resumed: the losses equal those of an uninterrupted run."""
    run_dir = tmp_path / "cli"
    args = [
        sys.executable,
        "-m",
        "astroformer.cli",
        "train",
        "--task",
        "mqar",
        "--attention",
        "softmax",
        "--run-dir",
        str(run_dir),
        "--no-progress",
        "--checkpoint-every",
        str(every),
        "--steps",
        "400",
        "--d-model",
        "16",
        "--layers",
        "1",
        "--heads",
        "2",
        "--batch-size",
        "8",
        "--seq-len",
        "16",
        "--eval-every",
        "400",
        "--eval-batches",
        "1",
        "--warmup",
        "1",
    ]
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    metrics = run_dir / "metrics.jsonl"
    while not (metrics.exists() and metrics.read_bytes().count(b"\n") >= 3) and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signum)
    _, err = process.communicate(timeout=300)
    if signum == signal.SIGTERM:
        assert process.returncode == 143 and b"checkpoint of step" in err
    else:
        assert process.returncode == -signal.SIGKILL
    stopped = json.loads((run_dir / "checkpoint.eqx").read_bytes().split(b"\n")[1])["step"]
    assert (3 <= stopped < 400) if signum == signal.SIGTERM else (2 <= stopped < 400 and stopped % 2 == 0)
    config = TrainConfig.load(run_dir / "config.json")
    reference = train(config.replace(run_dir=str(tmp_path / "ref"), steps=400), stop_at=stopped + 3, progress=False)
    resume_run(run_dir, stop_at=stopped + 3, progress=False)
    losses = [r["loss"] for r in read_metrics(run_dir) if r["kind"] == "train"]
    assert losses == [loss for _, loss in reference.losses]


def test_checkpoint_every_and_grad_clip_flags_reach_the_config(tmp_path, monkeypatch):
    seen = {}

    def fake_train(config, **kwargs):
        seen["config"] = config
        raise ValueError("stop here")

    monkeypatch.setattr(train_module, "train", fake_train)
    assert cli_main(["train", "--checkpoint-every", "7", "--grad-clip", "0.5", "--run-dir", str(tmp_path / "r")]) == 2
    assert seen["config"].checkpoint_every == 7 and seen["config"].grad_clip == 0.5


# ------------------------------------------------------------------------------------ numeric guards


L, M, N = SMALL_HEAD


@pytest.fixture(scope="module")
def head(small_head):
    return small_head


# A failed runtime check under `jax.jit` surfaces as a `JaxRuntimeError` or, from the CPU callback, a
# `ValueError` ("INTERNAL: CpuCallback error"); either way its text carries the check's message.
JIT_ERRORS = (RuntimeError, ValueError)


@pytest.fixture(scope="module")
def jitted_heads():
    """`na_attention(q, k, v, params)` under `jax.jit` (everything traced), per mode: compiled once each."""
    return {
        mode: jax.jit(lambda q, k, v, p, mode=mode: af.na_attention(q, k, v, p, mode=mode))
        for mode in ("equilibrium", "ode")
    }


@pytest.mark.parametrize("mode", ["equilibrium", "ode"])
@pytest.mark.parametrize(
    "field, value", [("tau_f", 0.0), ("tau_f", -0.1), ("tau_s", -1.0), ("tau_s", 1e-50), ("tau_n", np.nan)]
)
def test_traced_bad_time_constant_raises_in_every_mode(head, jitted_heads, mode, field, value):
    # Every parameter set has the same structure (tau_f set), so each mode compiles once.
    params = eqx.tree_at(lambda p: getattr(p, field), _params_f32(), jnp.float32(value))
    assert jnp.all(jnp.isfinite(jitted_heads[mode](*head, _params_f32())))  # the valid parameters pass
    with pytest.raises(JIT_ERRORS) as info:
        jitted_heads[mode](*head, params)
    assert runtime_message(info.value).startswith(f"params.{field}: expected a positive, finite time constant")


def test_concrete_time_constant_that_underflows_raises(head):
    with pytest.raises(ValueError, match=r"params.tau_s: .* got 1e-50, which is \[?0.0\]? in float32"):
        af.na_attention(*head, af.NAParams(tau_s=1e-50), mode="ode")


def _params_f32():
    return jax.tree.map(jnp.float32, af.NAParams(tau_f=10.0))


@pytest.mark.parametrize("mode", ["equilibrium", "ode"])
def test_overflowing_feature_rates_raise_with_the_cause(head, jitted_heads, mode):
    q, k, v = head
    with pytest.raises(JIT_ERRORS) as info:
        jitted_heads[mode](q * 1e19, k * 1e19, v, _params_f32())
    assert "too large for float32" in runtime_message(info.value)


def test_cli_numeric_errors_exit_nonzero(full_run, capsys):
    assert cli_main(["simulate", "--scale", "1e30", "--features", "4", "--length", "4", "--dim", "2"]) == 2
    err = capsys.readouterr().err
    assert "--scale" in err and err.count("\n") == 1
    assert cli_main(["eval", "--run-dir", full_run.run_dir, "--batches", "0"]) == 2
    assert "--batches" in capsys.readouterr().err
    assert cli_main(["sample", "--run-dir", full_run.run_dir, "--prompt", "hello"]) == 2
    assert "--prompt: only a charlm run" in capsys.readouterr().err


def test_calcium_simulate_rejects_bad_drive_and_initial_state():
    from astroformer.calcium import GChI, LiRinzel, simulate

    ts = np.linspace(0.0, 1.0, 5)
    for drive, what in ((lambda t: jnp.nan * t, "nan"), (lambda t: -0.1 + 0 * t, "-0.1")):
        with pytest.raises(ValueError, match=r"drive.*must return finite, non-negative values.*" + what):
            simulate(LiRinzel(), drive, ts)
    for y0, match in (({"C": -0.1}, r"y0\['C'\].*>= 0"), ({"h": 1.5}, r"y0\['h'\].*in \[0.0, 1.0\]")):
        with pytest.raises(ValueError, match=match):
            simulate(LiRinzel(), lambda t: 0.4 + 0 * t, ts, y0=y0)
    with pytest.raises(ValueError, match=r"y0\['Gamma_A'\]"):
        simulate(GChI(), lambda t: 0 * t, ts, y0={"Gamma_A": 2.0})


# ---------------------------------------------------------------------------------------- error style


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda q, k, v: (q[:0], k[:0], v[:0]), "phi_q: expected at least one of its tokens"),
        (lambda q, k, v: (q[:, :0], k[:, :0], v), "phi_q: expected at least one of its features"),
        (lambda q, k, v: (q, k, v[:, :0]), "v: expected at least one of its value dimensions"),
    ],
)
def test_zero_sizes(head, change, match):
    with pytest.raises(ValueError, match=match):
        af.na_attention(*change(*head), af.NAParams())


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "option, value, error",
    [
        ("read_steps", 0, ValueError),
        ("read_steps", 2.5, ValueError),
        ("chunk_size", 0, ValueError),
        ("causal", "no", TypeError),
    ],
)
def test_bad_options(head, option, value, error):
    with pytest.raises(error, match=f"{option}: expected"):
        af.na_attention(*head, af.NAParams(), **{option: value})
    with pytest.raises(error, match=f"{option}: expected"):  # at construction, not at the first call
        af.NeuronAstrocyteAttention(8, 2, key=jax.random.PRNGKey(0), **{option: value})


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_features=0), "num_features"),
        (dict(num_heads=0), "num_heads"),
        (dict(mode="exact"), "mode"),
        (dict(params=1.0), "params"),
    ],
)
def test_layer_validates_at_construction(kwargs, match):
    kwargs = {"d_model": 8, "num_heads": 2, **kwargs}
    with pytest.raises((ValueError, TypeError), match=f"{match}: expected"):
        af.NeuronAstrocyteAttention(kwargs.pop("d_model"), kwargs.pop("num_heads"), key=jax.random.PRNGKey(0), **kwargs)


@pytest.mark.bad_input
def test_trace_target_checks_every_field():
    from astroformer.fit import TraceTarget

    q, k, v = jnp.ones((3, 2)), jnp.ones((3, 2)), jnp.ones((3, 4))
    ts = np.array([0.1, 0.2])
    TraceTarget(q=q, k=k, v=v, ts=ts, x=jnp.ones((2, 3, 4)), p=jnp.ones((2, 3, 5)))
    with pytest.raises(ValueError, match=r"TraceTarget.p: expected shape \(T, L, M\), got \(2, 3, 4, 5\)"):
        TraceTarget(q=q, k=k, v=v, ts=ts, p=jnp.ones((2, 3, 4, 5)))
    with pytest.raises(ValueError, match=r"TraceTarget.x: expected shape \(T, L, N\) = \(2, 3, 4\)"):
        TraceTarget(q=q, k=k, v=v, ts=ts, x=jnp.ones((2, 4, 3)))
    with pytest.raises(ValueError, match=r"TraceTarget.h: expected shape \(T, L, M\) = \(2, 3, 5\)"):
        TraceTarget(q=q, k=k, v=v, ts=ts, p=jnp.ones((2, 3, 5)), h=jnp.ones((2, 3, 6)))


@pytest.mark.parametrize(
    "change, match",
    [
        ({"free": ["tau_x"]}, "free: 'tau_x' is not a leaf"),
        (
            {"target": {"kind": "traces", "ts": [0.2, 0.1], "params": {}}},
            "ts: expected finite, non-negative, strictly increasing",
        ),
        (
            {"target": {"kind": "traces", "ts": [0.1, 0.2], "data": {"x": [[[1.0, 2.0]], [[1.0]]]}}},
            "target.data.x: expected a rectangular numeric array",
        ),
    ],
)
def test_fit_cli_errors_are_one_line(tmp_path, capsys, change, match):
    config = tmp_path / "fit.json"
    config.write_text(
        json.dumps({"free": ["tau_s"], "steps": 1, "dtype": "float32", "target": {"kind": "softmax"}, **change})
    )
    assert cli_main(["fit", "--config", str(config), "--output", str(tmp_path / "out.json")]) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err


def test_cli_user_errors_are_one_line(full_run, tmp_path, capsys):
    for argv, match in (
        (["train", "--lr", "1e30", "--layers", "0"], "num_layers"),
        (["train", "--read-steps", "0"], "read_steps"),
        (["eval", "--run-dir", str(tmp_path / "none")], "does not exist"),
        (["train", "--resume", "--run-dir", str(tmp_path / "none")], "cannot resume"),
    ):
        assert cli_main(argv) == 2, argv
        err = capsys.readouterr().err
        assert match in err and err.count("\n") == 1, err


# -------------------------------------------------------------------------------------------- memory


def test_memory_estimate_counts_parameters_exactly_and_fails_fast():
    config = tiny_config(attention="na-ode", num_layers=3)
    task = build_task(config)
    estimate = estimate_memory(config, task)
    model = train_module.build_model(config, task)
    sizes = [x.size for x in jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array))]
    assert estimate.trainable + estimate.frozen == sum(sizes)
    check_memory(config, task, available=estimate.total_bytes)  # fits exactly
    with pytest.raises(MemoryEstimateError, match="--num-layers 3"):
        check_memory(config, task, available=estimate.total_bytes - 1)
    huge = tiny_config(num_layers=100_000_000)
    with pytest.raises(MemoryEstimateError, match=r"GiB.*--num-layers 100000000"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            check_memory(huge, build_task(huge))


_CACHE_SCRIPT = """
import jax, jax.numpy as jnp
import astroformer as af
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
phi = jnp.ones((8, 4))
def na_head(phi_q, phi_k, v):
    return af.na_attention(phi_q, phi_k, v, af.NAParams())
jax.jit(na_head)(phi, phi, jnp.ones((8, 3))).block_until_ready()
"""


@pytest.mark.parametrize("on_error", ["raise", "nan"])
def test_compilation_cache_needs_checks_without_host_callbacks(tmp_path, on_error):
    """The README's compile-time advice: JAX's persistent cache does not store an executable with host callbacks,
    and astroformer's runtime checks (`eqx.error_if`) raise through one unless EQX_ON_ERROR=nan; so a na-ode
    function is cached only with that setting. Each case in a fresh process (equinox reads the variable at import)."""
    cache = tmp_path / "cache"
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(cache), "EQX_ON_ERROR": on_error, "JAX_PLATFORMS": "cpu"}
    subprocess.run([sys.executable, "-c", _CACHE_SCRIPT], env=env, check=True, timeout=300)
    entries = sorted(p.name for p in cache.iterdir()) if cache.exists() else []
    cached = any(name.startswith("jit_na_head") for name in entries)
    assert cached == (on_error == "nan"), (on_error, entries)


def test_full_state_in_float32_says_it_needs_float64():
    """The literal model's default implicit solve runs out of steps in float32 (measured at NAParams' defaults
    and milder ones); instead of diffrax's step-count error from inside a callback, the call says what to do."""
    phi = jnp.ones((3, 4), jnp.float32)
    with pytest.raises(ValueError, match="state: 'full' .* needs float64, got float32 inputs"):
        af.na_attention(phi, phi, jnp.ones((3, 2), jnp.float32), af.NAParams(), state="full")


@pytest.mark.bad_input
def test_wrong_input_width_is_named():
    """A layer given x of the wrong width, or a feature map given u of the wrong D, names the argument and the
    size it expected (it was XLA's dot_general message)."""
    for kind in ("softmax", "linear", "na-ode"):
        layer = af.make_attention(kind, 8, 2, key=jax.random.key(0))
        with pytest.raises(ValueError, match=r"x: expected shape \(L, d_model=8\), got \(3, 7\)"):
            layer(jnp.ones((3, 7)))
    for name in ("prf", "oprf", "learned"):
        feature_map = af.make_feature_map(name, 4, 8, key=jax.random.key(0))
        with pytest.raises(ValueError, match=r"u: expected a last axis of size D = 4 .* got shape \(3, 5\)"):
            feature_map(jnp.ones((3, 5)))
        assert feature_map(jnp.ones((2, 3, 4))).shape == (2, 3, 8)


@pytest.mark.bad_input
def test_more_bad_arguments_are_named(full_run, capsys):
    """Values that used to be accepted and fail later (or never): a time constant given as a string, None, a
    list or a bool; a solver, controller or adjoint that is not diffrax's; `throw` that is not a bool; a trace
    target's non-boolean mask; negative or NaN rates in a trace read; distill learning rates that are not
    positive and finite."""
    from astroformer.fit import NAModel, TraceTarget

    for field, value in (("tau_p", "1"), ("tau_p", None), ("tau_s", [0.1, 0.2]), ("tau_s", True)):
        with pytest.raises(TypeError, match=f"NAParams.{field}: expected a positive number or a real array"):
            af.NAParams(**{field: value})
    phi, v = jnp.ones((3, 4)), jnp.ones((3, 2))
    for name, value in (("solver", "tsit5"), ("stepsize_controller", "pid"), ("adjoint", "x")):
        with pytest.raises(TypeError, match=f"{name}: expected None or a diffrax"):
            af.na_attention(phi, phi, v, af.NAParams(), **{name: value})
    with pytest.raises(TypeError, match="throw: expected True or False"):
        af.na_attention(phi, phi, v, af.NAParams(), throw="no")
    with pytest.raises(ValueError, match="num_points: expected an integer >= 2, got 0"):
        af.read_trajectory(phi, phi, v, af.NAParams(), index=0, num_points=0)
    ts = jnp.array([0.1, 0.2])
    x = jnp.zeros((2, 3, 2))
    with pytest.raises(ValueError, match="TraceTarget.mask_x: expected a boolean array"):
        TraceTarget(q=phi, k=phi, v=v, ts=ts, x=x, mask_x=jnp.full(x.shape, 0.5))
    model = NAModel(af.NAParams())
    with pytest.raises(Exception, match="phi_q: expected non-negative firing rates"):
        model.traces(-phi, phi, v, ts, variables=("x",))
    for flag, value in (("--learning-rate", "inf"), ("--finetune-learning-rate", "nan"), ("--lr", "-1")):
        argv = ["distill", "--run-dir", full_run.run_dir, "--out", "/nonexistent/x", flag, value]
        assert cli_main(argv) == 2
        assert "learning_rate: expected a positive finite number" in capsys.readouterr().err


def test_simulate_checks_its_figure_path_first(tmp_path, capsys):
    """A figure path under a file, or a directory, is refused before the simulation runs."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    for figure, match in ((afile / "x.png", "is a file"), (tmp_path, "expected the path of an image file")):
        assert cli_main(["simulate", "--figure", str(figure)]) == 2
        err = capsys.readouterr().err
        assert "--figure:" in err and match in err, err
    assert afile.read_text() == "x"
