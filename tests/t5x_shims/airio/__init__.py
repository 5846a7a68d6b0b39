"""Stand-in for `airio` (git-only, not on PyPI) so that the vendored T5X imports; see tests/t5x_shims/README.md.

Not airio: it only provides the names T5X's utils.py refers to. Nothing in this project creates airio objects.
"""

from airio import core  # noqa: F401
