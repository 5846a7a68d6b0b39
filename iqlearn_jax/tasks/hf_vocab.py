"""SeqIO vocabulary over a Hugging Face `tokenizers` tokenizer, and the decoder feature converter it needs.

`HFTokenizerVocabulary(source)` where source is a `tokenizer.json`, a model directory holding one, or a `.gguf`
file (its embedded BPE vocabulary: tokens, merges, token types, special ids, pre-tokenizer). EOS / PAD / BOS ids
come from the tokenizer (GGUF metadata or the directory's config files), never from SeqIO's defaults.

Token id 0 is a real token in these vocabularies (SmolLM2's `<|endoftext|>`, Llama 3's "!"), while SeqIO's
feature converters mark padding, loss weights, positions and segments by `token != 0`. `HFDecoderFeatureConverter`
runs SeqIO's own decoder converters (LM or prefix-LM, packed or not) on ids shifted by +1 (so no real token is 0),
then shifts the token features back and writes `pad_id` on padding. The padding is therefore marked by
`decoder_loss_weights == 0` (and `decoder_segment_ids == 0`, always emitted), never by the token value.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import gin
import numpy as np
import seqio
import tensorflow as tf

TOKEN_FEATURES = ("inputs", "targets", "suffixes")


def _tokenizer_from_gguf(path: str) -> tuple[Any, dict[str, int | None]]:
    """(tokenizers.Tokenizer, special ids) from a GGUF file's embedded 'gpt2' (byte-level BPE) vocabulary."""
    from gguf import GGUFReader
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    fields = GGUFReader(path).fields

    def get(name, default=None):
        return fields[name].contents() if name in fields else default

    model = get("tokenizer.ggml.model")
    if model != "gpt2":
        raise ValueError(
            f"{path}: GGUF tokenizer model {model!r} is not supported: expected 'gpt2' (byte-level BPE)."
        )
    tokens = get("tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in get("tokenizer.ggml.merges", [])]
    types = get("tokenizer.ggml.token_type", [1] * len(tokens))
    bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False)
    tok = Tokenizer(bpe)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    pre = get("tokenizer.ggml.pre", "default")
    if (
        pre == "smollm"
    ):  # llama.cpp's SMOLLM pre-tokenizer: every digit on its own, then GPT-2's regex
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    from tokenizers import AddedToken

    special = [t for t, ty in zip(tokens, types, strict=True) if int(ty) == 3]  # 3 = CONTROL
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    ids = {
        "bos_id": get("tokenizer.ggml.bos_token_id"),
        "eos_id": get("tokenizer.ggml.eos_token_id"),
        "pad_id": get("tokenizer.ggml.padding_token_id"),
        "unk_id": get("tokenizer.ggml.unknown_token_id"),
    }
    return tok, {k: (int(v) if v is not None else None) for k, v in ids.items()}


def _ids_from_dir(directory: str, tok: Any) -> dict[str, int | None]:
    """Special ids from a model directory's tokenizer_config.json / config.json / generation_config.json."""
    ids: dict[str, int | None] = {"bos_id": None, "eos_id": None, "pad_id": None, "unk_id": None}
    for name in ("config.json", "generation_config.json"):
        p = os.path.join(directory, name)
        if os.path.exists(p):
            with open(p) as f:
                cfg = json.load(f)
            for key in ("bos", "eos", "pad"):
                value = cfg.get(f"{key}_token_id")
                if isinstance(value, list):
                    value = value[0] if value else None
                if value is not None and ids[f"{key}_id"] is None:
                    ids[f"{key}_id"] = int(value)
    p = os.path.join(directory, "tokenizer_config.json")
    if os.path.exists(p):
        with open(p) as f:
            cfg = json.load(f)
        for key in ("bos", "eos", "pad", "unk"):
            token = cfg.get(f"{key}_token")
            if isinstance(token, dict):
                token = token.get("content")
            if token is not None and tok.token_to_id(token) is not None:
                ids[f"{key}_id"] = int(tok.token_to_id(token))
    return ids


