"""launch/prepare_data.py conversions on in-memory rows (no network), read back through the real task loaders,
and the task gin files."""

from __future__ import annotations

import importlib.util
import pathlib

import gin
import pytest
import seqio

import iqlearn_jax.tasks as tasks

REPO = pathlib.Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("prepare_data", REPO / "launch" / "prepare_data.py")
prepare_data = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(prepare_data)


def test_exported_files_load_through_the_tasks(tmp_path):
    root = tmp_path / "data"
    for sub in ("gsm8k", "xsum", "tldr", "wmt22_en_de"):
        (root / sub).mkdir(parents=True)
    gsm = [{"question": "1+1?", "answer": "1+1=<<1+1=2>>2\n#### 2", "extra": 0}]
    assert (
        prepare_data.write_jsonl(str(root / "gsm8k/test.jsonl"), prepare_data.gsm8k_records(gsm))
        == 1
    )
    xsum = [
        {"document": "A.\nB.", "summary": " S. ", "id": "7"},
        {"document": "x", "summary": "", "id": "8"},
    ]
    assert (
        prepare_data.write_jsonl(str(root / "xsum/test.jsonl"), prepare_data.xsum_records(xsum))
        == 1
    )
    tldr = [
        {
            "id": "t3_a",
            "subreddit": "tifu",
            "title": "T",
            "post": "P",
            "summary": " S1",
        },  # vwxyzjn layout
        {
            "prompt": "SUBREDDIT: r/AskReddit\n\nTITLE: Why?\n\nPOST: Because.\nSecond line.\n\nTL;DR:",
            "completion": " S2",
        },  # trl-lib/tldr
        {"prompt": "SUBREDDIT: r/dogs\nTITLE: Dog\nPOST: Woof\nTL;DR: ", "label": "S3"},  # CarperAI
    ]
    assert (
        prepare_data.write_jsonl(str(root / "tldr/test.jsonl"), prepare_data.tldr_records(tldr))
        == 3
    )
    wmt = [
        {"translation": {"de": "Ein\tHund", "en": "A\n dog"}},
        {"translation": {"de": "", "en": "x"}},
        {"translation": {"de": "Katze", "en": "cat"}},
    ]
    assert (
        prepare_data.write_lines(str(root / "wmt22_en_de/train.tsv"), prepare_data.wmt_pairs(wmt))
        == 2
    )
    assert list(prepare_data.wmt_pairs(wmt, max_examples=1)) == ["A dog\tEin Hund"]

    previous = tasks.current_options()
    try:
        tasks.register_tasks(data_dir=str(root), vocabulary="byte")

        def load(name, split, key):
            ds = seqio.get_mixture_or_task(name).get_dataset(
                {"inputs": 128, "targets": 64}, split=split, shuffle=False
            )
            return [ex[key].decode() for ex in ds.as_numpy_iterator()]

        assert load("gsm8k", "test", "targets_pretokenized") == ["1+1=<<1+1=2>>2\n#### 2"]
        assert load("xsum", "test", "targets_pretokenized") == ["S."]
        assert load("tldr", "test", "targets_pretokenized") == ["S1", "S2", "S3"]
        assert load("tldr", "test", "inputs_pretokenized")[1] == (
            "SUBREDDIT: r/AskReddit\nTITLE: Why?\nPOST: Because.\nSecond line.\nTL;DR:"
        )
        assert load("wmt22_en_de", "train", "targets_pretokenized") == ["Ein Hund", "Katze"]
    finally:
        tasks.apply_options(previous)


def test_conversion_errors_name_the_row():
    with pytest.raises(ValueError, match="gsm8k row 0: answer has no '#### <answer>' line"):
        list(prepare_data.gsm8k_records([{"question": "q", "answer": "no marker"}]))
    with pytest.raises(
        ValueError, match=r"xsum row 1: missing or non-string field\(s\) \['summary'\]"
    ):
        list(prepare_data.xsum_records([{"document": "d", "summary": "s"}, {"document": "d"}]))
    with pytest.raises(ValueError, match="not a 'SUBREDDIT"):
        list(prepare_data.tldr_records([{"prompt": "hello", "completion": "x"}]))
    with pytest.raises(ValueError, match="wmt row 0: expected"):
        list(prepare_data.wmt_pairs([{"de": "x", "en": "y"}]))


@pytest.mark.parametrize("name", ["gsm8k", "xsum", "tldr", "wmt22_en_de"])
def test_task_gin_files_parse_and_register(name):
    from iqlearn_jax import train  # noqa: F401 - the gin files configure train.eval_split

    path = REPO / "gin_configs" / "tasks" / f"{name}.gin"
    assert path.read_text(encoding="utf-8").startswith("# ")
    assert "python -m iqlearn_jax.train" in path.read_text(encoding="utf-8").splitlines()[1]
    previous = tasks.current_options()
    gin.clear_config()
    try:
        gin.parse_config_files_and_bindings(
            [str(path)], ["TASK_VOCABULARY = 'byte'"], finalize_config=False
        )
        assert gin.query_parameter("%MIXTURE_OR_TASK_NAME") == name
        tasks.register_tasks()
        vocab = seqio.get_mixture_or_task(name).output_features["targets"].vocabulary
        assert isinstance(vocab, seqio.ByteVocabulary)
    finally:
        gin.clear_config()
        tasks.apply_options(previous)
