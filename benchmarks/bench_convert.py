"""Benchmark `convert megatron-to-hf`: wall time against copying the same bytes, and peak memory.

    .venv/bin/python benchmarks/bench_convert.py [--layers 20] [--hidden 2048] [--tp 2] [--pp 2] [--repeats 3]

Goals (issue 5): conversion wall time <= 2.5 x the time to copy the checkpoint's rank files, and peak RSS
<= 0.35 x the checkpoint's size (holding one pipeline stage of a PP=2 checkpoint is already ~0.5, so only
streaming gets there). A synthetic bf16 multi-query checkpoint (default: 20 layers, hidden 2048, ffn 8192, vocab
49152, 8192 positions, TP2 x PP2: ~2 GiB) is written under /tmp with the package's rank-file writer, then

1. copying its rank files and converting it alternate `--repeats` times (page cache warm for both; `sync`
   before each step so one step's writeback does not slow the next). Each conversion runs in a child process
   that reports its own wall time and `getrusage` peak RSS. The ratio compares medians: this machine's disk
   is noisy and shared.
2. In the same rounds (TP > 1 only), the conversion with the writer's previous way of interleaving
   column-split shards: one `copy_file_range` per row segment instead of gathering blocks of rows with
   `preadv` (the path the writer still takes where `os.preadv` is missing).
3. For comparison, the usual converter's shape: merge the whole model in memory, then `save_file`.
4. A child that only imports what the conversion imports (the interpreter + torch floor).
5. `hf-to-megatron` of the result back to the same TP x PP (time and peak RSS; it holds one stage in memory).
6. `verify-conversion` of the result (reference forward + per-tensor table, one layer at a time), against the
   usual way of checking: load the HF model whole in fp32 and run it (peak RSS of each).

The work directory is deleted at the end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path


def make_checkpoint(out: Path, layers: int, hidden: int, tp: int, pp: int) -> None:
    """Write a synthetic bf16 checkpoint, one rank file at a time (replicated tensors equal on every rank)."""
    import torch

    from hf_starcoder_ft.convert.hf_to_megatron import nest_megatron_state
    from hf_starcoder_ft.convert.keymap import (
        HEAD_EMBEDDINGS,
        WORD_EMBEDDINGS,
        Split,
        megatron_shape,
        stage_megatron_keys,
        stage_rules,
    )
    from hf_starcoder_ft.convert.megatron_format import (
        MODEL_FILE,
        TRACKER_FILE,
        ModelSpec,
        build_args,
        rank_dir_name,
        save_rank_file,
    )

    spec = ModelSpec(
        num_layers=layers,
        hidden_size=hidden,
        ffn_hidden_size=4 * hidden,
        num_attention_heads=hidden // 128,
        kv_channels=128,
        max_position_embeddings=8192,
        padded_vocab_size=49152,
        multi_query=True,
        activation="gelu_pytorch_tanh",
        tp=tp,
        pp=pp,
    )
    args = build_args(spec, torch.bfloat16, use_distributed_optimizer=False)
    for pp_rank in range(pp):
        splits = {part.megatron: part.split for rule in stage_rules(spec, pp_rank) for part in rule.parts}
        splits[HEAD_EMBEDDINGS] = Split.ROWS
        for tp_rank in range(tp):
            flat = {}
            for key in stage_megatron_keys(spec, pp_rank):
                seed_key = WORD_EMBEDDINGS if key == HEAD_EMBEDDINGS else key
                owner = "all" if splits[key] is Split.REPLICATED else tp_rank
                generator = torch.Generator().manual_seed(zlib.crc32(f"{seed_key}|{owner}".encode()))
                values = torch.randn(megatron_shape(spec, key), generator=generator).mul_(0.02)
                flat[key] = values.to(torch.bfloat16)
                del values
            content = {"args": args, "checkpoint_version": 3.0, "iteration": 0, "model": nest_megatron_state(flat)}
            save_rank_file(content, out / "release" / rank_dir_name(tp_rank, pp_rank, pp) / MODEL_FILE)
            del flat, content
    (out / TRACKER_FILE).write_text("release\n")


def child_convert(megatron: Path, out: Path, row_copies: bool = False) -> dict:
    from hf_starcoder_ft.convert.megatron_to_hf import convert_megatron_to_hf

    if row_copies:
        del os.preadv  # the writer then copies column-split shards one row segment at a time

    start = time.perf_counter()
    convert_megatron_to_hf(megatron, out, progress=False, log=lambda _: None)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def child_in_memory(megatron: Path, out: Path) -> dict:
    """The usual converter's shape, for comparison: merge the whole model in memory, then save it."""
    import torch
    from safetensors.torch import save_file

    from hf_starcoder_ft.convert.hf_format import ColumnSlices, FileSlice
    from hf_starcoder_ft.convert.megatron_format import open_checkpoint
    from hf_starcoder_ft.convert.megatron_to_hf import iter_hf_tensors

    def materialize(piece) -> torch.Tensor:
        if isinstance(piece, ColumnSlices):
            return piece.merged()
        return (piece.tensor if isinstance(piece, FileSlice) else piece).clone()

    start = time.perf_counter()
    state = {}
    for key, pieces in iter_hf_tensors(open_checkpoint(megatron), release_pages=False):
        state[key] = torch.cat([materialize(piece) for piece in pieces])
    out.mkdir(parents=True)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def child_verify(megatron: Path, hf: Path) -> dict:
    from hf_starcoder_ft.convert.verify import verify_conversion

    start = time.perf_counter()
    report = verify_conversion(megatron, hf)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"seconds": seconds, "peak_rss": peak, "passed": report.passed, "logit_diff": report.max_logit_diff}


