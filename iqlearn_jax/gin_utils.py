"""gin and console conventions shared by the CLIs (train, aot): T5X-style `--gin.KEY=VALUE`, the repository's
gin_configs/ on the search path, fail-fast checks of bindings and macros, and a quiet console.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import gin

from iqlearn_jax.paths import GIN_CONFIGS_DIR


class ConfigError(ValueError):
    """Bad user input (configuration, task, MODEL_DIR, initial checkpoint): exit status 2."""


def default_gin_search_paths() -> list[str]:
    """The repository's gin_configs/ (beside the package; installs are editable)."""
    return [str(GIN_CONFIGS_DIR)] if GIN_CONFIGS_DIR.is_dir() else []


def rewrite_gin_args(argv: Sequence[str]) -> list[str]:
    """`--gin.KEY=VALUE` → `--gin_bindings=KEY = VALUE` (T5X's convention)."""
    out = []
    for arg in argv:
        if arg.startswith("--gin.") and "=" in arg:
            key, value = arg[len("--gin.") :].split("=", 1)
            out.append(f"--gin_bindings={key} = {value}")
        else:
            out.append(arg)
    return out


def _macro_references(value: Any) -> Iterator[str]:
    if isinstance(value, gin.config.ConfigurableReference):
        if value.configurable.wrapped is gin.config.macro:
            yield value.scoped_selector.rsplit("/", 1)[0]
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _macro_references(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _macro_references(v)


def _check_macros() -> None:
    """Every macro referenced is defined and not %gin.REQUIRED (gin itself only fails on first use)."""
    missing, required = set(), set()
    for _, bindings in gin.config._CONFIG.items():  # noqa: SLF001 - gin offers no public walk
        for value in bindings.values():
            for macro in _macro_references(value):
                try:
                    bound = gin.query_parameter(f"%{macro}")
                except ValueError:
                    missing.add(macro)
                    continue
                if bound is gin.REQUIRED or (
                    isinstance(bound, gin.config.ConfigurableReference)
                    and bound.scoped_selector.split("/")[0] == "gin.REQUIRED"
                ):
                    required.add(macro)
    problems = [f"macro {m} is referenced but never defined" for m in sorted(missing)]
    problems += [f"macro {m} is required" for m in sorted(required)]
    if problems:
        hint = ", ".join(f"--gin.{m}=..." for m in sorted(missing | required))
        raise ConfigError("; ".join(problems) + f" (set it with {hint})")


def parse_gin(
    gin_files: Sequence[str], gin_bindings: Sequence[str], search_paths: Sequence[str] = ()
) -> None:
    """Parses gin files and bindings; unknown configurables/parameters and missing macros raise ConfigError."""
    import logging as py_logging

    # gin probes each include on the plain filesystem first and logs a misleading "Path not found" error.
    py_logging.getLogger().addFilter(lambda r: not r.pathname.endswith("resource_reader.py"))
    for path in [*search_paths, *default_gin_search_paths()]:
        gin.add_config_file_search_path(path)
    import iqlearn_jax.tasks  # noqa: F401 - registers tasks and their gin configurables
    from iqlearn_jax import models, objectives  # noqa: F401 - gin configurables

    if not gin_files and not gin_bindings:
        raise ConfigError("no --gin_file given (try --gin_file=runs/quickstart.gin)")
    try:
        gin.parse_config_files_and_bindings(gin_files, gin_bindings, finalize_config=False)
    except OSError as e:
        raise ConfigError(
            f"gin file not found: {e} (search path: {list(search_paths) + default_gin_search_paths()})"
        ) from e
    except (ValueError, KeyError, SyntaxError, ImportError) as e:
        raise ConfigError(f"bad gin configuration: {e}") from e
    _check_macros()


_QUIET_INFO_SOURCES = ("/orbax/", "/seqio/", "/clu/", "xla_bridge.py")


def quiet_info(record: Any) -> bool:
    """Drops INFO chatter of orbax/seqio/clu from the console; warnings and errors stay, except SeqIO's
    "uncached FunctionDataset" advice (the loop restores its data position by skipping, not by reshuffling)."""
    import logging as py_logging

    if str(record.msg).startswith("Using an uncached FunctionDataset"):
        return False
    return record.levelno > py_logging.INFO or not any(
        s in record.pathname for s in _QUIET_INFO_SOURCES
    )


def strip_gin_context(e: Exception) -> str:
    """The message without gin's appended "In call to configurable ..." line."""
    return str(e).split("\n  In call to configurable")[0]


def run_cli(main: Callable[[Sequence[str]], int]) -> int:
    """Runs `main(argv)` under absl (flags parsed, `--gin.KEY=VALUE` rewritten) and returns its exit status."""
    from absl import app

    exit_code = 0

    def run(args: Sequence[str]) -> None:
        nonlocal exit_code
        exit_code = main(args)

    try:
        app.run(run, argv=rewrite_gin_args(sys.argv))
    except SystemExit as error:
        if error.code not in (None, 0):
            raise
    return exit_code
