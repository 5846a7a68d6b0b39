"""The real T5X binaries with this project's model classes and gin files (gin_configs/t5x/), as subprocesses.

`python -m t5x.train` trains a tiny T5.1.1 and a tiny decoder-only model on the embedded synthetic task (a 16-example
copy for eval/infer: tests/t5x_test_tasks.py), then `t5x.eval` and `t5x.infer` run on the checkpoint it wrote with
the same model gin file; the T5X checkpoint is imported with `iqlearn_jax.checkpoints.import_t5x_checkpoint` and
gives T5X's logits in this project's network. Every gin file under gin_configs/t5x/ builds its model under T5X's
train, eval and infer run files.

T5X: tests/install_test_extras.sh (vendored copy); run-time shims: tests/t5x_shims (on the children's PYTHONPATH).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "tests" / "t5x_shims"))
import t5x_shims  # noqa: E402

pytestmark = pytest.mark.slow

GIN_DIR = REPO_ROOT / "gin_configs" / "t5x"
TASK = "synthetic_arithmetic_1step_small"  # tests/t5x_test_tasks.py: 16 validation/test examples
LENGTHS = "{'inputs': 112, 'targets': 80}"
TRAIN_STEPS = 30
SUMMARY_PERIOD = (
    10  # T5X writes train summaries (averaged over the period) every stats_period steps
)


@pytest.fixture(scope="module", autouse=True)
def _needs_t5x():
    reason = t5x_shims.unavailable_reason()
    if reason:
        pytest.skip(reason)


def _env() -> dict[str, str]:
    env = t5x_shims.subprocess_env()
    env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], str(REPO_ROOT / "tests")])
    # One CPU device: conftest's 8 emulated devices would only slow T5X's compile down here.
    flags = env.get("XLA_FLAGS", "").split()
    env["XLA_FLAGS"] = " ".join(f for f in flags if "xla_force_host_platform_device_count" not in f)
    env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    return env


def _t5x(binary: str, model_gin: str, run_gin: str, *flags: str, timeout: int = 600) -> float:
    """Runs `python -m t5x.<binary>` from the repository root; returns its wall time in seconds."""
    command = [
        sys.executable,
        "-m",
        f"t5x.{binary}",
        "--gin_search_paths=gin_configs",
        f"--gin_file=t5x/{model_gin}",
        f"--gin_file=t5x/configs/runs/{run_gin}",
        f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'",
        "--gin.MIXTURE_OR_TASK_MODULE='t5x_test_tasks'",
        *flags,
    ]
    start = time.monotonic()
    result = subprocess.run(
        command, cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        pytest.fail(f"t5x.{binary} exited {result.returncode}:\n{result.stderr[-6000:]}")
    return time.monotonic() - start


def _train(model_gin: str, model_dir) -> float:
    return _t5x(
        "train",
        model_gin,
        "finetune.gin",
        f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}",
        "--gin.INITIAL_CHECKPOINT_PATH=None",
        f"--gin.TRAIN_STEPS={TRAIN_STEPS}",
        "--gin.BATCH_SIZE=16",
        "--gin.USE_CACHED_TASKS=False",
        "--gin.DROPOUT_RATE=0.0",
        "--gin.RANDOM_SEED=0",
        "--gin.utils.create_learning_rate_scheduler.base_learning_rate=0.01",
        "--gin.utils.create_learning_rate_scheduler.warmup_steps=5",
        f"--gin.utils.SaveCheckpointConfig.period={TRAIN_STEPS}",
        f"--gin.train.stats_period={SUMMARY_PERIOD}",
        "--gin.train.train_eval_dataset_cfg=None",
        "--gin.train.infer_eval_dataset_cfg=None",
        f"--gin.MODEL_DIR='{model_dir}'",
    )


def _scalars(log_dir) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of every scalar in the TensorBoard event files of `log_dir`."""
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util

    acc = event_accumulator.EventAccumulator(
        str(log_dir), size_guidance={event_accumulator.TENSORS: 0}
    )
    acc.Reload()
    out: dict[str, dict[int, float]] = {}
    for tag in acc.Tags()["tensors"]:
        for event in acc.Tensors(tag):
            values = tensor_util.make_ndarray(event.tensor_proto)
            if values.size == 1 and values.dtype.kind == "f":
                out.setdefault(tag, {})[event.step] = float(values.reshape(()))
    return out


