"""The registered tasks on the real public files in IQLEARN_DATA_DIR (../shared/data), through
``seqio.get_mixture_or_task(...).get_dataset(...)`` with a byte vocabulary; skipped when the folder is absent."""

from __future__ import annotations

import json

import numpy as np
import pytest
import seqio

import iqlearn_jax.tasks as tasks
from iqlearn_jax import metrics

pytestmark = pytest.mark.real_data
LENGTHS = {"inputs": 2048, "targets": 512}


@pytest.fixture(scope="module")
def registered(data_dir):
    previous = tasks.current_options()
    tasks.register_tasks(data_dir=str(data_dir), vocabulary="byte")
    yield data_dir
    tasks.apply_options(previous)


def _examples(name, split):
    ds = seqio.get_mixture_or_task(name).get_dataset(LENGTHS, split=split, shuffle=False)
    return list(ds.as_numpy_iterator())


def _check_features(example):
    vocab = seqio.ByteVocabulary()
    for key in ("inputs", "targets"):
        assert example[key].dtype == np.int32 and example[key][-1] == 1 and 0 not in example[key]
        text = example[f"{key}_pretokenized"]
        if len(text) + 1 <= LENGTHS[key]:  # untruncated: the tokens are exactly the bytes, then EOS
            assert vocab.decode(example[key][:-1].tolist()) == text.decode("utf-8")


def test_gsm8k_pipeline_counts_features_and_gold_answers(registered):
    counts = {}
    for split, expected in (("train", 7473), ("test", 1319)):
        examples = _examples("gsm8k", split)
        counts[split] = len(examples)
        assert len(examples) == expected
        for example in examples[:50]:
            _check_features(example)
        with open(registered / "gsm8k" / f"{split}.jsonl", encoding="utf-8") as f:
            raw = [json.loads(line) for line in f]
        assert [e["inputs_pretokenized"].decode() for e in examples] == [
            f"question: {r['question']}" for r in raw
        ]
        gold = [e["targets_pretokenized"].decode() for e in examples]
        assert gold == [r["answer"] for r in raw]
        assert all(
            metrics.gsm8k_extract_answer(g) is not None for g in gold
        )  # every gold answer parses
        assert metrics.gsm8k_accuracy(gold, gold) == {"accuracy": 100.0}
    print("gsm8k examples:", counts)


def test_tldr_pipeline_yields_all_500_posts(registered):
    examples = _examples("tldr", "test")
    assert len(examples) == 500
    with open(registered / "tldr" / "tldr_filtered_test_sample500.jsonl", encoding="utf-8") as f:
        raw = [json.loads(line) for line in f if line.strip()]
    assert [e["targets_pretokenized"].decode() for e in examples] == [
        r["gold_response"].strip() for r in raw
    ]
    first = examples[0]["inputs_pretokenized"].decode()
    assert first.startswith(f"SUBREDDIT: r/{raw[0]['subreddit']}\nTITLE: {raw[0]['title']}\nPOST: ")
    assert first.endswith("\nTL;DR:")
    for example in examples[:20]:
        _check_features(example)


def test_xsum_validation_and_wmt22_test_pipelines(registered):
    xsum = _examples("xsum", "validation")
    assert len(xsum) == 1000  # includes the one record with an empty document (id 32556640)
    assert sum(e["inputs_pretokenized"] == b"summarize: " for e in xsum) == 1
    wmt = _examples("wmt22_en_de", "test")
    assert len(wmt) == 2037
    ref_a = (
        (registered / "wmt22_en_de" / "generaltest2022.en-de.ref.A.de")
        .read_text(encoding="utf-8")
        .splitlines()
    )
    assert [e["targets_pretokenized"].decode() for e in wmt] == ref_a
    for example in xsum[:20] + wmt[:20]:
        _check_features(example)


def test_importing_with_byte_vocabulary_registers_every_task_with_bytes(data_dir):
    """The module T5X imports through MIXTURE_OR_TASK_MODULE (a fresh interpreter: it changes the registry)."""
    import os
    import subprocess
    import sys

    code = (
        "import seqio, iqlearn_jax.tasks.with_byte_vocabulary as m\n"
        "for name in ('gsm8k', 'xsum', 'tldr', 'wmt22_en_de'):\n"
        "    assert name in m.REGISTERED_TASKS, name\n"
        "    task = seqio.get_mixture_or_task(name)\n"
        "    for feature in task.output_features.values():\n"
        "        assert isinstance(feature.vocabulary, seqio.ByteVocabulary), (name, feature)\n"
        "ds = seqio.get_mixture_or_task('gsm8k').get_dataset(\n"
        "    {'inputs': 64, 'targets': 64}, split='test', shuffle=False)\n"
        "first = next(ds.as_numpy_iterator())\n"
        "print(bytes(int(t) - 3 for t in first['inputs'][:40]).decode(errors='ignore'))\n"
    )
    env = dict(os.environ, IQLEARN_DATA_DIR=str(data_dir))
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    first_question = json.loads((data_dir / "gsm8k" / "test.jsonl").open().readline())["question"]
    assert first_question[:10] in result.stdout
