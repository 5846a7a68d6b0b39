"""Local-file readers for the task data, with bad-data handling, subsets and a SeqIO data source.

File formats (UTF-8; see ../shared/data/<task>/README.md):

- **JSON Lines** (``.jsonl``): one JSON object per line with string fields. Whitespace-only lines are ignored.
- **TSV** (``.tsv``): one pair per line, exactly two tab-separated columns, no header (``source<TAB>target``).
- **Parallel text**: two files with one segment per line, line *i* of one aligned with line *i* of the other.

Bad records (a line that is not JSON or not an object, a missing or non-string field, an empty target, a TSV line
without exactly two columns, misaligned parallel files) raise :class:`DataError` naming the file and the 1-based line
number. With ``skip_bad_records=True`` the bad records are skipped instead and their number is logged (absl WARNING).

Records are read into memory when a split's dataset is built (never at task registration), then served through
``tf.data.Dataset.from_tensor_slices``; files too large for one tensor stream through ``from_generator``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

Record = dict[str, str]
# Above this many bytes a file streams through a Python generator instead of one in-memory tensor.
STREAM_THRESHOLD_BYTES = 512 * 1024 * 1024


class DataError(ValueError):
    """A record of a data file is malformed; the message names the file and the line."""


@dataclasses.dataclass(frozen=True)
class Subset:
    """A deterministic subset of a split: the first ``count`` records, or a ``fraction`` of them.

    With ``seed`` set, the kept records are a seeded random sample (kept in file order) instead of the first ones.
    ``count`` and ``fraction`` are exclusive; both None means the whole split.
    """

    count: int | None = None
    fraction: float | None = None
    seed: int | None = None

    def __post_init__(self):
        if self.count is not None and self.fraction is not None:
            raise ValueError(
                f"set a subset by count or by fraction, not both (count={self.count}, fraction={self.fraction})"
            )
        if self.count is not None and (not isinstance(self.count, int) or self.count <= 0):
            raise ValueError(f"subset count must be a positive int, got {self.count!r}")
        if self.fraction is not None and not 0.0 < float(self.fraction) <= 1.0:
            raise ValueError(f"subset fraction must be in (0, 1], got {self.fraction!r}")

    @property
    def is_full(self) -> bool:
        return self.count is None and self.fraction is None

    def size(self, total: int) -> int:
        """Number of records kept out of ``total``."""
        if self.count is not None:
            if self.count > total:
                raise ValueError(f"subset count {self.count} exceeds the {total} records available")
            return self.count
        if self.fraction is not None:
            return max(1, int(round(self.fraction * total)))
        return total

    def indices(self, total: int) -> np.ndarray:
        """Sorted indices of the kept records among ``total``."""
        size = self.size(total)
        if self.seed is None:
            return np.arange(size)
        return np.sort(np.random.default_rng(self.seed).permutation(total)[:size])


def resolve_file(directory: str, candidates: Sequence[str], what: str) -> str:
    """The first of ``candidates`` (file names) that exists in ``directory``; a clear error otherwise."""
    for name in candidates:
        path = os.path.join(directory, name)
        if tf.io.gfile.exists(path):
            return path
    raise FileNotFoundError(
        f"no file for {what} in {directory!r}: expected one of {list(candidates)} "
        "(set the data directory with IQLEARN_DATA_DIR or register_tasks.data_dir; "
        "launch/prepare_data.py writes these files)"
    )


class _BadRecords:
    """Raises on the first bad record, or counts them when skipping is allowed."""

    def __init__(self, path: str, skip: bool):
        self.path, self.skip, self.count, self.examples = path, skip, 0, []

    def __call__(self, line_number: int, problem: str) -> None:
        message = f"{self.path}:{line_number}: {problem}"
        if not self.skip:
            raise DataError(message + " (set skip_bad_records=True to skip such records)")
        self.count += 1
        if len(self.examples) < 3:
            self.examples.append(message)

    def log(self) -> None:
        if self.count:
            logging.warning(
                "skipped %d bad record(s) in %s, e.g. %s",
                self.count,
                self.path,
                "; ".join(self.examples),
            )


def _decode(raw: bytes, path: str, number: int) -> str:
    """One line as text; a non-UTF-8 line raises DataError naming file, line, column and byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}:{number}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
            "data files must be UTF-8"
        ) from None


