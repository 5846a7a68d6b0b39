r"""Expand an objective × λ × seed sweep (an ml_collections config file) into iqlearn_jax.train commands.

    python launch/sweep.py --config=launch/sweeps/xsum_t5_base.py --model_dir_root=gs://BUCKET/xsum   # print
    python launch/sweep.py --config=launch/sweeps/quickstart_lambda.py --model_dir_root=/tmp/sw --run  # run here

A sweep config defines `name`, `gin_files` (searched in gin_configs/), `bindings` (gin macros for every run),
`seeds`, and `arms`: a list of {objective, macro, values}, one run per value and seed; `objective` picks
gin_configs/objectives/<objective>.gin and `macro` is the gin macro the value binds (e.g. IQLEARN_LAMBDA).
Each run writes to <model_dir_root>/<objective>/<macro>=<value>/seed_<seed>; iqlearn_jax.report groups runs by the
objective, λ and seed recorded in each run's config. Printed commands can be handed to launch/tpu_vm.sh train.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Sequence

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "sweep definition (a Python file with get_config())"
)
_MODEL_DIR_ROOT = flags.DEFINE_string(
    "model_dir_root", None, "folder (local or gs://) receiving one dir per run"
)
_RUN = flags.DEFINE_bool(
    "run", False, "run the commands here, one after another, instead of printing them"
)


def _gin_literal(value: object) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def expand(config, model_dir_root: str) -> list[list[str]]:
    """The train command (argv) of every run of the sweep, in a stable order."""
    if not config.get("arms"):
        raise ValueError(
            "sweep config has no 'arms': expected a list of {objective, macro, values}"
        )
    commands = []
    for arm in config.arms:
        objective = arm["objective"]
        macro = arm.get("macro")
        for value in arm["values"]:
            if value is not None and not macro:
                raise ValueError(
                    f"arm {objective!r} has values {list(arm['values'])} but no 'macro' to bind them"
                )
            for seed in config.seeds:
                label = "default" if value is None else f"{macro}={value}"
                model_dir = f"{model_dir_root.rstrip('/')}/{objective}/{label}/seed_{seed}"
                argv = [sys.executable, "-m", "iqlearn_jax.train"]
                argv += [f"--gin_file={path}" for path in config.gin_files]
                argv.append(f"--gin_file=objectives/{objective}.gin")
                for key, bound in sorted(dict(config.get("bindings", {})).items()):
                    argv.append(f"--gin.{key}={_gin_literal(bound)}")
                if value is not None:
                    argv.append(f"--gin.{macro}={_gin_literal(value)}")
                argv.append(f"--gin.SEED={seed}")
                argv.append(f"--gin.MODEL_DIR={model_dir!r}")
                commands.append(argv)
    return commands


def main(argv: Sequence[str]) -> int:
    del argv
    if _MODEL_DIR_ROOT.value is None:
        raise app.UsageError("--model_dir_root is required")
    commands = expand(_CONFIG.value, _MODEL_DIR_ROOT.value)
    for command in commands:
        print(shlex.join(command), flush=True)
        if _RUN.value:
            status = subprocess.call(command)
            if status != 0:
                print(f"run failed with exit status {status}: stopping the sweep", file=sys.stderr)
                return status
    return 0


def _print_help() -> None:
    """`--help`: the module's docstring and this command's flags, exit status 0 (absl's own `--help` exits 1)."""
    print(__doc__)
    print("flags:")
    print(flags.FLAGS.module_help(sys.modules[__name__]))


if __name__ == "__main__":
    if any(arg in ("-h", "--help", "--helpshort", "--helpfull") for arg in sys.argv[1:]):
        _print_help()
        sys.exit(0)
    flags.mark_flag_as_required("config")
    app.run(main)
