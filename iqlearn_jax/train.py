r"""Training CLI and loop (T5X flag conventions).

    python -m iqlearn_jax.train --gin_file=runs/quickstart.gin
    python -m iqlearn_jax.train --gin_file=models/t5_1_1_base.gin --gin_file=runs/finetune.gin \
        --gin_file=objectives/iqlearn.gin --gin_file=tasks/gsm8k.gin --gin.MODEL_DIR="'/tmp/gsm8k'" \
        --gin.IQLEARN_LAMBDA=0.1 [--gin_search_paths=DIR,...]

`--gin.KEY=VALUE` is T5X's shorthand for `--gin_bindings='KEY = VALUE'`. The repository's gin_configs/ is always on
the search path. Bad input stops before anything in MODEL_DIR is touched (a new MODEL_DIR is not created), with
exit status 2 and a message naming it: unknown binding, missing required macro, unknown task, a `train.train` value
out of range, unwritable MODEL_DIR, a data file that is empty, malformed or not UTF-8 (file and line), an initial
checkpoint in no known format or not matching the model, and a resume into a MODEL_DIR whose checkpoints hold
another model, optimizer, task or batch size (see iqlearn_jax/preflight.py and checkpoints/manager.py).
A NaN/Inf loss stops with status 1 (never checkpointed); SIGTERM saves a checkpoint and exits 0.

MODEL_DIR receives: checkpoints/<step>/ (Orbax), tensorboard/{train,validation}/ (clu summaries), metrics.jsonl
(one JSON object per logged step and split), config.gin (the operative configuration).
"""

from __future__ import annotations

# `python -m iqlearn_jax.train`: run the importable module instead, so gin binds to one copy of `train`.
if __name__ == "__main__":
    import sys

    from iqlearn_jax.train import console_main

    sys.exit(console_main())

import os

# Before TensorFlow (via SeqIO) is first imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import dataclasses
import pathlib
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import gin
import jax
import numpy as np
from absl import flags, logging

from iqlearn_jax import algorithms, optimizers, preemption, preflight, trainer
from iqlearn_jax.checkpoints import initial as initial_ckpt
from iqlearn_jax.checkpoints import manager as ckpt_lib
from iqlearn_jax.data_pipeline import TrainIterator, get_dataset  # noqa: F401 - get_dataset re-exported
from iqlearn_jax.distributed import (
    AlignedFirstCall,
    check_shared_directory,
    maybe_initialize_distributed,
    primary_print,
)
from iqlearn_jax.gin_utils import (  # noqa: F401 - re-exported for callers of iqlearn_jax.train
    ConfigError,
    default_gin_search_paths,
    parse_gin,
    quiet_info,
    rewrite_gin_args,
    run_cli,
    strip_gin_context,
)
from iqlearn_jax.observability import (
    MetricsLogger,
    NonFiniteLossError,
    ProgressMeter,
    TrainResult,
)
from iqlearn_jax.partitioning import Partitioner, replicated_to_host
from iqlearn_jax.step_metrics import PendingMetrics, raise_if_nonfinite

_GIN_FILE = flags.DEFINE_multi_string("gin_file", [], "gin files to parse, in order")
_GIN_BINDINGS = flags.DEFINE_multi_string("gin_bindings", [], "individual gin bindings")
_GIN_SEARCH_PATHS = flags.DEFINE_list(
    "gin_search_paths", [], "comma-separated directories searched for gin files and includes"
)


def _required(name: str, value: Any) -> Any:
    if value is gin.REQUIRED or value is None:
        raise ConfigError(
            f"train.{name} is required but not set (bind it in a gin file or --gin.train.{name}=...)"
        )
    return value


# ---- data -----------------------------------------------------------------------------------------------------
def _check_task(name: str) -> None:
    import seqio

    known = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
    if name not in known:
        raise ConfigError(f"unknown task or mixture {name!r}; registered: {sorted(known)}")


def _count_tokens(batch: Mapping[str, np.ndarray], data_shards: int) -> int:
    """Non-padding tokens of the global batch, estimated as this host's × the number of distinct data shards."""
    n = 0
    for key in ("encoder_input_tokens", "decoder_target_tokens"):
        if key in batch:
            n += int(np.sum(batch[key] > 0))
    return n * data_shards


