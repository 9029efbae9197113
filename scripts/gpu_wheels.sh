#!/usr/bin/env bash
# Fetch the wheels that scripts/gpu_checks.sh needs on a GPU machine whose Python image has torch (and older
# transformers, accelerate, peft) but not trl, datasets or deepspeed, and cannot reach PyPI: the Hugging Face stack
# is carried at this .venv's versions so the GPU runs what CI tests. Run here, where PyPI is reachable:
#
#   bash scripts/gpu_wheels.sh            # -> .whl/ (git-ignored), the same versions as this .venv
#
# then carry `.whl` with the run: `bash scripts/gpu_checks.sh` installs them into /tmp/site first.
# Target: CPython 3.12 on x86-64 Linux (override with WHEEL_PYTHON=3.11 etc.).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
TARGET_PY="${WHEEL_PYTHON:-3.12}"
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }

rm -rf .whl
mkdir -p .whl
pure=(transformers huggingface_hub accelerate peft trl datasets dill multiprocess hjson pydantic annotated-types
    typing-inspection)
compiled=(tokenizers safetensors pydantic-core)
specs=()
for name in "${pure[@]}" "${compiled[@]}"; do specs+=("$name==$(version "$name")"); done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$TARGET_PY" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_34_x86_64 \
    -d .whl "${specs[@]}"
# DeepSpeed is published as a source archive only: build a pure-Python wheel (its ops compile at run time).
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w .whl "deepspeed==$(version deepspeed)"
ls -l .whl
du -sh .whl
