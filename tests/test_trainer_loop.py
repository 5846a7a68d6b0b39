"""The training loop in-process: a quickstart-like run's loss falls; the NaN guard stops before checkpointing;
the synthetic task is deterministic and its annotations are correct; schedules."""

import json
import random
import re

import gin
import jax.numpy as jnp
import numpy as np
import pytest
import seqio

from iqlearn_jax import optimizers
from iqlearn_jax import train as train_lib
from iqlearn_jax.models import EncoderDecoderModel
from iqlearn_jax.networks.t5 import T5Config, Transformer
from iqlearn_jax.objectives import Objective
from iqlearn_jax.tasks import synthetic


def test_quickstart_like_run_loss_falls(tmp_path, capsys):
    gin.clear_config()
    try:
        train_lib.parse_gin(
            ["runs/quickstart.gin"],
            [
                f"MODEL_DIR = '{tmp_path}'",
                "TRAIN_STEPS = 60",
                "BATCH_SIZE = 16",
                "TASK_FEATURE_LENGTHS = {'inputs': 96, 'targets': 64}",
                "train.train.log_period = 10",
                "train.train.eval_period = 30",
                "train.train.checkpoint_period = 30",
            ],
        )
        result = train_lib.train()
    finally:
        gin.clear_config()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_losses = [r["loss"] for r in records if r["split"] == "train"]
    val_losses = [r["loss"] for r in records if r["split"] == "validation"]
    assert len(train_losses) == 6 and len(val_losses) == 2
    assert train_losses[-1] < 0.6 * train_losses[0], train_losses
    assert val_losses[-1] < val_losses[0]
    for r in records:
        if r["split"] == "train":
            assert r["steps_per_second"] > 0 and r["tokens_per_second"] > 0
            assert {"td_term", "mle_term", "accuracy", "grad_norm", "learning_rate"} <= set(r)
    out = capsys.readouterr().out
    assert "==== iqlearn_jax training summary ====" in out
    assert re.search(
        r"step +60/60 \| loss [\d.]+ \| +[\d.]+ steps/s \| +\d+ tokens/s \| ETA 0:00:00", out
    )
    assert str(tmp_path / "checkpoints" / "60") in out and "tensorboard --logdir" in out
    assert result.final_step == 60 and (tmp_path / "checkpoints" / "60" / "state").is_dir()
    assert list((tmp_path / "tensorboard" / "train").iterdir())  # TensorBoard event files
    assert (tmp_path / "config.gin").read_text().count("TRAIN_STEPS") >= 1


class NaNAfter:
    """Wraps a model so that its loss becomes NaN from train step `nan_step` on (injected fault)."""

    def __init__(self, model, nan_step):
        self.model, self.nan_step = model, nan_step
        self.FEATURE_CONVERTER_CLS = model.FEATURE_CONVERTER_CLS

    def get_initial_variables(self, *args, **kwargs):
        return self.model.get_initial_variables(*args, **kwargs)

    def loss_fn(self, params, batch, dropout_rng, step=None):
        loss, metrics = self.model.loss_fn(params, batch, dropout_rng, step=step)
        # Step s of the loop (1-based) runs with state.step = s - 1.
        return jnp.where(step + 1 >= self.nan_step, jnp.nan, loss), metrics

    def eval_fn(self, params, batch):
        return self.model.eval_fn(params, batch)


def test_nan_guard_stops_before_checkpointing(tmp_path):
    config = T5Config(vocab_size=384, emb_dim=32, num_heads=2, num_encoder_layers=1, num_decoder_layers=1,
                      head_dim=16, mlp_dim=64, dropout_rate=0.0)  # fmt: skip
    model = NaNAfter(
        EncoderDecoderModel(Transformer(config), objective=Objective(name="iqlearn", lam=0.1)), 3
    )
    with pytest.raises(train_lib.NonFiniteLossError, match="non-finite loss=nan at step 3"):
        train_lib.train(
            model=model,
            model_dir=str(tmp_path),
            mixture_or_task_name="synthetic_arithmetic_1step",
            task_feature_lengths={"inputs": 48, "targets": 32},
            batch_size=8,
            train_steps=6,
            optimizer=optimizers.adamw(1e-3),
            checkpoint_period=1,
            log_period=1,
            async_checkpointing=False,
        )
    saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert saved == [1, 2]


def test_synthetic_task_is_deterministic_and_annotations_are_correct():
    a = [synthetic.example(0, "train", i, 1, 4) for i in range(200)]
    b = [synthetic.example(0, "train", i, 1, 4) for i in range(200)]
    c = [synthetic.example(1, "train", i, 1, 4) for i in range(200)]
    assert a == b and a != c
    for ex in a:
        steps = re.findall(r"<<(\d+)([-+*/])(\d+)=(\d+)>>(\d+)", ex["answer"])
        assert 1 <= len(steps) <= 4
        value = None
        for x, op, y, result, shown in steps:
            x, y, result = int(x), int(y), int(result)
            assert value is None or x == value  # each step starts from the previous result
            expected = {"+": x + y, "-": x - y, "*": x * y, "/": x / y}[op]
            assert expected == result == int(shown) and 0 <= result <= synthetic.MAX_VALUE
            value = result
        assert ex["answer"].endswith(f"#### {value}") and ex["final"] == str(value)
        assert ex["question"].endswith("have now?")
    # Difficulty knob: more steps, longer targets.
    mean_len = {
        n: np.mean([len(synthetic.example(0, "train", i, n, n)["answer"]) for i in range(50)])
        for n in (1, 4)
    }
    assert mean_len[4] > 2.5 * mean_len[1]
    assert synthetic.make_problem(random.Random(3), 2) == synthetic.make_problem(
        random.Random(3), 2
    )


