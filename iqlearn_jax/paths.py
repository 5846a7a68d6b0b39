"""Where the project's bundled configuration lives on disk."""

from __future__ import annotations

import pathlib

PACKAGE_DIR = pathlib.Path(__file__).resolve().parent
# gin_configs/ sits beside the package in the source tree (installs are editable: `pip install -e .`).
GIN_CONFIGS_DIR = PACKAGE_DIR.parent / "gin_configs"
