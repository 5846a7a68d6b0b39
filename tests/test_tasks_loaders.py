"""SeqIO task loaders on small fixture files written here, in every source format, through the real
``seqio.get_mixture_or_task(...).get_dataset(...)`` path; bad data; subsets; vocabularies; TFDS source."""

from __future__ import annotations

import json
import logging as std_logging
import os
from unittest import mock

import numpy as np
import pytest
import seqio
import tensorflow_datasets as tfds

import iqlearn_jax.tasks as tasks
from iqlearn_jax.tasks import DataError, Subset

LENGTHS = {"inputs": 256, "targets": 128}


def _jsonl(path, rows, raw_lines=()):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        for line in raw_lines:
            f.write(line + "\n")


def _gsm8k_rows(n, prefix="q"):
    return [
        {
            "question": f"{prefix}{i}: what is {i}+1?",
            "answer": f"{i}+1 = <<{i}+1={i + 1}>>{i + 1}\n#### {i + 1}",
        }
        for i in range(n)
    ]


@pytest.fixture
def fixture_dir(tmp_path):
    """A data dir in the layout of ../shared/data with a few records per task and split."""
    root = tmp_path / "data"
    _jsonl(str(root / "gsm8k/train.jsonl"), _gsm8k_rows(10, "train"))
    _jsonl(str(root / "gsm8k/test.jsonl"), _gsm8k_rows(3, "test"))
    xsum = [
        {
            "id": str(i),
            "document": f"Sentence one of doc {i}.\nSentence two.",
            "summary": f"Doc {i} ü.",
        }
        for i in range(4)
    ]
    _jsonl(str(root / "xsum/xsum_validation_sample1000.jsonl"), xsum)
    _jsonl(str(root / "xsum/train.jsonl"), xsum[:2])
    tldr = [
        {
            "instruction_id": f"t3_{i}",
            "subreddit": "tifu",
            "title": f"Title {i}",
            "instruction": f"Post {i}",
            "gold_response": f" Summary {i} ",
        }
        for i in range(3)
    ]
    _jsonl(str(root / "tldr/tldr_filtered_test_sample500.jsonl"), tldr)
    wmt = root / "wmt22_en_de"
    wmt.mkdir()
    (wmt / "generaltest2022.en-de.src.en").write_text(
        "Hello world.\nGood morning.\n", encoding="utf-8"
    )
    (wmt / "generaltest2022.en-de.ref.A.de").write_text(
        "Hallo Welt.\nGuten Morgen.\n", encoding="utf-8"
    )
    (wmt / "train.tsv").write_text(
        "a cat\teine Katze\nthe dog\tder Hund\nyes\tja\n", encoding="utf-8"
    )
    return root


@pytest.fixture
def register(fixture_dir):
    """Registers the tasks on the fixture dir with a byte vocabulary; restores the previous options afterwards."""
    previous = tasks.current_options()

    def _register(**kwargs):
        kwargs.setdefault("data_dir", str(fixture_dir))
        kwargs.setdefault("vocabulary", "byte")
        return tasks.register_tasks(**kwargs)

    yield _register
    tasks.apply_options(previous)


def _examples(task_name, split, lengths=LENGTHS, **kwargs):
    task = seqio.get_mixture_or_task(task_name)
    ds = task.get_dataset(lengths, split=split, shuffle=False, **kwargs)
    return list(ds.as_numpy_iterator())


def _decode(vocab, ids):
    return vocab.decode([int(i) for i in ids if i not in (0, 1)])


def test_all_tasks_registered_on_import_and_reregistration_is_idempotent(register):
    for name in ("gsm8k", "xsum", "tldr", "wmt22_en_de"):
        assert name in seqio.TaskRegistry.names()
    assert register() == register()  # a second registration replaces, never raises
    import importlib

    importlib.reload(tasks.gsm8k)  # re-import safe as well
    assert isinstance(
        seqio.get_mixture_or_task("gsm8k").output_features["targets"].vocabulary,
        seqio.ByteVocabulary,
    )


def test_gsm8k_local_features_tokens_and_metric(register):
    register()
    examples = _examples("gsm8k", "train")
    assert len(examples) == 10
    vocab = seqio.ByteVocabulary()
    first = examples[0]
    assert first["inputs_pretokenized"].decode() == "question: train0: what is 0+1?"
    assert first["targets_pretokenized"].decode().endswith("#### 1")
    # Tokens are the UTF-8 bytes (+3) of the text followed by EOS=1.
    expected = [b + 3 for b in first["inputs_pretokenized"]] + [1]
    np.testing.assert_array_equal(first["inputs"], expected)
    assert _decode(vocab, first["targets"]) == first["targets_pretokenized"].decode()
    assert len(_examples("gsm8k", "test")) == 3
    task = seqio.get_mixture_or_task("gsm8k")
    assert task.metric_fns[0].__name__ == "gsm8k_accuracy"
    targets = [
        task.postprocess_fn(e["targets_pretokenized"].decode(), is_target=True) for e in examples
    ]
    assert task.metric_fns[0](targets, targets) == {"accuracy": 100.0}


