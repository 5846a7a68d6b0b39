"""Bad input stops `iqlearn-train` with a message naming the problem, before MODEL_DIR is touched."""

import hashlib
import os
import pathlib
import subprocess
import sys

import gin
import numpy as np
import orbax.checkpoint as ocp
import pytest
from absl import flags

from iqlearn_jax import train as train_lib

REPO = pathlib.Path(__file__).resolve().parent.parent


def cli(args, capsys):
    """Runs the CLI's main() in-process (same code path as the console script, minus interpreter start-up)."""
    gin.clear_config()
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["iqlearn-train", *train_lib.rewrite_gin_args(args)])
    try:
        code = train_lib.main(["iqlearn-train"])
    finally:
        gin.clear_config()
        flags.FLAGS.unparse_flags()
    return code, capsys.readouterr().err


def snapshot(folder: pathlib.Path) -> dict:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        if p.is_file()
        else "dir"
        for p in sorted(folder.rglob("*"))
    }


QUICK = ["--gin_file=runs/quickstart.gin", "--gin.TRAIN_STEPS=1", "--gin.BATCH_SIZE=8"]


def test_unknown_binding_exits_nonzero_subprocess(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-m", "iqlearn_jax.train", *QUICK, f"--gin.MODEL_DIR='{tmp_path}'", "--gin.train.train.no_such_option=3"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "no_such_option" in proc.stderr and "iqlearn-train: error" in proc.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "binding,expected",
    [
        ("--gin.nosuch_thing.value=1", "No configurable matching 'nosuch_thing'"),
        ("--gin.optimizers.adamw.beta_one=0.9", "beta_one"),
    ],
)
def test_unknown_bindings(binding, expected, tmp_path, capsys):
    code, err = cli([*QUICK, f"--gin.MODEL_DIR='{tmp_path}'", binding], capsys)
    assert code == 2 and expected in err
    assert list(tmp_path.iterdir()) == []


def test_missing_required_macro(capsys):
    args = [
        "--gin_file=models/t5_1_1_tiny.gin",
        "--gin_file=runs/finetune.gin",
        "--gin_file=objectives/mle.gin",
        "--gin_file=tasks/synthetic_arithmetic.gin",
    ]
    code, err = cli(args, capsys)
    assert code == 2 and "macro MODEL_DIR is required" in err and "--gin.MODEL_DIR=" in err


def test_unknown_task(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("keep me")
    before = snapshot(tmp_path)
    code, err = cli(
        [*QUICK, f"--gin.MODEL_DIR='{tmp_path}'", "--gin.MIXTURE_OR_TASK_NAME='no_such_task'"],
        capsys,
    )
    assert code == 2 and "unknown task or mixture 'no_such_task'" in err
    assert snapshot(tmp_path) == before


def test_unwritable_model_dir(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code, err = cli([*QUICK, f"--gin.MODEL_DIR='{blocker / 'run'}'"], capsys)
    assert code == 2 and "is not writable" in err and str(blocker / "run") in err
    if os.geteuid() != 0:  # root ignores permission bits
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        code, err = cli([*QUICK, f"--gin.MODEL_DIR='{locked / 'run'}'"], capsys)
        assert code == 2 and "is not writable" in err


def test_initial_checkpoint_that_does_not_match(tmp_path, capsys):
    # An Orbax checkpoint in this project's layout, but of a model with another width.
    wrong = tmp_path / "wrong" / "checkpoints" / "5" / "state"
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(
        wrong, {"params": {"token_embedder": {"embedding": np.zeros((384, 32), np.float32)}}}
    )
    checkpointer.wait_until_finished()
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    (model_dir / "notes.txt").write_text("keep me")
    before = snapshot(model_dir)
    code, err = cli(
        [
            *QUICK,
            f"--gin.MODEL_DIR='{model_dir}'",
            f"--gin.train.train.initial_checkpoint_path='{tmp_path / 'wrong'}'",
        ],
        capsys,
    )
    assert code == 2, err
    assert "does not match the model" in err
    assert "token_embedder/embedding: model shape (384, 64), checkpoint shape (384, 32)" in err
    assert "missing parameter decoder/" in err
    assert snapshot(model_dir) == before


def test_gin_args_rewrite():
    assert train_lib.rewrite_gin_args(["p", "--gin.A.b=3", "--gin_file=x.gin"]) == [
        "p",
        "--gin_bindings=A.b = 3",
        "--gin_file=x.gin",
    ]
