"""The README's set-up commands and CI stay in step."""

from __future__ import annotations

import re

from conftest import REPO_ROOT


def _readme_commands() -> list[str]:
    readme = (REPO_ROOT / "README.md").read_text()
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", readme, flags=re.S)]


def test_ci_runs_exactly_the_readme_test_command():
    ci_lines = [line.strip() for line in (REPO_ROOT / ".ci" / "run").read_text().splitlines()]
    test_commands = [c for c in _readme_commands() if "pytest" in c and "\n" not in c]
    assert test_commands, "README has no one-line test command"
    assert test_commands[0] in ci_lines


def test_readme_quickstart_command_runs_the_quickstart_gin_file():
    quick = [c for c in _readme_commands() if "iqlearn_jax.train" in c]
    assert quick and "runs/quickstart.gin" in quick[0]
    assert (REPO_ROOT / "gin_configs" / "runs" / "quickstart.gin").is_file()
