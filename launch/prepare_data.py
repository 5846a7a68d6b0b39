"""Exports the Hugging Face datasets to the local file formats the iqlearn_jax tasks read (run on a connected machine).

    pip install datasets
    python launch/prepare_data.py --task=gsm8k --out_dir=/data/iqlearn      # -> /data/iqlearn/gsm8k/{train,test}.jsonl
    python launch/prepare_data.py --task=xsum  --out_dir=/data/iqlearn      # -> xsum/{train,validation,test}.jsonl
    python launch/prepare_data.py --task=tldr  --out_dir=/data/iqlearn      # -> tldr/{train,validation,test}.jsonl
    python launch/prepare_data.py --task=wmt   --out_dir=/data/iqlearn --max_examples=5000000  # -> wmt22_en_de/*.tsv

then train with ``IQLEARN_DATA_DIR=/data/iqlearn`` (or ``--gin.register_tasks.data_dir="'/data/iqlearn'"``).
The WMT22 test files (generaltest2022.en-de.*) are not on the Hugging Face hub in this form: copy them from
https://github.com/wmt-conference/wmt22-news-systems (``txt/sources``, ``txt/references``) or ``sacrebleu -t wmt22
-l en-de --echo src/ref``.

Formats (see iqlearn_jax/tasks/*.py): JSON Lines with the fields the tasks read; WMT pairs as ``english<TAB>german``
lines. The conversion functions are pure (iterables of dicts in, records out) so they are tested without network.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping

HF_DATASETS = {
    "gsm8k": ("openai/gsm8k", "main", {"train": "train", "test": "test"}),
    "xsum": (
        "EdinburghNLP/xsum",
        None,
        {"train": "train", "validation": "validation", "test": "test"},
    ),
    "tldr": (
        "vwxyzjn/summarize_from_feedback_tldr_3_filtered",
        None,
        {"train": "train", "validation": "validation", "test": "test"},
    ),
    "wmt": ("wmt/wmt19", "de-en", {"train": "train", "validation": "validation"}),
}
OUT_SUBDIR = {"gsm8k": "gsm8k", "xsum": "xsum", "tldr": "tldr", "wmt": "wmt22_en_de"}

_TLDR_PROMPT = re.compile(
    r"^\s*SUBREDDIT: r/(?P<subreddit>.*?)\s*\n\s*TITLE: (?P<title>.*?)\s*\n\s*POST: (?P<post>.*?)\s*\n\s*TL;DR:\s*$",
    re.DOTALL,
)


def _require(row: Mapping, fields: Iterable[str], where: str) -> None:
    missing = [f for f in fields if f not in row or not isinstance(row[f], str)]
    if missing:
        raise ValueError(
            f"{where}: missing or non-string field(s) {missing}; got fields {sorted(row)}"
        )


def gsm8k_records(rows: Iterable[Mapping]) -> Iterator[dict[str, str]]:
    """HF openai/gsm8k rows -> ``{"question", "answer"}`` (the answer must end with a ``#### N`` line)."""
    for index, row in enumerate(rows):
        _require(row, ("question", "answer"), f"gsm8k row {index}")
        if "####" not in row["answer"]:
            raise ValueError(f"gsm8k row {index}: answer has no '#### <answer>' line")
        yield {"question": row["question"], "answer": row["answer"]}


def xsum_records(rows: Iterable[Mapping]) -> Iterator[dict[str, str]]:
    """HF EdinburghNLP/xsum rows -> ``{"id", "document", "summary"}``; rows with an empty summary are dropped."""
    for index, row in enumerate(rows):
        _require(row, ("document", "summary"), f"xsum row {index}")
        if row["summary"].strip():
            yield {
                "id": str(row.get("id", index)),
                "document": row["document"],
                "summary": row["summary"].strip(),
            }


def parse_tldr_prompt(prompt: str) -> dict[str, str]:
    """Splits an OpenAI/TRL/CarperAI TL;DR prompt into subreddit, title and post (single or double newlines)."""
    match = _TLDR_PROMPT.match(prompt)
    if match is None:
        raise ValueError(
            f"not a 'SUBREDDIT: r/...\\nTITLE: ...\\nPOST: ...\\nTL;DR:' prompt: {prompt[:120]!r}"
        )
    return match.groupdict()


def tldr_records(rows: Iterable[Mapping], split: str = "test") -> Iterator[dict[str, str]]:
    """TL;DR rows in any of three HF layouts -> ``{"instruction_id", "subreddit", "title", "instruction",
    "gold_response"}`` (the layout of ../shared/data/tldr):

    - vwxyzjn/summarize_from_feedback_tldr_3_filtered: ``id, subreddit, title, post, summary``;
    - trl-lib/tldr: ``prompt, completion``;  CarperAI/openai_summarize_tldr: ``prompt, label``.
    """
    for index, row in enumerate(rows):
        if "post" in row:
            _require(row, ("subreddit", "title", "post", "summary"), f"tldr row {index}")
            fields = {"subreddit": row["subreddit"], "title": row["title"], "post": row["post"]}
            summary, post_id = row["summary"], str(row.get("id", f"{split}-{index}"))
        else:
            target = "completion" if "completion" in row else "label"
            _require(row, ("prompt", target), f"tldr row {index}")
            fields, summary, post_id = (
                parse_tldr_prompt(row["prompt"]),
                row[target],
                f"{split}-{index}",
            )
        if not summary.strip():
            continue
        yield {
            "instruction_id": post_id,
            "subreddit": fields["subreddit"],
            "title": fields["title"],
            "instruction": fields["post"],
            "gold_response": summary.strip(),
        }


def _one_line(text: str) -> str:
    return " ".join(text.replace("\t", " ").split())


def wmt_pairs(rows: Iterable[Mapping], max_examples: int | None = None) -> Iterator[str]:
    """HF wmt rows ``{"translation": {"de": ..., "en": ...}}`` -> ``"english\\tgerman"`` lines (whitespace runs,
    tabs and newlines collapsed to one space; pairs with an empty side dropped)."""
    count = 0
    for index, row in enumerate(rows):
        pair = row.get("translation") if isinstance(row, Mapping) else None
        if not isinstance(pair, Mapping) or not {"en", "de"} <= set(pair):
            raise ValueError(
                f"wmt row {index}: expected {{'translation': {{'en': ..., 'de': ...}}}}, got {row!r:.120}"
            )
        en, de = _one_line(pair["en"]), _one_line(pair["de"])
        if en and de:
            yield f"{en}\t{de}"
            count += 1
            if max_examples is not None and count >= max_examples:
                return


def write_jsonl(path: str, records: Iterable[Mapping]) -> int:
    """Writes records as UTF-8 JSON Lines; returns how many."""
    count = 0
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count


def write_lines(path: str, lines: Iterable[str]) -> int:
    count = 0
    with open(path, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")
            count += 1
    return count


def export(task: str, out_dir: str, max_examples: int | None = None) -> dict[str, int]:
    """Downloads ``task`` from the HF hub and writes its files under ``out_dir/<task folder>``; returns counts."""
    import datasets  # only needed here, on a connected machine

    name, config, splits = HF_DATASETS[task]
    folder = os.path.join(out_dir, OUT_SUBDIR[task])
    os.makedirs(folder, exist_ok=True)
    counts = {}
    for local_split, hf_split in splits.items():
        rows = datasets.load_dataset(name, config, split=hf_split, streaming=task == "wmt")
        if task == "wmt":
            counts[local_split] = write_lines(
                os.path.join(folder, f"{local_split}.tsv"), wmt_pairs(rows, max_examples)
            )
            continue
        convert = {"gsm8k": gsm8k_records, "xsum": xsum_records}.get(task)
        records = convert(rows) if convert else tldr_records(rows, local_split)
        counts[local_split] = write_jsonl(os.path.join(folder, f"{local_split}.jsonl"), records)
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", required=True, choices=sorted(HF_DATASETS))
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--max_examples", type=int, default=None, help="cap on WMT training pairs")
    args = parser.parse_args(argv)
    for split, count in export(args.task, args.out_dir, args.max_examples).items():
        print(f"{args.task}/{split}: {count} records")


if __name__ == "__main__":
    main()
