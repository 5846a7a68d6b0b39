"""Run by Python at start-up when tests/t5x_shims is on PYTHONPATH: switches on the T5X shims (README.md here)."""

import t5x_shims

t5x_shims.install()
