"""`hf-starcoder-ft convert`: move weights between Megatron-LM (bigcode fork) and Hugging Face GPTBigCode.

    hf-starcoder-ft convert megatron-to-hf --megatron DIR --out DIR [--iteration N|release] [--tokenizer PATH]
        [--dtype auto|bf16|fp16|fp32] [--max_shard_size 5GB] [--verify] [--overwrite] [--print_structure]
    hf-starcoder-ft convert hf-to-megatron --hf DIR --out DIR --tp N --pp M [--iteration N|release]
        [--distributed_optimizer] [--dtype ...] [--make_vocab_size_divisible_by 128] [--overwrite]

Exit status: 0 done, 1 `--verify` found a mismatch, 2 bad input (the message names the file, key or arg).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hf_starcoder_ft.convert.hf_format import DTYPE_CHOICES, HFCheckpointError
from hf_starcoder_ft.convert.megatron_format import MegatronCheckpointError
from hf_starcoder_ft.io_utils import OutputExistsError

_INPUT_ERRORS = (MegatronCheckpointError, HFCheckpointError, OutputExistsError, FileNotFoundError, ValueError)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-starcoder-ft convert", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="direction", required=True, metavar="{megatron-to-hf,hf-to-megatron}")

    to_hf = commands.add_parser(
        "megatron-to-hf",
        help="Megatron checkpoint (any TP/PP) -> HF safetensors folder",
        description="Merge a Megatron checkpoint's TP/PP rank files into a GPTBigCode folder, one stage at a time.",
    )
    to_hf.add_argument("--megatron", required=True, type=Path, help="checkpoint directory (holds the tracker file)")
    to_hf.add_argument("--out", type=Path, help="output HF model directory (required unless --print_structure)")
    to_hf.add_argument(
        "--iteration", default=None, help="iteration number or `release` (default: latest_checkpointed_iteration.txt)"
    )
    to_hf.add_argument(
        "--tokenizer",
        type=Path,
        default=None,
        help="tokenizer.json or a folder holding one: cuts vocabulary padding to its size, sets bos/eos, and is "
        "copied into the output (without it the padded vocabulary is kept)",
    )
    to_hf.add_argument(
        "--dtype",
        choices=["auto", *DTYPE_CHOICES],
        default="auto",
        help="dtype of the written weights (auto: as stored in the checkpoint)",
    )
    to_hf.add_argument(
        "--max_shard_size", default="5GB", help="largest safetensors file, e.g. 5GB or 500MB (default: 5GB)"
    )
    to_hf.add_argument(
        "--verify", action="store_true", help="after converting, run verify-conversion against the checkpoint"
    )
    to_hf.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    to_hf.add_argument(
        "--print_structure", action="store_true", help="print the checkpoint's args and tensor tree, then exit"
    )
    to_hf.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    from hf_starcoder_ft.convert.verify import add_verify_options

    verify_group = to_hf.add_argument_group("verification (with --verify)")
    add_verify_options(verify_group)

    to_megatron = commands.add_parser(
        "hf-to-megatron",
        help="HF GPTBigCode folder -> Megatron checkpoint for TP x PP",
        description="Write a bigcode Megatron-LM checkpoint (weights only) split for the given TP and PP.",
    )
    to_megatron.add_argument("--hf", required=True, type=Path, help="HF model directory (config.json + weights)")
    to_megatron.add_argument("--out", required=True, type=Path, help="output Megatron checkpoint directory")
    to_megatron.add_argument("--tp", type=int, default=1, help="tensor-parallel size (default 1)")
    to_megatron.add_argument("--pp", type=int, default=1, help="pipeline-parallel size (default 1)")
    to_megatron.add_argument("--iteration", default="release", help="iteration number or `release` (default: release)")
    to_megatron.add_argument(
        "--distributed_optimizer",
        action="store_true",
        help="name rank files model_rng.pt, as Megatron's distributed optimizer expects (no optimizer state written)",
    )
    to_megatron.add_argument(
        "--dtype",
        choices=["auto", *DTYPE_CHOICES],
        default="auto",
        help="dtype of the written weights (auto: as stored)",
    )
    to_megatron.add_argument(
        "--make_vocab_size_divisible_by",
        type=int,
        default=128,
        help="pad the vocabulary to a multiple of this times TP, as Megatron does (default 128)",
    )
    to_megatron.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    to_megatron.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    return parser


def _megatron_to_hf(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from hf_starcoder_ft.convert.megatron_format import describe_structure, open_checkpoint

    if args.print_structure:
        print(describe_structure(open_checkpoint(args.megatron, args.iteration)))
        return 0
    if args.out is None:
        parser.error("megatron-to-hf needs --out (or --print_structure)")
    from hf_starcoder_ft.convert.megatron_to_hf import convert_megatron_to_hf

    convert_megatron_to_hf(
        args.megatron,
        args.out,
        iteration=args.iteration,
        tokenizer=args.tokenizer,
        dtype=args.dtype,
        max_shard_size=args.max_shard_size,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    if not args.verify:
        return 0
    from hf_starcoder_ft.convert.verify import run_verification

    return run_verification(args.megatron, args.out, args.iteration, args)


def _hf_to_megatron(args: argparse.Namespace) -> int:
    from hf_starcoder_ft.convert.hf_to_megatron import convert_hf_to_megatron

    convert_hf_to_megatron(
        args.hf,
        args.out,
        tp=args.tp,
        pp=args.pp,
        iteration=args.iteration,
        distributed_optimizer=args.distributed_optimizer,
        dtype=args.dtype,
        make_vocab_size_divisible_by=args.make_vocab_size_divisible_by,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        if args.direction == "megatron-to-hf":
            return _megatron_to_hf(args, parser)
        return _hf_to_megatron(args)
    except _INPUT_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
