"""SeqIO tasks of iqlearn_jax, registered on ``import iqlearn_jax.tasks``.

Tasks: ``gsm8k``, ``xsum``, ``tldr``, ``wmt22_en_de`` (see each module's docstring for prompt formats, splits,
sources and file formats). Importing registers them with default options (data in ``$IQLEARN_DATA_DIR``, else
``../shared/data``; T5's SentencePiece vocabulary, loaded lazily). After parsing gin, a binary calls
:func:`register_tasks` to re-register every task with the gin-chosen vocabulary, data directory, sources and train
subset. Each task module registers itself through :func:`iqlearn_jax.tasks.registry.task_builder`.
"""

# One import line per task module; each module registers its tasks on import. Append new task modules below
# (tasks/synthetic.py is added by its owner with one more line of the same form).
import iqlearn_jax.tasks.gsm8k  # noqa: F401
import iqlearn_jax.tasks.summarization  # noqa: F401
import iqlearn_jax.tasks.translation  # noqa: F401
from iqlearn_jax.tasks import synthetic  # noqa: F401
from iqlearn_jax.tasks.registry import (  # noqa: F401
    TaskOptions,
    apply_options,
    current_options,
    default_data_dir,
    register_tasks,
    task_builder,
)
from iqlearn_jax.tasks.sources import DataError, Subset  # noqa: F401
from iqlearn_jax.tasks.vocab import get_vocabulary  # noqa: F401
