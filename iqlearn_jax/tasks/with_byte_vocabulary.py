"""Importing this module re-registers every task of iqlearn_jax with the byte vocabulary (`seqio.ByteVocabulary`).

For programs that register tasks by importing a module rather than by calling `register_tasks` after gin, such as
T5X's `t5x.train` / `t5x.eval` / `t5x.infer` with this project's tiny byte-vocabulary models offline::

    --gin.MIXTURE_OR_TASK_MODULE="'iqlearn_jax.tasks.with_byte_vocabulary'" --gin.MIXTURE_OR_TASK_NAME="'gsm8k'"

Data come from ``$IQLEARN_DATA_DIR`` (else ``../shared/data``), as with the default registration.
"""

from iqlearn_jax.tasks.registry import register_tasks

REGISTERED_TASKS = register_tasks(vocabulary="byte")
