"""launch/: the sweep expands into train commands whose gin configuration parses; the TPU VM script's dry run."""

from __future__ import annotations

import functools
import importlib.util
import os
import subprocess
import sys

import gin
import pytest
from conftest import REPO_ROOT


@functools.cache
def _load_sweep_module():
    """Loaded once: the module defines absl flags."""
    spec = importlib.util.spec_from_file_location("sweep", REPO_ROOT / "launch" / "sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load_config(name: str):
    spec = importlib.util.spec_from_file_location(
        name, REPO_ROOT / "launch" / "sweeps" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.mark.parametrize("name, expected_runs", [("xsum_t5_base", 21), ("quickstart_lambda", 6)])
def test_sweep_expands_into_runs_whose_gin_parses(name, expected_runs):
    sweep = _load_sweep_module()
    commands = sweep.expand(_load_config(name), "/tmp/sweep_root")
    assert len(commands) == expected_runs
    model_dirs = [
        arg for command in commands for arg in command if arg.startswith("--gin.MODEL_DIR=")
    ]
    assert len(set(model_dirs)) == expected_runs  # one folder per run
    import iqlearn_jax.train  # noqa: F401  (registers the configurables the run files bind)

    gin_dir = str(REPO_ROOT / "gin_configs")
    for command in (commands[0], commands[-1]):
        files = [arg.split("=", 1)[1] for arg in command if arg.startswith("--gin_file=")]
        bindings = [
            arg[len("--gin.") :].replace("=", " = ", 1)
            for arg in command
            if arg.startswith("--gin.")
        ]
        gin.clear_config()
        try:
            gin.add_config_file_search_path(gin_dir)
            gin.parse_config_files_and_bindings(files, bindings, skip_unknown=False)
            assert gin.query_parameter("%SEED") == int(command[-2].split("=")[1])
        finally:
            gin.clear_config()


def test_sweep_refuses_values_without_a_macro():
    sweep = _load_sweep_module()
    config = _load_config("quickstart_lambda")
    config.arms = [{"objective": "iqlearn", "values": [0.1]}]
    with pytest.raises(ValueError, match="macro"):
        sweep.expand(config, "/tmp/x")


def test_tpu_vm_script_dry_run_targets_all_workers():
    env = dict(
        os.environ, DRY_RUN="1", TPU_NAME="iq", ZONE="us-central2-b", ACCELERATOR_TYPE="v4-32"
    )
    script = str(REPO_ROOT / "launch" / "tpu_vm.sh")
    create = subprocess.run([script, "create"], env=env, capture_output=True, text=True, check=True)
    assert "tpu-vm create iq" in create.stdout and "--accelerator-type=v4-32" in create.stdout
    train = subprocess.run(
        [script, "train", "--gin_file=runs/finetune.gin"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--worker=all" in train.stdout and "iqlearn_jax.train" in train.stdout
    assert "IQLEARN_DISTRIBUTED=1" in train.stdout  # every worker joins the pod (distributed.py)
    bad = subprocess.run([script, "launch"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown step" in bad.stderr
    missing = subprocess.run(
        [script, "create"],
        env={"PATH": env["PATH"], "DRY_RUN": "1"},
        capture_output=True,
        text=True,
    )
    assert missing.returncode != 0 and "TPU_NAME" in missing.stderr


@pytest.mark.parametrize(
    "command, expected_flag",
    [
        (["launch/sweep.py"], "--model_dir_root"),
        (["launch/prepare_data.py"], "--max_examples"),
        (["-m", "iqlearn_jax.report"], "--output_dir"),
    ],
)
def test_script_help_exits_zero_and_lists_its_flags(command, expected_flag):
    result = subprocess.run(
        [sys.executable, *command, "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert expected_flag in result.stdout