def child_export(hf: Path, out: Path, tp: int, pp: int) -> dict:
    from hf_starcoder_ft.convert.hf_to_megatron import convert_hf_to_megatron

    start = time.perf_counter()
    convert_hf_to_megatron(hf, out, tp=tp, pp=pp, progress=False, log=lambda _: None)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def child_whole_model_forward(hf: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(hf), dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():
        model(input_ids=torch.zeros(3, 16, dtype=torch.long), use_cache=False)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def child_baseline() -> dict:
    import transformers  # noqa: F401

    from hf_starcoder_ft.convert import megatron_to_hf  # noqa: F401

    transformers.GPTBigCodeConfig()
    return {"seconds": 0.0, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def run_child(*argv: str) -> dict:
    os.sync()  # start from a clean dirty-page backlog, so one step's writeback does not slow the next
    start = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--child", *argv], check=True, capture_output=True, text=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_seconds"] = time.perf_counter() - start
    return result


def rank_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.pt"))


def timed_copy(source: Path, destination: Path) -> float:
    files = rank_files(source)
    os.sync()
    start = time.perf_counter()
    for file in files:
        target = destination / file.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, target)
    seconds = time.perf_counter() - start
    shutil.rmtree(destination)
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=20, help="transformer layers (default 20)")
    parser.add_argument("--hidden", type=int, default=2048, help="hidden size; heads = hidden / 128 (default 2048)")
    parser.add_argument("--tp", type=int, default=2, help="tensor-parallel size of the synthetic checkpoint")
    parser.add_argument("--pp", type=int, default=2, help="pipeline-parallel size of the synthetic checkpoint")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp"), help="where the temporary files go")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--repeats", type=int, default=3, help="copy/convert pairs to run, alternating (medians are compared)"
    )
    parser.add_argument("--skip_verify", action="store_true", help="do not measure verify-conversion")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        kind, *rest = args.child
        if kind == "make":
            make_checkpoint(Path(rest[0]), int(rest[1]), int(rest[2]), int(rest[3]), int(rest[4]))
            print(json.dumps({"ok": True}))
        elif kind in ("convert", "convert_rows"):
            print(json.dumps(child_convert(Path(rest[0]), Path(rest[1]), row_copies=kind == "convert_rows")))
        elif kind == "verify":
            print(json.dumps(child_verify(Path(rest[0]), Path(rest[1]))))
        elif kind == "export":
            print(json.dumps(child_export(Path(rest[0]), Path(rest[1]), int(rest[2]), int(rest[3]))))
        elif kind == "whole_model_forward":
            print(json.dumps(child_whole_model_forward(Path(rest[0]))))
        elif kind == "in_memory":
            print(json.dumps(child_in_memory(Path(rest[0]), Path(rest[1]))))
        else:
            print(json.dumps(child_baseline()))
        return 0

    work = Path(tempfile.mkdtemp(prefix="bench_convert_", dir=args.workdir))
    copies, conversions, row_conversions = [], [], []
    try:
        megatron = work / "megatron"
        print(f"writing a synthetic checkpoint: {args.layers} layers, hidden {args.hidden}, TP{args.tp} PP{args.pp}")
        run_child("make", str(megatron), str(args.layers), str(args.hidden), str(args.tp), str(args.pp))
        size = sum(file.stat().st_size for file in rank_files(megatron))
        for _ in range(args.repeats):
            copies.append(timed_copy(megatron, work / "copy"))
            conversions.append(run_child("convert", str(megatron), str(work / "hf")))
            output_size = sum(file.stat().st_size for file in (work / "hf").glob("*.safetensors"))
            shutil.rmtree(work / "hf")
            if args.tp > 1:
                row_conversions.append(run_child("convert_rows", str(megatron), str(work / "hf")))
                shutil.rmtree(work / "hf")
        if not args.skip_verify:
            run_child("convert", str(megatron), str(work / "hf"))
            exported = run_child("export", str(work / "hf"), str(work / "back"), str(args.tp), str(args.pp))
            shutil.rmtree(work / "back")
            verified = run_child("verify", str(megatron), str(work / "hf"))
            whole_forward = run_child("whole_model_forward", str(work / "hf"))
            shutil.rmtree(work / "hf")
        in_memory = run_child("in_memory", str(megatron), str(work / "hf"))
        shutil.rmtree(work / "hf")
        floor = run_child("baseline")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    gib = 1024**3
    copy_seconds = statistics.median(copies)
    convert_seconds = statistics.median(result["seconds"] for result in conversions)
    peak = max(result["peak_rss"] for result in conversions)
    print(f"checkpoint: {size / gib:.2f} GiB bf16 in {args.tp * args.pp} rank files", end="; ")
    print(f"HF output {output_size / gib:.2f} GiB (no tied head copy)")
    print(f"copy the rank files:       {', '.join(f'{s:.2f}' for s in copies)} s (median {copy_seconds:.2f} s)")
    times = ", ".join(f"{result['seconds']:.2f}" for result in conversions)
    print(f"megatron-to-hf (streaming): {times} s (median {convert_seconds:.2f} s), peak RSS {peak / gib:.3f} GiB")
    if row_conversions:
        row_times = [result["seconds"] for result in row_conversions]
        print(
            f"  with one copy_file_range per row segment of column-split shards (the old way): "
            f"{', '.join(f'{s:.2f}' for s in row_times)} s (median {statistics.median(row_times):.2f} s)"
        )
    print(
        f"whole model in memory, then save_file (for comparison): {in_memory['seconds']:.2f} s, "
        f"peak RSS {in_memory['peak_rss'] / gib:.3f} GiB"
    )
    print(f"python + torch + imports alone: peak RSS {floor['peak_rss'] / gib:.3f} GiB")
    print(f"time ratio, conversion / copy (medians): {convert_seconds / copy_seconds:.2f}  (goal <= 2.5)")
    fastest = min(result["seconds"] for result in conversions) / min(copies)
    print(f"  fastest conversion / fastest copy:     {fastest:.2f}")
    if row_conversions:
        row_ratio = statistics.median(row_times) / convert_seconds
        print(f"row-by-row copies / block gather (medians): {row_ratio:.2f}")
    print(f"peak RSS / checkpoint size:              {peak / size:.3f}  (goal <= 0.35)")
    print(f"  in-memory conversion:                  {in_memory['peak_rss'] / size:.3f}")
    print(f"  streaming, above the import floor:     {(peak - floor['peak_rss']) / size:.3f}")
    if not args.skip_verify:
        print(
            f"hf-to-megatron back to TP{args.tp} x PP{args.pp}: {exported['seconds']:.1f} s, peak RSS "
            f"{exported['peak_rss'] / gib:.2f} GiB = {exported['peak_rss'] / size:.2f} x the checkpoint"
        )
        verdict = "PASS" if verified["passed"] else "FAIL"
        print(
            f"verify-conversion: {verified['seconds']:.1f} s, {verdict} (logit diff {verified['logit_diff']:.2g}), "
            f"peak RSS {verified['peak_rss'] / gib:.2f} GiB = {verified['peak_rss'] / size:.2f} x the checkpoint"
        )
        print(
            f"  the usual check, HF model loaded whole in fp32 + one forward: peak RSS "
            f"{whole_forward['peak_rss'] / gib:.2f} GiB = {whole_forward['peak_rss'] / size:.2f} x the checkpoint"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
