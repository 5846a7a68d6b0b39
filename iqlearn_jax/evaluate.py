r"""Decode a checkpoint on a task split with several decoding settings; score, and write JSONL + JSON.

    python -m iqlearn_jax.evaluate --gin_file=runs/evaluate_quickstart.gin --gin.CHECKPOINT_PATH="'/tmp/quickstart'"

For every decoding setting (sampling temperatures with k samples per prompt — temperature 0 = greedy, 1 sample —,
beam search sizes with a length penalty, each optionally with the GSM8k calculator) it writes
``OUTPUT_DIR/<setting>/generations.jsonl`` (one line per prompt: input, reference, and per sample its text,
log-likelihood Σ_t log π(y_t|s_t), summed implicit reward Σ_t r_t (γ of the model's objective; with γ = 1 and an
EOS this is log π(y|x) + V(s_0)), length in tokens including EOS, whether it ended with EOS, decoder score) and
``OUTPUT_DIR/<setting>/metrics.json`` (task metrics averaged over all samples, diversity, reward–metric Spearman ρ,
mean scores, definitions), plus ``OUTPUT_DIR/summary.json``. ``python -m iqlearn_jax.report OUTPUT_DIR...``
aggregates them.
"""

from __future__ import annotations

if (
    __name__ == "__main__"
):  # `python -m iqlearn_jax.evaluate`: run the importable module, so gin binds one copy.
    import sys

    from iqlearn_jax.evaluate import console_main

    sys.exit(console_main())

import dataclasses
import json
import math
import numbers
import os
import pathlib
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import gin
import jax
import jax.numpy as jnp
import numpy as np
import seqio

from iqlearn_jax import decoding
from iqlearn_jax.calculator_decoding import CalculatorDecoder
from iqlearn_jax.evaluation_io import (
    batches,
    convert_to_model_features,
    load_examples,
    load_params,
    text_of,
    training_objective,
    trim_after_eos,
)
from iqlearn_jax.gin_utils import strip_gin_context
from iqlearn_jax.metrics.generations import score_generations

CALCULATOR_MODES = ("auto", "off", "on", "both")


@dataclasses.dataclass(frozen=True)
class DecodingSetting:
    """One way of decoding: ``method`` "sample" (temperature, k samples) or "beam" (size, length penalty α)."""

    method: str
    temperature: float = 0.0
    num_samples: int = 1
    beam_size: int = 0
    length_penalty: float = 0.6
    topk: int = 0
    topp: float = 0.0
    calculator: bool = False

    @property
    def name(self) -> str:
        if self.method == "beam":
            base = f"beam{self.beam_size}_lp{self.length_penalty:g}"
        elif self.temperature == 0:
            base = "greedy"
        else:
            base = f"temp{self.temperature:g}_k{self.num_samples}"
            base += f"_topk{self.topk}" if self.topk else ""
            base += f"_topp{self.topp:g}" if self.topp else ""
        return base + ("_calc" if self.calculator else "")

    def to_json(self) -> dict:
        return {"name": self.name, **dataclasses.asdict(self)}


def decoding_settings(
    temperatures: Sequence[float],
    num_samples: int,
    beam_sizes: Sequence[int],
    length_penalty: float,
    topk: int,
    topp: float,
    calculator: str,
    task_name: str,
) -> list[DecodingSetting]:
    """The settings to run. Temperature 0 gets one sample; calculator "auto" = "both" on GSM8k-like tasks."""
    if calculator not in CALCULATOR_MODES:
        raise ValueError(f"calculator={calculator!r}: expected one of {CALCULATOR_MODES}")
    if num_samples < 1:
        raise ValueError(f"num_samples={num_samples}: expected >= 1")
    for t in temperatures:
        if not (isinstance(t, int | float) and t >= 0 and math.isfinite(t)):
            raise ValueError(f"temperature {t!r}: expected a finite number >= 0")
    for b in beam_sizes:
        if not (isinstance(b, int) and b >= 1):
            raise ValueError(f"beam size {b!r}: expected an integer >= 1")
    if not temperatures and not beam_sizes:
        raise ValueError("no decoding setting: give at least one temperature or beam size")
    if calculator == "auto":
        gsm_like = "gsm8k" in task_name or "arithmetic" in task_name
        calculator = "both" if gsm_like else "off"
    calc_flags = {"off": [False], "on": [True], "both": [False, True]}[calculator]
    settings = []
    for t in temperatures:
        for calc in calc_flags:
            k = 1 if t == 0 else num_samples
            settings.append(
                DecodingSetting("sample", float(t), k, topk=topk, topp=topp, calculator=calc)
            )
    for b in beam_sizes:
        settings.append(DecodingSetting("beam", beam_size=b, length_penalty=length_penalty))
    return settings