def test_xsum_tldr_wmt_local_formats(register):
    register()
    xsum = _examples("xsum", "validation")
    assert [e["targets_pretokenized"].decode() for e in xsum] == [f"Doc {i} ü." for i in range(4)]
    assert (
        xsum[1]["inputs_pretokenized"].decode()
        == "summarize: Sentence one of doc 1.\nSentence two."
    )
    assert len(_examples("xsum", "train")) == 2
    tldr = _examples("tldr", "test")
    assert (
        tldr[2]["inputs_pretokenized"].decode()
        == "SUBREDDIT: r/tifu\nTITLE: Title 2\nPOST: Post 2\nTL;DR:"
    )
    assert tldr[2]["targets_pretokenized"].decode() == "Summary 2"
    wmt = _examples("wmt22_en_de", "test")
    assert [e["inputs_pretokenized"].decode() for e in wmt] == [
        "translate English to German: Hello world.",
        "translate English to German: Good morning.",
    ]
    assert [e["targets_pretokenized"].decode() for e in wmt] == ["Hallo Welt.", "Guten Morgen."]
    train = _examples("wmt22_en_de", "train")
    assert [e["targets_pretokenized"].decode() for e in train] == ["eine Katze", "der Hund", "ja"]
    metric_names = {
        n: seqio.get_mixture_or_task(n).metric_fns[0].__name__
        for n in ("xsum", "tldr", "wmt22_en_de")
    }
    assert metric_names == {"xsum": "rouge", "tldr": "rouge", "wmt22_en_de": "bleu"}


def test_full_split_file_takes_precedence_and_missing_file_is_named(register, fixture_dir):
    register()
    _jsonl(
        str(fixture_dir / "xsum/validation.jsonl"),
        [{"id": "9", "document": "d", "summary": "full file"}],
    )
    assert [e["targets_pretokenized"] for e in _examples("xsum", "validation")] == [b"full file"]
    with pytest.raises(FileNotFoundError, match=r"wmt22_en_de/validation.*validation\.tsv"):
        _examples("wmt22_en_de", "validation")


def test_truncation_keeps_eos(register):
    register()
    (example,) = _examples("gsm8k", "test", lengths={"inputs": 8, "targets": 4})[:1]
    assert len(example["inputs"]) == 8 and example["inputs"][-1] == 1
    assert len(example["targets"]) == 4 and example["targets"][-1] == 1


@pytest.mark.parametrize(
    "line, problem",
    [
        ('{"question": "q", "answer": "a #### 1"', "malformed JSON"),
        ('{"question": "q"}', "missing field"),
        ('{"question": "q", "answer": "   "}', "empty target"),
        ('{"question": 3, "answer": "#### 3"}', "must be strings"),
        ('["q", "a"]', "expected a JSON object"),
    ],
)
def test_bad_jsonl_record_names_file_and_line(register, fixture_dir, line, problem):
    path = fixture_dir / "gsm8k/test.jsonl"
    _jsonl(str(path), _gsm8k_rows(2), raw_lines=[line])
    register()
    with pytest.raises(DataError, match=rf"{path}:3: .*{problem}"):
        _examples("gsm8k", "test")


def test_bad_records_skipped_and_counted_when_allowed(register, fixture_dir, caplog):
    path = fixture_dir / "gsm8k/test.jsonl"
    _jsonl(str(path), _gsm8k_rows(2), raw_lines=["{oops", '{"question": "q"}', ""])
    register(skip_bad_records=True)
    with caplog.at_level(std_logging.WARNING):
        examples = _examples("gsm8k", "test")
    assert len(examples) == 2
    assert any(
        "skipped 2 bad record(s)" in r.getMessage() and str(path) in r.getMessage()
        for r in caplog.records
    )


def test_bad_tsv_and_misaligned_parallel_files(register, fixture_dir):
    wmt = fixture_dir / "wmt22_en_de"
    (wmt / "train.tsv").write_text("a\tb\nonly one column\n", encoding="utf-8")
    (wmt / "generaltest2022.en-de.ref.A.de").write_text("Hallo Welt.\n", encoding="utf-8")
    register()
    with pytest.raises(DataError, match=r"train\.tsv:2: expected 2 tab-separated columns"):
        _examples("wmt22_en_de", "train")
    with pytest.raises(DataError, match=r"not aligned.*has 2 lines.*has 1"):
        _examples("wmt22_en_de", "test")
    (wmt / "generaltest2022.en-de.ref.A.de").write_text("Hallo Welt.\n \n", encoding="utf-8")
    with pytest.raises(DataError, match=r"ref\.A\.de:2: empty line"):
        _examples("wmt22_en_de", "test")


