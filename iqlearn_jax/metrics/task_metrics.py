"""Task metrics: GSM8k answer accuracy, ROUGE (rouge-score) and BLEU/chrF (sacrebleu).

All corpus-level functions follow SeqIO's metric-function convention, ``fn(targets, predictions)`` with lists of
strings, and return a dict of Python floats on a 0–100 scale. The ``*_per_sample`` variants return one float per
example (same scale), for rank correlations against extracted rewards.

Definitions (stated so every reported number names its metric):

- GSM8k: the answer is the number after the *last* ``####`` marker, with ``$`` and thousands separators removed,
  compared as exact decimals (``24 == 24.0``, ``1,000 == 1000``). A prediction without a ``####`` number is wrong;
  a target without one is a data error.
- ROUGE: Google's ``rouge-score`` with the Porter stemmer, F-measure, arithmetic mean over examples (no
  bootstrap). ``rougeLsum`` needs one sentence per line: texts that contain no newline are split into sentences
  after ``.``, ``!`` or ``?`` followed by whitespace.
- BLEU / chrF: ``sacrebleu.corpus_bleu`` / ``corpus_chrf`` with default settings (13a tokenizer, exp smoothing,
  chrF n=6, β=2); the signatures are in ``BLEU_SIGNATURE`` / ``CHRF_SIGNATURE`` and are logged. Sentence-level
  variants use ``sacrebleu.sentence_bleu`` / ``sentence_chrf``. One reference per example, or several when each
  target is a list/tuple of strings.
"""

from __future__ import annotations

import decimal
import re
from collections.abc import Sequence

import numpy as np
import sacrebleu
from absl import logging
from nltk.stem import porter
from rouge_score import rouge_scorer, tokenizers
from rouge_score import tokenize as rouge_tokenize

ROUGE_TYPES = ("rouge1", "rouge2", "rougeLsum")

_ANSWER_MARKER = "####"
_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


# ----------------------------------------------------------------------------------------------------------- GSM8k
def gsm8k_extract_answer(text: str) -> decimal.Decimal | None:
    """The number after the last ``####`` in ``text`` as a Decimal, or None when there is none.

    ``"... #### 1,000"`` -> Decimal("1000"); ``"#### $-3.50"`` -> Decimal("-3.50"); ``"no marker"`` -> None.
    """
    if _ANSWER_MARKER not in text:
        return None
    tail = text.rsplit(_ANSWER_MARKER, 1)[1].replace(",", "").replace("$", "")
    match = _NUMBER.search(tail)
    if match is None:
        return None
    try:
        return decimal.Decimal(match.group(0))
    except decimal.InvalidOperation:  # pragma: no cover - the regex only admits valid decimals
        return None


def gsm8k_postprocess(output: str, example=None, is_target: bool = False) -> str:
    """SeqIO postprocessor: strips whitespace; answer extraction happens in the metric."""
    del example, is_target
    return output.strip()


def gsm8k_correct_per_sample(targets: Sequence[str], predictions: Sequence[str]) -> list[float]:
    """100.0 where the prediction's ``####`` answer equals the target's numerically, else 0.0."""
    _check_lengths(targets, predictions)
    scores = []
    for index, (target, prediction) in enumerate(zip(targets, predictions, strict=True)):
        gold = gsm8k_extract_answer(target)
        if gold is None:
            raise ValueError(
                f"GSM8k target {index} has no '#### <number>' answer: {target[-80:]!r}"
            )
        guess = gsm8k_extract_answer(prediction)
        scores.append(100.0 if guess is not None and guess == gold else 0.0)
    return scores


def gsm8k_accuracy(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Percentage of predictions whose final ``####`` answer equals the target's (see module docstring)."""
    per_sample = gsm8k_correct_per_sample(targets, predictions)
    return {"accuracy": float(np.mean(per_sample)) if per_sample else 0.0}


# ----------------------------------------------------------------------------------------------------------- ROUGE
def split_sentences(text: str) -> str:
    """One sentence per line, as ``rougeLsum`` expects; texts that already hold newlines are kept as they are."""
    text = text.strip()
    if "\n" in text:
        return text
    return "\n".join(part for part in _SENTENCE_END.split(text) if part)


class _CachedPorterStemmer:
    """nltk's Porter stemmer (the one rouge-score uses) with a memo: same stems, much faster on large corpora."""

    def __init__(self):
        self._stemmer = porter.PorterStemmer()
        self._cache: dict[str, str] = {}

    def stem(self, word: str) -> str:
        stemmed = self._cache.get(word)
        if stemmed is None:
            stemmed = self._cache[word] = self._stemmer.stem(word)
        return stemmed


class _RougeTokenizer(tokenizers.Tokenizer):
    """rouge-score's default tokenizer (lowercase, alphanumeric tokens, stem words longer than 3 characters)."""

    def __init__(self):
        self._stemmer = _CachedPorterStemmer()

    def tokenize(self, text: str) -> list[str]:
        return rouge_tokenize.tokenize(text, self._stemmer)


def _scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), tokenizer=_RougeTokenizer())


