"""`synthetic_arithmetic`: GSM8k-shaped word problems generated deterministically from a seed (no files).

Each example is a short story about one quantity changed by `num_steps` operations (+, -, *, /), e.g.

    inputs:  "Mia has 12 shells. She finds 7 more shells. Then she gives away 4 shells.
              How many shells does Mia have now?"
    targets: "Mia finds 7 more, so she has 12+7 = <<12+7=19>>19 shells.\n
              She gives away 4, so she has 19-4 = <<19-4=15>>15 shells.\n#### 15"

Working lines carry GSM8k's calculator annotations `<<a op b=c>>` and the answer ends in `#### N`. Example `i` of a
split depends only on (seed, split, i), so datasets are reproducible and random-access. Difficulty = number of
steps (longer targets). Vocabulary: seqio.ByteVocabulary (259 ids: PAD 0, EOS 1, UNK 2, bytes from 3).

Varied phrasings (`varied=True`, tasks `synthetic_arithmetic_varied_{n}step`): each working line is drawn from
several templates that are all correct (different wording, the commutative operands of + and * in either order,
the result stated before or after the calculation), e.g. for the problem above

    "12+7 = <<12+7=19>>19, so Mia now has 19 shells."   or   "Mia finds 7 more: 7+12 = <<7+12=19>>19 shells."

so a demonstration is one of several equally good answers and sampling diversity has something to preserve. The
template choice is drawn per example and per line from the same seeded generator (deterministic by seed); the
non-varied tasks draw exactly the same examples as before the option existed.

Registered tasks: `synthetic_arithmetic` (1–3 steps), `synthetic_arithmetic_{n}step` for n = 1..8,
`synthetic_arithmetic_varied_{n}step` for n = 1..4; `register_synthetic_arithmetic(name, min_steps, max_steps,
seed, varied)` registers more.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

import numpy as np
import seqio
import tensorflow as tf

SPLIT_SIZES = {"train": 100_000, "validation": 1_000, "test": 1_000}
MAX_VALUE = 999

_NAMES = (
    "Mia",
    "Noah",
    "Ava",
    "Liam",
    "Zoe",
    "Omar",
    "Ines",
    "Kenji",
    "Lena",
    "Ravi",
    "Sara",
    "Tom",
)
_PRONOUN = {
    n: ("she" if n in {"Mia", "Ava", "Zoe", "Ines", "Lena", "Sara"} else "he") for n in _NAMES
}
_ITEMS = (
    "apples",
    "shells",
    "stickers",
    "marbles",
    "cookies",
    "books",
    "coins",
    "pencils",
    "stamps",
    "cards",
)

_ANSWER_RE = re.compile(r"####\s*(-?[\d,]+(?:\.\d+)?)")


def _operation(rng: random.Random, value: int) -> tuple[str, int]:
    """One step (op symbol, operand) that keeps the value a whole number in [0, MAX_VALUE]."""
    choices = ["+"]
    if value > 1:
        choices.append("-")
    if 2 * value <= MAX_VALUE:
        choices.append("*")
    if any(value % d == 0 for d in (2, 3, 4, 5)) and value > 1:
        choices.append("/")
    op = rng.choice(choices)
    if op == "+":
        return op, rng.randint(1, min(50, MAX_VALUE - value) or 1)
    if op == "-":
        return op, rng.randint(1, value - 1)
    if op == "*":
        return op, rng.randint(2, max(2, min(5, MAX_VALUE // value)))
    return op, rng.choice([d for d in (2, 3, 4, 5) if value % d == 0])


_VERBS = {
    "+": "finds {n} more",
    "-": "gives away {n}",
    "*": "gets {n} times as many",
    "/": "keeps 1 of {n} piles",
}
# Templates of one working line in the varied task: {why} = "<Who> <verb>", {expr} = the calculation
# (operands possibly swapped for + and *), {calc} = "<<expr=result>>result", {he}, {who}, {items}, {r}.
_VARIED_TEMPLATES = (
    "{why}, so {he} has {expr} = {calc} {items}.",
    "{why}: {expr} = {calc} {items}.",
    "{expr} = {calc}, so {who} now has {r} {items}.",
    "Now {he} has {expr} = {calc} {items}.",
)


def _varied_line(
    rng: random.Random, op: str, value: int, n: int, result: int, who: str, he: str, items: str
) -> str:
    """One working line drawn from `_VARIED_TEMPLATES` (operand order of + and * drawn too)."""
    a, b = (n, value) if op in "+*" and rng.random() < 0.5 else (value, n)
    expr = f"{a}{op}{b}"
    template = rng.choice(_VARIED_TEMPLATES)
    why = f"{who} {_VERBS[op].format(n=n)}"
    calc = f"<<{expr}={result}>>{result}"
    line = template.format(why=why, he=he, who=who, expr=expr, calc=calc, items=items, r=result)
    return line[0].upper() + line[1:]


def make_problem(rng: random.Random, num_steps: int, varied: bool = False) -> dict[str, str]:
    """A word problem with `num_steps` operations: {'question', 'answer', 'final'} (strings).

    `varied`: working lines drawn from several equally correct templates (see module docstring).
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    name = rng.choice(_NAMES)
    he = _PRONOUN[name]
    his = "her" if he == "she" else "his"
    items = rng.choice(_ITEMS)
    value = rng.randint(2, 60)
    story = [f"{name} has {value} {items}."]
    work = []
    for k in range(num_steps):
        op, n = _operation(rng, value)
        result = {"+": value + n, "-": value - n, "*": value * n, "/": value // max(n, 1)}[op]
        who = name if k == 0 else he.capitalize()
        then = "" if k == 0 else "Then "
        subject = name if k == 0 else he
        if op == "+":
            story.append(f"{then}{subject} finds {n} more {items}.")
            why = f"{who} finds {n} more, so {he} has"
        elif op == "-":
            story.append(f"{then}{subject} gives away {n} {items}.")
            why = f"{who} gives away {n}, so {he} has"
        elif op == "*":
            story.append(f"{then}{subject} ends up with {n} times as many {items}.")
            why = f"{who} has {n} times as many, so {he} has"
        else:
            story.append(
                f"{then}{subject} splits {his} {items} into {n} equal piles and keeps one pile."
            )
            why = f"{who} keeps one of {n} piles, so {he} has"
        story[-1] = story[-1][0].upper() + story[-1][1:]
        if varied:
            work.append(_varied_line(rng, op, value, n, result, who, he, items))
        else:
            expr = f"{value}{op}{n}"
            work.append(f"{why} {expr} = <<{expr}={result}>>{result} {items}.")
        value = result
    question = " ".join(story) + f" How many {items} does {name} have now?"
    answer = "\n".join(work) + f"\n#### {value}"
    return {"question": question, "answer": answer, "final": str(value)}


def example(
    seed: int, split: str, index: int, min_steps: int, max_steps: int, varied: bool = False
) -> dict[str, str]:
    """Example `index` of `split`: a pure function of its arguments."""
    rng = random.Random(f"synthetic_arithmetic/{seed}/{split}/{index}")
    return make_problem(rng, rng.randint(min_steps, max_steps), varied)


def _dataset_fn(min_steps: int, max_steps: int, data_seed: int, varied: bool, sizes: dict):
    def dataset_fn(
        split: str, shuffle_files: bool = False, seed: int | None = None
    ) -> tf.data.Dataset:
        del shuffle_files, seed  # generation is already seeded; SeqIO's shuffle does the shuffling
        if split not in SPLIT_SIZES:
            raise ValueError(
                f"synthetic_arithmetic has splits {sorted(SPLIT_SIZES)}, got {split!r}"
            )

        def make(index):
            ex = example(data_seed, split, int(index), min_steps, max_steps, varied)
            return ex["question"], ex["answer"], ex["final"]

        def to_example(index):
            fields = tf.py_function(make, [index], [tf.string] * 3)
            for field in fields:
                field.set_shape(())
            return dict(zip(("question", "answer", "final"), fields, strict=True))

        # A range + a pure function of the index, not from_generator: tf.data can checkpoint its position, so a
        # resumed training run restores the data iterator instead of replaying it (iqlearn_jax.data_pipeline).
        return tf.data.Dataset.range(sizes[split]).map(to_example)

    return dataset_fn


def _to_inputs_targets(ds: tf.data.Dataset) -> tf.data.Dataset:
    return ds.map(
        lambda ex: {"inputs": ex["question"], "targets": ex["answer"], "final": ex["final"]},
        num_parallel_calls=tf.data.AUTOTUNE,
    )


def extract_answer(text: str) -> str | None:
    """The number after `####` (commas removed), or None."""
    match = _ANSWER_RE.search(text)
    return match.group(1).replace(",", "") if match else None


def postprocess(output: str, example: dict | None = None, is_target: bool = False) -> str | None:
    del example, is_target
    return extract_answer(output)


def answer_accuracy(
    targets: Sequence[str | None], predictions: Sequence[str | None]
) -> dict[str, float]:
    """Exact-answer accuracy in percent: predicted `#### N` equals the reference N (numeric compare)."""

    def same(t, p):
        if t is None or p is None:
            return False
        try:
            return float(t) == float(p)
        except ValueError:
            return t == p

    hits = [same(t, p) for t, p in zip(targets, predictions, strict=True)]
    return {"answer_accuracy": 100.0 * float(np.mean(hits)) if hits else 0.0}


def register_synthetic_arithmetic(
    name: str,
    min_steps: int = 1,
    max_steps: int = 3,
    seed: int = 0,
    varied: bool = False,
    train_size: int | None = None,
) -> seqio.Task:
    """Registers (or replaces) a synthetic arithmetic task with steps drawn uniformly in [min_steps, max_steps].

    `varied`: working lines in several equally correct phrasings (module docstring). `train_size`: keep only the
    first `train_size` train examples (dataset-size ablations; validation and test unchanged).
    """
    if not 1 <= min_steps <= max_steps:
        raise ValueError(f"need 1 <= min_steps <= max_steps, got {min_steps}, {max_steps}")
    sizes = dict(SPLIT_SIZES)
    if train_size is not None:
        if not 1 <= train_size <= SPLIT_SIZES["train"]:
            raise ValueError(f"train_size must be in [1, {SPLIT_SIZES['train']}], got {train_size}")
        sizes["train"] = int(train_size)
    vocab = seqio.ByteVocabulary()
    features = {
        "inputs": seqio.Feature(vocab, add_eos=True),
        "targets": seqio.Feature(vocab, add_eos=True),
    }
    seqio.TaskRegistry.remove(name)
    return seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(
            _dataset_fn(min_steps, max_steps, seed, varied, sizes),
            splits=tuple(sizes),
            num_input_examples=sizes,
        ),
        preprocessors=[
            _to_inputs_targets,
            seqio.preprocessors.tokenize,
            seqio.preprocessors.append_eos_after_trim,
        ],
        output_features=features,
        postprocess_fn=postprocess,
        metric_fns=[answer_accuracy],
    )


register_synthetic_arithmetic("synthetic_arithmetic", 1, 3)
for _n in range(1, 9):
    register_synthetic_arithmetic(f"synthetic_arithmetic_{_n}step", _n, _n)
for _n in range(1, 5):
    register_synthetic_arithmetic(f"synthetic_arithmetic_varied_{_n}step", _n, _n, varied=True)
