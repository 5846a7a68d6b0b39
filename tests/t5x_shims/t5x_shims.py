"""The two run-time shims the vendored T5X needs on this project's JAX (see README.md in this folder).

- `install()`: adds an import hook that, the first time `jestimator` is imported, aliases
  `jax.experimental.pjit.PartitionSpec` to `jax.sharding.PartitionSpec` (jestimator 0.3.3 still imports the old name).
  The `airio` stand-in needs no code: it is the `airio/` package beside this file, found when this folder is on the path.
- `activate()`: for in-process use (tests): puts this folder on `sys.path`, then `install()`.
- `subprocess_env(env)`: a copy of `env` with this folder first on PYTHONPATH, for `python -m t5x.train` and friends.
- `unavailable_reason()`: why T5X cannot be used here (for pytest.skip), or None.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import pathlib
import sys
from collections.abc import Mapping

SHIMS_DIR = pathlib.Path(__file__).resolve().parent
# The vendored T5X source (read-only; tests/install_test_extras.sh installs a copy of it into the venv).
VENDORED_T5X = pathlib.Path(
    os.environ.get("IQLEARN_VENDORED_T5X", SHIMS_DIR.parents[2] / "shared" / "vendor" / "t5x")
)


def _alias_partition_spec() -> None:
    import jax.experimental.pjit as pjit_module
    import jax.sharding

    if not hasattr(pjit_module, "PartitionSpec"):
        pjit_module.PartitionSpec = jax.sharding.PartitionSpec


class _AliasBeforeJestimator(importlib.abc.MetaPathFinder):
    """Applies the PartitionSpec alias just before `jestimator` is first imported, then steps aside."""

    def find_spec(self, fullname, path, target=None):  # noqa: D102 - importlib protocol
        if fullname == "jestimator":
            _alias_partition_spec()
        return None  # the normal finders import the module


def install() -> None:
    """Switches the PartitionSpec alias on (idempotent; imports nothing until jestimator is imported)."""
    if "jestimator" in sys.modules:
        _alias_partition_spec()
    elif not any(isinstance(finder, _AliasBeforeJestimator) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AliasBeforeJestimator())


def activate() -> None:
    """In-process: makes the `airio` stand-in importable and installs the alias hook."""
    if str(SHIMS_DIR) not in sys.path:
        sys.path.insert(0, str(SHIMS_DIR))
    install()


def subprocess_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """`env` (default os.environ) with this folder first on PYTHONPATH, so a child Python runs sitecustomize.py."""
    out = dict(os.environ if env is None else env)
    out["PYTHONPATH"] = os.pathsep.join(p for p in (str(SHIMS_DIR), out.get("PYTHONPATH", "")) if p)
    return out


def unavailable_reason() -> str | None:
    """None when t5x is installed; else why not (a skip reason). A t5x that is installed but fails to import is
    not 'unavailable': the tests then fail, as they should."""
    if importlib.util.find_spec("t5x") is not None:
        return None
    if not (VENDORED_T5X / "t5x" / "train.py").is_file():
        return (
            f"t5x is not installed and the vendored copy {VENDORED_T5X} is absent "
            "(on a connected machine: pip install -e '.[t5x]')"
        )
    return f"t5x is not installed: run `bash tests/install_test_extras.sh .venv` (installs it from {VENDORED_T5X})"