def _check_training(model_dir) -> dict[str, float]:
    """Loss falls, the objective's metrics are in T5X's summaries, the final checkpoint exists."""
    scalars = _scalars(model_dir / "train")
    for tag in ("loss", "objective/loss", "objective/mle_term", "objective/td_term"):
        assert tag in scalars, f"{tag} missing from T5X's train summaries: {sorted(scalars)}"
    steps = sorted(scalars["objective/loss"])
    assert steps == list(range(SUMMARY_PERIOD, TRAIN_STEPS + 1, SUMMARY_PERIOD))
    first, last = scalars["objective/loss"][steps[0]], scalars["objective/loss"][steps[-1]]
    assert last < 0.8 * first, f"objective/loss did not fall: {first} -> {last}"
    np.testing.assert_allclose(scalars["loss"][steps[-1]], last, rtol=1e-5)
    assert scalars["objective/td_term"][steps[-1]] > 0
    assert (model_dir / f"checkpoint_{TRAIN_STEPS}").is_dir()
    return {"first_window_loss": first, "last_window_loss": last}


def _eval_and_infer(model_gin: str, model_dir) -> dict[str, float]:
    checkpoint = model_dir / f"checkpoint_{TRAIN_STEPS}"
    eval_dir, infer_dir = model_dir / "eval", model_dir / "infer"
    eval_s = _t5x(
        "eval",
        model_gin,
        "eval.gin",
        f"--gin.CHECKPOINT_PATH='{checkpoint}'",
        f"--gin.EVAL_OUTPUT_DIR='{eval_dir}'",
    )
    metrics_file = eval_dir / "inference_eval" / f"{TASK}-metrics.jsonl"
    record = json.loads(metrics_file.read_text().splitlines()[-1])
    assert record["step"] == TRAIN_STEPS and "answer_accuracy" in record, record

    infer_s = _t5x(
        "infer",
        model_gin,
        "infer.gin",
        f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}",
        f"--gin.CHECKPOINT_PATH='{checkpoint}'",
        f"--gin.INFER_OUTPUT_DIR='{infer_dir}'",
    )
    (predictions,) = infer_dir.glob(f"{TASK}-predict.jsonl-00000-of-00001")
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert len(rows) == 16 and all("prediction" in row and "inputs" in row for row in rows)
    assert sum(bool(row["prediction"]) for row in rows) >= 8  # the trained model writes text
    return {"eval_s": eval_s, "infer_s": infer_s}


def _tiny_t5_configs():
    """(T5X's config, this project's config) of gin_configs/t5x/iqlearn_t5_1_1_tiny.gin's network."""
    from t5x.examples.t5 import network

    from iqlearn_jax.networks import t5

    sizes = dict(
        vocab_size=384,
        emb_dim=64,
        num_heads=4,
        num_encoder_layers=2,
        num_decoder_layers=2,
        head_dim=16,
        mlp_dim=128,
        mlp_activations=("gelu", "linear"),
        logits_via_embedding=False,
        dropout_rate=0.0,
        dtype="float32",
    )
    return network.T5Config(**sizes), t5.T5Config(**sizes)


