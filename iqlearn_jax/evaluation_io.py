"""Data and checkpoint plumbing of ``iqlearn_jax.evaluate``: SeqIO examples, model features through the model's
own feature converter, batching, and loading params (plus the training run's facts) from a checkpoint."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import seqio


# ---- data -----------------------------------------------------------------------------------------------------
def text_of(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def load_examples(
    task_name: str, split: str, task_feature_lengths: Mapping[str, int], max_examples: int | None
) -> tuple[seqio.Task, list[dict]]:
    """The first ``max_examples`` examples of the split (unshuffled), tokenised and trimmed by SeqIO."""
    try:
        task = seqio.get_mixture_or_task(task_name)
    except ValueError as e:
        raise ValueError(f"unknown task {task_name!r}: {e}") from e
    if split not in task.splits:
        raise ValueError(f"task {task_name!r} has splits {list(task.splits)}, not {split!r}")
    ds = task.get_dataset(
        dict(task_feature_lengths), split=split, shuffle=False, num_epochs=1, use_cached=False
    )
    if max_examples is not None:
        ds = ds.take(max_examples)
    examples = list(ds.as_numpy_iterator())
    if not examples:
        raise ValueError(f"task {task_name!r} split {split!r} yielded no examples")
    return task, examples


def convert_to_model_features(
    model: Any, pairs: Sequence[Mapping[str, np.ndarray]], task_feature_lengths: Mapping[str, int]
) -> dict[str, np.ndarray]:
    """Runs the model's SeqIO feature converter (unpacked) on {"inputs", "targets"} token lists; stacks all rows."""
    import tensorflow as tf

    def gen():
        for p in pairs:
            yield {k: np.asarray(p[k], np.int32) for k in ("inputs", "targets")}

    spec = tf.TensorSpec([None], tf.int32)
    ds = tf.data.Dataset.from_generator(gen, output_signature={"inputs": spec, "targets": spec})
    converter = model.FEATURE_CONVERTER_CLS(pack=False)
    ds = converter(ds, dict(task_feature_lengths))
    rows = list(ds.as_numpy_iterator())
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def batches(features: Mapping[str, np.ndarray], batch_size: int):
    """Yields (batch padded to ``batch_size`` rows with zeros, number of real rows)."""
    n = len(next(iter(features.values())))
    for start in range(0, n, batch_size):
        chunk = {k: v[start : start + batch_size] for k, v in features.items()}
        real = len(next(iter(chunk.values())))
        if real < batch_size:
            chunk = {
                k: np.concatenate([v, np.zeros((batch_size - real,) + v.shape[1:], v.dtype)])
                for k, v in chunk.items()
            }
        yield chunk, real


def trim_after_eos(tokens: np.ndarray, eos_id: int) -> tuple[np.ndarray, bool]:
    """Tokens up to and including the first EOS (or up to the first 0 if there is none), and whether EOS came."""
    tokens = np.asarray(tokens)
    eos = np.flatnonzero(tokens == eos_id)
    if len(eos):
        return tokens[: eos[0] + 1], True
    pad = np.flatnonzero(tokens == 0)
    return (tokens[: pad[0]] if len(pad) else tokens), False


# ---- checkpoint -----------------------------------------------------------------------------------------------
def _checkpoint_step_dir(path: pathlib.Path) -> pathlib.Path | None:
    """The step directory an Orbax MODEL_DIR / checkpoints dir / step dir resolves to (newest step), if any."""
    if (path / "state").is_dir():
        return path
    root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    if not root.is_dir():
        return None
    steps = [c for c in root.iterdir() if c.name.isdigit() and (c / "state").is_dir()]
    return max(steps, key=lambda c: int(c.name)) if steps else None


def load_params(
    model: Any, checkpoint_path: str, task_feature_lengths: Mapping[str, int]
) -> tuple[Any, dict]:
    """Params from ``checkpoint_path`` (this project's MODEL_DIR or step dir, a T5X or a Hugging Face T5 dir),
    checked against the model, on the first device. Returns (params, {"step", "meta"})."""
    from iqlearn_jax.checkpoints import initial
    from iqlearn_jax.trainer import model_feature_shapes

    path = pathlib.Path(checkpoint_path)
    if not path.exists():
        raise ValueError(f"CHECKPOINT_PATH {checkpoint_path!r} does not exist")
    shapes = model_feature_shapes(model, task_feature_lengths, 1)
    input_shapes = {k: s for k, (s, _) in shapes.items()}
    input_types = {k: jnp.dtype(d) for k, (_, d) in shapes.items()}
    abstract = jax.eval_shape(
        lambda: model.get_initial_variables(jax.random.PRNGKey(0), input_shapes, input_types)
    )["params"]
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    params = initial.load_initial_params(path, abstract, jax.tree.map(lambda _: device, abstract))
    info: dict[str, Any] = {"step": None, "meta": {}}
    step_dir = _checkpoint_step_dir(path)
    if step_dir is not None:
        info["step"] = int(step_dir.name) if step_dir.name.isdigit() else None
        meta_dir = step_dir / "meta"
        for candidate in (meta_dir / "metadata", meta_dir):
            if candidate.is_file():
                try:
                    info["meta"] = json.loads(candidate.read_text())
                except (json.JSONDecodeError, UnicodeDecodeError):
                    pass
    return params, info


def training_objective(checkpoint_path: str) -> dict | None:
    """{"name", "lam", "gamma"} of the Objective the checkpoint was trained with, read from the training run's
    operative ``config.gin`` (MODEL_DIR, found from a MODEL_DIR, its checkpoints/ or a step directory), or None.

    Only ``objectives.Objective.<param> = <literal or %MACRO>`` lines and top-level ``MACRO = <literal>`` lines
    are read; anything else in the file is ignored.
    """
    import ast

    path = pathlib.Path(checkpoint_path).absolute()
    config = next(
        (
            d / "config.gin"
            for d in (path, path.parent, path.parent.parent)
            if (d / "config.gin").is_file()
        ),
        None,
    )
    if config is None:
        return None
    macros, params = {}, {}
    for line in config.read_text().splitlines():
        if "=" not in line or line.lstrip().startswith("#"):
            continue
        key, value = (part.strip() for part in line.split("=", 1))
        if key.startswith("objectives.Objective."):
            params[key.rsplit(".", 1)[1]] = value
        elif key.isidentifier() and key.isupper():
            macros[key] = value
    out = {}
    for name in ("name", "lam", "gamma"):
        value = params.get(name)
        while isinstance(value, str) and value.startswith("%") and value[1:] in macros:
            value = macros[value[1:]]
        try:
            out[name] = ast.literal_eval(value) if value is not None else None
        except (ValueError, SyntaxError):
            out[name] = None
    return out if out.get("name") is not None else None