# ---- the loop -------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class TrainComponents:
    """What `train(build_only=True)` returns: the gin-configured pieces of the step, nothing materialised.

    `step_fn.lower(abstract_state, abstract_batch).compile()` compiles THE train step (iqlearn_jax.aot).
    """

    model: Any
    optimizer: Any
    learning_rate_fn: Any
    partitioner: Partitioner
    feature_shapes: dict[str, tuple[tuple[int, ...], Any]]
    num_microbatches: int
    abstract_state: trainer.TrainState
    state_shardings: trainer.TrainState
    abstract_batch: dict[str, jax.ShapeDtypeStruct]
    step_fn: trainer.PartitionedStep


@gin.configurable(denylist=["stop_after_steps", "build_only"])
def train(
    *,
    model: Any = gin.REQUIRED,
    model_dir: str = gin.REQUIRED,
    mixture_or_task_name: str = gin.REQUIRED,
    task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
    batch_size: int = gin.REQUIRED,
    train_steps: int = gin.REQUIRED,
    optimizer: Any = None,
    learning_rate_fn: Any = None,
    partitioner: Partitioner | None = None,
    num_microbatches: int = 1,
    seed: int = 0,
    train_split: str = "train",
    eval_split: str | None = "validation",
    eval_period: int = 100,
    eval_batches: int = 4,
    log_period: int = 10,
    steps_in_flight: int = 8,
    checkpoint_period: int = 100,
    keep_checkpoints: int = 3,
    async_checkpointing: bool = True,
    initial_checkpoint_path: str | None = None,
    initial_checkpoint_format: str = "auto",
    allow_fresh_start_over_damaged: bool = False,
    pack: bool = False,
    algorithm: Any = None,
    print_summary: bool = True,
    stop_after_steps: int | None = None,
    build_only: bool = False,
) -> TrainResult | TrainComponents:
    """Trains `model` on a SeqIO task, resuming from MODEL_DIR's newest complete checkpoint when there is one.

    Args:
      model: a T5X-style model (models.EncoderDecoderModel / DecoderOnlyModel).
      model_dir: output folder (checkpoints, TensorBoard, metrics.jsonl, config.gin).
      mixture_or_task_name, task_feature_lengths: the SeqIO task and its {'inputs': n, 'targets': m} lengths.
      batch_size: global batch size (examples per step, over all hosts); split evenly over hosts.
      train_steps: total optimizer steps (a resumed run continues up to it).
      optimizer: an optax GradientTransformation (default: Adafactor, lr 1e-4 with 2000 warm-up steps).
      learning_rate_fn: the schedule, only to log the learning rate.
      partitioner: mesh and rules (default: all devices data-parallel).
      num_microbatches: gradient accumulation over this many microbatches per step.
      eval_period / eval_batches: validation loss every `eval_period` steps (and at the end) over that many
        batches of `eval_split` (None: no validation).
      log_period: steps between progress lines / metric records. Metrics stay on the device in between: the
        host reads them (and the step's NaN/Inf record, `TrainState.nonfinite_step`) only at log, evaluation
        and checkpoint points, and stops with the first bad step named; such a state is never checkpointed.
      steps_in_flight: at most this many steps dispatched ahead of the newest one known to be finished.
      checkpoint_period / keep_checkpoints: save every N steps and at the end; keep the newest K.
      initial_checkpoint_path / initial_checkpoint_format: params to start from ('auto', 'orbax', 't5x', 'hf')
        when MODEL_DIR has no checkpoint yet (when it has, a note says the initial checkpoint is not used).
      allow_fresh_start_over_damaged: when MODEL_DIR has checkpoints and none can be restored, set them aside
        and train from scratch (default: refuse, exit 2).
      algorithm: None (offline: the model's objective on the data) or an `iqlearn_jax.algorithms` algorithm
        (online IQLearn, GAIL: policy samples inside the step, possibly several networks in one train state).
      stop_after_steps: (tests) return after this many steps of this invocation, without the final save.
      build_only: return the `TrainComponents` (model, optimizer, partitioner, abstract state, shardings, the
        jitted step) without data, parameters or MODEL_DIR; pass `partitioner=` to build for other devices.
    """
    t_start = time.time()
    model = _required("model", model)
    preflight.check_values(dict(
        task_feature_lengths=_required("task_feature_lengths", task_feature_lengths),
        batch_size=_required("batch_size", batch_size), train_steps=_required("train_steps", train_steps),
        mixture_or_task_name=_required("mixture_or_task_name", mixture_or_task_name),
        num_microbatches=num_microbatches, seed=seed, train_split=train_split, eval_split=eval_split,
        eval_period=eval_period, eval_batches=eval_batches, log_period=log_period,
        steps_in_flight=steps_in_flight,
        checkpoint_period=checkpoint_period, keep_checkpoints=keep_checkpoints, pack=pack,
        initial_checkpoint_path=initial_checkpoint_path, initial_checkpoint_format=initial_checkpoint_format,
        stop_after_steps=stop_after_steps, allow_fresh_start_over_damaged=allow_fresh_start_over_damaged,
    ))  # fmt: skip
    task_feature_lengths = dict(task_feature_lengths)
    batch_size, train_steps = int(batch_size), int(train_steps)
    if optimizer is None:
        learning_rate_fn = learning_rate_fn or optimizers.warmup_constant(1e-4, 2000)
        optimizer = optimizers.adafactor(learning_rate_fn)
    _check_task(mixture_or_task_name)
    preflight.check_task_features(mixture_or_task_name, task_feature_lengths)
    algorithm = algorithms.prepare(
        algorithm, model, task_feature_lengths, num_microbatches=num_microbatches, pack=pack,
        initial_checkpoint_path=initial_checkpoint_path, model_dir=None if build_only else model_dir,
    )  # fmt: skip
    if not build_only:
        preflight.check_values({"model_dir": _required("model_dir", model_dir)})
        model_dir_path = preflight.check_model_dir(model_dir)  # not created yet
    partitioner = partitioner or Partitioner()
    try:
        local_batch = partitioner.local_batch_size(batch_size)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if batch_size % num_microbatches or (batch_size // num_microbatches) % partitioner.data_size:
        raise ConfigError(
            f"batch_size={batch_size} must split into num_microbatches={num_microbatches} microbatches "
            f"divisible by the data-parallel size {partitioner.data_size}"
        )

    shapes = trainer.model_feature_shapes(model, task_feature_lengths, batch_size, pack=pack)
    abstract_state, shardings = trainer.abstract_train_state(
        model, optimizer, partitioner, shapes, seed, algorithm
    )
    step_fn = trainer.build_train_step(
        model, optimizer, partitioner, shardings, num_microbatches, learning_rate_fn,
        algorithm=algorithm,
    )  # fmt: skip
    if build_only:
        return TrainComponents(
            model, optimizer, learning_rate_fn, partitioner, shapes, num_microbatches,
            abstract_state, shardings, trainer.abstract_batch(shapes, partitioner), step_fn,
        )  # fmt: skip
    preflight.check_vocabulary(mixture_or_task_name, model)
    preflight.check_first_batches(
        get_dataset, model, mixture_or_task_name,
        [(train_split, True)] + ([(eval_split, False)] if eval_split is not None else []),
        task_feature_lengths, local_batch, partitioner.shard_info(), seed, pack,
    )  # fmt: skip
    has_checkpoint = preflight.initial_checkpoint_unused(initial_checkpoint_path, model_dir_path)
    initial_params = None
    if initial_checkpoint_path and not has_checkpoint:
        try:
            initial_params = initial_ckpt.load_initial_params(
                initial_checkpoint_path,
                algorithms.policy_view(algorithm, abstract_state.params),
                algorithms.policy_view(algorithm, shardings.params),
                initial_checkpoint_format,
            )
        except (OSError, ValueError) as e:  # not found, unreadable, another format or model
            raise ConfigError(str(e)) from e

    # ---- from here on MODEL_DIR is written ----
    model_dir_path.mkdir(parents=True, exist_ok=True)
    check_shared_directory(model_dir_path)  # several processes: one MODEL_DIR for all
    ckpt = ckpt_lib.TrainCheckpointManager(
        model_dir_path, keep=keep_checkpoints, async_save=async_checkpointing
    )
    try:  # a mismatched checkpoint (model, optimizer, task, batch size) raises ConfigError, nothing moved
        restored = ckpt.restore_latest(
            abstract_state, {"task": mixture_or_task_name, "batch_size": batch_size},
            allow_fresh_start=allow_fresh_start_over_damaged,
        )  # fmt: skip
    except ConfigError:
        ckpt.close()
        raise
    if restored is not None:
        state, meta = restored
        batches_consumed = int(meta.get("batches_consumed", 0))
        logging.info("resuming (%d batches consumed)", batches_consumed)
    else:
        state = trainer.init_train_state(
            model, optimizer, partitioner, shapes, seed, shardings, algorithm
        )
        if initial_params is not None:  # every network the algorithm initialises from it
            state = state.replace(
                params=algorithms.fill_from_initial(algorithm, initial_params, shardings.params)
            )
            logging.info("initial params from %s", initial_checkpoint_path)
        batches_consumed = 0
    # The loop counts steps on the host from here (no further device reads for it).
    start_step = step = int(replicated_to_host(state.step))
    _write_config(model_dir_path, start_step)

    train_iter = TrainIterator(
        lambda: get_dataset(
            model, mixture_or_task_name, train_split, task_feature_lengths, local_batch,
            partitioner.shard_info(), seed, shuffle=True, repeat=True, pack=pack,
        )
    )  # fmt: skip
    if restored is not None and not ckpt.restore_data(start_step, train_iter):
        logging.warning(
            "checkpoint %d holds no data position: replaying %d batches",
            start_step,
            batches_consumed,
        )
        train_iter.skip(batches_consumed)
    eval_data = None
    eval_fn = trainer.build_eval_step(
        model, partitioner, algorithms.policy_view(algorithm, shardings.params)
    )
    # Several CPU processes: compile, then wait for all, before a program's first collective (gloo's 30 s).
    step_fn = AlignedFirstCall(step_fn, "train_step")
    eval_fn = AlignedFirstCall(eval_fn, "eval_step")
    logger = MetricsLogger(model_dir_path, resume_step=start_step)

    guard = preemption.PreemptionGuard().__enter__()  # SIGTERM on any process: all save at one step

    def evaluate(step: int) -> dict[str, float]:
        nonlocal eval_data
        if eval_split is None:
            return {}
        if eval_data is None:
            ds = get_dataset(
                model,
                mixture_or_task_name,
                eval_split,
                task_feature_lengths,
                local_batch,
                partitioner.shard_info(),
                seed,
                shuffle=False,
                repeat=False,
                pack=pack,
            )
            eval_data = list(ds.take(eval_batches).as_numpy_iterator())
            if not eval_data:
                logging.warning(
                    "split %r has fewer than batch_size examples: no validation", eval_split
                )
        sums: dict[str, float] = {}
        for local in eval_data:
            m = replicated_to_host(
                eval_fn(
                    algorithms.policy_view(algorithm, state.params), partitioner.shard_batch(local)
                )
            )
            for k, v in m.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        out = {k: v / len(eval_data) for k, v in sums.items()} if eval_data else {}
        if out:
            logger.write(step, "validation", out)
            primary_print(f"step {step:>6d} | validation loss {out['loss']:.4f}")
        return out

    meter = ProgressMeter(train_steps)
    pending = PendingMetrics(steps_in_flight)
    last_train: dict[str, float] = {}
    last_eval: dict[str, float] = {}
    stop = None  # "sigterm" | "requested" | None

    def read_metrics() -> None:
        """The host waits for the device here only: metrics to the meter, then the step's NaN/Inf record."""
        fetched = pending.fetch()
        # Before anything can log, evaluate or checkpoint this state:
        raise_if_nonfinite(state, fetched)
        for record in fetched:
            meter.add(record.metrics, record.tokens)

    def meta() -> dict[str, Any]:
        return _meta(train_iter.batches, mixture_or_task_name, batch_size, seed)

    try:
        while step < train_steps:
            local = next(train_iter)
            state, metrics = step_fn(state, partitioner.shard_batch(local))
            step += 1
            tokens = _count_tokens(local, partitioner.shard_info()[1])
            pending.add(step, metrics, tokens)  # stays on the device until read_metrics
            if guard.should_stop(step):
                stop = "sigterm"
            log_now = step % log_period == 0 or step == train_steps or stop
            eval_now = step % eval_period == 0 and step != train_steps
            save_now = step % checkpoint_period == 0 or stop
            if log_now or eval_now or save_now:
                read_metrics()
            if log_now:
                last_train, line = meter.flush(step)
                logger.write(step, "train", last_train)
                if jax.process_index() == 0:
                    print(line, flush=True)
            if eval_now:
                last_eval = evaluate(step)
            if save_now:
                ckpt.save(state, meta(), data=train_iter, step=step)
            if stop:
                logging.warning("stopping at step %d after SIGTERM (checkpoint saved)", step)
                break
            if stop_after_steps is not None and step - start_step >= stop_after_steps:
                stop = "requested"
                break
        if stop is None:
            read_metrics()
            last_eval = evaluate(step)
            ckpt.save(state, meta(), data=train_iter, step=step)
        ckpt.wait()
        latest = ckpt.latest_step()
    finally:
        ckpt.close()
        logger.close()
        guard.__exit__()

    result = TrainResult(
        model_dir=str(model_dir_path),
        start_step=start_step,
        final_step=step,
        preempted=stop == "sigterm",
        train_metrics=last_train,
        validation_metrics=last_eval,
        checkpoint_dir=str(ckpt.directory / str(latest)) if latest is not None else None,
        tensorboard_dir=str(logger.tb_dir),
        wall_seconds=time.time() - t_start,
    )
    result.params = state.params  # type: ignore[attr-defined]  # for callers in the same process (tests)
    if print_summary and jax.process_index() == 0:
        print(result.summary(), flush=True)
    return result


def _meta(batches_consumed: int, task: str, batch_size: int, seed: int) -> dict[str, Any]:
    return {
        "batches_consumed": batches_consumed,
        "task": task,
        "batch_size": batch_size,
        "seed": seed,
        "process_count": jax.process_count(),
    }


def _write_config(model_dir: pathlib.Path, step: int) -> None:
    if jax.process_index() != 0:
        return
    text = gin.config_str()
    target = model_dir / "config.gin"
    if target.exists() and target.read_text() != text:
        target = model_dir / f"config_from_step_{step}.gin"
    target.write_text(text)


# ---- entry points ---------------------------------------------------------------------------------------------
def main(argv: Sequence[str]) -> int:
    logging.get_absl_handler().addFilter(quiet_info)
    if len(argv) > 1:
        print(f"iqlearn-train: error: unexpected arguments {list(argv[1:])}", file=sys.stderr)
        return 2
    try:
        maybe_initialize_distributed()  # before anything touches a device; bad launch variables: exit 2
        parse_gin(_GIN_FILE.value, _GIN_BINDINGS.value, _GIN_SEARCH_PATHS.value)
        from iqlearn_jax.tasks import register_tasks

        register_tasks()
        train()
    except ConfigError as e:
        print(f"iqlearn-train: error: {strip_gin_context(e)}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        print(f"iqlearn-train: error: {strip_gin_context(e)}", file=sys.stderr)
        return 1
    except (ValueError, TypeError) as e:
        # Raised while gin builds configured objects (e.g. a bad Objective): name it and exit cleanly.
        if "gin" in str(e) or "configurable" in str(e) or "In call to" in str(e):
            print(f"iqlearn-train: error: bad configuration: {e}", file=sys.stderr)
            return 2
        raise
    return 0


def console_main() -> int:
    """Entry point of `iqlearn-train` and `python -m iqlearn_jax.train`."""
    return run_cli(main)