def rouge_per_sample(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, list[float]]:
    """Per-example ROUGE-1/2/Lsum F-measures (0–100), keyed by ``rouge1``, ``rouge2``, ``rougeLsum``."""
    _check_lengths(targets, predictions)
    scorer = _scorer()
    out: dict[str, list[float]] = {key: [] for key in ROUGE_TYPES}
    for target, prediction in zip(targets, predictions, strict=True):
        scores = scorer.score(split_sentences(target), split_sentences(prediction))
        for key in ROUGE_TYPES:
            out[key].append(100.0 * scores[key].fmeasure)
    return out


def rouge(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/Lsum F-measure over examples (0–100); see the module docstring for the exact definition."""
    per_sample = rouge_per_sample(targets, predictions)
    return {key: float(np.mean(values)) if values else 0.0 for key, values in per_sample.items()}


# ------------------------------------------------------------------------------------------------------ BLEU, chrF
def _references(targets: Sequence[str] | Sequence[Sequence[str]]) -> list[list[str]]:
    """sacrebleu's layout: one list per reference *set*, each aligned with the predictions."""
    if not targets or isinstance(targets[0], str):
        return [list(targets)]
    num_refs = {len(refs) for refs in targets}
    if len(num_refs) != 1:
        raise ValueError(
            f"every example needs the same number of references, got counts {sorted(num_refs)}"
        )
    return [list(refs) for refs in zip(*targets, strict=True)]


def _signatures() -> tuple[str, str]:
    """sacrebleu's signatures of the default BLEU / chrF with one reference (they need one evaluation first)."""
    signatures = []
    for metric in (sacrebleu.BLEU(), sacrebleu.CHRF()):
        metric.corpus_score(["a"], [["a"]])
        signatures.append(str(metric.get_signature()))
    return signatures[0], signatures[1]


BLEU_SIGNATURE, CHRF_SIGNATURE = _signatures()


def bleu(
    targets: Sequence[str] | Sequence[Sequence[str]], predictions: Sequence[str]
) -> dict[str, float]:
    """Corpus BLEU and chrF (sacrebleu defaults, 0–100); signatures in BLEU_SIGNATURE / CHRF_SIGNATURE."""
    _check_lengths(targets, predictions)
    refs = _references(targets)
    bleu_metric, chrf_metric = sacrebleu.BLEU(), sacrebleu.CHRF()
    bleu_score = bleu_metric.corpus_score(list(predictions), refs)
    chrf_score = chrf_metric.corpus_score(list(predictions), refs)
    logging.info(
        "BLEU %.4f [%s]; chrF %.4f [%s]",
        bleu_score.score,
        bleu_metric.get_signature(),
        chrf_score.score,
        chrf_metric.get_signature(),
    )
    return {"bleu": float(bleu_score.score), "chrf": float(chrf_score.score)}


def bleu_per_sample(
    targets: Sequence[str] | Sequence[Sequence[str]], predictions: Sequence[str]
) -> dict[str, list[float]]:
    """Sentence-level BLEU (sacrebleu ``sentence_bleu``: exp smoothing, effective order) and chrF per example."""
    _check_lengths(targets, predictions)
    refs = _references(targets)
    out: dict[str, list[float]] = {"bleu": [], "chrf": []}
    for index, prediction in enumerate(predictions):
        example_refs = [ref_set[index] for ref_set in refs]
        out["bleu"].append(float(sacrebleu.sentence_bleu(prediction, example_refs).score))
        out["chrf"].append(float(sacrebleu.sentence_chrf(prediction, example_refs).score))
    return out


def _check_lengths(targets: Sequence, predictions: Sequence) -> None:
    if len(targets) != len(predictions):
        raise ValueError(
            f"targets and predictions must align: got {len(targets)} targets and {len(predictions)} predictions"
        )
    for index, prediction in enumerate(predictions):
        if not isinstance(prediction, str):
            raise TypeError(f"prediction {index} must be a str, got {type(prediction).__name__}")
