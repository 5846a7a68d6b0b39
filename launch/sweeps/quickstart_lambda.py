"""A laptop-sized λ sweep on the embedded synthetic task (tiny T5, CPU), 2 seeds each.

python launch/sweep.py --config=launch/sweeps/quickstart_lambda.py --model_dir_root=/tmp/qs_sweep --run
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.name = "quickstart_lambda"
    config.gin_files = ["runs/quickstart.gin"]
    config.bindings = {"TRAIN_STEPS": 200}
    config.seeds = [0, 1]
    config.arms = [
        {"objective": "iqlearn", "macro": "IQLEARN_LAMBDA", "values": [0.0, 0.1, 1.0]},
    ]
    return config
