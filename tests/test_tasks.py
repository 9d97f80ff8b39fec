"""Tests of astroformer.tasks: determinism, labels (against brute-force solvers), metrics, corpora, errors."""

import math

import jax
import numpy as np
import pytest

from astroformer.tasks import (
    MQAR,
    TASK_NAMES,
    AbstractTask,
    Batch,
    CharCorpus,
    CharLM,
    Copying,
    InductionHeads,
    SelectiveCopying,
    accuracy,
    bits_per_char,
    get_task,
)

NUM_EXAMPLES = 300  # examples checked by each brute-force solver

SMALL_TEXT = "".join(f"line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(40))


@pytest.fixture(scope="module")
def small_corpus():
    return CharCorpus.from_text(SMALL_TEXT)


def make_tasks(corpus):
    return [
        MQAR(),
        MQAR(vocab_size=128, seq_len=128, num_kv_pairs=8),
        InductionHeads(vocab_size=16, seq_len=32),
        SelectiveCopying(),
        Copying(),
        CharLM(seq_len=16, corpus=corpus),
    ]


def assert_batch_equal(a, b):
    for field in ("inputs", "targets", "mask"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def batches_differ(a, b):
    return not (np.array_equal(a.inputs, b.inputs) and np.array_equal(a.targets, b.targets))


# ------------------------------------------------------------------------------------- the interface


def test_every_task_determinism_shapes_and_streams(small_corpus):
    for task in make_tasks(small_corpus):
        assert isinstance(task, AbstractTask)
        assert task.metric_name in ("accuracy", "bits_per_char")
        batch = task.batch("train", 8, seed=3)
        assert isinstance(batch, Batch)
        for array, dtype in ((batch.inputs, np.int32), (batch.targets, np.int32), (batch.mask, np.bool_)):
            assert array.shape == (8, task.seq_len), task
            assert array.dtype == dtype, task
        assert batch.inputs.min() >= 0 and batch.inputs.max() < task.vocab_size
        assert batch.targets.min() >= 0 and batch.targets.max() < task.vocab_size
        assert batch.mask.any(axis=1).all()
        # same seed -> identical; different seed -> different; train and eval streams differ
        assert_batch_equal(batch, task.batch("train", 8, seed=3))
        assert batches_differ(batch, task.batch("train", 8, seed=4)), task
        assert batches_differ(batch, task.batch("eval", 8, seed=3)), task
        assert_batch_equal(task.batch("eval", 8, seed=3), task.batch("eval", 8, seed=3))
        # numpy integer seeds are accepted and equal to Python ints
        assert_batch_equal(batch, task.batch("train", 8, seed=np.int64(3)))


def test_registry_builds_every_task(small_corpus):
    assert set(TASK_NAMES) == {"mqar", "induction", "selective-copy", "copy", "charlm"}
    assert get_task("mqar", seq_len=128, num_kv_pairs=8) == MQAR(seq_len=128, num_kv_pairs=8)
    assert isinstance(get_task("induction"), InductionHeads)
    assert isinstance(get_task("selective-copy"), SelectiveCopying)
    assert isinstance(get_task("copy"), Copying)
    task = get_task("charlm", seq_len=8, corpus=small_corpus)
    assert isinstance(task, CharLM) and task.corpus is small_corpus
    for name in TASK_NAMES:
        assert get_task(name, **({"corpus": small_corpus} if name == "charlm" else {})).name == name


# ----------------------------------------------------------------------- labels, by brute force


@pytest.mark.parametrize(
    "task", [MQAR(), MQAR(vocab_size=128, seq_len=128, num_kv_pairs=8), MQAR(vocab_size=50, seq_len=35)]
)
def test_mqar_labels_brute_force(task):
    batch = task.batch("train", NUM_EXAMPLES, seed=0)
    num_pairs, half = task.num_kv_pairs, task.vocab_size // 2
    for inputs, targets, mask in zip(batch.inputs.tolist(), batch.targets.tolist(), batch.mask.tolist()):
        table = {}
        for i in range(num_pairs):
            key, value = inputs[2 * i], inputs[2 * i + 1]
            assert 0 <= key < half <= value < task.vocab_size
            assert key not in table
            table[key] = value
        assert len(set(table.values())) == num_pairs
        queried = []
        for t in range(task.seq_len):
            if mask[t]:
                assert t >= 2 * num_pairs and (t - 2 * num_pairs) % 2 == 0
                assert inputs[t] in table
                assert targets[t] == table[inputs[t]]
                queried.append(inputs[t])
        assert sorted(queried) == sorted(table)


def test_mqar_queries_follow_a_power_law():
    task = MQAR(vocab_size=64, seq_len=256, num_kv_pairs=4)
    batch = task.batch("train", 2000, seed=0)
    slots = (np.nonzero(batch.mask)[1] - 2 * task.num_kv_pairs) // 2
    num_slots = (task.seq_len - 2 * task.num_kv_pairs) // 2
    # Slot 0 has the largest weight: it is chosen far more often than under uniform placement
    # (4 of 124 slots ~ 3%), and the queries sit closer to the prefix than uniform ones would.
    assert np.mean(batch.mask[:, 2 * task.num_kv_pairs]) > 0.2
    assert slots.mean() < 0.8 * (num_slots - 1) / 2
    # ... yet far slots are still used
    assert slots.max() > num_slots // 2


def test_induction_repeat_labels_brute_force():
    # Every scored position's target is what followed the same token at its only earlier occurrence.
    for seq_len in (24, 25):
        task = InductionHeads(vocab_size=16, seq_len=seq_len)
        assert task.variant == "repeat"
        batch = task.batch("train", NUM_EXAMPLES, seed=0)
        n = seq_len // 2
        for inputs, targets, mask in zip(batch.inputs.tolist(), batch.targets.tolist(), batch.mask.tolist()):
            assert len(set(inputs[:n])) == n and inputs[n : 2 * n] == inputs[:n]
            scored = [t for t in range(seq_len) if mask[t]]
            assert scored == list(range(n, 2 * n - 1))
            for t in scored:
                earlier = [u for u in range(t) if inputs[u] == inputs[t]]
                assert len(earlier) == 1 and targets[t] == inputs[earlier[0] + 1]
    with pytest.raises(ValueError, match=r"`vocab_size` must be at least seq_len // 2 = 16"):
        InductionHeads(vocab_size=8, seq_len=32)
    with pytest.raises(ValueError, match=r"`variant` must be one of \('repeat', 'trigger'\), got 'dense'"):
        InductionHeads(variant="dense")


def test_induction_trigger_labels_brute_force():
    task = InductionHeads(vocab_size=16, seq_len=24, variant="trigger")
    batch = task.batch("train", NUM_EXAMPLES, seed=0)
    trigger = task.vocab_size - 1
    assert task.trigger_token == trigger
    for inputs, targets, mask in zip(batch.inputs.tolist(), batch.targets.tolist(), batch.mask.tolist()):
        occurrences = [t for t, token in enumerate(inputs) if token == trigger]
        assert len(occurrences) == 2 and occurrences[1] == task.seq_len - 1
        first = occurrences[0]
        assert first + 1 < task.seq_len - 1
        assert mask == [False] * (task.seq_len - 1) + [True]
        assert targets[-1] == inputs[first + 1] != trigger
    # the earlier trigger's position varies
    assert len(set(np.nonzero(batch.inputs[:, :-1] == trigger)[1])) > 10


def test_selective_copying_labels_brute_force():
    task = SelectiveCopying(vocab_size=10, seq_len=40, num_tokens=6)
    batch = task.batch("train", NUM_EXAMPLES, seed=0)
    noise, marker = task.noise_token, task.marker_token
    for inputs, targets, mask in zip(batch.inputs.tolist(), batch.targets.tolist(), batch.mask.tolist()):
        data = [token for token in inputs if token not in (noise, marker)]
        marker_positions = [t for t, token in enumerate(inputs) if token == marker]
        assert len(data) == task.num_tokens
        assert marker_positions == list(range(task.seq_len - task.num_tokens, task.seq_len))
        assert [t for t in range(task.seq_len) if mask[t]] == marker_positions
        assert [targets[t] for t in marker_positions] == data


def test_copying_labels_brute_force():
    task = Copying(vocab_size=8, seq_len=20)
    batch = task.batch("train", NUM_EXAMPLES, seed=0)
    n = task.seq_len // 2
    for inputs, targets, mask in zip(batch.inputs.tolist(), batch.targets.tolist(), batch.mask.tolist()):
        separator = inputs.index(task.separator_token)
        assert separator == n
        sequence = inputs[:separator]
        assert [targets[t] for t in range(task.seq_len) if mask[t]] == sequence
        assert [t for t in range(task.seq_len) if mask[t]] == list(range(n, 2 * n))
        assert inputs[separator + 1 :] == sequence[:-1]  # teacher forcing: the copy so far


def test_charlm_windows(small_corpus):
    task = CharLM(seq_len=16, corpus=small_corpus)
    train_text = small_corpus.decode(small_corpus.train_data)
    val_text = small_corpus.decode(small_corpus.val_data)
    for split, text in (("train", train_text), ("eval", val_text)):
        batch = task.batch(split, 50, seed=0)
        assert batch.mask.all()
        np.testing.assert_array_equal(batch.targets[:, :-1], batch.inputs[:, 1:])
        for inputs, targets in zip(batch.inputs, batch.targets):
            window = small_corpus.decode(np.append(inputs, targets[-1]))
            assert window in text


# ----------------------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("task", [MQAR(), InductionHeads(seq_len=32), SelectiveCopying(), Copying()])
def test_accuracy_counts_only_masked_positions(task):
    batch = task.batch("eval", 16, seed=1)
    rng = np.random.default_rng(0)
    guesses = rng.integers(0, task.vocab_size, size=batch.targets.shape).astype(np.int32)
    base = float(accuracy(guesses, batch))
    expected = (guesses == batch.targets)[batch.mask].mean()
    assert base == pytest.approx(expected)
    # corrupting unmasked positions changes nothing
    corrupted = np.where(batch.mask, guesses, (batch.targets + 1) % task.vocab_size).astype(np.int32)
    assert float(accuracy(corrupted, batch)) == pytest.approx(base)
    corrupted = np.where(batch.mask, guesses, batch.targets).astype(np.int32)
    assert float(accuracy(corrupted, batch)) == pytest.approx(base)
    # perfect predictions score 1; one wrong masked position costs exactly 1 / (number scored)
    perfect = batch.targets.copy()
    assert float(accuracy(perfect, batch)) == 1.0
    b, t = np.argwhere(batch.mask)[0]
    perfect[b, t] = (perfect[b, t] + 1) % task.vocab_size
    assert float(accuracy(perfect, batch)) == pytest.approx(1.0 - 1.0 / batch.mask.sum())
    # logits are read through their argmax, and the task's metric is this one
    logits = jax.nn.one_hot(perfect, task.vocab_size)
    assert float(accuracy(logits, batch)) == pytest.approx(1.0 - 1.0 / batch.mask.sum())
    assert float(task.metric(logits, batch)) == pytest.approx(1.0 - 1.0 / batch.mask.sum())


def test_metrics_under_jit(small_corpus):
    task = CharLM(seq_len=16, corpus=small_corpus)
    batch = task.batch("train", 4, seed=0)
    logits = jax.random.normal(jax.random.key(0), batch.targets.shape + (task.vocab_size,))
    for metric in (accuracy, bits_per_char):
        assert float(jax.jit(metric)(logits, batch)) == pytest.approx(float(metric(logits, batch)), rel=1e-6)


def test_bits_per_char(small_corpus):
    task = CharLM(seq_len=16, corpus=small_corpus)
    batch = task.batch("train", 4, seed=0)
    vocab = task.vocab_size
    uniform = np.zeros(batch.targets.shape + (vocab,), dtype=np.float32)
    assert float(bits_per_char(uniform, batch)) == pytest.approx(math.log2(vocab), rel=1e-6)
    assert float(task.metric(uniform, batch)) == pytest.approx(math.log2(vocab), rel=1e-6)
    confident = 50.0 * np.asarray(jax.nn.one_hot(batch.targets, vocab))
    assert float(bits_per_char(confident, batch)) < 1e-6
    # against a direct formula, with a partial mask; unmasked positions never count
    logits = np.random.default_rng(0).normal(size=uniform.shape).astype(np.float32)
    mask = np.zeros_like(batch.mask)
    mask[:, ::3] = True
    partial = Batch(inputs=batch.inputs, targets=batch.targets, mask=mask)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_probs, batch.targets[..., None], -1)[..., 0]
    assert float(bits_per_char(logits, partial)) == pytest.approx(nll[mask].mean() / math.log(2), rel=1e-5)
    scrambled = np.where(mask[..., None], logits, -logits * 7.0)
    assert float(bits_per_char(scrambled, partial)) == pytest.approx(float(bits_per_char(logits, partial)))


@pytest.mark.bad_input
def test_metric_errors():
    batch = Copying().batch("train", 2, seed=0)
    with pytest.raises(ValueError, match=r"`outputs` must have shape \(2, 32\), got \(2, 31\)"):
        accuracy(np.zeros((2, 31), dtype=np.int32), batch)
    with pytest.raises(TypeError, match="must be integers"):
        accuracy(np.zeros((2, 32), dtype=np.float32), batch)
    with pytest.raises(ValueError, match="`outputs` must be logits"):
        accuracy(np.zeros((2,), dtype=np.int32), batch)
    with pytest.raises(ValueError, match="`logits` must have shape"):
        bits_per_char(np.zeros((2, 32)), batch)
    with pytest.raises(TypeError, match="`batch` must be a Batch"):
        accuracy(np.zeros((2, 32), dtype=np.int32), {"targets": batch.targets})


# ------------------------------------------------------------------------------------------ corpora


def test_char_corpus_round_trip_and_split():
    corpus = CharCorpus.from_text("hello, wörld — ünïcode ✓\n" * 40)
    assert corpus.chars == tuple(sorted(set(corpus.text)))
    assert corpus.vocab_size == len(corpus.chars)
    assert corpus.decode(corpus.encode(corpus.text)) == corpus.text
    assert corpus.decode(corpus.data) == corpus.text
    assert corpus.encode("").shape == (0,) and corpus.decode([]) == ""
    assert corpus.data.dtype == np.int32
    n = len(corpus.text)
    assert len(corpus) == n == 1000
    assert len(corpus.train_data) == 900 and len(corpus.val_data) == 100
    assert corpus.decode(corpus.train_data) + corpus.decode(corpus.val_data) == corpus.text
    odd = CharCorpus.from_text("abcdefghijk")  # 11 characters: floor(9.9) = 9 for training
    assert (len(odd.train_data), len(odd.val_data)) == (9, 2)
    with pytest.raises(ValueError, match=r"not in the vocabulary.*'zé'"):
        corpus.encode("hello zé")
    with pytest.raises(ValueError, match=r"\[0, "):
        corpus.decode([0, corpus.vocab_size])


def test_char_corpus_from_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("ça va?\n" * 10, encoding="utf-8")
    corpus = CharCorpus.from_file(path)
    assert corpus.text == "ça va?\n" * 10 and corpus.source == str(path)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty") as info:
        CharCorpus.from_file(empty)
    assert str(empty) in str(info.value)
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"abc caf\xe9 \xff\xfe")
    with pytest.raises(ValueError, match="not valid UTF-8") as info:
        CharCorpus.from_file(bad)
    assert str(bad) in str(info.value) and "offset 7" in str(info.value)
    with pytest.raises(FileNotFoundError):
        CharCorpus.from_file(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="empty"):
        CharCorpus.from_text("")


