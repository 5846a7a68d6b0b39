"""Initial checkpoints of a run: params only (optimizer state fresh, step 0), from any format this project reads.

`detect_format(path)` names the format of a path — this project's Orbax MODEL_DIR (or one of its step folders), a
T5X checkpoint, a Hugging Face T5 or Llama-family directory, or a `.gguf` file — and `load_initial_params` reads its
params, checks their names and shapes against the model's (`check_params_match`) and places them with the run's
shardings. Resuming a run's own checkpoints is `manager.TrainCheckpointManager`'s job.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping
from typing import Any

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp

from iqlearn_jax.checkpoints.manager import (
    CHECKPOINTS_SUBDIR,
    CheckpointFormatError,
    CheckpointMismatchError,
)
from iqlearn_jax.gin_utils import ConfigError


def _children(p: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p.iterdir()) if p.is_dir() else []


def _is_hf(p: pathlib.Path) -> bool:
    return p.is_dir() and (p / "config.json").is_file() and any(p.glob("*.safetensors"))


def _is_orbax(p: pathlib.Path) -> bool:
    if not p.is_dir():
        return False
    if (p / CHECKPOINTS_SUBDIR).is_dir() or ((p / "state").is_dir() and (p / "meta").is_dir()):
        return True
    return any(c.name.isdigit() and (c / "state").is_dir() for c in _children(p))


def _is_t5x(p: pathlib.Path) -> bool:
    if p.is_file():
        return p.name == "checkpoint"
    if not p.is_dir():
        return False
    markers = ("checkpoint", "state", "_METADATA", "_CHECKPOINT_METADATA")
    return any((p / m).exists() for m in markers) or any(
        c.is_dir() and c.name.startswith("checkpoint_") and c.name[len("checkpoint_") :].isdigit()
        for c in _children(p)
    )


# Initial-checkpoint formats, tried in order: (name, what it looks like, predicate). Extend by appending.
INITIAL_CHECKPOINT_FORMATS: list[tuple[str, str, Any]] = [
    ("hf", "a directory holding config.json and *.safetensors (Hugging Face)", _is_hf),
    (
        "orbax",
        "a directory holding checkpoints/<step>/state, <step>/state or state/ + meta/ "
        "(this project's Orbax MODEL_DIR)",
        _is_orbax,
    ),
    (
        "t5x",
        "a T5X checkpoint: a checkpoint_<step>/ directory holding the msgpack file 'checkpoint' (legacy) or "
        "state/ (Orbax), or a directory of checkpoint_<step>/ directories",
        _is_t5x,
    ),
    (
        "gguf",
        "a .gguf file (llama.cpp; llama architecture)",
        lambda p: p.is_file() and p.suffix == ".gguf",
    ),
]


def _describe(p: pathlib.Path) -> str:
    if p.is_file():
        return f"is a regular file ({p.stat().st_size} bytes)"
    if p.is_dir():
        names = [c.name + ("/" if c.is_dir() else "") for c in _children(p)]
        if not names:
            return "is an empty directory"
        shown = ", ".join(names[:8]) + (f", ... ({len(names)} entries)" if len(names) > 8 else "")
        return f"is a directory holding {shown}"
    return "is neither a file nor a directory"


def detect_format(path: str | os.PathLike) -> str:
    """Name of the first INITIAL_CHECKPOINT_FORMATS entry whose predicate accepts `path`.

    Raises FileNotFoundError when the path does not exist and CheckpointFormatError (saying what was found and
    what was expected) when no format matches.
    """
    p = pathlib.Path(path)
    expected = "; or ".join(f"{name}: {what}" for name, what, _ in INITIAL_CHECKPOINT_FORMATS)
    if not p.exists():
        raise FileNotFoundError(
            f"initial checkpoint path {str(p)!r} does not exist; expected one of: {expected}"
        )
    for name, _, accepts in INITIAL_CHECKPOINT_FORMATS:
        if accepts(p):
            return name
    raise CheckpointFormatError(
        f"initial checkpoint path {str(p)!r} {_describe(p)}; expected one of: {expected} "
        "(train.initial_checkpoint_format forces a format)"
    )


def _orbax_state_dir(path: pathlib.Path) -> pathlib.Path:
    if (path / "state").is_dir():
        return path / "state"
    root = path / CHECKPOINTS_SUBDIR if (path / CHECKPOINTS_SUBDIR).is_dir() else path
    steps = sorted(
        int(c.name) for c in root.iterdir() if c.name.isdigit() and (c / "state").is_dir()
    )
    if not steps:
        raise FileNotFoundError(f"no Orbax checkpoint (<step>/state) under {str(path)!r}")
    return root / str(steps[-1]) / "state"


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    out = {}
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}/{k}" if prefix else str(k)))
    else:
        out[prefix] = tree
    return out


def check_params_match(params: Any, abstract_params: Any, source: str) -> None:
    """Raises CheckpointMismatchError naming missing / unexpected parameters and shape mismatches."""
    expected = {
        k: tuple(v.shape)
        for k, v in _flatten(flax.serialization.to_state_dict(abstract_params)).items()
    }
    found = {
        k: tuple(np.shape(v)) for k, v in _flatten(flax.serialization.to_state_dict(params)).items()
    }
    problems = [
        f"parameter {k}: model shape {expected[k]}, checkpoint shape {found[k]}"
        for k in sorted(expected.keys() & found.keys())
        if expected[k] != found[k]
    ]
    problems += [
        f"missing parameter {k} (model shape {expected[k]})"
        for k in sorted(expected.keys() - found.keys())
    ]
    problems += [
        f"unexpected parameter {k} (shape {found[k]})"
        for k in sorted(found.keys() - expected.keys())
    ]
    if problems:
        more = f"\n  ... and {len(problems) - 15} more" if len(problems) > 15 else ""
        raise CheckpointMismatchError(
            f"initial checkpoint {source!r} does not match the model ({len(problems)} problems):\n  "
            + "\n  ".join(problems[:15])
            + more
        )


def _read_params(path: pathlib.Path, fmt: str) -> Any:
    """The params tree stored at `path` in format `fmt` (one of INITIAL_CHECKPOINT_FORMATS), unchecked."""
    if fmt == "orbax":
        restored = ocp.StandardCheckpointer().restore(_orbax_state_dir(path).absolute())
        params = restored["params"]
        if isinstance(params, dict) and {"policy", "reference"} <= set(params):
            params = params["policy"]  # a GAIL run (iqlearn_jax.algorithms): its policy network
        return params
    if fmt == "t5x":
        from iqlearn_jax.checkpoints import import_t5x_checkpoint

        return import_t5x_checkpoint(str(path))
    if fmt == "hf":
        from iqlearn_jax.checkpoints import import_hf_decoder, import_hf_t5
        from iqlearn_jax.checkpoints.hf_decoder import is_hf_decoder_dir

        if is_hf_decoder_dir(str(path)):  # Llama / Mistral / Qwen2 model_type
            return import_hf_decoder(str(path))[1]
        return import_hf_t5(str(path))[1]
    from iqlearn_jax.checkpoints import import_gguf

    return import_gguf(str(path))[1]


def load_initial_params(
    path: str | os.PathLike, abstract_params: Any, params_shardings: Any, fmt: str = "auto"
) -> Any:
    """Params from an initial checkpoint, checked against the model and placed with `params_shardings`.

    Args:
      path: this project's MODEL_DIR (or its checkpoints/ or a step directory), a T5X checkpoint directory
        (legacy or Orbax layout), or a Hugging Face T5 directory (config.json + safetensors).
      abstract_params: the model's params as ShapeDtypeStructs (names and shapes to match).
      params_shardings: NamedShardings shaped like the params.
      fmt: 'auto', 'orbax', 't5x' or 'hf'.
    """
    path = pathlib.Path(path)
    fmt = detect_format(path) if fmt == "auto" else fmt
    known = {name: what for name, what, _ in INITIAL_CHECKPOINT_FORMATS}
    if fmt not in known:
        raise ConfigError(
            f"train.initial_checkpoint_format must be one of {['auto', *known]}, got {fmt!r}"
        )
    try:
        params = _read_params(path, fmt)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever the reader met, the file is the user's input
        raise CheckpointFormatError(
            f"initial checkpoint {str(path)!r} looks like {fmt} ({known[fmt]}) but could not be read: "
            f"{type(e).__name__}: {e}"
        ) from e
    params = flax.serialization.to_state_dict(params)
    if set(params) == {"params"}:
        params = params["params"]
    check_params_match(params, abstract_params, str(path))
    params = jax.tree.map(
        lambda x, a: np.asarray(x, dtype=a.dtype),
        params,
        flax.serialization.to_state_dict(abstract_params),
    )
    params = flax.serialization.from_state_dict(abstract_params, params)
    return jax.tree.map(
        lambda x, s: jax.make_array_from_callback(x.shape, s, lambda idx: x[idx]),
        params,
        params_shardings,
    )
