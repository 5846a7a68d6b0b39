"""gin and console conventions shared by the CLIs (train, evaluate, aot): T5X-style `--gin.KEY=VALUE`, the
repository's gin_configs/ on the search path, fail-fast checks of bindings and macros, `--help` (exit 0) and
`--list_macros`, and a quiet console (no libtpu probing noise on machines without a TPU).
"""

from __future__ import annotations

import difflib
import glob
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import gin
from absl import flags as _absl_flags

from iqlearn_jax.paths import GIN_CONFIGS_DIR

_LIST_MACROS = _absl_flags.DEFINE_bool(
    "list_macros",
    False,
    "print the gin macros of the given --gin_file/--gin.* and their values, then exit",
)


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


def _check_bound_macros_are_used(gin_bindings: Sequence[str]) -> None:
    """A macro set by a binding (`--gin.NAME=...`) must be referenced by the run's configuration: a typo such as
    `--gin.TRAIN_STEP=10` would otherwise be accepted and silently change nothing."""
    referenced = {
        macro
        for bindings in gin.config._CONFIG.values()  # noqa: SLF001
        for value in bindings.values()
        for macro in _macro_references(value)
    }
    defined = set(macros())
    for binding in gin_bindings:
        for line in str(binding).splitlines():
            match = re.match(r"\s*([A-Za-z_]\w*)\s*=", line)
            if not match or match.group(1) in referenced:
                continue
            name = match.group(1)
            close = difflib.get_close_matches(name, sorted(defined - {name}), n=3)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise ConfigError(
                f"--gin.{name}: macro {name} is not used by this run's gin files{hint} "
                "(--list_macros prints the run's macros)"
            )


