#!/usr/bin/env bash
# The whole pipeline on a CPU, in a few minutes, with nothing downloaded:
# commits -> jsonl -> tiny model + tokenizer -> prepare -> check packing -> train (DeepSpeed ZeRO-3, 2 processes)
# -> evaluate -> Megatron round trip (TP2 x PP2) -> diff -> generate -> push (dry run).
# Every step is a command you can run on your own data; OUT=dir changes where results go.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
export PATH="$PWD/.venv/bin:$PATH"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
# Library deprecation chatter (torch.distributed, DeepSpeed) would bury the output that matters.
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore::FutureWarning,ignore::DeprecationWarning,ignore::UserWarning}"
OUT="${OUT:-quickstart_out}"
rm -rf "$OUT"
mkdir -p "$OUT/data"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1/8 instruction records from commits (bundled CommitPack-style sample; use --repo PATH for your own git history)"
hf-starcoder-ft commits --sample --output "$OUT/data/commits.jsonl" --seed 0

step "2/8 Megatron-style data-path files: 95% train, the last 5% for validation (disjoint)"
echo '"train: 1.0 0:0.95 commits.jsonl"' > "$OUT/data/train_paths.txt"
echo '"valid: 1.0 0.95:1.0 commits.jsonl"' > "$OUT/data/valid_paths.txt"
cat "$OUT/data/train_paths.txt" "$OUT/data/valid_paths.txt"

step "3/8 a tiny random StarCoder-shaped model and a tokenizer trained on the data (real runs start from a checkpoint)"
hf-starcoder-ft init-tiny --data "$OUT/data/commits.jsonl" --output_dir "$OUT/tiny-model" --n_positions 512

step "4/8 tokenize, mask inputs, pack (report below)"
hf-starcoder-ft prepare --train_data "$OUT/data/train_paths.txt" --valid_data "$OUT/data/valid_paths.txt" \
    --tokenizer "$OUT/tiny-model" --max_length 512 --output_dir "$OUT/prepared" --quiet

step "5/8 packed rows give the same logits as each example alone"
hf-starcoder-ft check-packing --model "$OUT/tiny-model" --data "$OUT/prepared" --rows 2

step "6/8 fine-tune: accelerate + DeepSpeed ZeRO-3, 2 CPU processes"
accelerate launch --config_file launch/zero3_cpu_2proc.yaml train.py --config configs/tiny_cpu.yaml \
    --model_name_or_path "$OUT/tiny-model" --prepared_data "$OUT/prepared" --output_dir "$OUT/run" \
    --max_steps 200 --eval_steps 100 --save_steps 100   # ~17 epochs of the small sample: enough to look like code

step "7/8 Megatron round trip: HF -> Megatron (TP2 x PP2) -> HF, verified, then diffed against the trained model"
hf-starcoder-ft convert hf-to-megatron --hf "$OUT/run" --out "$OUT/megatron" --tp 2 --pp 2
hf-starcoder-ft convert megatron-to-hf --megatron "$OUT/megatron" --out "$OUT/from-megatron" \
    --tokenizer "$OUT/tiny-model" --dtype fp32 --verify
hf-starcoder-ft diff "$OUT/run" "$OUT/from-megatron"

step "8/8 generate, and what a Hub push would send (dry run: nothing leaves this machine)"
hf-starcoder-ft generate "$OUT/from-megatron" --max_new_tokens 24 \
    --prompt "<commit_before>def add(a, b):
    return a + b
<commit_msg>Handle None arguments<commit_after>"
hf-starcoder-ft push "$OUT/from-megatron" --repo_id you/tiny-octopack --dry_run

step "done"
python - "$OUT/run/run_summary.json" <<'PY'
import json, sys
summary = json.load(open(sys.argv[1]))
train, evaluation = summary["train"], summary["eval"]
print(f"train loss {float(train['train_loss']):.3f} (mean over the run); eval loss {evaluation.get('eval_loss', float('nan')):.3f}, perplexity {evaluation.get('eval_perplexity', float('nan')):.1f}")
PY
cat <<TXT
data:           $OUT/data/commits.jsonl (+ train_paths.txt, valid_paths.txt)
prepared data:  $OUT/prepared (summary.txt, stats.json)
trained model:  $OUT/run  (TensorBoard logs: tensorboard --logdir $OUT/run)
Megatron copy:  $OUT/megatron (TP2 x PP2), converted back: $OUT/from-megatron
TXT
