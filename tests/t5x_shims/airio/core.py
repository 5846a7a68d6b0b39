"""The names `t5x/utils.py` takes from `airio.core` (`import airio.core as airio`), as empty classes.

T5X uses them only in `isinstance` checks and type hints; with SeqIO tasks those checks are False and no airio code
path runs. See tests/t5x_shims/README.md.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any


class DatasetProviderBase:
    """Never instantiated: `isinstance(x, DatasetProviderBase)` is False for every SeqIO task or mixture."""


class Task(DatasetProviderBase):
    """Never instantiated (stand-in)."""


class Mixture(DatasetProviderBase):
    """Never instantiated (stand-in)."""


class AirIODatasetIterator:
    """Never instantiated (stand-in)."""


def _get_vocabularies(provider: Any) -> Any:
    raise NotImplementedError(
        f"airio stand-in (tests/t5x_shims): real airio is needed for the AirIO provider {provider!r}"
    )


dataset_providers = SimpleNamespace(get_vocabularies=_get_vocabularies)