def test_default_corpus():
    corpus = CharCorpus.default()
    assert corpus is CharCorpus.default()
    assert len(corpus) > 100_000
    assert 60 < corpus.vocab_size < 200
    assert "\n\n" in corpus.text and "def " in corpus.text
    task = CharLM()
    assert task.corpus is corpus and task.vocab_size == corpus.vocab_size
    batch = task.batch("eval", 2, seed=0)
    assert corpus.decode(batch.inputs[0]) in corpus.decode(corpus.val_data)


# ------------------------------------------------------------------------------------ bad arguments


@pytest.mark.parametrize(
    "build, error, match",
    [
        (
            lambda: MQAR(seq_len=20, num_kv_pairs=8),
            ValueError,
            r"`seq_len` must be at least 4 \* num_kv_pairs = 32.*got seq_len=20",
        ),
        (
            lambda: MQAR(vocab_size=10, num_kv_pairs=8),
            ValueError,
            r"`vocab_size` must be at least 2 \* num_kv_pairs = 16.*got vocab_size=10",
        ),
        (lambda: MQAR(num_kv_pairs=0), ValueError, r"`num_kv_pairs` must be an int >= 1, got 0"),
        (lambda: MQAR(power_a=0.0), ValueError, r"`power_a` must be a finite float > 0, got 0.0"),
        (lambda: MQAR(power_a="big"), TypeError, r"`power_a` must be a positive float"),
        (lambda: MQAR(seq_len=64.0), TypeError, r"`seq_len` must be an int, got 64.0 of type float"),
        (lambda: MQAR(seq_len=True), TypeError, r"`seq_len` must be an int, got the bool"),
        (
            lambda: InductionHeads(vocab_size=2),
            ValueError,
            r"InductionHeads: `vocab_size` must be an int >= 3, got 2",
        ),
        (lambda: InductionHeads(seq_len=2, variant="trigger"), ValueError, r"`seq_len` must be an int >= 3, got 2"),
        (
            lambda: SelectiveCopying(seq_len=10, num_tokens=6),
            ValueError,
            r"`seq_len` must be at least 2 \* num_tokens = 12.*got seq_len=10",
        ),
        (lambda: Copying(seq_len=31), ValueError, r"Copying: `seq_len` must be even.*got seq_len=31"),
        (
            lambda: CharLM(seq_len=50, corpus=CharCorpus.from_text("a" * 300)),
            ValueError,
            r"validation split .* has 30 characters, fewer than seq_len \+ 1 = 51",
        ),
        (lambda: CharLM(corpus="text"), TypeError, r"`corpus` must be a CharCorpus or None, got str"),
        (lambda: CharCorpus.from_text(b"bytes"), TypeError, r"`text` must be a str, got bytes"),
        (
            lambda: Copying().batch("test", 4, seed=0),
            ValueError,
            r"`split` must be one of \['eval', 'train'\], got 'test'",
        ),
        (lambda: Copying().batch("train", 0, seed=0), ValueError, r"`batch_size` must be an int >= 1, got 0"),
        (lambda: Copying().batch("train", 4, seed=-1), ValueError, r"`seed` must be an int >= 0, got -1"),
        (lambda: Copying().batch("train", 4, seed=1.5), TypeError, r"`seed` must be an int, got 1.5"),
        (
            lambda: get_task("lm"),
            ValueError,
            r"unknown task `name` 'lm'; expected one of 'mqar', 'induction', 'selective-copy', 'copy', 'charlm'",
        ),
        (
            lambda: get_task("copy", num_kv_pairs=3),
            TypeError,
            r"unexpected argument\(s\) \['num_kv_pairs'\]; it accepts \['vocab_size', 'seq_len'\]",
        ),
    ],
)
@pytest.mark.bad_input
def test_bad_arguments(build, error, match):
    with pytest.raises(error, match=match):
        build()