def test_synthetic_seqio_task_and_metric():
    task = seqio.get_mixture_or_task("synthetic_arithmetic")
    assert isinstance(task.output_features["targets"].vocabulary, seqio.ByteVocabulary)
    ds = task.get_dataset({"inputs": 512, "targets": 512}, split="validation", shuffle=False)
    first = next(iter(ds.as_numpy_iterator()))
    ref = synthetic.example(0, "validation", 0, 1, 3)
    assert first["targets_pretokenized"].decode() == ref["answer"]
    assert (
        list(first["targets"][:5]) == [b + 3 for b in ref["answer"].encode()[:5]]
        and first["targets"][-1] == 1
    )
    assert synthetic.answer_accuracy(["12", "7"], ["12", "8"]) == {"answer_accuracy": 50.0}
    assert synthetic.postprocess("so 3+4 = <<3+4=7>>7.\n#### 1,234") == "1234"


def test_schedules():
    warm = optimizers.warmup_constant(1e-4, 2000)
    assert float(warm(0)) == 0.0
    assert float(warm(1000)) == pytest.approx(5e-5)
    assert float(warm(2000)) == pytest.approx(1e-4) and float(warm(10**6)) == pytest.approx(1e-4)
    rs = optimizers.rsqrt(1.0, 10_000)
    assert float(rs(5)) == pytest.approx(0.01) and float(rs(40_000)) == pytest.approx(0.005)
    assert float(optimizers.constant(3e-4)(123)) == pytest.approx(3e-4)
    with pytest.raises(ValueError, match="clip_norm"):
        optimizers.adamw(1e-3, clip_norm=0.0)


def test_build_only_gives_the_step_for_aot_without_touching_anything(tmp_path):
    """train(build_only=True): gin-configured model/optimizer/mesh, abstract state, THE jitted step."""
    import jax

    from iqlearn_jax.partitioning import Partitioner

    gin.clear_config()
    try:
        train_lib.parse_gin(
            ["runs/quickstart.gin"], [f"MODEL_DIR = '{tmp_path / 'never'}'", "BATCH_SIZE = 8"]
        )
        parts = train_lib.train(build_only=True, partitioner=Partitioner(mesh_shape=(4, 2)))
    finally:
        gin.clear_config()
    assert not (tmp_path / "never").exists()
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(parts.abstract_state))
    assert parts.abstract_batch["decoder_target_tokens"].shape == (8, 80)
    compiled = parts.step_fn.lower(parts.abstract_state, parts.abstract_batch).compile()
    assert compiled.memory_analysis().temp_size_in_bytes > 0


def test_initial_params_from_orbax_and_hugging_face_dirs(tmp_path):
    """load_initial_params reads this project's Orbax MODEL_DIR and an HF T5 directory (via import_hf_t5)."""
    import jax

    from iqlearn_jax import trainer
    from iqlearn_jax.checkpoints import TrainCheckpointManager, export_hf_t5, load_initial_params
    from iqlearn_jax.partitioning import Partitioner

    config = T5Config(vocab_size=384, emb_dim=32, num_heads=2, num_encoder_layers=1, num_decoder_layers=1,
                      head_dim=16, mlp_dim=64, dropout_rate=0.0)  # fmt: skip
    model = EncoderDecoderModel(Transformer(config), objective=Objective(name="mle"))
    optimizer = optimizers.adafactor(1e-3)
    partitioner = Partitioner(mesh_shape=(4, 2))
    shapes = trainer.model_feature_shapes(model, {"inputs": 16, "targets": 8}, 8)
    abstract, shardings = trainer.abstract_train_state(model, optimizer, partitioner, shapes)
    state = trainer.init_train_state(
        model, optimizer, partitioner, shapes, seed=7, state_shardings=shardings
    )
    expected = jax.device_get(state.params)

    manager = TrainCheckpointManager(tmp_path / "run", async_save=False)
    manager.save(state, {"batches_consumed": 0})
    manager.close()
    export_hf_t5(config, expected, str(tmp_path / "hf"))
    for path in (tmp_path / "run", tmp_path / "hf"):
        loaded = load_initial_params(path, abstract.params, shardings.params)
        for a, b in zip(
            jax.tree.leaves(jax.device_get(loaded)), jax.tree.leaves(expected), strict=True
        ):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-7)
        kernel = loaded["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
        assert kernel.sharding == shardings.params["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
