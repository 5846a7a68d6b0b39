"""Hugging Face tokenizer vocabularies (id 0 a real token) through real SeqIO tasks and the id-0-safe converter."""

import json
import pickle

import numpy as np
import pytest
import seqio
import tensorflow as tf

tokenizers = pytest.importorskip("tokenizers")

from iqlearn_jax.models import DecoderOnlyModel  # noqa: E402
from iqlearn_jax.networks import llama  # noqa: E402
from iqlearn_jax.objectives import Objective  # noqa: E402
from iqlearn_jax.tasks.hf_vocab import HFDecoderFeatureConverter, HFTokenizerVocabulary  # noqa: E402
from iqlearn_jax.tasks.vocab import get_vocabulary  # noqa: E402

WORDS = ["<|endoftext|>", "<s>", "</s>", "a", "b", "c", "d", "e", "question:", "answer"]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """A WordLevel tokenizer.json whose id 0 is '<|endoftext|>', BOS '<s>' = 1, EOS = PAD '</s>' = 2."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="e"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens([AddedToken(w, special=True) for w in WORDS[:3]])
    path = tmp_path_factory.mktemp("tok")
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>"})
    )
    return str(path)


def test_vocabulary_ids_encode_decode_pickle(tokenizer_dir):
    vocab = get_vocabulary(tokenizer_dir)
    assert isinstance(vocab, HFTokenizerVocabulary)
    assert (vocab.eos_id, vocab.pad_id, vocab.bos_id, vocab.vocab_size) == (2, 2, 1, len(WORDS))
    assert vocab.encode("a <|endoftext|> b") == [3, 0, 4]
    assert vocab.decode([3, 0, 4, 2, 5]) == "a b"  # cut at EOS; specials skipped in text
    ids = vocab.encode_tf(tf.constant("c d <|endoftext|>"))
    assert ids.numpy().tolist() == [5, 6, 0]
    clone = pickle.loads(pickle.dumps(vocab))
    assert clone == vocab and clone.encode("d") == [6]


def make_task(name, vocab, records):
    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)

    def dataset_fn(split, shuffle_files, seed=None):
        return tf.data.Dataset.from_tensor_slices(
            {k: [r[k] for r in records] for k in ("inputs", "targets")}
        )

    features = {k: seqio.Feature(vocab, add_eos=(k == "targets")) for k in ("inputs", "targets")}
    return seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(dataset_fn, splits=["train"]),
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
        output_features=features,
    )


RECORDS = [
    {"inputs": "question: a b", "targets": "<|endoftext|> c"},  # a target that is id 0
    {"inputs": "question: d", "targets": "<|endoftext|>"},
]


@pytest.mark.parametrize("pack", [False, True])
def test_feature_converter_marks_padding_by_weights_not_id0(tokenizer_dir, pack):
    vocab = HFTokenizerVocabulary(tokenizer_dir)
    task = make_task(f"hf_vocab_test_{int(pack)}", vocab, RECORDS)
    lengths = {"inputs": 5, "targets": 5}
    converter = HFDecoderFeatureConverter(pack=pack, bos_id=vocab.bos_id, pad_id=vocab.pad_id)
    ds = seqio.get_dataset(
        task.name, lengths, feature_converter=converter, shuffle=False, dataset_split="train"
    )
    rows = [{k: v.numpy() for k, v in ex.items()} for ex in ds]
    if pack:
        assert len(rows) == 1
        row = rows[0]
        # question: a b | <eot> c </s>   then   question: d | <eot> </s>   (BOS = 1 starts each segment)
        np.testing.assert_array_equal(row["decoder_target_tokens"], [8, 3, 4, 0, 5, 2, 8, 6, 0, 2])
        np.testing.assert_array_equal(row["decoder_input_tokens"], [1, 8, 3, 4, 0, 5, 1, 8, 6, 0])
        np.testing.assert_array_equal(row["decoder_loss_weights"], [0, 0, 0, 1, 1, 1, 0, 0, 1, 1])
        np.testing.assert_array_equal(row["decoder_segment_ids"], [1] * 6 + [2] * 4)
        np.testing.assert_array_equal(row["decoder_positions"], [0, 1, 2, 3, 4, 5, 0, 1, 2, 3])
        return
    first, second = rows
    np.testing.assert_array_equal(first["decoder_target_tokens"], [8, 3, 4, 0, 5, 2, 2, 2, 2, 2])
    np.testing.assert_array_equal(first["decoder_input_tokens"], [1, 8, 3, 4, 0, 5, 2, 2, 2, 2])
    np.testing.assert_array_equal(first["decoder_loss_weights"], [0, 0, 0, 1, 1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(first["decoder_segment_ids"], [1] * 6 + [0] * 4)
    np.testing.assert_array_equal(first["decoder_causal_attention"], [1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(second["decoder_target_tokens"][:5], [8, 6, 0, 2, 2])
    np.testing.assert_array_equal(second["decoder_loss_weights"][:5], [0, 0, 1, 1, 0])
    # SeqIO's own converter would drop the id-0 target from the loss (why this converter exists):
    plain = seqio.get_dataset(task.name, lengths, feature_converter=seqio.DecoderFeatureConverter(pack=False),
                              shuffle=False, dataset_split="train")  # fmt: skip
    assert next(iter(plain))["decoder_loss_weights"].numpy()[3] == 0


def test_tokenizer_eos_disagreeing_with_objective_is_refused(tokenizer_dir):
    vocab = HFTokenizerVocabulary(tokenizer_dir)
    module = llama.LlamaDecoderWrapper(llama.LlamaConfig(vocab_size=16, emb_dim=8, num_heads=2,
                                                         num_kv_heads=1, num_layers=1, head_dim=4, mlp_dim=8))  # fmt: skip
    with pytest.raises(ValueError, match=r"EOS id 2 but the objective's eos_id is 1"):
        DecoderOnlyModel(module, objective=Objective(eos_id=1), input_vocabulary=vocab)
    model = DecoderOnlyModel(module, objective=Objective(eos_id=2), input_vocabulary=vocab)
    assert model.eos_id == 2
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        HFTokenizerVocabulary(tokenizer_dir + "/missing").encode("a")
