"""Diversity metrics against direct nltk / sacrebleu / numpy computations written here."""

import math
import random
from collections import Counter

import numpy as np
import pytest
import sacrebleu
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

from iqlearn_jax.metrics import diversity


def _random_texts(rng, num, vocab=12, max_len=14):
    words = [f"w{i}" for i in range(vocab)] + [",", ".", "48/2", "<<3*4=12>>"]
    texts = []
    for _ in range(num):
        length = rng.randint(0, max_len)
        texts.append(" ".join(rng.choice(words) for _ in range(length)))
    return texts


def _nltk_self_bleu(texts, order, tokenize):
    """Texygen's get_bleu_parallel written out with nltk: each text vs all others."""
    toks = [tokenize(t) for t in texts]
    weights = tuple(1.0 / order for _ in range(order))
    smooth = SmoothingFunction().method1
    scores = [
        sentence_bleu(toks[:i] + toks[i + 1 :], hyp, weights, smoothing_function=smooth)
        for i, hyp in enumerate(toks)
    ]
    return 100.0 * sum(scores) / len(scores)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_self_bleu_equals_nltk(seed):
    rng = random.Random(seed)
    texts = _random_texts(rng, 40)
    texts += [texts[0], texts[3]]  # exact duplicates (self-BLEU must exclude only the text itself)
    texts += ["", "w1"]  # empty and one-token texts
    tok13a = Tokenizer13a()
    for order in (1, 2, 3, 4):
        got = diversity.self_bleu(texts, max_order=order, sample_size=None)
        want = _nltk_self_bleu(texts, order, lambda s: tok13a(s).split())
        assert got[f"self_bleu{order}"] == pytest.approx(want, abs=1e-9)
    got = diversity.self_bleu(
        texts, max_order=3, sample_size=None, tokenizer="whitespace", extra_orders=(4,)
    )
    assert got["self_bleu3"] == pytest.approx(_nltk_self_bleu(texts, 3, str.split), abs=1e-9)
    assert got["self_bleu4"] == pytest.approx(_nltk_self_bleu(texts, 4, str.split), abs=1e-9)
    assert "method1" in got["self_bleu_definition"]


def test_self_bleu_fixed_sample():
    texts = _random_texts(random.Random(5), 30)
    a = diversity.self_bleu(texts, sample_size=10, seed=3)
    b = diversity.self_bleu(list(texts), sample_size=10, seed=3)
    assert a == b and a["self_bleu_num_texts"] == 10
    idx = sorted(random.Random(3).sample(range(30), 10))
    tok = Tokenizer13a()
    want = _nltk_self_bleu([texts[i] for i in idx], 3, lambda s: tok(s).split())
    assert a["self_bleu3"] == pytest.approx(want, abs=1e-9)
    # Identical texts are maximally similar, disjoint ones minimally.
    assert diversity.self_bleu(["a b c d"] * 4)["self_bleu3"] == pytest.approx(100.0)
    assert diversity.self_bleu(["a b c", "d e f", "g h i"])["self_bleu3"] == 0.0


def test_self_bleu_bad_input():
    with pytest.raises(ValueError, match="at least 2"):
        diversity.self_bleu(["only one"])
    with pytest.raises(ValueError, match="max_order"):
        diversity.self_bleu(["a", "b"], max_order=0)
    with pytest.raises(ValueError, match="tokenizer"):
        diversity.self_bleu(["a", "b"], tokenizer="nope")


def test_per_prompt_self_bleu_equals_sacrebleu():
    rng = random.Random(7)
    groups = [_random_texts(rng, 4, max_len=10) for _ in range(5)] + [["lonely"]]
    got = diversity.per_prompt_self_bleu(groups)
    per_prompt = []
    for g in groups[:-1]:
        s = [sacrebleu.sentence_bleu(h, g[:i] + g[i + 1 :]).score for i, h in enumerate(g)]
        per_prompt.append(sum(s) / len(s))
    assert got["per_prompt_self_bleu"] == pytest.approx(sum(per_prompt) / len(per_prompt), abs=1e-9)
    assert got["per_prompt_self_bleu_num_prompts"] == 5
    with pytest.raises(ValueError):
        diversity.per_prompt_self_bleu([["a"], ["b"]])


def test_entropies():
    texts = ["a b a", "c a"]
    # unigrams a:3 b:1 c:1 -> entropy in nats
    p = np.array([3, 1, 1]) / 5
    assert diversity.ngram_entropy(texts, 1) == pytest.approx(float(-(p * np.log(p)).sum()))
    bigrams = Counter([("a", "b"), ("b", "a"), ("c", "a")])
    assert diversity.ngram_entropy(texts, 2) == pytest.approx(math.log(len(bigrams)))
    assert diversity.distinct_n(texts, 1) == pytest.approx(100 * 3 / 5)
    assert diversity.ngram_entropy([""], 1) == 0.0
    ent = np.array([[1.0, 2.0, 9.0], [3.0, 9.0, 9.0]])
    w = np.array([[1, 1, 0], [1, 0, 0]])
    assert diversity.mean_token_entropy(ent, w) == pytest.approx(2.0)