class _Progress:
    """Progress on stderr: a redrawn bar on a terminal; in logs, a line every ``log_every_s`` and at the end."""

    def __init__(self, total: int, desc: str, unit: str = "prompts", log_every_s: float = 30.0):
        self.total, self.desc, self.unit, self.done = total, desc, unit, 0
        self.start = self._last = time.perf_counter()
        self.tty = sys.stderr.isatty()
        self.log_every_s = log_every_s
        if self.tty:
            self._draw()

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if self.tty or self.done >= self.total or now - self._last >= self.log_every_s:
            self._last = now
            self._draw()

    def _draw(self) -> None:
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 and self.done else 0.0
        eta = (self.total - self.done) / rate if rate else float("nan")
        width = 24
        filled = int(width * self.done / max(self.total, 1))
        bar = "#" * filled + "." * (width - filled)
        eta_s = f"{eta:5.0f}s" if math.isfinite(eta) else "    ?"
        line = f"{self.desc:>22} [{bar}] {self.done}/{self.total} {self.unit} {rate:6.2f}/s ETA {eta_s}"
        if self.done >= self.total:
            line += f"  ({elapsed:.1f}s)"
        end = "\n" if (self.done >= self.total or not self.tty) else ""
        sys.stderr.write(("\r" if self.tty else "") + line + end)
        sys.stderr.flush()


# ---- decoding and scoring -------------------------------------------------------------------------------------
def make_decoder(
    model: Any, setting: DecodingSetting, vocabulary: seqio.Vocabulary, max_decode_len: int
):
    """``run(params, batch, rng) -> (tokens [batch, samples, length], decoder scores or None, calc stats or None)``.

    At most ``max_decode_len`` tokens are generated (the targets length, so that scoring sees whole samples; a
    decoder-only model's cache could otherwise hold more after short prompts).
    """
    if setting.calculator:
        calc = CalculatorDecoder(
            model,
            vocabulary,
            setting.temperature,
            setting.num_samples,
            setting.topk,
            setting.topp,
            max_decode_len=max_decode_len,
        )

        def run_calc(params, batch, rng):
            tokens, stats = calc(params, batch, rng)
            return tokens, None, stats

        return run_calc
    if setting.method == "beam":
        clone = model.with_decode_fn(decoding.beam_search)
        decoder_params = {"alpha": setting.length_penalty, "max_decode_len": max_decode_len}
        num_decodes = setting.beam_size
    else:
        clone = model.with_decode_fn(decoding.temperature_sample)
        decoder_params = {
            "temperature": setting.temperature,
            "topk": setting.topk,
            "topp": setting.topp,
            "max_decode_steps": max_decode_len,
        }
        num_decodes = setting.num_samples

    @jax.jit
    def predict(params, batch, rng):
        return clone.predict_batch_with_aux(
            params,
            batch,
            rng=rng,
            decoder_params=decoder_params,
            num_decodes=num_decodes,
            return_all_decodes=True,
        )

    def run(params, batch, rng):
        tokens, aux = predict(params, batch, rng)
        tokens, scores = np.asarray(tokens), np.asarray(aux["scores"])
        if setting.method == "beam":  # the best beam (scores increase along the beam axis)
            tokens, scores = tokens[:, -1:], scores[:, -1:]
        return tokens, scores, None

    return run


