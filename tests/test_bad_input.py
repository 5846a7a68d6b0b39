"""Bad input, as a new user would give it: each case exits non-zero (2) with a message naming the culprit, and leaves
MODEL_DIR byte-identical (every file hashed) or, when it was fresh, absent. Plus the damaged-checkpoint fallback
(only the damaged checkpoint moved), metrics.jsonl after a resume, and the CLIs' --help / --list_macros.

The CLI runs in-process (`train.main`, the console script's code path minus interpreter start-up). The "previous
run" in MODEL_DIR is written directly (initialised train state saved at steps 1 and 2 through the trainer's own
checkpoint manager), so only one test (the damaged-checkpoint resume, shared by three tests) compiles a train step.
"""

import contextlib
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import gin
import jax
import numpy as np
import pytest
from absl import flags

from iqlearn_jax import train as train_lib
from iqlearn_jax import trainer
from iqlearn_jax.checkpoints import manager as ckpt_lib

REPO = pathlib.Path(__file__).resolve().parent.parent
QUICK = [
    "--gin_file=runs/quickstart.gin",
    "--gin.BATCH_SIZE=8",
    "--gin.train.train.eval_batches=1",
    "--gin.train.train.async_checkpointing=False",
]
TASK = "synthetic_arithmetic_1step"


def reset() -> None:
    gin.clear_config()
    flags.FLAGS.unparse_flags()


def cli(args, capfd, main=None, prog: str = "iqlearn-train") -> tuple[int, str]:
    """(exit status, stdout + stderr) of `PROG ARGS` (default `iqlearn-train`), run in-process by `main`."""
    main = main or train_lib.main
    capfd.readouterr()
    reset()
    flags.FLAGS([prog, *train_lib.rewrite_gin_args(args)])
    try:
        code = main([prog])
    finally:
        reset()
    out = capfd.readouterr()
    return code, out.out + out.err