def parse_gin(
    gin_files: Sequence[str],
    gin_bindings: Sequence[str],
    search_paths: Sequence[str] = (),
    check_macros: bool = True,
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
    if check_macros:
        _check_macros()
        _check_bound_macros_are_used(gin_bindings)


def macros() -> dict[str, Any]:
    """{name: value} of every gin macro bound so far (gin.REQUIRED where a file marks it required)."""
    out = {}
    for (scope, selector), bindings in gin.config._CONFIG.items():  # noqa: SLF001
        if selector == "gin.macro" and "value" in bindings:
            out[scope] = bindings["value"]
    return dict(sorted(out.items()))


def format_macros(values: Mapping[str, Any]) -> str:
    """One line per macro, `NAME = value` in gin syntax; required ones say how to set them."""
    lines = []
    for name, value in values.items():
        required = value is gin.REQUIRED or (
            isinstance(value, gin.config.ConfigurableReference)
            and value.scoped_selector.split("/")[0] == "gin.REQUIRED"
        )
        if required:
            lines.append(f"{name} = %gin.REQUIRED    # set it: --gin.{name}=...")
        elif isinstance(value, gin.config.ConfigurableReference):
            lines.append(f"{name} = @{value.scoped_selector}{'()' if value.evaluate else ''}")
        else:
            lines.append(f"{name} = {value!r}")
    return "\n".join(lines)


_QUIET_INFO_SOURCES = ("/orbax/", "/seqio/", "/clu/", "xla_bridge.py", "functional_saver.py")


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


# ---- console front door ---------------------------------------------------------------------------------------
_HELP_FLAGS = ("--help", "-h", "--helpshort", "-?", "--helpfull")
# Any of these set means a real TPU VM or an explicit choice: leave libtpu's configuration alone. (Not
# TPU_SKIP_MDS_QUERY: `import jax` itself sets it to 1 on a machine without TPU chips.)
_TPU_ENV = ("TPU_WORKER_HOSTNAMES", "TPU_ACCELERATOR_TYPE", "TPU_HOST_BOUNDS")


def quiet_tpu_probe() -> bool:
    """On a machine without TPU chips, stops an installed libtpu from printing its probing errors
    ("unexpected worker hostname", "could not determine TPU accelerator type") when JAX starts.

    Sets TPU_SKIP_MDS_QUERY=1, TPU_WORKER_HOSTNAMES=localhost and TPU_HOST_BOUNDS=1,1,1 — only when no TPU chip is
    present and neither TPU_WORKER_HOSTNAMES, TPU_ACCELERATOR_TYPE nor TPU_HOST_BOUNDS is set (a real TPU VM, or an
    explicit setting, is left alone). libtpu then finds no chip quietly and JAX uses the GPU or CPU. Must run
    before JAX's backends start (after `import jax` is fine). Returns True if set.
    """
    if any(name in os.environ for name in _TPU_ENV):
        return False
    try:
        from jax._src import hardware_utils

        chips = hardware_utils.num_available_tpu_chips_and_device_id()[0]
    except Exception:  # noqa: BLE001 - private JAX helper moved: look for the TPU device files instead
        chips = len(glob.glob("/dev/accel*")) + len(glob.glob("/dev/vfio/[0-9]*"))
    if chips:
        return False
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.update(TPU_WORKER_HOSTNAMES="localhost", TPU_HOST_BOUNDS="1,1,1")
    return True


def _flag_lines(module_names: Sequence[str]) -> list[str]:
    from absl import flags

    lines, seen = [], set()
    for module in module_names:
        for flag in flags.FLAGS.get_flags_for_module(module):
            if flag.name in seen:
                continue
            seen.add(flag.name)
            default = "" if flag.default in (None, [], "") else f" (default: {flag.default})"
            lines.append(f"  --{flag.name}: {flag.help}{default}")
    return lines


def cli_help(main: Callable[..., int], prog: str) -> str:
    """`--help` text: the command's docstring, its flags, the gin flags and how to list a run file's macros."""
    module = sys.modules.get(main.__module__)
    doc = (getattr(module, "__doc__", None) or "").strip()
    own = _flag_lines([main.__module__]) if main.__module__ != "iqlearn_jax.train" else []
    runs = sorted(
        os.path.relpath(p, GIN_CONFIGS_DIR)
        for p in glob.glob(str(GIN_CONFIGS_DIR / "runs" / "*.gin"))
    )
    parts = [
        f"usage: {prog} --gin_file=FILE [--gin_file=FILE ...] [--gin.KEY=VALUE ...] [flags]",
        doc + "\n",
        "gin flags (T5X conventions):",
        "  --gin_file=FILE: a gin file to parse; repeatable, later files override earlier ones. Relative names are",
        f"    looked up in --gin_search_paths and in {GIN_CONFIGS_DIR} (e.g. {', '.join(runs) or 'runs/quickstart.gin'})",
        "  --gin.KEY=VALUE: one binding, e.g. --gin.MODEL_DIR=\"'/tmp/run'\" --gin.BATCH_SIZE=8 (strings in quotes)",
        "  --gin_bindings='KEY = VALUE': the same, in gin's own form; repeatable",
        "  --gin_search_paths=DIR,...: more directories for gin files and their includes",
        "  --list_macros: with --gin_file/--gin.*: print every gin macro the run defines (MODEL_DIR, BATCH_SIZE, ...)",
        "    and its value, then exit 0; any of them can be set with --gin.NAME=VALUE",
    ]
    if own:
        parts += ["flags of this command:", *own]
    parts.append("  --help: this text; --helpfull: also absl's own flags")
    if "exit status" not in doc.lower():
        parts.append("exit status: 0 done, 2 bad input (named in the message), 1 other errors")
    return "\n".join(parts)


def _list_macros() -> int:
    from absl import flags

    values = flags.FLAGS
    try:
        parse_gin(values.gin_file, values.gin_bindings, values.gin_search_paths, check_macros=False)
    except ConfigError as e:
        print(f"error: {strip_gin_context(e)}", file=sys.stderr)
        return 2
    print(format_macros(macros()), flush=True)
    return 0


def run_cli(main: Callable[[Sequence[str]], int], quiet_tpu: bool = True) -> int:
    """Runs `main(argv)` under absl (flags parsed, `--gin.KEY=VALUE` rewritten) and returns its exit status.

    `--help` prints `cli_help` and returns 0; `--list_macros` prints the run's gin macros and returns 0;
    `quiet_tpu` applies `quiet_tpu_probe` (the aot CLI configures libtpu itself).
    """
    from absl import app, flags

    argv = rewrite_gin_args(sys.argv)
    if any(arg in _HELP_FLAGS for arg in argv[1:]):
        prog = os.path.basename(argv[0])
        prog = f"python -m {main.__module__}" if prog.endswith(".py") else prog
        print(cli_help(main, prog), flush=True)
        if "--helpfull" in argv[1:]:
            print("\nall flags:\n" + flags.FLAGS.get_help(), flush=True)
        return 0
    if quiet_tpu:
        quiet_tpu_probe()
    exit_code = 0

    def run(args: Sequence[str]) -> None:
        nonlocal exit_code
        exit_code = _list_macros() if _LIST_MACROS.value else main(args)

    try:
        app.run(run, argv=argv)
    except SystemExit as error:
        if error.code not in (None, 0):
            raise
    return exit_code