def make_scorer(model: Any):
    """Jitted ``score(params, batch) -> dict`` of per-row log_likelihood, summed_reward, length, mean_entropy.

    The entropy is the model's predictive entropy H_t = −Σ_a π(a|s_t) log π(a|s_t) (nats, `score_batch`'s
    `entropies`) averaged over the row's weighted (generated) positions.
    """

    @jax.jit
    def score(params, batch):
        log_likelihood, inter = model.score_batch(params, batch, return_intermediates=True)
        weights = inter["loss_weights"]
        entropy = inter["entropies"]
        length = weights.sum(-1)
        return {
            "log_likelihood": log_likelihood,
            "summed_reward": inter["sequence_rewards"],
            "length": length,
            "mean_entropy": (entropy * weights).sum(-1) / jnp.maximum(length, 1.0),
        }

    return score


# ---- the evaluation -------------------------------------------------------------------------------------------
# argument -> (kind, minimum), as preflight.VALUE_RULES.
_ARGUMENT_RULES: dict[str, tuple[str, int | None]] = {
    "checkpoint_path": ("str", None),
    "task": ("str", None),
    "split": ("str", None),
    "output_dir": ("str?", None),
    "batch_size": ("int", 1),
    "max_examples": ("int?", 1),
    "num_samples": ("int", 1),
    "topk": ("int", 0),
    "seed": ("int", 0),
    "self_bleu_sample_size": ("int?", 1),
    "run_seed": ("int?", 0),
    "calculator": ("str", None),
}


def _check_arguments(arguments: Mapping[str, Any]) -> None:
    """Type and range of `evaluate`'s arguments, each named, before anything is read or written."""
    from iqlearn_jax import preflight

    for name, (kind, minimum) in _ARGUMENT_RULES.items():
        preflight.check_value(f"evaluate.{name}", arguments[name], kind, minimum)
    preflight.check_feature_lengths(
        arguments["task_feature_lengths"], "evaluate.task_feature_lengths"
    )
    for name, low, high in (("length_penalty", 0.0, math.inf), ("topp", 0.0, 1.0)):
        value = arguments[name]
        if (
            isinstance(value, bool)
            or not isinstance(value, numbers.Real)
            or not low <= value <= high
        ):
            raise ValueError(f"evaluate.{name} must be a number in [{low}, {high}], got {value!r}")
    for name in ("temperatures", "beam_sizes"):
        if isinstance(arguments[name], str) or not isinstance(arguments[name], Sequence):
            raise ValueError(f"evaluate.{name} must be a list, got {arguments[name]!r}")


