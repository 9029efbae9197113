"""`hf-starcoder-ft init-tiny`: a tiny random GPTBigCode model and tokenizer, for smoke tests and the quickstart.

    hf-starcoder-ft init-tiny --data commits.jsonl --output_dir tiny-model

Nothing can be downloaded on an air-gapped machine or in CI, so the quickstart trains a small byte-level BPE
on the data itself (StarCoder's special tokens at their real ids 0..18) and builds a randomly initialised
StarCoder-shaped model (multi-query attention, learned positions, tied embeddings, `use_cache: true` as the
released config ships) small enough to fine-tune on a CPU in minutes. Real runs start from a real checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hf_starcoder_ft.io_utils import OutputExistsError, atomic_output_dir


def _texts(path: Path):
    from hf_starcoder_ft.data.jsonl import read_records

    records, _ = read_records(path, skip_bad_records=True, progress=False)
    for inputs, targets in records:
        yield inputs + targets


def init_tiny(
    data: str | Path,
    output_dir: str | Path,
    vocab_size: int = 1024,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_positions: int = 1024,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    import torch
    from transformers import GPTBigCodeConfig, GPTBigCodeForCausalLM

    from hf_starcoder_ft.tokenizer import load_tokenizer, train_tiny_tokenizer

    with atomic_output_dir(output_dir, overwrite=overwrite) as tmp:
        tokenizer_json = train_tiny_tokenizer(_texts(Path(data)), tmp / "tokenizer.json", vocab_size=vocab_size)
        tokenizer = load_tokenizer(tokenizer_json)
        tokenizer.save_pretrained(tmp)
        config = GPTBigCodeConfig(
            vocab_size=len(tokenizer),
            n_positions=n_positions,
            n_embd=n_embd,
            n_layer=n_layer,
            n_head=n_head,
            n_inner=4 * n_embd,
            multi_query=True,
            activation_function="gelu_pytorch_tanh",
            use_cache=True,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            tie_word_embeddings=True,
        )
        torch.manual_seed(seed)
        GPTBigCodeForCausalLM(config).save_pretrained(tmp)
        (tmp / "README.md").write_text(
            "# Tiny random GPTBigCode\n\nRandomly initialised by `hf-starcoder-ft init-tiny` for smoke tests; "
            f"tokenizer trained on {Path(data).name}. Not a useful model.\n\n```json\n"
            + json.dumps(config.to_diff_dict(), indent=2)
            + "\n```\n"
        )
    return Path(output_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hf-starcoder-ft init-tiny", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="A jsonl of inputs/targets records to train the tokenizer on.")
    parser.add_argument("--output_dir", required=True, help="Where the model directory is written.")
    parser.add_argument("--vocab_size", type=int, default=1024, help="BPE vocabulary size (default: 1024).")
    parser.add_argument("--n_layer", type=int, default=2, help="Transformer blocks (default: 2).")
    parser.add_argument("--n_embd", type=int, default=64, help="Hidden size (default: 64).")
    parser.add_argument("--n_head", type=int, default=4, help="Attention heads (default: 4).")
    parser.add_argument("--n_positions", type=int, default=1024, help="Maximum positions (default: 1024).")
    parser.add_argument("--seed", type=int, default=0, help="Initialisation seed (default: 0).")
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing output directory.")
    args = parser.parse_args(argv)
    try:
        out = init_tiny(
            args.data,
            args.output_dir,
            args.vocab_size,
            args.n_layer,
            args.n_embd,
            args.n_head,
            args.n_positions,
            args.seed,
            args.overwrite,
        )
    except (OutputExistsError, ValueError, OSError) as error:
        print(f"hf-starcoder-ft init-tiny: error: {error}", file=sys.stderr)
        return 1
    print(f"wrote a tiny random GPTBigCode model and its tokenizer to {out}")
    return 0
