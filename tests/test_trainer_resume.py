"""Training subprocesses: SIGKILL + restart (at two kill points, the data position restored from the checkpoint's
iterator state) and SIGTERM + restart end with the uninterrupted run's exact params;
a damaged newest checkpoint is skipped with a warning in favour of the previous one."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
TRAIN_STEPS = 10

pytestmark = pytest.mark.slow


def cmd(model_dir: pathlib.Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "iqlearn_jax.train",
        "--gin_file=runs/quickstart.gin",
        f"--gin.MODEL_DIR='{model_dir}'",
        f"--gin.TRAIN_STEPS={TRAIN_STEPS}",
        "--gin.BATCH_SIZE=8",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 48, 'targets': 32}",
        "--gin.DROPOUT_RATE=0.1",  # exercises the restored RNG
        "--gin.LAMBDA_WARMUP_STEPS=3",  # and the step-dependent λ schedule
        "--gin.WARMUP_STEPS=4",
        "--gin.t5.T5Config.num_encoder_layers=1",
        "--gin.t5.T5Config.num_decoder_layers=1",
        "--gin.train.train.checkpoint_period=2",
        "--gin.train.train.log_period=1",
        "--gin.train.train.eval_batches=1",
        *extra,
    ]


def env():
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def run_to_end(model_dir: pathlib.Path, *extra: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        cmd(model_dir, *extra), cwd=REPO, env=env(), capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def run_until(model_dir: pathlib.Path, marker: str, sig: int, *extra: str) -> tuple[int, str]:
    """Starts a run, sends `sig` once stdout shows `marker`; returns (exit code, stdout)."""
    proc = subprocess.Popen(
        cmd(model_dir, *extra),
        cwd=REPO,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    seen = []
    deadline = time.time() + 600  # generous: a loaded 2-core machine compiles slowly
    for line in proc.stdout:
        seen.append(line)
        if marker in line:
            proc.send_signal(sig)
            break
        assert time.time() < deadline, "".join(seen)
    rest, _ = proc.communicate(timeout=300)
    return proc.returncode, "".join(seen) + rest


def final_state(model_dir: pathlib.Path, step: int = TRAIN_STEPS) -> dict:
    return ocp.StandardCheckpointer().restore(model_dir / "checkpoints" / str(step) / "state")


def assert_identical(a: dict, b: dict) -> None:
    import jax

    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> pathlib.Path:
    model_dir = tmp_path_factory.mktemp("reference")
    proc = run_to_end(model_dir)
    assert "==== iqlearn_jax training summary ====" in proc.stdout
    return model_dir


@pytest.mark.parametrize(
    "kill_at, extra",
    [(7, ()), (6, ("--gin.train.train.log_period=3",))],  # the second with steps in flight
    ids=["step7", "step6-in-flight"],
)
def test_sigkill_then_restart_is_exact(reference, tmp_path, kill_at, extra):
    """SIGKILL, restart: the data position comes from the checkpoint's 'data' item (tf.data iterator state, no
    replay of consumed batches) and the run ends bit-identical to the uninterrupted reference."""
    code, out = run_until(tmp_path, f"step {kill_at:>6d}/{TRAIN_STEPS}", signal.SIGKILL, *extra)
    assert code == -signal.SIGKILL, out
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert steps and max(steps) < TRAIN_STEPS
    data = tmp_path / "checkpoints" / str(max(steps)) / "data" / "process_0-of-1"
    assert (data / "batches").read_text() == str(max(steps)) and list(data.glob("iterator*"))
    proc = run_to_end(tmp_path, *extra)
    assert f"steps: {max(steps)} -> {TRAIN_STEPS}" in proc.stdout, (
        steps,
        proc.stdout,
        proc.stderr[-3000:],
    )
    assert "replaying" not in proc.stderr  # the iterator state was restored, nothing re-read
    ref, resumed = final_state(reference), final_state(tmp_path)
    assert int(ref["step"]) == int(resumed["step"]) == TRAIN_STEPS
    assert_identical(ref, resumed)  # step, params, optimizer state, rng


def test_sigterm_saves_exits_zero_then_damaged_newest_is_skipped(reference, tmp_path):
    """SIGTERM: checkpoint + exit 0. Then the newest checkpoint is damaged (its array files truncated): the
    restart warns, moves it aside, resumes from the previous one and still ends exactly like the reference."""
    code, out = run_until(tmp_path, f"step      3/{TRAIN_STEPS}", signal.SIGTERM)
    assert code == 0, out
    assert "(stopped by SIGTERM)" in out
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert len(steps) >= 2 and 3 <= steps[-1] < TRAIN_STEPS
    assert int(final_state(tmp_path, steps[-1])["step"]) == steps[-1]

    newest = tmp_path / "checkpoints" / str(steps[-1])
    for f in (newest / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"")
    proc = run_to_end(tmp_path)
    assert f"checkpoint at step {steps[-1]}" in proc.stderr and "damaged" in proc.stderr
    assert f"steps: {steps[-2]} -> {TRAIN_STEPS}" in proc.stdout
    assert list((tmp_path / "checkpoints_damaged").iterdir())  # moved aside, not deleted
    assert_identical(final_state(reference), final_state(tmp_path))