@gin.configurable
def evaluate(
    checkpoint_path: str = gin.REQUIRED,
    model: Any = gin.REQUIRED,
    task: str = gin.REQUIRED,
    split: str = "validation",
    task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
    output_dir: str | None = None,
    batch_size: int = 8,
    max_examples: int | None = 64,
    temperatures: Sequence[float] = (0.0, 0.5, 1.0),
    num_samples: int = 4,
    beam_sizes: Sequence[int] = (4,),
    length_penalty: float = 0.6,
    topk: int = 0,
    topp: float = 0.0,
    calculator: str = "auto",
    seed: int = 0,
    self_bleu_sample_size: int | None = 500,
    run_seed: int | None = None,
    run_label: str | None = None,
) -> dict:
    """Decodes ``task``/``split`` with every decoding setting and writes the outputs (see module docstring).

    Args:
      checkpoint_path: MODEL_DIR of a training run (newest checkpoint), one step directory, a T5X checkpoint or a
        Hugging Face T5 directory.
      model: the model (gin: the same model/objective files as training; γ of the objective defines r_t).
      task, split: SeqIO task name and split. task_feature_lengths: {"inputs": n, "targets": m}; decodes are at
        most m tokens (decoder-only: what the cache has left after the prompt).
      output_dir: default ``<checkpoint_path>/eval/<task>_<split>``.
      batch_size: prompts per decoding batch (samples: batch_size × k rows). max_examples: None = whole split.
      temperatures: sampling temperatures (0 = greedy, 1 sample); num_samples: k per prompt for T > 0.
      beam_sizes, length_penalty: beam searches (best beam kept), T5X/GNMT penalty ((5+len)/6)^α.
      topk, topp: sampling filters (0 = off).
      calculator: "auto" (with and without on GSM8k-like tasks), "off", "on", "both"; sampling settings only.
      seed: decoding RNG seed (and Self-BLEU subset seed).
      self_bleu_sample_size: Texygen's fixed sample size (None = all samples).
      run_seed: the training seed, recorded for report.py's aggregation (default: the checkpoint's meta "seed").
      run_label: optional name of the run family (e.g. "t5-small"); report.py groups by (task, label, objective,
        λ, setting) and averages over seeds.

    Returns:
      {"output_dir": str, "settings": {name: metrics dict}}.
    """
    _check_arguments(locals())
    settings = decoding_settings(
        temperatures, num_samples, beam_sizes, length_penalty, topk, topp, calculator, task
    )
    if not pathlib.Path(checkpoint_path).exists():
        raise ValueError(f"CHECKPOINT_PATH {checkpoint_path!r} does not exist")
    task_obj, examples = load_examples(task, split, task_feature_lengths, max_examples)
    vocabulary = model.output_vocabulary or task_obj.output_features["targets"].vocabulary
    params, ckpt = load_params(model, checkpoint_path, task_feature_lengths)
    out_root = pathlib.Path(output_dir or os.path.join(checkpoint_path, "eval", f"{task}_{split}"))
    out_root.mkdir(parents=True, exist_ok=True)
    objective = model.objective
    if run_seed is None:
        run_seed = ckpt["meta"].get("seed")
    trained = training_objective(checkpoint_path)
    evaluated_with = {"name": objective.name, "lam": objective.lam, "gamma": objective.gamma}
    if trained is not None:
        trained = {
            k: trained.get(k) if trained.get(k) is not None else v
            for k, v in evaluated_with.items()
        }
        if trained != evaluated_with:
            print(
                f"warning: the checkpoint was trained with objective {trained} (its config.gin) but the "
                f"evaluation config has {evaluated_with}; metrics.json records the training objective, and "
                f"implicit rewards use gamma={objective.gamma}",
                file=sys.stderr,
            )
    else:
        trained = evaluated_with
    run = {
        "label": run_label,
        "task": task,
        "split": split,
        "checkpoint": str(pathlib.Path(checkpoint_path).absolute()),
        "step": ckpt["step"],
        "objective": trained["name"],
        "lam": float(trained["lam"]),
        "gamma": float(objective.gamma),
        "evaluation_objective": evaluated_with,
        "seed": run_seed,
        "model": type(model).__name__,
        "num_examples": len(examples),
        "task_feature_lengths": dict(task_feature_lengths),
    }
    prompt_features = convert_to_model_features(model, examples, task_feature_lengths)
    scorer = make_scorer(model)
    eos = int(model.eos_id)
    summary: dict[str, Any] = {"run": run, "settings": {}}
    for setting_index, setting in enumerate(settings):
        decode = make_decoder(model, setting, vocabulary, int(task_feature_lengths["targets"]))
        rng = jax.random.fold_in(jax.random.PRNGKey(seed), setting_index)
        progress = _Progress(len(examples), setting.name)
        samples_tokens: list[list[np.ndarray]] = []
        decoder_scores: list[list[float | None]] = []
        calc_calls = 0
        for b, (batch, real) in enumerate(batches(prompt_features, batch_size)):
            tokens, scores, stats = decode(params, batch, jax.random.fold_in(rng, b))
            for i in range(real):
                samples_tokens.append([tokens[i, j] for j in range(tokens.shape[1])])
                decoder_scores.append(
                    [
                        None if scores is None else float(scores[i, j])
                        for j in range(tokens.shape[1])
                    ]
                )
            calc_calls += stats.calls if stats is not None else 0
            progress.update(real)
        # Score every (prompt, sample) pair by teacher forcing.
        pairs, trimmed = [], []
        for ex, samples in zip(examples, samples_tokens, strict=True):
            for s in samples:
                toks, ended = trim_after_eos(s, eos)
                trimmed.append((toks, ended))
                pairs.append({"inputs": ex["inputs"], "targets": toks})
        sample_features = convert_to_model_features(model, pairs, task_feature_lengths)
        scored: dict[str, list[float]] = {}
        for batch, real in batches(sample_features, batch_size * max(setting.num_samples, 1)):
            for k, v in scorer(params, batch).items():
                scored.setdefault(k, []).extend(np.asarray(v)[:real].tolist())
        records, flat = [], 0
        for ex, samples, dscores in zip(examples, samples_tokens, decoder_scores, strict=True):
            rec_samples = []
            for j in range(len(samples)):
                toks, ended = trimmed[flat]
                rec_samples.append(
                    {
                        "text": vocabulary.decode([int(t) for t in toks if int(t) != eos]),
                        "log_likelihood": scored["log_likelihood"][flat],
                        "summed_reward": scored["summed_reward"][flat],
                        "length": int(round(scored["length"][flat])),
                        "ended_with_eos": bool(ended),
                        "mean_entropy": scored["mean_entropy"][flat],
                        "decoder_score": dscores[j],
                    }
                )
                flat += 1
            records.append(
                {
                    "input": text_of(
                        ex.get("inputs_pretokenized", vocabulary.decode(ex["inputs"].tolist()))
                    ),
                    "reference": text_of(
                        ex.get("targets_pretokenized", vocabulary.decode(ex["targets"].tolist()))
                    ),
                    "samples": rec_samples,
                }
            )
        metrics = score_generations(task_obj, examples, records, self_bleu_sample_size, seed)
        metrics = {"run": run, "setting": setting.to_json(), **metrics}
        if setting.calculator:
            metrics["calculator"] = {
                "calls": calc_calls,
                "definition": "safe evaluator (numbers, + - * /, parentheses) completes '<<expr=' with "
                "'result>>' during decoding",
            }
        setting_dir = out_root / setting.name
        setting_dir.mkdir(parents=True, exist_ok=True)
        with open(setting_dir / "generations.jsonl", "w") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        (setting_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False))
        summary["settings"][setting.name] = {
            "task_metrics": metrics["task_metrics"],
            "self_bleu4": metrics["diversity"].get("self_bleu4"),
            "mean_summed_reward": metrics["scores"]["mean_summed_reward"],
        }
        print(f"{setting.name}: {json.dumps(metrics['task_metrics'])}", flush=True)
    (out_root / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False))
    print(
        f"wrote {out_root}/<setting>/{{generations.jsonl,metrics.json}} and summary.json",
        flush=True,
    )
    return {"output_dir": str(out_root), "settings": summary["settings"]}


# ---- command line ---------------------------------------------------------------------------------------------
def main(argv: Sequence[str]) -> int:
    """Parses gin with the trainer's plumbing (same flags, search paths and checks), then runs ``evaluate``."""
    from absl import flags

    from iqlearn_jax import train as train_lib

    if len(argv) > 1:
        print(f"iqlearn-evaluate: error: unexpected arguments {list(argv[1:])}", file=sys.stderr)
        return 2
    try:
        train_lib.parse_gin(
            flags.FLAGS.gin_file, flags.FLAGS.gin_bindings, flags.FLAGS.gin_search_paths
        )
        from iqlearn_jax.tasks import register_tasks

        register_tasks()
        evaluate()
    except (train_lib.ConfigError, ValueError, FileNotFoundError) as e:
        print(f"iqlearn-evaluate: error: {strip_gin_context(e)}", file=sys.stderr)
        return 2
    return 0


def console_main() -> int:
    """Entry point of ``iqlearn-evaluate`` and ``python -m iqlearn_jax.evaluate``."""
    from iqlearn_jax import train  # noqa: F401  (defines --gin_file / --gin_bindings / --gin_search_paths)
    from iqlearn_jax.gin_utils import run_cli

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return run_cli(main)
