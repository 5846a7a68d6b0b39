"""Metrics of one decoding setting's generations: task metrics, reward/likelihood–metric rank correlations,
diversity and mean scores (used by ``iqlearn_jax.evaluate``; every number is named with its definition).

``records`` are the lines of ``generations.jsonl``: {"input", "reference", "samples": [{"text", "log_likelihood",
"summed_reward", "length", "ended_with_eos", "mean_entropy", ...}, ...]}.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import seqio

from iqlearn_jax.metrics import correlation, diversity, task_metrics


def _per_sample_fn(metric_fn):
    known = {
        task_metrics.gsm8k_accuracy: lambda t, p: {
            "accuracy": task_metrics.gsm8k_correct_per_sample(t, p)
        },
        task_metrics.rouge: task_metrics.rouge_per_sample,
        task_metrics.bleu: task_metrics.bleu_per_sample,
    }
    if metric_fn in known:
        return known[metric_fn]

    def one_by_one(
        targets, predictions
    ):  # any SeqIO metric, scored on each (target, prediction) alone
        out: dict[str, list[float]] = {}
        for t, p in zip(targets, predictions, strict=True):
            for k, v in metric_fn([t], [p]).items():
                if isinstance(v, int | float):
                    out.setdefault(k, []).append(float(v))
        return out

    return one_by_one


def _finite_or_none(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite_or_none(v) for k, v in x.items()}
    return x


def score_generations(
    task: seqio.Task,
    examples: list[dict],
    records: list[dict],
    self_bleu_sample_size: int | None,
    seed: int,
) -> dict:
    """Task metrics (mean over all samples), per-sample metrics' Spearman ρ with reward and log-likelihood,
    diversity and mean scores, for one decoding setting. ``records`` are the generations.jsonl lines."""
    targets, predictions, rewards, logliks = [], [], [], []
    for ex, rec in zip(examples, records, strict=True):
        target = task.postprocess_fn(rec["reference"], example=ex, is_target=True)
        for s in rec["samples"]:
            targets.append(target)
            predictions.append(task.postprocess_fn(s["text"], example=ex, is_target=False))
            rewards.append(s["summed_reward"])
            logliks.append(s["log_likelihood"])
    result: dict[str, Any] = {"task_metrics": {}, "reward_correlation": {}}
    per_sample: dict[str, list[float]] = {}
    for fn in task.predict_metric_fns:
        result["task_metrics"].update({k: float(v) for k, v in fn(targets, predictions).items()})
        per_sample.update(_per_sample_fn(fn)(targets, predictions))
    result["reward_correlation"].update(correlation.reward_metric_correlations(rewards, per_sample))
    for name, values in per_sample.items():
        result["reward_correlation"][f"spearman_loglik_vs_{name}"] = correlation.spearman(
            logliks, values
        )
    texts = [s["text"] for rec in records for s in rec["samples"]]
    groups = [[s["text"] for s in rec["samples"]] for rec in records]
    div = diversity.diversity_metrics(texts, groups, sample_size=self_bleu_sample_size, seed=seed)
    samples = [s for rec in records for s in rec["samples"]]
    div["model_entropy"] = float(np.mean([s["mean_entropy"] for s in samples]))
    div["model_entropy_definition"] = (
        "mean over samples of the model's mean per-token predictive entropy H_t = V(s_t) - sum_a pi(a|s_t) "
        "logit_t[a] over the sample's generated tokens, nats"
    )
    result["diversity"] = div
    result["scores"] = {
        "mean_log_likelihood": float(np.mean(logliks)),
        "mean_summed_reward": float(np.mean(rewards)),
        "mean_length": float(np.mean([s["length"] for s in samples])),
        "fraction_with_eos": float(np.mean([s["ended_with_eos"] for s in samples])),
        "num_samples": float(len(samples)),
    }
    result["definitions"] = {
        "task_metrics": "the task's SeqIO metric functions on postprocessed outputs, over all samples of all "
        "prompts (each sample scored against its prompt's reference)",
        "log_likelihood": "sum over generated tokens (incl. EOS) of log pi(y_t|s_t) at temperature 1, nats",
        "summed_reward": "sum_t r_t, r_t = Q(s_t,y_t) - gamma V(s_t+1) (gamma of the objective); TD-masked "
        "at the last token of a sample without EOS",
        "reward_correlation": "Spearman rho (average ranks for ties) between each sample's summed implicit "
        "reward (or log-likelihood) and its per-sample task metric; null when undefined",
    }
    return _finite_or_none(result)