def snapshot(folder: pathlib.Path) -> dict[str, str]:
    """Every file's SHA-256 (and every directory) under `folder`, by relative path."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        if p.is_file()
        else "dir"
        for p in sorted(folder.rglob("*"))
    }


# ---- a previous run in MODEL_DIR --------------------------------------------------------------------------------
OLD_TIME = 1000.0  # "time" of the metrics records the previous run wrote


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory) -> pathlib.Path:
    """MODEL_DIR of a quickstart run (batch 8) with checkpoints at steps 1 and 2, config.gin and a metrics.jsonl
    whose records run to step 3 (killed after logging step 3, before its next checkpoint)."""
    model_dir = tmp_path_factory.mktemp("saved") / "run"
    reset()
    train_lib.parse_gin(["runs/quickstart.gin"], [f"MODEL_DIR = '{model_dir}'", "BATCH_SIZE = 8"])
    from iqlearn_jax.tasks import register_tasks

    register_tasks()
    parts = train_lib.train(build_only=True)
    state = trainer.init_train_state(
        parts.model, parts.optimizer, parts.partitioner, parts.feature_shapes, 0,
        parts.state_shardings,
    )  # fmt: skip
    model_dir.mkdir(parents=True)
    (model_dir / "config.gin").write_text(gin.config_str())
    reset()
    manager = ckpt_lib.TrainCheckpointManager(model_dir, async_save=False)
    for step in (1, 2):
        step_array = jax.device_put(np.int32(step), parts.state_shardings.step)
        meta = {"batches_consumed": step, "task": TASK, "batch_size": 8, "seed": 0}
        manager.save(state.replace(step=step_array), {**meta, "process_count": 1})
    manager.close()
    records = [(s, "train") for s in (1, 2, 3)] + [(2, "validation")]
    (model_dir / "metrics.jsonl").write_text(
        "".join(
            json.dumps({"step": s, "split": split, "time": OLD_TIME, "loss": 5.0}) + "\n"
            for s, split in records
        )
    )
    return model_dir


@pytest.fixture
def run_dir(saved_run, tmp_path) -> pathlib.Path:
    """A private copy of the previous run."""
    return pathlib.Path(shutil.copytree(saved_run, tmp_path / "run"))


def refused_resume(run_dir, capfd, *extra) -> str:
    """Runs the CLI over `run_dir`; asserts exit 2 and MODEL_DIR byte-identical; returns the message."""
    before = snapshot(run_dir)
    code, out = cli([*QUICK, f"--gin.MODEL_DIR='{run_dir}'", *extra], capfd)
    assert code == 2, out[-3000:]
    assert "iqlearn-train: error:" in out
    assert snapshot(run_dir) == before
    return out


# ---- resume into a changed run: refused, nothing moved ---------------------------------------------------------
def test_resume_with_another_vocab_size_is_refused(run_dir, capfd):
    out = refused_resume(run_dir, capfd, "--gin.VOCAB_SIZE=512")
    assert "does not match the configured model/optimizer" in out
    assert "params/token_embedder/embedding: checkpoint (384, 64), configured (512, 64)" in out


def test_resume_with_another_model_size_file_is_refused(run_dir, capfd):
    out = refused_resume(run_dir, capfd, "--gin_file=models/t5_1_1_small.gin")
    assert "does not match the configured model/optimizer" in out
    assert "params/decoder/decoder_norm/scale: checkpoint (64,), configured (512,)" in out


def test_resume_with_another_batch_size_is_refused(run_dir, capfd):
    out = refused_resume(run_dir, capfd, "--gin.BATCH_SIZE=16")
    assert "batch_size=8" in out and "batch_size=16" in out


def test_resume_with_another_task_is_refused(run_dir, capfd):
    out = refused_resume(run_dir, capfd, "--gin.MIXTURE_OR_TASK_NAME='synthetic_arithmetic_2step'")
    assert f"task={TASK!r}" in out and "task='synthetic_arithmetic_2step'" in out


def test_missing_initial_checkpoint_is_named_even_when_resuming(run_dir, capfd, tmp_path):
    missing = tmp_path / "no_such_checkpoint"
    out = refused_resume(run_dir, capfd, f"--gin.train.train.initial_checkpoint_path='{missing}'")
    assert out.count(f"initial_checkpoint_path '{missing}' does not exist") == 1
    assert "already has checkpoints (newest step 2)" in out


def _damage(step_dir: pathlib.Path) -> None:
    """Truncates every array data file of a checkpoint (its metadata stays readable)."""
    data = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert data
    for p in data:
        p.write_bytes(p.read_bytes()[:10])


def test_model_dir_whose_checkpoints_entry_is_a_file_is_refused(run_dir, capfd):
    shutil.rmtree(run_dir / "checkpoints")
    (run_dir / "checkpoints").write_text("not a folder\n")
    out = refused_resume(run_dir, capfd)
    assert "holds 'checkpoints', which is not a directory as a run writes it" in out


def test_no_restorable_checkpoint_refuses_a_fresh_start(run_dir, capfd):
    for step in (1, 2):
        _damage(run_dir / "checkpoints" / str(step))
    out = refused_resume(run_dir, capfd)
    assert "has 2 checkpoint(s) and none can be restored" in out
    assert "--gin.train.train.allow_fresh_start_over_damaged=True" in out


# ---- bad values: refused by name before MODEL_DIR exists ------------------------------------------------------
@pytest.mark.parametrize(
    "binding,message",
    [
        ("--gin.BATCH_SIZE=-4", "train.batch_size must be an integer >= 1, got -4"),
        ("--gin.BATCH_SIZE='abc'", "train.batch_size must be an integer >= 1, got 'abc' (str)"),
        ("--gin.TRAIN_STEPS=0", "train.train_steps must be an integer >= 1, got 0"),
        (
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 0, 'targets': 80}",
            "train.task_feature_lengths['inputs'] (TASK_FEATURE_LENGTHS) must be an integer >= 1, got 0",
        ),
        (
            "--gin.train.train.checkpoint_period=0",
            "train.checkpoint_period must be an integer >= 1",
        ),
        ("--gin.train.train.keep_checkpoints=0", "train.keep_checkpoints must be an integer >= 1"),
        ("--gin.NUM_MICROBATCHES=0", "train.num_microbatches must be an integer >= 1, got 0"),
        (
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 112}",
            "train.task_feature_lengths {'inputs': 112} has no length for ['targets']",
        ),
        (
            "--gin.VOCAB_SIZE=100",
            "the model's vocabulary has 100 entries (VOCAB_SIZE), fewer than the 259",
        ),
        (
            "--gin.train.train.initial_checkpoint_format='pt'",
            "train.initial_checkpoint_format must be",
        ),
        (
            "--gin.LEARNING_RATE='fast'",
            "(the learning rate, LEARNING_RATE) must be a number >= 0, got 'fast'",
        ),
        ("--gin.train.train.eval_split='nosuch'", "cannot read split 'nosuch' of task"),
        (
            "--gin.TRAIN_STEP=10",
            "--gin.TRAIN_STEP: macro TRAIN_STEP is not used by this run's gin files; did you mean "
            "TRAIN_STEPS?",
        ),
        (
            "--gin.IQLEARN_LAMBDA='abc'",
            "Objective.lam (IQLEARN_LAMBDA) must be a number, got 'abc'",
        ),
        (
            "--gin.IQLEARN_GAMMA=1.5",
            "Objective.gamma (IQLEARN_GAMMA) must be in [0.0, 1.0], got 1.5",
        ),
    ],
)
def test_bad_value_named_and_fresh_model_dir_stays_absent(binding, message, tmp_path, capfd):
    model_dir = tmp_path / "fresh" / "run"
    code, out = cli([*QUICK, f"--gin.MODEL_DIR='{model_dir}'", binding], capfd)
    assert code == 2 and message in out, out[-3000:]
    assert not (tmp_path / "fresh").exists()


# ---- data files: checked before MODEL_DIR is written -----------------------------------------------------------
GOOD_LINE = json.dumps({"question": "What is 2+3?", "answer": "2+3=<<2+3=5>>5\n#### 5"})


def gsm8k_run(tmp_path, train_bytes: bytes, capfd) -> tuple[int, str, pathlib.Path]:
    """The CLI on the file-based gsm8k task (byte vocabulary) with `train_bytes` as train.jsonl."""
    data = tmp_path / "data" / "gsm8k"
    data.mkdir(parents=True)
    (data / "train.jsonl").write_bytes(train_bytes)
    (data / "test.jsonl").write_text((GOOD_LINE + "\n") * 8)
    model_dir = tmp_path / "fresh" / "run"
    code, out = cli(
        [
            *QUICK,
            f"--gin.MODEL_DIR='{model_dir}'",
            "--gin.MIXTURE_OR_TASK_NAME='gsm8k'",
            f"--gin.register_tasks.data_dir='{data.parent}'",
            "--gin.register_tasks.vocabulary='byte'",
            "--gin.train.train.eval_split='test'",
        ],
        capfd,
    )
    assert code == 2, out[-3000:]
    assert not (tmp_path / "fresh").exists()
    return code, out, data / "train.jsonl"


def test_empty_training_file(tmp_path, capfd):
    _, out, path = gsm8k_run(tmp_path, b"", capfd)
    assert f"split 'train' of task 'gsm8k' is empty: it has no example (read from {path})" in out


def test_malformed_training_file_names_file_and_line(tmp_path, capfd):
    lines = [GOOD_LINE, GOOD_LINE, '{"question": "half a record"']
    _, out, path = gsm8k_run(tmp_path, "\n".join(lines).encode(), capfd)
    assert f"{path}:3: malformed JSON" in out


def test_non_utf8_training_file_names_file_and_line(tmp_path, capfd):
    bad = GOOD_LINE.replace("What", "Wh\xe4t").encode("latin-1")
    _, out, path = gsm8k_run(tmp_path, GOOD_LINE.encode() + b"\n" + bad + b"\n", capfd)
    assert f"{path}:2: not UTF-8 text (byte 0xe4 at column 17)" in out


def test_initial_checkpoint_that_is_a_text_file(tmp_path, capfd):
    text_file = tmp_path / "weights.txt"
    text_file.write_text("not a checkpoint\n")
    model_dir = tmp_path / "fresh" / "run"
    code, out = cli(
        [
            *QUICK,
            f"--gin.MODEL_DIR='{model_dir}'",
            f"--gin.train.train.initial_checkpoint_path='{text_file}'",
        ],
        capfd,
    )
    assert code == 2, out[-3000:]
    assert (
        f"initial checkpoint path '{text_file}' is a regular file (17 bytes); expected one of:"
        in out
    )
    assert "config.json" in out and "checkpoints/<step>/state" in out and "T5X" in out
    assert not (tmp_path / "fresh").exists()


def _hf_dir_without_weights(folder: pathlib.Path) -> tuple[pathlib.Path, str]:
    (folder / "config.json").write_text('{"model_type": "t5"}')
    return folder, "is a directory holding config.json; expected one of:"


def _hf_dir_with_broken_weights(folder: pathlib.Path) -> tuple[pathlib.Path, str]:
    (folder / "config.json").write_text('{"model_type": "t5"}')
    (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    return folder, "looks like hf (a directory holding config.json and *.safetensors"


def _truncated_gguf(folder: pathlib.Path) -> tuple[pathlib.Path, str]:
    path = folder / "model.gguf"
    path.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 5)
    return (
        path,
        "looks like gguf (a .gguf file (llama.cpp; llama architecture)) but could not be read",
    )


@pytest.mark.parametrize(
    "make", [_hf_dir_without_weights, _hf_dir_with_broken_weights, _truncated_gguf]
)
def test_unreadable_initial_checkpoint_is_named(make, tmp_path, capfd):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    path, message = make(folder)
    model_dir = tmp_path / "fresh" / "run"
    code, out = cli(
        [
            *QUICK,
            f"--gin.MODEL_DIR='{model_dir}'",
            f"--gin.train.train.initial_checkpoint_path='{path}'",
        ],
        capfd,
    )
    assert code == 2 and f"'{path}' {message}" in out, out[-3000:]
    assert "Traceback" not in out
    assert not (tmp_path / "fresh").exists()


@contextlib.contextmanager
def captured_output():
    """Captures file descriptors 1 and 2 and sys.stdout/sys.stderr (for module-scoped fixtures, where capfd is not
    available); yields a function returning the text so far."""
    with tempfile.TemporaryFile("w+") as sink:
        sys.stdout.flush(), sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(sink.fileno(), 1), os.dup2(sink.fileno(), 2)
        try:
            with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                yield lambda: (sink.flush(), sink.seek(0), sink.read())[2]
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            os.close(saved[0]), os.close(saved[1])


# ---- a damaged newest checkpoint: set aside alone, the previous one restored (one real resume) ---------------
@pytest.fixture(scope="module")
def resumed_over_damage(saved_run, tmp_path_factory):
    """Resumes a copy of the previous run whose newest checkpoint (step 2) is damaged, to step 3; the run also
    names an (existing) initial checkpoint, which a resumed run does not use."""
    model_dir = pathlib.Path(shutil.copytree(saved_run, tmp_path_factory.mktemp("damaged") / "run"))
    _damage(model_dir / "checkpoints" / "2")
    before = snapshot(model_dir)
    with captured_output() as read:
        reset()
        flags.FLAGS(
            ["iqlearn-train", *train_lib.rewrite_gin_args([
                *QUICK, f"--gin.MODEL_DIR='{model_dir}'", "--gin.TRAIN_STEPS=3",
                "--gin.train.train.log_period=1", "--gin.train.train.eval_split=None",
                f"--gin.train.train.initial_checkpoint_path='{saved_run}'",
            ])]
        )  # fmt: skip
        try:
            code = train_lib.main(["iqlearn-train"])
        finally:
            reset()
        text = read()
    return code, text, model_dir, before


def test_damaged_checkpoint_is_set_aside_alone_and_the_previous_one_restored(resumed_over_damage):
    code, out, model_dir, before = resumed_over_damage
    assert code == 0, out[-3000:]
    assert "steps: 1 -> 3" in out
    moved = list((model_dir / "checkpoints_damaged").iterdir())
    assert [p.name.split("-")[0] for p in moved] == ["2"]  # only the damaged one
    after = snapshot(model_dir)
    for rel, digest in before.items():  # checkpoint 1 untouched; checkpoint 2 moved byte for byte
        if rel.startswith("checkpoints/1"):
            assert after[rel] == digest, rel
        elif rel.startswith("checkpoints/2/"):
            assert (
                after[f"checkpoints_damaged/{moved[0].name}/{rel[len('checkpoints/2/') :]}"]
                == digest
            )
    assert sorted(p.name for p in (model_dir / "checkpoints").iterdir()) == ["1", "3"]
    assert (
        "Exception ignored" not in out and "never retrieved" not in out
    )  # no asyncio noise from Orbax


def test_metrics_jsonl_has_one_record_per_step_after_resume(resumed_over_damage):
    code, _, model_dir, _ = resumed_over_damage
    assert code == 0
    records = [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text().splitlines()]
    keys = [(r["step"], r["split"]) for r in records]
    assert len(keys) == len(set(keys)), keys
    assert sorted(keys) == [
        (1, "train"),
        (2, "train"),
        (3, "train"),
    ]  # (2, "validation") was replayed
    by_key = {(r["step"], r["split"]): r for r in records}
    assert by_key[(1, "train")]["time"] == OLD_TIME  # before the restored step: kept
    assert by_key[(2, "train")]["time"] > OLD_TIME  # replayed steps: only this run's records
    assert by_key[(2, "train")]["window_steps"] == 1 and by_key[(3, "train")]["window_steps"] == 1


def test_initial_checkpoint_not_used_note_once_when_resuming(resumed_over_damage, saved_run):
    code, out, _, _ = resumed_over_damage
    assert code == 0
    assert out.count(f"train.initial_checkpoint_path '{saved_run}' is not used") == 1


# ---- iqlearn-evaluate: bad arguments refused by name, the run it reads untouched ------------------------------
@pytest.mark.parametrize(
    "binding, message",
    [
        ("--gin.EVAL_EXAMPLES=-3", "evaluate.max_examples must be an integer >= 1, got -3"),
        (
            "--gin.evaluate.evaluate.batch_size='abc'",
            "evaluate.batch_size must be an integer >= 1, got 'abc'",
        ),
        (
            "--gin.evaluate.evaluate.topp=1.5",
            "evaluate.topp must be a number in [0.0, 1.0], got 1.5",
        ),
        (
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 0, 'targets': 80}",
            "evaluate.task_feature_lengths['inputs']",
        ),
        ("--gin.EVAL_SPLIT='nosuch'", "has splits ['train', 'validation', 'test'], not 'nosuch'"),
        (
            "--gin.VOCAB_SIZE=512",
            "token_embedder/embedding: model shape (512, 64), checkpoint shape (384, 64)",
        ),
    ],
)
def test_evaluate_bad_argument_named_and_run_untouched(run_dir, binding, message, capfd):
    from iqlearn_jax import evaluate

    before = snapshot(run_dir)
    args = [
        "--gin_file=runs/evaluate_quickstart.gin",
        f"--gin.CHECKPOINT_PATH='{run_dir}'",
        binding,
    ]
    code, out = cli(args, capfd, main=evaluate.main, prog="iqlearn-evaluate")
    assert code == 2 and "iqlearn-evaluate: error:" in out and message in out, out[-3000:]
    assert "In call to configurable" not in out
    assert snapshot(run_dir) == before


# ---- the front door -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("module", ["train", "evaluate", "aot"])
def test_help_exits_zero_and_lists_the_project_flags(module, monkeypatch, capsys):
    import importlib

    cli_module = importlib.import_module(f"iqlearn_jax.{module}")
    monkeypatch.setattr(sys, "argv", [f"iqlearn-{module}", "--help"])
    assert cli_module.console_main() == 0
    out = capsys.readouterr().out
    for flag in ("--gin_file=FILE", "--gin.KEY=VALUE", "--gin_search_paths", "--list_macros"):
        assert flag in out, flag
    if module == "aot":
        assert "--topology" in out


def test_list_macros_prints_a_run_files_macros(monkeypatch, capsys):
    monkeypatch.setattr(
        sys, "argv", ["iqlearn-train", "--gin_file=runs/quickstart.gin", "--list_macros"]
    )
    try:
        assert train_lib.console_main() == 0
    finally:
        reset()
    out = capsys.readouterr().out
    assert "MODEL_DIR = '/tmp/iqlearn_quickstart'" in out and "BATCH_SIZE = 16" in out


@pytest.mark.slow
def test_no_libtpu_noise_on_a_machine_without_tpu():
    pytest.importorskip("libtpu")
    if any(os.path.exists(p) for p in ("/dev/accel0", "/dev/vfio/0")):
        pytest.skip("this machine has a TPU")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_PLATFORMS", "TPU_"))}
    env["ALLOW_MULTIPLE_LIBTPU_LOAD"] = (
        "1"  # else libtpu stays silent while another process holds its lock
    )
    code = "import jax; print(jax.devices()[0].platform)"
    # The CLI's order: the command's module (and so jax, which sets TPU_SKIP_MDS_QUERY) is imported first.
    quiet = (
        "import iqlearn_jax.train; from iqlearn_jax.gin_utils import quiet_tpu_probe; "
        "assert quiet_tpu_probe(); " + code
    )
    noisy = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    calm = subprocess.run(
        [sys.executable, "-c", quiet], env=env, capture_output=True, text=True, timeout=300
    )
    assert "unexpected worker hostname" in noisy.stderr  # the noise this guards against
    assert calm.returncode == 0 and calm.stdout.strip() in ("cpu", "gpu", "cuda")
    assert "worker hostname" not in calm.stderr and "TPU accelerator type" not in calm.stderr
