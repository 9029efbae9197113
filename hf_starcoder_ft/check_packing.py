"""`hf-starcoder-ft check-packing`: prove on your own setup that packed rows equal each example run alone.

    hf-starcoder-ft check-packing --model path/to/model --data prepared/ --rows 4

For each attention implementation tried (default: `sdpa` and `eager`, plus `flash_attention_2` when CUDA and
flash-attn are present), a few packed rows go through the model the way training runs them
(`hf_starcoder_ft.attention.document_attention_inputs`), and every example of those rows also goes through
alone, with nothing but its own ids, as at inference. The largest logit difference is printed per
implementation; the exit status is 1 when one exceeds the tolerance.

For contrast it also prints what "naive" packing gives (restarting `position_ids` only, the model config as
shipped): with StarCoder's `use_cache: true` that difference is large, because documents see each other.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from hf_starcoder_ft.attention import FLASH_IMPLEMENTATIONS, document_attention_inputs, document_ids
from hf_starcoder_ft.data.collator import PackedCollator

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT_TOLERANCE = {"fp32": 1e-4, "bf16": 5e-2, "fp16": 1e-2}


def available_implementations(device: str) -> list[str]:
    found = ["sdpa", "eager"]
    if device.startswith("cuda") and torch.cuda.is_available():
        try:
            import flash_attn  # noqa: F401

            found.append("flash_attention_2")
        except ImportError:
            pass
    return found


def _segments(position_ids: torch.Tensor) -> list[tuple[int, int]]:
    docs = document_ids(position_ids[None])[0].tolist()
    bounds, start = [], 0
    for i in range(1, len(docs) + 1):
        if i == len(docs) or docs[i] != docs[start]:
            bounds.append((start, i))
            start = i
    return bounds


@torch.no_grad()
def max_packing_difference(
    model, batch: dict[str, torch.Tensor], row_lengths: list[int], attn_implementation: str, naive: bool = False
) -> tuple[float, int]:
    """Largest |logit difference| between packed rows and their examples run alone, and the examples compared.

    `row_lengths` are the rows' lengths before the collator padded them; padding is not compared.
    """
    device = next(model.parameters()).device
    input_ids, position_ids = batch["input_ids"].to(device), batch["position_ids"].to(device)
    if naive:
        packed_logits = model(input_ids=input_ids, position_ids=position_ids).logits
    else:
        kwargs = document_attention_inputs(input_ids, position_ids, attn_implementation)
        packed_logits = model(**kwargs).logits
        if attn_implementation in FLASH_IMPLEMENTATIONS:
            packed_logits = packed_logits.reshape(*input_ids.shape, -1)
    worst, compared = 0.0, 0
    for row in range(input_ids.shape[0]):
        for start, end in _segments(position_ids[row, : row_lengths[row]].cpu()):
            alone = model(input_ids=input_ids[row : row + 1, start:end]).logits[0]
            worst = max(worst, (alone.float() - packed_logits[row, start:end].float()).abs().max().item())
            compared += 1
    return worst, compared


def check_packing(
    model_dir: str | Path,
    data_dir: str | Path,
    split: str = "train",
    rows: int = 4,
    implementations: list[str] | None = None,
    dtype: str = "fp32",
    device: str = "cpu",
    tolerance: float | None = None,
) -> tuple[bool, list[dict]]:
    """Run the check; returns (all within tolerance, one result dict per implementation)."""
    from transformers import AutoModelForCausalLM

    from hf_starcoder_ft.data.prepare import load_prepared

    prepared = load_prepared(data_dir)
    if split not in prepared.splits:
        raise ValueError(f"{data_dir}: no split {split!r} (have {', '.join(prepared.splits)})")
    dataset = prepared.splits[split]
    if "position_ids" not in dataset.column_names:
        raise ValueError(f"{data_dir}: split {split!r} is not packed (no position_ids); nothing to check")
    features = [dataset[i] for i in range(min(rows, len(dataset)))]
    batch = PackedCollator(pad_token_id=prepared.stats["tokenizer"]["pad_token_id"])(features)
    tolerance = DEFAULT_TOLERANCE[dtype] if tolerance is None else tolerance
    results = []
    for implementation in implementations or available_implementations(device):
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=DTYPES[dtype], attn_implementation=implementation, trust_remote_code=False
        ).to(device)
        model.eval()
        lengths = [len(f["input_ids"]) for f in features]
        worst, compared = max_packing_difference(model, batch, lengths, implementation)
        naive, _ = max_packing_difference(model, batch, lengths, implementation, naive=True)
        results.append(
            {
                "attn_implementation": implementation,
                "max_abs_diff": worst,
                "examples": compared,
                "naive_max_abs_diff": naive,
                "use_cache_in_config": bool(getattr(model.config, "use_cache", False)),
                "ok": worst <= tolerance,
            }
        )
        del model
    return all(r["ok"] for r in results), results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hf-starcoder-ft check-packing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="HF model directory (e.g. converted from Megatron).")
    parser.add_argument("--data", required=True, help="A directory written by `hf-starcoder-ft prepare`.")
    parser.add_argument("--split", default="train", help="Split to take rows from (default: train).")
    parser.add_argument("--rows", type=int, default=4, help="Packed rows to check (default: 4).")
    parser.add_argument(
        "--attn_implementations",
        default=None,
        help="Comma-separated list (default: sdpa,eager and flash_attention_2 when available).",
    )
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="Model dtype (default: fp32).")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu).")
    parser.add_argument(
        "--tolerance", type=float, default=None, help="Largest allowed difference (default: 1e-4 fp32, 5e-2 bf16)."
    )
    args = parser.parse_args(argv)
    implementations = args.attn_implementations.split(",") if args.attn_implementations else None
    try:
        ok, results = check_packing(
            args.model, args.data, args.split, args.rows, implementations, args.dtype, args.device, args.tolerance
        )
    except (ValueError, OSError) as error:
        print(f"hf-starcoder-ft check-packing: error: {error}", file=sys.stderr)
        return 1
    tolerance = DEFAULT_TOLERANCE[args.dtype] if args.tolerance is None else args.tolerance
    print(
        f"{'attention':<20} {'examples':>8} {'max |diff|':>12} {'naive packing':>14}  verdict (tolerance {tolerance:g})"
    )
    for r in results:
        verdict = "ok" if r["ok"] else "FAIL: packed examples see each other or differ"
        print(
            f"{r['attn_implementation']:<20} {r['examples']:>8} {r['max_abs_diff']:>12.3g} "
            f"{r['naive_max_abs_diff']:>14.3g}  {verdict}"
        )
    print("(naive packing = position_ids restarted, no mask, config as shipped; shown for contrast)")
    return 0 if ok else 1
