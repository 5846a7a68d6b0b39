r"""Step time and memory of the MLE vs IQLearn train step on the same model and batch.

    python bench/step_time.py                       # T5.1.1-small sizes, batch/lengths picked for the backend
    python bench/step_time.py --batch_size=32 --inputs_length=512 --targets_length=128 --reps=20

Both steps are THE train step of `iqlearn_jax.trainer.build_train_step` (Adafactor, sharded over all local
devices), compiled separately, warmed up, then timed interleaved (MLE, IQLearn, MLE, ...) so that machine noise
hits both alike. Reported per objective: median and min step time (ms), XLA memory analysis of the compiled step
(arguments + outputs + temporaries, per device) and, where the backend reports it, the device's peak bytes in use.
The last line is `iqlearn/mle step-time ratio: X.XXX` (ratio of medians).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import jax
import numpy as np

from iqlearn_jax import optimizers, trainer
from iqlearn_jax.models import EncoderDecoderModel
from iqlearn_jax.networks.t5 import T5Config, Transformer
from iqlearn_jax.objectives import Objective
from iqlearn_jax.partitioning import Partitioner

T5_1_1_SMALL = dict(
    vocab_size=32128, emb_dim=512, num_heads=6, num_encoder_layers=8, num_decoder_layers=8,
    head_dim=64, mlp_dim=1024, mlp_activations=("gelu", "linear"), logits_via_embedding=False,
)  # fmt: skip


def make_batch(
    batch: int, inputs: int, targets: int, vocab: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """Random tokens with EOS and padding at random lengths (75–100% of each length)."""
    rs = np.random.RandomState(seed)
    enc = rs.randint(2, vocab, size=(batch, inputs)).astype(np.int32)
    tgt = rs.randint(2, vocab, size=(batch, targets)).astype(np.int32)
    for row in range(batch):
        n = rs.randint(int(0.75 * targets), targets + 1)
        tgt[row, n - 1], tgt[row, n:] = 1, 0
        enc[row, rs.randint(int(0.75 * inputs), inputs + 1) :] = 0
    dec_in = np.concatenate([np.zeros((batch, 1), np.int32), tgt[:, :-1]], axis=1)
    return {
        "encoder_input_tokens": enc,
        "decoder_input_tokens": dec_in,
        "decoder_target_tokens": tgt,
        "decoder_loss_weights": (tgt > 0).astype(np.int32),
    }


def peak_bytes() -> int | None:
    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def main(argv: list[str] | None = None) -> int:
    on_cpu = jax.default_backend() == "cpu"
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--batch_size", type=int, default=4 if on_cpu else 32)
    p.add_argument("--inputs_length", type=int, default=128 if on_cpu else 512)
    p.add_argument("--targets_length", type=int, default=64 if on_cpu else 128)
    p.add_argument(
        "--reps", type=int, default=5 if on_cpu else 20, help="timed steps per objective"
    )
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--lam", type=float, default=0.1)
    p.add_argument("--dtype", default="auto", help="activation dtype (auto: bfloat16 off CPU)")
    args = p.parse_args(argv)

    config = T5Config(**T5_1_1_SMALL, dropout_rate=0.1, dtype=args.dtype)
    network = Transformer(config)
    models = {
        "mle": EncoderDecoderModel(network, objective=Objective(name="mle")),
        "iqlearn": EncoderDecoderModel(network, objective=Objective(name="iqlearn", lam=args.lam)),
    }
    lengths = {"inputs": args.inputs_length, "targets": args.targets_length}
    shapes = trainer.model_feature_shapes(models["mle"], lengths, args.batch_size)
    partitioner = Partitioner(devices=jax.local_devices())
    optimizer = optimizers.adafactor(1e-3)
    batch = partitioner.shard_batch(
        make_batch(args.batch_size, args.inputs_length, args.targets_length, config.vocab_size)
    )

    states, steps, memory = {}, {}, {}
    for name, model in models.items():
        abstract, shardings = trainer.abstract_train_state(model, optimizer, partitioner, shapes)
        states[name] = trainer.init_train_state(model, optimizer, partitioner, shapes, 0, shardings)
        step = trainer.build_train_step(model, optimizer, partitioner, shardings)
        analysis = (
            step.lower(abstract, trainer.abstract_batch(shapes, partitioner))
            .compile()
            .memory_analysis()
        )
        memory[name] = (
            analysis.argument_size_in_bytes
            + analysis.output_size_in_bytes
            + analysis.temp_size_in_bytes
            - analysis.alias_size_in_bytes
            if analysis is not None
            else None
        )
        steps[name] = step
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(states["mle"].params))

    times: dict[str, list[float]] = {name: [] for name in models}
    peaks: dict[str, int | None] = {}
    for rep in range(args.warmup + args.reps):
        for name in models:
            t0 = time.perf_counter()
            states[name], metrics = steps[name](states[name], batch)
            jax.block_until_ready((states[name], metrics))
            if rep >= args.warmup:
                times[name].append(time.perf_counter() - t0)
            peaks[name] = peak_bytes()

    print(
        f"backend {jax.default_backend()} ({jax.local_devices()[0].device_kind}, {jax.local_device_count()} devices); "
        f"T5.1.1-small sizes ({n_params / 1e6:.1f}M params, vocab {config.vocab_size}, dtype {args.dtype}); "
        f"batch {args.batch_size} x (inputs {args.inputs_length}, targets {args.targets_length}); "
        f"Adafactor; {args.warmup} warm-up + {args.reps} interleaved timed steps each; IQLearn lam={args.lam}"
    )
    print(
        "| objective | median step (ms) | min step (ms) | XLA memory per device (MiB) | device peak (MiB) |"
    )
    print("|---|---|---|---|---|")
    for name in models:
        mem = f"{memory[name] / 2**20:.1f}" if memory[name] is not None else "n/a"
        peak = f"{peaks[name] / 2**20:.1f}" if peaks.get(name) else "n/a"
        print(
            f"| {name} | {1e3 * statistics.median(times[name]):.1f} | {1e3 * min(times[name]):.1f} | {mem} | {peak} |"
        )
    if memory["mle"]:
        print(f"iqlearn/mle memory ratio: {memory['iqlearn'] / memory['mle']:.3f}")
    print(f"iqlearn/mle min step-time ratio: {min(times['iqlearn']) / min(times['mle']):.3f}")
    ratio = statistics.median(times["iqlearn"]) / statistics.median(times["mle"])
    print(f"iqlearn/mle step-time ratio: {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
