"""Checkpoints: Hugging Face / T5X import and export (NETWORKS) and the Orbax manager (TRAINER).

Each module owner appends the re-export line(s) of their module here.
"""

from iqlearn_jax.checkpoints.gguf_import import import_gguf as import_gguf
from iqlearn_jax.checkpoints.hf_decoder import export_hf_decoder as export_hf_decoder
from iqlearn_jax.checkpoints.hf_decoder import import_hf_decoder as import_hf_decoder
from iqlearn_jax.checkpoints.hf_t5 import export_hf_t5 as export_hf_t5
from iqlearn_jax.checkpoints.hf_t5 import import_hf_t5 as import_hf_t5
from iqlearn_jax.checkpoints.initial import check_params_match as check_params_match
from iqlearn_jax.checkpoints.initial import load_initial_params as load_initial_params
from iqlearn_jax.checkpoints.manager import CheckpointMismatchError as CheckpointMismatchError
from iqlearn_jax.checkpoints.manager import TrainCheckpointManager as TrainCheckpointManager
from iqlearn_jax.checkpoints.t5x_import import import_t5x_checkpoint as import_t5x_checkpoint
from iqlearn_jax.networks.t5 import validate_params as validate_params
