"""Training algorithms (offline objectives, online IQLearn, GAIL): see `base.py` for the interface.

gin: `train.train.algorithm = @algorithms.OnlineIQLearn()` (or `@algorithms.GAIL()`); unset = offline.
Gin files: objectives/online_iqlearn.gin, objectives/gail.gin.
"""

from iqlearn_jax.algorithms.base import (
    Algorithm,
    fill_from_initial,
    get_algorithm,
    policy_view,
    prepare,
    register_algorithm,
    registered_algorithms,
)
from iqlearn_jax.algorithms.gail import GAIL
from iqlearn_jax.algorithms.online_iqlearn import OnlineIQLearn
from iqlearn_jax.algorithms.sampling import Sampler, sample_policy_batch

__all__ = [
    "Algorithm",
    "GAIL",
    "OnlineIQLearn",
    "Sampler",
    "fill_from_initial",
    "get_algorithm",
    "policy_view",
    "prepare",
    "register_algorithm",
    "registered_algorithms",
    "sample_policy_batch",
]
