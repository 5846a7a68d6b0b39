"""Diversity metrics of generated text: Self-BLEU (Texygen), per-prompt Self-BLEU, entropies.

Definitions (every returned dict carries a ``*_definition`` string naming what was computed):

* **Self-BLEU** (Texygen, Zhu et al. 2018, ``SelfBleu.get_bleu_fast``): take a fixed sample of at most
  ``sample_size`` generations (a seeded random subset when there are more); score each one with nltk's
  ``sentence_bleu`` against *all other* sampled generations as references, uniform weights ``1/n`` up to
  ``max_order``, ``SmoothingFunction().method1`` (epsilon 0.1); report the mean × 100. Higher = less diverse.
  Texygen tokenises with ``nltk.word_tokenize`` (needs the downloadable ``punkt`` model); here the default is
  sacrebleu's ``13a`` tokenizer (splits punctuation like word_tokenize, works offline); ``"whitespace"`` is
  ``str.split()``. The computation is nltk's arithmetic re-implemented with reference n-gram counts computed once
  (O(N) instead of O(N²) Counter builds) — tests check it equals calling nltk directly.
* **Per-prompt Self-BLEU** (sacrebleu): for each prompt with k ≥ 2 samples, each sample's
  ``sacrebleu.sentence_bleu`` (13a, exp smoothing, effective order) against the k−1 other samples of the same prompt;
  mean over samples, then over prompts. Measures diversity *given* the input, which corpus-level Self-BLEU confounds
  with input diversity.
* **n-gram entropy** (Zhang et al. 2018 "Ent-n"): Shannon entropy, in nats, of the empirical n-gram distribution of
  all generations pooled (13a tokens).
* **distinct-n** (Li et al. 2016): unique n-grams / total n-grams over all generations, in %.
* **Model predictive entropy**: ``mean_token_entropy`` averages per-token entropies H_t = V(s_t) − Σ_a π(a|s_t)ℓ_t[a]
  (nats) of the model over the generated tokens (computed by the caller from the model's logits).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
import sacrebleu
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

NLTK_METHOD1_EPSILON = 0.1

_TOKENIZER_13A = Tokenizer13a()
_TOKENIZERS: dict[str, Callable[[str], list[str]]] = {
    "13a": lambda s: _TOKENIZER_13A(s).split(),
    "whitespace": str.split,
}


def tokenize(text: str, tokenizer: str | Callable[[str], list[str]] = "13a") -> list[str]:
    """Splits ``text`` into tokens with a named tokenizer ("13a", "whitespace") or a callable."""
    if callable(tokenizer):
        return list(tokenizer(text))
    if tokenizer not in _TOKENIZERS:
        raise ValueError(
            f"tokenizer={tokenizer!r}: expected one of {sorted(_TOKENIZERS)} or a callable"
        )
    return _TOKENIZERS[tokenizer](text)


def _ngram_counts(tokens: Sequence[str], n: int) -> Counter:
    if len(tokens) < n:
        return Counter()
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def _sample_indices(num: int, sample_size: int | None, seed: int) -> list[int]:
    if sample_size is None or num <= sample_size:
        return list(range(num))
    return sorted(random.Random(seed).sample(range(num), sample_size))


def _sentence_bleus_against_others(
    tokenized: list[list[str]], weights_list: list[tuple[float, ...]]
) -> list[list[float]]:
    """nltk ``sentence_bleu(others, hyp_i, w, method1)`` for every i and every weight tuple.

    Returns [len(weights_list)][len(tokenized)] floats in [0, 1]. Reproduces nltk's ``corpus_bleu`` arithmetic
    for one hypothesis: clipped counts against the max count over the other references, denominator
    max(1, #hyp n-grams), closest reference length (ties → shorter), brevity penalty, 0 when no unigram
    matches, method1 (numerator 0 → epsilon / denominator), ``exp(fsum(w·log p))``.
    """
    max_order = max(len(w) for w in weights_list)
    # counts[n][j] = Counter of the n-grams of text j; for each n-gram, the two largest counts and the text
    # holding the largest give max over "all texts except i" in O(1).
    counts = [[_ngram_counts(t, n) for t in tokenized] for n in range(1, max_order + 1)]
    top2 = []
    for per_text in counts:
        best: dict[tuple, list] = {}
        for j, c in enumerate(per_text):
            for g, v in c.items():
                b = best.setdefault(g, [0, -1, 0])  # [max count, argmax text, second max count]
                if v > b[0]:
                    b[2], b[0], b[1] = b[0], v, j
                elif v > b[2]:
                    b[2] = v
        top2.append(best)
    lengths = [len(t) for t in tokenized]
    out: list[list[float]] = [[] for _ in weights_list]
    for i, hyp in enumerate(tokenized):
        hyp_len = len(hyp)
        nums, dens = [], []
        for n in range(1, max_order + 1):
            hyp_counts = counts[n - 1][i]
            best = top2[n - 1]
            num = 0
            for g, v in hyp_counts.items():
                b = best[g]
                other_max = b[2] if b[1] == i else b[0]
                num += min(v, other_max)
            nums.append(num)
            dens.append(max(1, sum(hyp_counts.values())))
        other_lens = lengths[:i] + lengths[i + 1 :]
        ref_len = min(other_lens, key=lambda r: (abs(r - hyp_len), r))
        if hyp_len > ref_len:
            bp = 1.0
        elif hyp_len == 0:
            bp = 0.0
        else:
            bp = math.exp(1 - ref_len / hyp_len)
        for k, w in enumerate(weights_list):
            if nums[0] == 0:
                out[k].append(0.0)
                continue
            p = [
                (NLTK_METHOD1_EPSILON / d) if m == 0 else (m / d)
                for m, d in zip(nums[: len(w)], dens[: len(w)], strict=True)
            ]
            s = math.fsum(wi * math.log(pi) for wi, pi in zip(w, p, strict=True) if pi > 0)
            out[k].append(bp * math.exp(s))
    return out


def self_bleu(
    texts: Sequence[str],
    max_order: int = 3,
    sample_size: int | None = 500,
    seed: int = 0,
    tokenizer: str | Callable[[str], list[str]] = "13a",
    extra_orders: Sequence[int] = (),
) -> dict[str, float]:
    """Texygen Self-BLEU of ``texts`` (see module docstring), in 0–100.

    Args:
      texts: generations (one string each), at least 2.
      max_order: largest n-gram order; uniform weights 1/max_order (Texygen default 3).
      sample_size: at most this many texts are used, a random subset drawn with ``seed`` (Texygen: 500);
        None uses all.
      seed: seed of the subset draw.
      tokenizer: "13a" (default), "whitespace" or a callable str -> list[str].
      extra_orders: further orders computed in the same pass (e.g. (4,) to report Self-BLEU-4 too).

    Returns:
      {"self_bleu{n}": score for n in (max_order, *extra_orders), "self_bleu_num_texts": N used,
       "self_bleu_definition": text}. The definition entry is a string.
    """
    if max_order < 1:
        raise ValueError(f"max_order={max_order}: expected an integer >= 1")
    if sample_size is not None and sample_size < 2:
        raise ValueError(f"sample_size={sample_size}: expected None or an integer >= 2")
    texts = list(texts)
    if len(texts) < 2:
        raise ValueError(f"self_bleu needs at least 2 texts, got {len(texts)}")
    idx = _sample_indices(len(texts), sample_size, seed)
    tokenized = [tokenize(texts[i], tokenizer) for i in idx]
    orders = [max_order, *[o for o in extra_orders if o != max_order]]
    weights_list = [tuple(1.0 / n for _ in range(n)) for n in orders]
    scores = _sentence_bleus_against_others(tokenized, weights_list)
    result: dict = {
        f"self_bleu{n}": 100.0 * float(np.mean(s)) for n, s in zip(orders, scores, strict=True)
    }
    result["self_bleu_num_texts"] = float(len(idx))
    tok_name = tokenizer if isinstance(tokenizer, str) else getattr(tokenizer, "__name__", "custom")
    result["self_bleu_definition"] = (
        f"Texygen Self-BLEU: mean over {len(idx)} texts (seeded subset, seed {seed}, of {len(texts)}) of nltk "
        f"sentence_bleu against all other texts, uniform weights up to order n, SmoothingFunction().method1, "
        f"tokenizer {tok_name}, x100"
    )
    return result


def per_prompt_self_bleu(samples_per_prompt: Sequence[Sequence[str]]) -> dict[str, float]:
    """Self-BLEU among the k samples of each prompt, sacrebleu (see module docstring), in 0–100.

    Args:
      samples_per_prompt: for each prompt the list of its k sampled generations; prompts with k < 2 are skipped.

    Returns:
      {"per_prompt_self_bleu": mean over prompts, "per_prompt_self_bleu_num_prompts": prompts used,
       "per_prompt_self_bleu_definition": text with the sacrebleu signature}. Raises ValueError when no prompt
      has 2 samples.
    """
    metric = sacrebleu.BLEU(effective_order=True)
    per_prompt = []
    for samples in samples_per_prompt:
        samples = list(samples)
        if len(samples) < 2:
            continue
        scores = [
            metric.sentence_score(s, samples[:i] + samples[i + 1 :]).score
            for i, s in enumerate(samples)
        ]
        per_prompt.append(float(np.mean(scores)))
    if not per_prompt:
        raise ValueError("per_prompt_self_bleu needs at least one prompt with >= 2 samples")
    return {
        "per_prompt_self_bleu": float(np.mean(per_prompt)),
        "per_prompt_self_bleu_num_prompts": float(len(per_prompt)),
        "per_prompt_self_bleu_definition": (
            "mean over prompts of the mean over its k samples of sacrebleu sentence BLEU against the k-1 other "
            f"samples of the same prompt; signature {metric.get_signature()}"
        ),
    }


def ngram_entropy(
    texts: Sequence[str], n: int = 1, tokenizer: str | Callable[[str], list[str]] = "13a"
) -> float:
    """Shannon entropy (nats) of the pooled empirical n-gram distribution of ``texts``; 0.0 if no n-grams."""
    counts: Counter = Counter()
    for t in texts:
        counts.update(_ngram_counts(tokenize(t, tokenizer), n))
    total = sum(counts.values())
    if total == 0:
        return 0.0
    p = np.asarray(list(counts.values()), dtype=np.float64) / total
    return float(-(p * np.log(p)).sum())


def distinct_n(
    texts: Sequence[str], n: int = 1, tokenizer: str | Callable[[str], list[str]] = "13a"
) -> float:
    """Unique n-grams / total n-grams over all ``texts`` in %, 0.0 if there are none."""
    counts: Counter = Counter()
    for t in texts:
        counts.update(_ngram_counts(tokenize(t, tokenizer), n))
    total = sum(counts.values())
    return 100.0 * len(counts) / total if total else 0.0


def mean_token_entropy(entropies: np.ndarray, weights: np.ndarray) -> float:
    """Mean of per-token model entropies (nats) over weighted positions.

    Args:
      entropies: [batch, length] per-token predictive entropies H_t of the model at the generated tokens.
      weights: [batch, length] 1 on generated tokens (up to and including EOS), 0 on padding.
    """
    entropies = np.asarray(entropies, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    if entropies.shape != weights.shape:
        raise ValueError(f"entropies shape {entropies.shape} != weights shape {weights.shape}")
    total = weights.sum()
    return float((entropies * weights).sum() / total) if total > 0 else 0.0


def diversity_metrics(
    texts: Sequence[str],
    samples_per_prompt: Sequence[Sequence[str]] | None = None,
    sample_size: int | None = 500,
    seed: int = 0,
) -> dict:
    """All text-level diversity metrics used by evaluate.py, with their definitions.

    Self-BLEU-3 and -4 over all ``texts`` (when ≥ 2), per-prompt Self-BLEU (when some prompt has ≥ 2
    samples), unigram/bigram entropy (nats) and distinct-1/2 (%).
    """
    out: dict = {}
    if len(texts) >= 2:
        out.update(
            self_bleu(texts, max_order=3, sample_size=sample_size, seed=seed, extra_orders=(4,))
        )
    if samples_per_prompt is not None and any(len(s) >= 2 for s in samples_per_prompt):
        out.update(per_prompt_self_bleu(samples_per_prompt))
    for n in (1, 2):
        out[f"ngram_entropy{n}"] = ngram_entropy(texts, n)
        out[f"distinct{n}"] = distinct_n(texts, n)
    out["ngram_entropy_definition"] = (
        "Shannon entropy in nats of the pooled empirical n-gram distribution of all generations (13a tokens)"
    )
    out["distinct_definition"] = "unique n-grams / all n-grams over all generations (13a tokens), %"
    return out
