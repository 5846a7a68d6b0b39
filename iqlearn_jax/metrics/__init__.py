"""Metrics: task metrics (ROUGE, BLEU, chrF, GSM8k accuracy), diversity (Self-BLEU, entropy) and reward correlation.

Every metric takes lists of strings and returns a dict of floats on a 0–100 scale (accuracy in %).
"""

from iqlearn_jax.metrics.correlation import (  # noqa: F401
    average_ranks,
    reward_metric_correlations,
    spearman,
)
from iqlearn_jax.metrics.diversity import (  # noqa: F401
    distinct_n,
    diversity_metrics,
    mean_token_entropy,
    ngram_entropy,
    per_prompt_self_bleu,
    self_bleu,
)
from iqlearn_jax.metrics.task_metrics import (  # noqa: F401
    BLEU_SIGNATURE,
    CHRF_SIGNATURE,
    bleu,
    bleu_per_sample,
    gsm8k_accuracy,
    gsm8k_correct_per_sample,
    gsm8k_extract_answer,
    gsm8k_postprocess,
    rouge,
    rouge_per_sample,
    split_sentences,
)