def _lines(path: str, bad: _BadRecords | None = None) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) of each line; a non-UTF-8 line is a bad record (`bad`) or a DataError."""
    with tf.io.gfile.GFile(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = _decode(raw, path, number)
            except DataError as e:
                if bad is None:
                    raise
                bad(number, str(e).split(": ", 1)[1])
                continue
            yield number, line.rstrip("\n").rstrip("\r")


def iter_jsonl(
    path: str,
    fields: Sequence[str],
    nonempty: Sequence[str] = (),
    skip_bad_records: bool = False,
    bad: _BadRecords | None = None,
) -> Iterator[Record]:
    """Records of a JSON Lines file restricted to ``fields`` (all required strings); ``nonempty`` ones must be
    non-blank. Raises :class:`DataError` (``path:line: problem``) unless ``skip_bad_records``."""
    bad = bad or _BadRecords(path, skip_bad_records)
    for number, line in _lines(path, bad):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            bad(number, f"malformed JSON ({e.msg} at column {e.colno})")
            continue
        if not isinstance(obj, dict):
            bad(number, f"expected a JSON object, got {type(obj).__name__}")
            continue
        missing = [field for field in fields if field not in obj]
        if missing:
            bad(number, f"missing field(s) {missing}; expected fields {list(fields)}")
            continue
        wrong = [field for field in fields if not isinstance(obj[field], str)]
        if wrong:
            bad(
                number,
                f"field(s) {wrong} must be strings, got {[type(obj[f]).__name__ for f in wrong]}",
            )
            continue
        empty = [field for field in nonempty if not obj[field].strip()]
        if empty:
            bad(number, f"empty target field(s) {empty}")
            continue
        yield {field: obj[field] for field in fields}
    bad.log()


def iter_tsv(
    path: str,
    fields: tuple[str, str],
    skip_bad_records: bool = False,
    bad: _BadRecords | None = None,
) -> Iterator[Record]:
    """Pairs of a two-column TSV file as ``{fields[0]: col0, fields[1]: col1}``; both columns must be non-empty."""
    bad = bad or _BadRecords(path, skip_bad_records)
    for number, line in _lines(path, bad):
        if not line.strip():
            continue
        columns = line.split("\t")
        if len(columns) != 2:
            bad(
                number,
                f"expected 2 tab-separated columns ({fields[0]}, {fields[1]}), got {len(columns)}",
            )
            continue
        if not columns[0].strip() or not columns[1].strip():
            bad(number, f"empty column in {list(fields)}")
            continue
        yield dict(zip(fields, columns, strict=True))
    bad.log()


def iter_parallel(
    paths: tuple[str, str], fields: tuple[str, str], skip_bad_records: bool = False
) -> Iterator[Record]:
    """Aligned lines of two text files as ``{fields[0]: line_of_file0, fields[1]: line_of_file1}``.

    Files of different line counts are always an error; an empty line in either file is a bad record.
    """
    first, second = ([line for _, line in _lines(path)] for path in paths)
    if len(first) != len(second):
        raise DataError(
            f"parallel files are not aligned: {paths[0]} has {len(first)} lines, {paths[1]} has {len(second)}"
        )
    bads = [_BadRecords(path, skip_bad_records) for path in paths]
    for number, pair in enumerate(zip(first, second, strict=True), start=1):
        empty = [i for i in (0, 1) if not pair[i].strip()]
        if empty:
            bads[empty[0]](number, "empty line")
            continue
        yield dict(zip(fields, pair, strict=True))
    for b in bads:
        b.log()


def records_to_dataset(records: Sequence[Record], fields: Sequence[str]) -> tf.data.Dataset:
    """A dataset of ``{field: tf.string scalar}`` from in-memory records."""
    columns = {field: np.array([r[field] for r in records], dtype=object) for field in fields}
    if not records:
        columns = {field: np.zeros([0], dtype=object) for field in fields}
    return tf.data.Dataset.from_tensor_slices(
        {k: tf.constant(v, dtype=tf.string) for k, v in columns.items()}
    )


@dataclasses.dataclass
class LocalSplit:
    """How to read one split: a reader yielding records and the paths it reads (for size and messages)."""

    read: Callable[[], Iterator[Record]]
    paths: Sequence[str]


class LocalDatasetFn:
    """``dataset_fn(split, shuffle_files, seed=None)`` for :class:`seqio.FunctionDataSource` over local files.

    ``splits`` maps a split name to a zero-argument function returning its :class:`LocalSplit` (resolved lazily,
    so a missing file only fails when that split is used). The ``train`` split is reduced to ``train_subset``.
    With ``shuffle_files`` the records are fully shuffled with ``seed`` (deterministic for a given seed).
    """

    def __init__(
        self,
        name: str,
        splits: Mapping[str, Callable[[], LocalSplit]],
        fields: Sequence[str],
        train_subset: Subset = Subset(),
    ):
        self.name, self.splits, self.fields, self.train_subset = (
            name,
            dict(splits),
            tuple(fields),
            train_subset,
        )
        self.__name__ = f"{name}_local_dataset_fn"

    def records(self, split: str) -> list[Record]:
        """All (subset) records of ``split``, validated."""
        local = self._split(split)
        records = list(local.read())
        if split == "train" and not self.train_subset.is_full:
            keep = self.train_subset.indices(len(records))
            logging.info(
                "%s: train subset of %d out of %d records (%s)",
                self.name,
                len(keep),
                len(records),
                self.train_subset,
            )
            records = [records[i] for i in keep]
        return records

    def _split(self, split: str) -> LocalSplit:
        if split not in self.splits:
            raise ValueError(
                f"task {self.name!r} has no split {split!r}; available: {sorted(self.splits)}"
            )
        return self.splits[split]()

    def __call__(self, split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        local = self._split(split)
        size = sum(tf.io.gfile.stat(p).length for p in local.paths)
        if size > STREAM_THRESHOLD_BYTES:
            return self._streamed(split, local, shuffle_files, seed)
        records = self.records(split)
        logging.info(
            "%s/%s: %d records from %s", self.name, split, len(records), ", ".join(local.paths)
        )
        if shuffle_files:
            order = np.random.default_rng(seed).permutation(len(records))
            records = [records[i] for i in order]
        return records_to_dataset(records, self.fields)

    def _streamed(
        self, split: str, local: LocalSplit, shuffle_files: bool, seed: int | None
    ) -> tf.data.Dataset:
        """Large files: stream records (errors surface as TF errors carrying the DataError message)."""
        keep = None
        if split == "train" and not self.train_subset.is_full:
            total = sum(1 for _ in local.read())
            keep = set(self.train_subset.indices(total).tolist())

        def generate():
            for index, record in enumerate(local.read()):
                if keep is None or index in keep:
                    yield tuple(record[f].encode("utf-8") for f in self.fields)

        signature = tuple(tf.TensorSpec([], tf.string) for _ in self.fields)
        ds = tf.data.Dataset.from_generator(generate, output_signature=signature)
        ds = ds.map(lambda *values: dict(zip(self.fields, values, strict=True)))
        if shuffle_files:
            ds = ds.shuffle(100_000, seed=seed)
        return ds
