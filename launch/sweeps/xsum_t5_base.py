"""The paper's XSUM sweep on T5.1.1 base: MLE, MLE+entropy and offline IQLearn over λ, 3 seeds each.

python launch/sweep.py --config=launch/sweeps/xsum_t5_base.py --model_dir_root=gs://BUCKET/xsum
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.name = "xsum_t5_1_1_base"
    config.gin_files = ["models/t5_1_1_base.gin", "runs/finetune.gin", "tasks/xsum.gin"]
    config.bindings = {"BATCH_SIZE": 32, "TRAIN_STEPS": 20000}
    config.seeds = [0, 1, 2]
    config.arms = [
        {"objective": "mle", "values": [None]},
        {"objective": "mle_entropy", "macro": "ENTROPY_BETA", "values": [0.01, 0.1]},
        {"objective": "iqlearn", "macro": "IQLEARN_LAMBDA", "values": [0.01, 0.1, 0.5, 1.0]},
    ]
    return config
