#!/usr/bin/env bash
# Every check that needs a GPU, in one run of about 10 minutes, for a machine with one CUDA GPU (run from the
# repository root; prepare the wheels first with scripts/gpu_wheels.sh where PyPI is reachable, and carry .whl):
#
#   bash scripts/gpu_checks.sh [quick]      # quick: skip the 1B-shape MFU run
#
# 1. the `gpu` tests: packed rows give each document's logits alone on the CUDA kernels (sdpa and eager, bf16;
#    flash-attention 2 when flash_attn is installed);
# 2. a bf16 fine-tune of a tiny model on the bundled commit sample, loss must fall, then `generate --device cuda`;
# 3. `benchmarks/bench_train.py --skip_trl --mfu`: MFU of a StarCoderBase-1B-shaped model (goal >= 45%).
# Output goes to the terminal and to $OUT/gpu_checks.log (or /tmp/gpu_checks.log); exit status 1 if any failed.
# GPU_CHECKS_CPU=1 runs the same plumbing on a CPU machine (fp32, --device cpu, no MFU) to test this script.
set -uo pipefail
cd "$(dirname "$0")/.."
LOG="${OUT:-/tmp}/gpu_checks.log"
exec > >(tee "$LOG") 2>&1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY="${PYTHON:-python3}"
WORK="${GPU_CHECKS_WORK:-/tmp/gpu_checks}"
rm -rf "$WORK" && mkdir -p "$WORK"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .whl ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="$PWD:/tmp/site"
fi
failed=()
check() {  # check NAME SECONDS COMMAND...
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    echo "=== $name"
    if timeout "$limit" "$@"; then
        echo "=== $name: ok ($((SECONDS - start)) s)"
    else
        echo "=== $name: FAILED (exit $?, $((SECONDS - start)) s)"
        failed+=("$name")
    fi
}
CLI=("$PY" -m hf_starcoder_ft.cli)
DEVICE=cuda PRECISION=(--bf16 true --model_dtype bfloat16) GEN_DTYPE=bf16
if [ "${GPU_CHECKS_CPU:-0}" = 1 ]; then
    DEVICE=cpu PRECISION=(--bf16 false --model_dtype float32) GEN_DTYPE=fp32
    set -- quick
fi

check environment 120 "$PY" -c "
import torch, transformers, trl, datasets, deepspeed, peft, accelerate
assert torch.cuda.is_available() or '$DEVICE' == 'cpu', 'no CUDA device visible'
print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu', 'torch', torch.__version__, 'transformers', transformers.__version__,
      'trl', trl.__version__, 'datasets', datasets.__version__, 'deepspeed', deepspeed.__version__,
      'peft', peft.__version__, 'accelerate', accelerate.__version__)"
check gpu-tests 300 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/
check tiny-data 120 "${CLI[@]}" commits --sample --output "$WORK/commits.jsonl" --no_progress
check tiny-model 120 "${CLI[@]}" init-tiny --data "$WORK/commits.jsonl" --output_dir "$WORK/tiny"
check bf16-train 300 "$PY" train.py --config configs/tiny_cpu.yaml --model_name_or_path "$WORK/tiny" \
    --train_data "$WORK/commits.jsonl" --output_dir "$WORK/run" --eval_strategy no "${PRECISION[@]}" \
    --max_steps 60 --logging_steps 10 --save_steps 1000 --disable_tqdm true
check loss-falls 30 "$PY" -c "
import json, sys
history = json.load(open('$WORK/run/trainer_state.json'))['log_history']
losses = [entry['loss'] for entry in history if 'loss' in entry]
print('losses', losses)
sys.exit(0 if len(losses) >= 2 and losses[-1] < 0.8 * losses[0] else 1)"
check "generate-$DEVICE" 120 "${CLI[@]}" generate "$WORK/run" --prompt "def print_hello_world():" --device "$DEVICE" \
    --dtype "$GEN_DTYPE"
if [ "${1:-}" != quick ]; then
    check mfu 480 "$PY" benchmarks/bench_train.py --skip_trl --mfu
fi
if [ ${#failed[@]} -gt 0 ]; then
    echo "gpu checks FAILED: ${failed[*]}"
    exit 1
fi
echo "gpu checks: all passed"