def test_train_subsets_by_count_fraction_and_seed(register):
    def questions(**kwargs):
        register(**kwargs)
        return [
            e["inputs_pretokenized"].decode().split(":")[1].strip()
            for e in _examples("gsm8k", "train")
        ]

    assert questions(train_subset_count=3) == ["train0", "train1", "train2"]
    assert questions(train_subset_fraction=0.5) == [f"train{i}" for i in range(5)]
    seeded = questions(train_subset_count=4, train_subset_seed=7)
    assert seeded == questions(train_subset_count=4, train_subset_seed=7)  # deterministic
    assert len(seeded) == 4 and seeded == sorted(
        seeded, key=lambda q: int(q[5:])
    )  # kept in file order
    expected = sorted(np.random.default_rng(7).permutation(10)[:4])
    assert seeded == [f"train{i}" for i in expected]
    assert len(_examples("gsm8k", "test")) == 3  # evaluation splits are never subset
    with pytest.raises(ValueError, match="exceeds the 10 records"):
        questions(train_subset_count=11)


def test_bad_options_raise_clearly(register):
    with pytest.raises(ValueError, match="by count or by fraction, not both"):
        register(train_subset_count=2, train_subset_fraction=0.5)
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
        Subset(fraction=1.5)
    with pytest.raises(ValueError, match="unknown vocabulary 'gpt2'"):
        register(vocabulary="gpt2")
    with pytest.raises(ValueError, match="task 'tldr' has no source 'tfds'"):
        register(sources={"tldr": "tfds"})
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['nope'\]"):
        register(sources={"nope": "local"})
    with pytest.raises(ValueError, match="train_subset_seed=3 is only supported by local sources"):
        register(sources={"gsm8k": "tfds"}, train_subset_count=2, train_subset_seed=3)
    # A rejected registration leaves the previous one in place.
    assert tasks.current_options().sources == {}


def test_sentencepiece_model_path_vocabulary(register, fixture_dir, tmp_path):
    import sentencepiece as spm

    corpus = tmp_path / "corpus.txt"
    lines = [
        f"question: {r['question']} {r['answer']}"
        for p in ("train", "test")
        for r in _gsm8k_rows(30, p)
    ]
    corpus.write_text("\n".join(lines), encoding="utf-8")
    prefix = str(tmp_path / "tiny")
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=prefix,
        vocab_size=80,
        model_type="unigram",
        character_coverage=1.0,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        hard_vocab_limit=False,
    )
    register(vocabulary=prefix + ".model", extra_ids=5)
    vocab = seqio.get_mixture_or_task("gsm8k").output_features["inputs"].vocabulary
    assert isinstance(vocab, seqio.SentencePieceVocabulary) and vocab.extra_ids == 5
    (example,) = _examples("gsm8k", "test")[:1]
    assert example["inputs"][-1] == 1
    assert (
        vocab.decode([int(i) for i in example["inputs"][:-1]])
        == example["inputs_pretokenized"].decode()
    )


def test_default_vocabulary_is_t5_and_lazy():
    vocab = tasks.get_vocabulary("t5")
    assert isinstance(vocab, seqio.SentencePieceVocabulary)
    assert vocab.sentencepiece_model_file == "gs://t5-data/vocabs/cc_all.32000/sentencepiece.model"
    assert vocab.extra_ids == 100 and vocab._model is None  # nothing loaded (no network at import)
    assert isinstance(tasks.get_vocabulary("byte"), seqio.ByteVocabulary)


def test_gsm8k_tfds_source_on_a_locally_prepared_builder(register, tmp_path):
    """The real TFDS gsm8k builder, prepared from fixture files instead of its download URLs."""
    files = {}
    for split in ("train", "test", "train_socratic", "test_socratic"):
        files[split] = str(tmp_path / f"{split}.jsonl")
        _jsonl(files[split], _gsm8k_rows(5, split))
    tfds_dir = str(tmp_path / "tfds")
    with mock.patch.object(
        tfds.download.DownloadManager, "download_and_extract", lambda self, urls: files
    ):
        tfds.builder("gsm8k", data_dir=tfds_dir).download_and_prepare()
    register(sources={"gsm8k": "tfds"}, tfds_data_dir=tfds_dir, train_subset_count=3)
    train = _examples("gsm8k", "train")
    assert len(train) == 3
    assert all(e["inputs_pretokenized"].startswith(b"question: train") for e in train)
    test = _examples("gsm8k", "test")
    assert sorted(e["targets_pretokenized"].decode() for e in test) == sorted(
        r["answer"] for r in _gsm8k_rows(5)
    )


def test_sharded_reading_covers_each_record_once(register):
    register()
    shards = [
        _examples("gsm8k", "train", shard_info=seqio.ShardInfo(index=i, num_shards=2))
        for i in range(2)
    ]
    got = sorted(e["inputs_pretokenized"] for shard in shards for e in shard)
    assert got == sorted(e["inputs_pretokenized"] for e in _examples("gsm8k", "train"))
