"""The learned feature maps against each other, head by head: learned feature neurons fitted to the first layer
of the fidelity benchmark's softmax character model, with the fixed or the learned envelope, mirrored pairs or
unmirrored neurons, compared on held-out text.

For each head of layer 0, `distill_heads` (one `astroformer.fit` per head on the attention-weight
cross-entropy, the first step of `astroformer distill`) fits `LearnedFeatures` with the options of each learned
feature map (`astroformer._features._registry.LEARNED_MAPS`), from the same key, on the teacher's queries and keys
over training text. The score is the median, over the tokens of held-out sequences, of the total-variation distance
between the learned map's attention weights and softmax's (causal); the same on the first 16 training sequences
shows how much of the error is the map's capacity and how much generalisation.

    python -m benchmarks.distill_envelope [--quick] [--run-dir DIR] [--out PATH]
"""

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from astroformer._attention_weights import kernel_weights, softmax_weights, total_variation
from astroformer._features._registry import LEARNED_MAPS
from astroformer.training._distill import distill_heads, layer_qkv

from ._common import RESULTS_DIR, machine_info, pyplot, write_json
from .fidelity import softmax_model

MAPS = tuple(LEARNED_MAPS)


def tv_per_head(maps, q, k) -> list[float]:
    """Median attention-weight TV to softmax per head, over every token of the sequences in q, k (H, B, L, D)."""
    out = []
    for h in range(q.shape[0]):
        fm = maps.for_head(h)
        ours = jax.vmap(lambda qq, kk, fm=fm: kernel_weights(fm(qq), fm(kk)))(q[h], k[h])
        out.append(float(jnp.median(total_variation(ours, jax.vmap(softmax_weights)(q[h], k[h])))))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a briefly trained teacher, small fits (CI smoke test)")
    parser.add_argument("--run-dir", type=Path, default=None, help="the softmax teacher's run (trained if absent)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    out_path = Path(args.out) if args.out else RESULTS_DIR / "distill_envelope.json"
    # The fidelity benchmark's teacher (the same directory, trained if absent: 1,500 steps, about a minute).
    run_dir = args.run_dir or out_path.parent / ("fidelity-run-quick" if args.quick else "fidelity-run")
    config, task, model = softmax_model(run_dir, args.quick)
    M, steps, batches, held_out = (16, 20, 2, 4) if args.quick else (256, 1500, 8, 16)
    train_tokens = jnp.concatenate(
        [jnp.asarray(task.batch("train", config.batch_size, seed=10_000 + i).inputs) for i in range(batches)]
    )
    eval_tokens = jnp.asarray(task.batch("eval", held_out, seed=0).inputs)
    q, k, _ = layer_qkv(model, train_tokens)[0]
    q_eval, k_eval, _ = layer_qkv(model, eval_tokens)[0]
    rows = {}
    for name in MAPS:
        start = time.perf_counter()
        maps, first, last = distill_heads(
            q, k, M, steps=steps, learning_rate=0.05, **LEARNED_MAPS[name], key=jax.random.PRNGKey(0)
        )
        rows[name] = dict(
            **LEARNED_MAPS[name],
            tv_median_per_head=tv_per_head(maps, q_eval, k_eval),
            train_tv_median_per_head=tv_per_head(maps, q[:, :held_out], k[:, :held_out]),
            loss_first_per_head=np.asarray(first).tolist(),
            loss_last_per_head=np.asarray(last).tolist(),
            seconds=time.perf_counter() - start,
        )
        tv = " / ".join(f"{x:.3f}" for x in rows[name]["tv_median_per_head"])
        print(f"{name:28s} held-out TV per head {tv}  ({rows[name]['seconds']:.0f} s)", flush=True)
    results = dict(
        config=dict(
            teacher=str(run_dir),
            layer=0,
            num_features=M,
            steps=steps,
            learning_rate=0.05,
            train_sequences=int(train_tokens.shape[0]),
            held_out_sequences=held_out,
            seq_len=int(train_tokens.shape[1]),
        ),
        machine=machine_info(),
        maps=rows,
    )
    path = write_json(results, out_path)
    _plot(rows, path.with_suffix(".png"))
    print(f"wrote {path}")
    return results


def _plot(rows, path):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    H = len(rows[MAPS[0]]["tv_median_per_head"])
    width = 0.8 / len(rows)
    for i, (name, row) in enumerate(rows.items()):
        ax.bar(np.arange(H) + i * width, row["tv_median_per_head"], width, label=name)
    ticks = np.arange(H) + (len(rows) - 1) * width / 2
    ax.set(xlabel="head of layer 0", ylabel="median attention TV to softmax (held out)", xticks=ticks)
    ax.set_xticklabels([str(h) for h in range(H)])
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