def _check_import_gives_t5x_logits(model_dir) -> None:
    t5x_shims.activate()  # this check builds T5X's network in process
    import jax
    import orbax.checkpoint as ocp
    from t5x.examples.t5 import network as t5x_network

    from iqlearn_jax.checkpoints import import_t5x_checkpoint
    from iqlearn_jax.networks import t5

    t5x_config, config = _tiny_t5_configs()
    checkpoint = model_dir / f"checkpoint_{TRAIN_STEPS}"
    params = import_t5x_checkpoint(str(checkpoint), config=config)
    # T5X's own view of the same checkpoint: the train state's 'target' tree, read with Orbax directly.
    state = ocp.PyTreeCheckpointer().restore(str(checkpoint / "state"))
    t5x_params = jax.tree.map(np.asarray, state["target"])
    rng = np.random.default_rng(0)
    enc = rng.integers(3, 259, size=(2, 16)).astype(np.int32)
    tgt = rng.integers(3, 259, size=(2, 12)).astype(np.int32)
    dec_in = np.concatenate([np.zeros((2, 1), np.int32), tgt[:, :-1]], axis=1)
    ours = t5.Transformer(config).apply({"params": params}, enc, dec_in, tgt, enable_dropout=False)
    theirs = t5x_network.Transformer(t5x_config).apply(
        {"params": t5x_params}, enc, dec_in, tgt, enable_dropout=False
    )
    assert np.abs(np.asarray(theirs)).max() > 0.1
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("model_gin", ["iqlearn_t5_1_1_tiny.gin", "iqlearn_decoder_only_tiny.gin"])
def test_t5x_train_eval_infer_end_to_end(model_gin, tmp_path, record_property):
    train_s = _train(model_gin, tmp_path)
    figures = _check_training(tmp_path)
    figures.update(train_s=train_s, **_eval_and_infer(model_gin, tmp_path))
    if model_gin == "iqlearn_t5_1_1_tiny.gin":
        _check_import_gives_t5x_logits(tmp_path)
    record_property("t5x_e2e", figures)
    print(f"{model_gin}: {figures}")


PARSE_SCRIPT = r"""
import os, sys
import gin
import t5x.eval, t5x.infer, t5x.train
from t5x import gin_utils
t5x_root = os.path.dirname(os.path.dirname(t5x.train.__file__))
runs = ((t5x.train, "finetune.gin"), (t5x.eval, "eval.gin"), (t5x.infer, "infer.gin"))
variants = ([], ["IQLEARN_LAMBDA = 0.0"], ["OBJECTIVE_NAME = 'mle_entropy'", "IQLEARN_LAMBDA = 0.0", "ENTROPY_BETA = 0.01"])
for model_file in sys.argv[1:]:
    for binary, run_file in runs:
        for bindings in variants:
            sys.modules["__main__"] = binary  # T5X's run files say `import __main__ as train_script`
            gin.clear_config()
            gin_utils.parse_gin_flags(
                ["gin_configs", t5x_root], [model_file, "t5x/configs/runs/" + run_file], bindings,
                finalize_config=False)
            model = gin.query_parameter("%MODEL").scoped_configurable_fn()
            o = model.objective
            print("MODEL", model_file, run_file, type(model).__name__, o.name, o.lam, o.beta,
                  o.valid_vocab_size, flush=True)
"""


def test_every_t5x_gin_file_builds_its_model_under_train_eval_and_infer():
    model_files = sorted(
        f"t5x/{p.name}" for p in GIN_DIR.glob("*.gin") if p.name != "objective.gin"
    )
    assert len(model_files) >= 4
    result = subprocess.run(
        [sys.executable, "-c", PARSE_SCRIPT, *model_files],
        cwd=REPO_ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-6000:]
    built = [line.split()[1:] for line in result.stdout.splitlines() if line.startswith("MODEL ")]
    assert len(built) == len(model_files) * 3 * 3
    for model_file, _run, cls, name, lam, beta, valid in built:
        decoder_only = "decoder_only" in model_file
        assert cls == ("IQLearnDecoderOnlyModel" if decoder_only else "IQLearnEncoderDecoderModel")
        assert valid == ("259" if "tiny" in model_file else "32100")
        assert (name, lam, beta) in {
            ("iqlearn", "0.1", "0.0"),
            ("iqlearn", "0.0", "0.0"),
            ("mle_entropy", "0.0", "0.01"),
        }