def load_tokenizer(source: str) -> tuple[Any, dict[str, int | None]]:
    """(tokenizers.Tokenizer, {'bos_id', 'eos_id', 'pad_id', 'unk_id'}) from a tokenizer.json, dir or .gguf."""
    from tokenizers import Tokenizer

    if source.endswith(".gguf"):
        return _tokenizer_from_gguf(source)
    if os.path.isdir(source):
        path = os.path.join(source, "tokenizer.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"no tokenizer.json in model directory {source!r}")
        tok = Tokenizer.from_file(path)
        return tok, _ids_from_dir(source, tok)
    if not os.path.exists(source):
        raise FileNotFoundError(
            f"Hugging Face tokenizer {source!r} not found: expected a tokenizer.json, a model directory or a .gguf"
        )
    tok = Tokenizer.from_file(source)
    return tok, _ids_from_dir(os.path.dirname(source) or ".", tok)


@gin.configurable
class HFTokenizerVocabulary(seqio.Vocabulary):
    """A `seqio.Vocabulary` over a Hugging Face fast tokenizer (loaded lazily, picklable).

    Args:
      source: tokenizer.json, a model directory with one, or a .gguf file.
      eos_id, pad_id, bos_id: override the tokenizer's ids (None: take them from the tokenizer; EOS is required).
      skip_special_tokens: drop special tokens when decoding.
    """

    def __init__(
        self,
        source: str,
        eos_id: int | None = None,
        pad_id: int | None = None,
        bos_id: int | None = None,
        skip_special_tokens: bool = True,
    ):
        self._source = str(source)
        self._overrides = {"eos_id": eos_id, "pad_id": pad_id, "bos_id": bos_id}
        self._skip_special = skip_special_tokens
        super().__init__(extra_ids=0)

    @functools.cached_property
    def _loaded(self) -> tuple[Any, dict[str, int | None]]:
        tok, ids = load_tokenizer(self._source)
        ids = dict(ids)
        for key, value in self._overrides.items():
            if value is not None:
                ids[key] = int(value)
        if ids["eos_id"] is None:
            raise ValueError(
                f"tokenizer {self._source!r} names no EOS token: pass HFTokenizerVocabulary(eos_id=...)"
            )
        size = tok.get_vocab_size(with_added_tokens=True)
        for key, value in ids.items():
            if value is not None and not 0 <= value < size:
                raise ValueError(f"tokenizer {self._source!r}: {key}={value} outside [0, {size})")
        if ids["pad_id"] is None:
            ids["pad_id"] = ids["eos_id"]
        return tok, ids

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_loaded", None)
        return state

    @property
    def tokenizer(self) -> Any:
        return self._loaded[0]

    @property
    def source(self) -> str:
        return self._source

    @property
    def eos_id(self) -> int:
        return int(self._loaded[1]["eos_id"])

    @property
    def tokenizer_eos_id(self) -> int:
        """EOS id known without network access (models check the objective's eos_id against it)."""
        return self.eos_id

    @property
    def pad_id(self) -> int:
        return int(self._loaded[1]["pad_id"])

    @property
    def bos_id(self) -> int:
        bos = self._loaded[1]["bos_id"]
        return int(bos) if bos is not None else self.eos_id

    @property
    def unk_id(self) -> int | None:
        return self._loaded[1]["unk_id"]

    @property
    def _base_vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def _encode(self, s: str) -> Sequence[int]:
        return self.tokenizer.encode(s, add_special_tokens=False).ids

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=self._skip_special)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`, cut at the first EOS (id 0 is NOT dropped: it is a real token here)."""
        ids = [int(i) for i in ids]
        if self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        return self._decode(ids)

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
        def encode(x):
            x = x.item() if isinstance(x, np.ndarray) else x  # a 0-d object array of bytes
            text = x.decode("utf-8") if isinstance(x, bytes) else str(x)
            return np.asarray(self._encode(text), np.int32)

        if s.shape.rank == 0:
            out = tf.numpy_function(encode, [s], tf.int32, stateful=False)
            out.set_shape([None])
            return out
        return tf.map_fn(
            self._encode_tf, s, fn_output_signature=tf.RaggedTensorSpec([None], tf.int32)
        )

    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        def decode(x):
            return np.asarray(self.decode(np.asarray(x).tolist()).encode("utf-8"), dtype=object)

        out = tf.numpy_function(decode, [ids], tf.string, stateful=False)
        out.set_shape([])
        return out

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, HFTokenizerVocabulary) and (
            self._source,
            self._overrides,
        ) == (other._source, other._overrides)

    def __hash__(self) -> int:
        return hash(self._source)

    def __repr__(self) -> str:
        return f"HFTokenizerVocabulary({self._source!r})"


def check_objective_eos(vocabulary: Any, objective_eos_id: int) -> None:
    """Raises ValueError when a tokenizer's EOS disagrees with the objective's (IQLearn's terminal state)."""
    eos = getattr(vocabulary, "tokenizer_eos_id", None)
    if eos is not None and int(eos) != int(objective_eos_id):
        raise ValueError(
            f"The tokenizer {vocabulary!r} has EOS id {eos} but the objective's eos_id is {objective_eos_id}: "
            f"IQLearn's terminal state would be wrong. Set objectives.Objective.eos_id = {eos}."
        )


@gin.configurable
class HFDecoderFeatureConverter(seqio.DecoderFeatureConverter):
    """seqio.DecoderFeatureConverter for vocabularies where id 0 is a real token (see the module docstring).

    Output features as SeqIO's (decoder_target_tokens, decoder_input_tokens, decoder_loss_weights,
    decoder_causal_attention for prefix-LM, decoder_positions) plus decoder_segment_ids (1.. on real tokens,
    0 on padding) even without packing. Padding tokens hold `pad_id`; the first input of every segment holds `bos_id`.
    """

    MODEL_FEATURES = {
        **seqio.DecoderFeatureConverter.MODEL_FEATURES,
        "decoder_segment_ids": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
        "decoder_positions": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
    }

    def __init__(self, *args, bos_id: int = 0, pad_id: int = 0, **kwargs):
        # Explicit base call: SeqIO may build converters inside autograph-converted code, where zero-argument
        # super() fails (KeyError '__class__').
        seqio.DecoderFeatureConverter.__init__(self, *args, bos_id=0, **kwargs)
        self._real_bos = int(bos_id)
        self._pad = int(pad_id)

    def __call__(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]):
        def shift_up(ex):
            ex = dict(ex)
            for k in TOKEN_FEATURES:
                if k in ex:
                    ex[k] = ex[k] + 1
            return ex

        ds = seqio.DecoderFeatureConverter.__call__(self, ds.map(shift_up), task_feature_lengths)
        return ds.map(self._shift_down)

    def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> dict[str, int]:
        lengths = dict(
            seqio.DecoderFeatureConverter.get_model_feature_lengths(self, task_feature_lengths)
        )
        for name in ("decoder_segment_ids", "decoder_positions"):
            lengths.setdefault(name, lengths["decoder_target_tokens"])
        return lengths

    def _shift_down(self, ex: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        ex = dict(ex)
        targets = ex["decoder_target_tokens"]
        if "decoder_segment_ids" in ex:
            segments = ex["decoder_segment_ids"]
        else:
            segments = tf.cast(targets > 0, targets.dtype)
            ex["decoder_segment_ids"] = segments
            ex["decoder_positions"] = tf.range(tf.size(targets), dtype=targets.dtype) * segments
        real = segments > 0
        pad = tf.fill(tf.shape(targets), tf.constant(self._pad, targets.dtype))
        bos = tf.fill(tf.shape(targets), tf.constant(self._real_bos, targets.dtype))
        ex["decoder_target_tokens"] = tf.where(real, targets - 1, pad)
        inputs = ex["decoder_input_tokens"]
        ex["decoder_input_tokens"] = tf.where(real, tf.where(inputs > 0, inputs - 1, bos), pad)
        return ex


def feature_converter_for(vocabulary: HFTokenizerVocabulary) -> functools.partial:
    """`HFDecoderFeatureConverter` bound to the vocabulary's BOS and PAD ids (a FEATURE_CONVERTER_CLS)."""
    return functools.partial(
        HFDecoderFeatureConverter, bos_id=vocabulary.bos_id, pad_id=vocabulary.pad_id
    )
