"""Online IQLearn and GAIL training subprocesses: SIGKILL mid-run + restart ends bit-identical to the uninterrupted
run (params of every network, optimizer states, step, RNG: sampling included). GAIL starts from the online run's
Orbax MODEL_DIR as initial checkpoint (all four networks filled from it)."""

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
TRAIN_STEPS = 6  # checkpoints at 2 and 4 (async); killed once step 5 has printed

pytestmark = pytest.mark.slow


def cmd(gin_file: str, model_dir: pathlib.Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "iqlearn_jax.train",
        f"--gin_file={gin_file}",
        f"--gin.MODEL_DIR='{model_dir}'",
        f"--gin.TRAIN_STEPS={TRAIN_STEPS}",
        "--gin.BATCH_SIZE=8",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 48, 'targets': 12}",
        "--gin.DROPOUT_RATE=0.1",
        "--gin.WARMUP_STEPS=2",
        "--gin.t5.T5Config.num_encoder_layers=1",
        "--gin.t5.T5Config.num_decoder_layers=1",
        "--gin.train.train.checkpoint_period=2",
        "--gin.train.train.log_period=1",
        "--gin.train.train.eval_split=None",
        *extra,
    ]  # fmt: skip


def env(cache: pathlib.Path) -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e["JAX_COMPILATION_CACHE_DIR"] = str(cache)  # the three runs of one algorithm compile once
    e["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    return e


def run_to_end(args: list[str], cache: pathlib.Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        args, cwd=REPO, env=env(cache), capture_output=True, text=True, timeout=1500
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def kill_after(args: list[str], marker: str, cache: pathlib.Path) -> None:
    err_path = cache.parent / f"stderr-{time.time_ns()}.log"
    with open(err_path, "w") as err:
        proc = subprocess.Popen(
            args, cwd=REPO, env=env(cache), stdout=subprocess.PIPE, stderr=err, text=True
        )
        seen, deadline = [], time.time() + 1500
        for line in proc.stdout:
            seen.append(line)
            if marker in line:
                proc.send_signal(signal.SIGKILL)
                break
            assert time.time() < deadline, "".join(seen)
        proc.communicate(timeout=300)
    stderr_tail = err_path.read_text()[-4000:]
    assert proc.returncode == -signal.SIGKILL, "".join(seen) + "\nstderr:\n" + stderr_tail


def state_at(model_dir: pathlib.Path, step: int = TRAIN_STEPS) -> dict:
    return ocp.StandardCheckpointer().restore(model_dir / "checkpoints" / str(step) / "state")


def check_resume(gin_file, tmp, cache, *extra):
    reference, killed = (
        tmp / f"{gin_file}-ref".replace("/", "_"),
        tmp / f"{gin_file}-kill".replace("/", "_"),
    )
    run_to_end(cmd(gin_file, reference, *extra), cache)
    kill_after(cmd(gin_file, killed, *extra), f"step      5/{TRAIN_STEPS}", cache)
    saved = sorted(int(p.name) for p in (killed / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and max(saved) < TRAIN_STEPS, saved
    proc = run_to_end(cmd(gin_file, killed, *extra), cache)
    assert f"steps: {max(saved)} -> {TRAIN_STEPS}" in proc.stdout, proc.stdout
    import jax

    ref, resumed = state_at(reference), state_at(killed)
    assert jax.tree.structure(ref) == jax.tree.structure(resumed)
    for x, y in zip(jax.tree.leaves(ref), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    return ref, reference


def test_sigkill_restart_exact_online_iqlearn_then_gail(tmp_path):
    cache = tmp_path / "jax_cache"
    online, online_dir = check_resume(
        "runs/quickstart_online.gin", tmp_path, cache, "--gin.ONLINE_ALPHA=0.3",
        "--gin.LAMBDA_WARMUP_STEPS=1",  # GAIL has no λ: its run files do not use this macro
    )  # fmt: skip
    assert set(online["params"]) >= {"encoder", "decoder"}  # offline params layout
    gail, _ = check_resume(
        "runs/quickstart_gail.gin", tmp_path, cache,
        f"--gin.train.train.initial_checkpoint_path='{online_dir}'",
        "--gin.GAIL_KL_ANNEAL_STEPS=3",
    )  # fmt: skip
    assert set(gail["params"]) == {"policy", "value", "discriminator", "reference"}
    assert set(gail["opt_state"]) == {"policy", "value", "discriminator"}
    import jax

    # The frozen reference is the imported checkpoint, untouched after the GAIL steps.
    for a, b in zip(
        jax.tree.leaves(online["params"]), jax.tree.leaves(gail["params"]["reference"]), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
