r"""The paper's Table 1 side by side: update time of MLE, offline IQLearn, online IQLearn and GAIL, and the time
to sample a batch, on one model and batch.

    python bench/algorithm_time.py                   # small T5.1.1-style model sized for a CPU
    python bench/algorithm_time.py --emb_dim=768 --layers=12 --heads=12 --mlp_dim=2048 --batch_size=32 \
        --inputs_length=512 --targets_length=128     # T5.1.1-base sizes (accelerator)

Every timed function is built by the project's own code: the MLE / IQLearn updates are THE train step
(`trainer.build_train_step`); the online IQLearn and GAIL updates are their algorithms' steps without the sampling
(`step_fn.update` on a policy batch drawn once beforehand, jitted with the same shardings through
`trainer.PartitionedStep`), as the paper's Table 1 separates updates from sampling; "sampling" draws one
completion per example of the batch with the in-step sampler (`algorithms.sample_policy_batch`, KV cache,
temperature 1, max length = targets length). All compiled first, warmed up, then timed interleaved. Memory: XLA's
memory analysis of each compiled function (arguments + outputs + temporaries − aliased, per device) and the
device's peak bytes where the backend reports it (not on CPU). Last line:
`online_iqlearn/mle update ratio: X.XX; gail/mle update ratio: X.XX; sampling/mle ratio: X.XX` (ratios of medians).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import jax
import numpy as np
from jax.sharding import PartitionSpec

from iqlearn_jax import optimizers, trainer
from iqlearn_jax.algorithms import GAIL, OnlineIQLearn, Sampler, sample_policy_batch
from iqlearn_jax.models import EncoderDecoderModel
from iqlearn_jax.networks.t5 import T5Config, Transformer
from iqlearn_jax.objectives import Objective
from iqlearn_jax.partitioning import Partitioner

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from step_time import make_batch, peak_bytes  # noqa: E402


def memory_of(compiled) -> int | None:
    a = compiled.memory_analysis()
    if a is None:
        return None
    return (
        a.argument_size_in_bytes
        + a.output_size_in_bytes
        + a.temp_size_in_bytes
        - a.alias_size_in_bytes
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--inputs_length", type=int, default=64)
    p.add_argument("--targets_length", type=int, default=32)
    p.add_argument("--emb_dim", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--mlp_dim", type=int, default=512)
    p.add_argument("--vocab_size", type=int, default=32128)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--dtype", default="float32")
    args = p.parse_args(argv)

    config = T5Config(
        vocab_size=args.vocab_size, emb_dim=args.emb_dim, num_heads=args.heads,
        num_encoder_layers=args.layers, num_decoder_layers=args.layers, head_dim=args.emb_dim // args.heads,
        mlp_dim=args.mlp_dim, mlp_activations=("gelu", "linear"), logits_via_embedding=False,
        dropout_rate=0.1, dtype=args.dtype,
    )  # fmt: skip
    network = Transformer(config)
    iq = Objective(name="iqlearn", lam=0.1)
    models = {
        "mle": EncoderDecoderModel(network, objective=Objective(name="mle")),
        "iqlearn": EncoderDecoderModel(network, objective=iq),
        "online_iqlearn": EncoderDecoderModel(network, objective=iq),
        "gail": EncoderDecoderModel(network, objective=Objective(name="mle")),
    }
    lengths = {"inputs": args.inputs_length, "targets": args.targets_length}
    sampler = Sampler(temperature=1.0)
    algos = {
        "mle": None,
        "iqlearn": None,
        "online_iqlearn": OnlineIQLearn(alpha=0.1, sampler=sampler).bind(
            models["iqlearn"], lengths
        ),
        "gail": GAIL(require_initial_checkpoint=False, sampler=sampler).bind(
            models["gail"], lengths
        ),
    }
    shapes = trainer.model_feature_shapes(models["mle"], lengths, args.batch_size)
    partitioner = Partitioner(devices=jax.local_devices())
    optimizer = optimizers.adamw(1e-4, clip_norm=None)
    batch = partitioner.shard_batch(
        make_batch(args.batch_size, args.inputs_length, args.targets_length, config.vocab_size)
    )
    abstract_batch = trainer.abstract_batch(shapes, partitioner)
    data = partitioner.sharding(PartitionSpec("data"))

    states, fns, memory, shardings = {}, {}, {}, {}
    for name, model in models.items():
        algo = algos[name]
        abstract, shardings[name] = trainer.abstract_train_state(
            model, optimizer, partitioner, shapes, 0, algo
        )
        states[name] = trainer.init_train_state(
            model, optimizer, partitioner, shapes, 0, shardings[name], algo
        )
        if algo is None:
            fn = trainer.build_train_step(model, optimizer, partitioner, shardings[name])
            memory[name] = memory_of(fn.lower(abstract, abstract_batch).compile())
            fns[name] = lambda s, b, fn=fn: fn(s, b)
        else:
            step_fn = algo.make_step(model, optimizer)
            fns[name] = trainer.PartitionedStep(
                step_fn.update, partitioner,
                in_shardings=(shardings[name], data, data, data, partitioner.replicated()),
                out_shardings=(shardings[name], partitioner.replicated()), donate_argnums=(0,),
            )  # fmt: skip

    sample_fn = trainer.PartitionedStep(
        lambda params, b, rng: sample_policy_batch(
            models["online_iqlearn"], params, b, rng, algos["online_iqlearn"].sampler
        ),
        partitioner,
        in_shardings=(shardings["mle"].params, data, partitioner.replicated()),
        out_shardings=(data, data),
    )
    rng = jax.random.PRNGKey(0)
    policy_batch, info = sample_fn(states["online_iqlearn"].params, batch, rng)
    memory["sampling"] = memory_of(
        sample_fn.lower(states["online_iqlearn"].params, batch, rng).compile()
    )
    do_sample = jax.device_put(np.bool_(True), partitioner.replicated())
    for name in ("online_iqlearn", "gail"):
        memory[name] = memory_of(
            fns[name].lower(states[name], batch, policy_batch, info, do_sample).compile()
        )
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(states["mle"].params))
    mean_len = float(np.mean(jax.device_get(info["lengths"])))

    names = ["mle", "iqlearn", "online_iqlearn", "gail", "sampling"]
    times: dict[str, list[float]] = {n: [] for n in names}
    peaks: dict[str, int | None] = {}
    for rep in range(args.warmup + args.reps):
        for name in names:
            t0 = time.perf_counter()
            if name == "sampling":
                out = sample_fn(
                    states["online_iqlearn"].params, batch, jax.random.fold_in(rng, rep)
                )
            elif algos[name] is None:
                states[name], out = fns[name](states[name], batch)
            else:
                states[name], out = fns[name](states[name], batch, policy_batch, info, do_sample)
            jax.block_until_ready(out)
            if rep >= args.warmup:
                times[name].append(time.perf_counter() - t0)
            peaks[name] = peak_bytes()

    print(
        f"backend {jax.default_backend()} ({jax.local_devices()[0].device_kind}, {jax.local_device_count()} devices); "
        f"T5.1.1-style {n_params / 1e6:.1f}M params per network (emb {args.emb_dim}, {args.layers}+{args.layers} "
        f"layers, vocab {args.vocab_size}, {args.dtype}); batch {args.batch_size} x (inputs {args.inputs_length}, "
        f"targets {args.targets_length}); Adam; {args.warmup} warm-up + {args.reps} interleaved timed reps; "
        f"policy samples of mean length {mean_len:.1f} tokens"
    )
    print(
        "| algorithm | median (ms) | min (ms) | ratio to MLE update | XLA memory per device (MiB) | device peak (MiB) |"
    )
    print("|---|---|---|---|---|---|")
    mle = statistics.median(times["mle"])
    for name in names:
        med = statistics.median(times[name])
        mem = f"{memory[name] / 2**20:.1f}" if memory.get(name) else "n/a"
        peak = f"{peaks[name] / 2**20:.1f}" if peaks.get(name) else "n/a"
        label = f"{name} update" if name != "sampling" else "sampling (one batch)"
        print(
            f"| {label} | {1e3 * med:.1f} | {1e3 * min(times[name]):.1f} | {med / mle:.2f} | {mem} | {peak} |"
        )
    ratio = {n: statistics.median(times[n]) / mle for n in names}
    print(
        f"online_iqlearn/mle update ratio: {ratio['online_iqlearn']:.2f}; gail/mle update ratio: "
        f"{ratio['gail']:.2f}; sampling/mle ratio: {ratio['sampling']:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
