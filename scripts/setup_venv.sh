#!/usr/bin/env bash
# Create (or reuse) ./.venv with the project and its test tools installed.
# torch is installed first at TORCH_SPEC (default torch==2.13.0) so pip does not pick a multi-GB build
# through the project's range; set TORCH_SPEC to your own CUDA build's requirement if you like.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.hf_starcoder_ft_installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip
    if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
        echo "setup: installing ${TORCH_SPEC:-torch==2.13.0}"
        "$VENV/bin/python" -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
    fi
    echo "setup: installing hf_starcoder_ft[test]"
    "$VENV/bin/python" -m pip install -q -e '.[test]'
    touch "$stamp"
fi
