"""Compare two checkpoints key by key, one tensor at a time.

    hf-starcoder-ft diff MODEL_A MODEL_B [--atol 0] [--ignore_dtype] [--ignore_vocab_padding]

Each side is an HF folder (safetensors, with or without an index, or `.bin` shards read with
`weights_only=True`), a single `.safetensors` / `.bin` file, or a Megatron checkpoint directory. Two Megatron
checkpoints with the same TP and PP are compared rank file by rank file in Megatron's own keys; any other pair is
compared in HF key space (Megatron tensors merged on the fly, one pipeline stage mapped at a time).

Reported: keys only in A or only in B, shape and dtype mismatches, and every tensor whose largest |difference|
exceeds --atol (default 0: values must be equal). A stored `lm_head.weight` that equals `transformer.wte.weight`
is a tied copy and is compared once, as wte. Exit status: 0 identical, 1 any mismatch, 2 unreadable input.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hf_starcoder_ft.convert.hf_format import HFCheckpoint, HFCheckpointError
from hf_starcoder_ft.convert.keymap import HF_LM_HEAD, HF_WTE
from hf_starcoder_ft.convert.megatron_format import (
    TRACKER_FILE,
    MegatronCheckpointError,
    flatten_model_state,
    open_checkpoint,
)

_CHUNK_ELEMENTS = 1 << 24  # compare in slices so a large tensor's fp32 copy never exists whole


def max_abs_difference(a: torch.Tensor, b: torch.Tensor, chunk_elements: int = _CHUNK_ELEMENTS) -> float:
    """Largest |a - b| over same-shaped tensors, in fp32 (float64 for float64), NaN equal to NaN only in place;
    `chunk_elements` at a time, so no full-size upcast copy exists (also used by verify-conversion)."""
    if a.dtype == b.dtype and torch.equal(a, b):
        return 0.0  # the usual case, found without upcasting anything (equal never holds where a NaN is)
    if not (a.is_floating_point() or b.is_floating_point()):
        return 0.0 if torch.equal(a, b) else float((a.long() - b.long()).abs().max().item())
    work = torch.float64 if torch.float64 in (a.dtype, b.dtype) else torch.float32
    flat_a, flat_b = a.reshape(-1), b.reshape(-1)
    worst = 0.0
    for start in range(0, flat_a.numel(), chunk_elements):
        x = flat_a[start : start + chunk_elements].to(work)
        y = flat_b[start : start + chunk_elements].to(work)
        difference = (x - y).abs()
        both_nan = x.isnan() & y.isnan()
        difference = torch.where(both_nan, torch.zeros_like(difference), difference)
        if difference.isnan().any():
            return float("inf")
        worst = max(worst, difference.max().item())
    return worst


def looks_like_megatron(path: Path) -> bool:
    if not path.is_dir():
        return False
    if (path / TRACKER_FILE).is_file():
        return True
    candidates = [
        path,
        *(p for p in path.iterdir() if p.is_dir() and (p.name == "release" or p.name.startswith("iter_"))),
    ]
    return any(
        child.name.startswith("mp_rank_") for folder in candidates for child in folder.iterdir() if child.is_dir()
    )


class HFSide:
    """An HF checkpoint as a key -> tensor source, with a tied `lm_head.weight` folded into wte."""

    def __init__(self, path: Path, notes: list[str], label: str):
        self.source = HFCheckpoint(path)
        self.description = f"HF checkpoint {path}"
        self._keys = self.source.keys()
        if HF_LM_HEAD in self._keys and HF_WTE in self._keys:
            if torch.equal(self.source.get(HF_LM_HEAD), self.source.get(HF_WTE)):
                self._keys = [key for key in self._keys if key != HF_LM_HEAD]
                notes.append(f"{label}: {HF_LM_HEAD} is a tied copy of {HF_WTE}; compared once, as {HF_WTE}")

    def keys(self) -> list[str]:
        return self._keys

    def get(self, key: str) -> torch.Tensor:
        return self.source.get(key)


class MegatronSide:
    """A Megatron checkpoint seen in HF key space."""

    def __init__(self, path: Path, iteration, notes: list[str], label: str):
        from hf_starcoder_ft.convert.megatron_to_hf import MegatronAsHF

        self.checkpoint = open_checkpoint(path, iteration)
        spec = self.checkpoint.spec
        self.description = (
            f"Megatron checkpoint {self.checkpoint.iteration_dir} (TP={spec.tp}, PP={spec.pp}, in HF key space)"
        )
        self.view = MegatronAsHF(self.checkpoint, on_warning=lambda message: notes.append(f"{label}: {message}"))

    def keys(self) -> list[str]:
        return self.view.keys()

    def get(self, key: str) -> torch.Tensor:
        return self.view.get(key)


@dataclass
class DiffResult:
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)
    shape: list[str] = field(default_factory=list)
    dtype: list[str] = field(default_factory=list)
    values: list[str] = field(default_factory=list)
    equal: int = 0
    compared: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def mismatches(self) -> int:
        return len(self.only_a) + len(self.only_b) + len(self.shape) + len(self.dtype) + len(self.values)


def compare_pair(
    key: str, a: torch.Tensor, b: torch.Tensor, result: DiffResult, atol: float, ignore_dtype: bool, vocab_padding: bool
) -> None:
    result.compared += 1
    if a.shape != b.shape:
        same_width = a.shape[1:] == b.shape[1:] and a.dim() == 2
        if vocab_padding and key == HF_WTE and same_width:
            rows = min(a.shape[0], b.shape[0])
            result.notes.append(f"{key}: shapes {list(a.shape)} vs {list(b.shape)}; compared the first {rows} rows")
            a, b = a[:rows], b[:rows]
        else:
            result.shape.append(f"{key}: A {list(a.shape)} vs B {list(b.shape)}")
            return
    mismatch = False
    if a.dtype != b.dtype and not ignore_dtype:
        result.dtype.append(
            f"{key}: A {str(a.dtype).removeprefix('torch.')} vs B {str(b.dtype).removeprefix('torch.')}"
        )
        mismatch = True
    difference = max_abs_difference(a, b)
    if difference > atol:
        result.values.append(f"{key}: max |diff| {difference:.6g}")
        mismatch = True
    if not mismatch:
        result.equal += 1


def diff_key_spaces(side_a, side_b, atol: float, ignore_dtype: bool, vocab_padding: bool, result: DiffResult) -> None:
    keys_a, keys_b = side_a.keys(), side_b.keys()
    set_b = set(keys_b)
    result.only_a += [key for key in keys_a if key not in set_b]
    result.only_b += sorted(set_b - set(keys_a))
    for key in keys_a:
        if key in set_b:
            compare_pair(key, side_a.get(key), side_b.get(key), result, atol, ignore_dtype, vocab_padding)
            for side in (side_a, side_b):
                if hasattr(side, "release"):
                    side.release(key)  # hand back the mapped pages of what was just compared


def diff_megatron_ranks(path_a: Path, path_b: Path, iteration_a, iteration_b, atol, ignore_dtype, result) -> None:
    """Same TP and PP on both sides: compare rank file by rank file, in Megatron keys."""
    checkpoint_a, checkpoint_b = open_checkpoint(path_a, iteration_a), open_checkpoint(path_b, iteration_b)
    spec = checkpoint_a.spec
    args_a, args_b = vars(checkpoint_a.args), vars(checkpoint_b.args)
    for name in sorted(set(args_a) | set(args_b)):
        if args_a.get(name, "<absent>") != args_b.get(name, "<absent>"):
            result.notes.append(
                f"args.{name}: A {args_a.get(name, '<absent>')!r} vs B {args_b.get(name, '<absent>')!r}"
            )
    for pp_rank in range(spec.pp):
        for tp_rank in range(spec.tp):
            rank_a, rank_b = checkpoint_a.load_rank(tp_rank, pp_rank), checkpoint_b.load_rank(tp_rank, pp_rank)
            label = rank_a.path.parent.name
            flat_a = flatten_model_state(rank_a.content["model"])
            flat_b = flatten_model_state(rank_b.content["model"])
            result.only_a += [f"{label}: {key}" for key in flat_a if key not in flat_b]
            result.only_b += [f"{label}: {key}" for key in flat_b if key not in flat_a]
            for key, tensor_a in flat_a.items():
                if key not in flat_b:
                    continue
                tensor_b = flat_b[key]
                if isinstance(tensor_a, torch.Tensor) and isinstance(tensor_b, torch.Tensor):
                    compare_pair(f"{label}: {key}", tensor_a, tensor_b, result, atol, ignore_dtype, False)
                    rank_a.release(tensor_a)
                    rank_b.release(tensor_b)
                elif isinstance(tensor_a, torch.Tensor) or isinstance(tensor_b, torch.Tensor):
                    result.compared += 1
                    result.values.append(f"{label}: {key}: A {type(tensor_a).__name__} vs B {type(tensor_b).__name__}")
                elif tensor_a != tensor_b:
                    result.compared += 1
                    result.values.append(f"{label}: {key}: A {tensor_a!r} vs B {tensor_b!r}")
            del rank_a, rank_b, flat_a, flat_b


def diff_checkpoints(
    path_a: str | Path,
    path_b: str | Path,
    atol: float = 0.0,
    ignore_dtype: bool = False,
    ignore_vocab_padding: bool = False,
    iteration_a=None,
    iteration_b=None,
) -> tuple[DiffResult, str]:
    """Compare; returns the result and a one-line description of how the two sides were read."""
    path_a, path_b = Path(path_a), Path(path_b)
    result = DiffResult()
    megatron_a, megatron_b = looks_like_megatron(path_a), looks_like_megatron(path_b)
    if megatron_a and megatron_b:
        spec_a = open_checkpoint(path_a, iteration_a).spec
        spec_b = open_checkpoint(path_b, iteration_b).spec
        if (spec_a.tp, spec_a.pp) == (spec_b.tp, spec_b.pp):
            diff_megatron_ranks(path_a, path_b, iteration_a, iteration_b, atol, ignore_dtype, result)
            return result, f"both Megatron with TP={spec_a.tp}, PP={spec_a.pp}: compared rank file by rank file"
    side_a = MegatronSide(path_a, iteration_a, result.notes, "A") if megatron_a else HFSide(path_a, result.notes, "A")
    side_b = MegatronSide(path_b, iteration_b, result.notes, "B") if megatron_b else HFSide(path_b, result.notes, "B")
    diff_key_spaces(side_a, side_b, atol, ignore_dtype, ignore_vocab_padding, result)
    return result, f"A: {side_a.description}; B: {side_b.description}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hf-starcoder-ft diff",
        description="Compare two checkpoints (HF folders/files or Megatron directories) key by key; exit 1 on any "
        "mismatch.",
    )
    parser.add_argument("a", type=Path, help="first checkpoint (HF folder, .safetensors/.bin file, or Megatron dir)")
    parser.add_argument("b", type=Path, help="second checkpoint")
    parser.add_argument(
        "--atol", type=float, default=0.0, help="largest |difference| still counted as equal (default 0: exact)"
    )
    parser.add_argument(
        "--ignore_dtype", action="store_true", help="compare values only when dtypes differ (bf16 vs fp32)"
    )
    parser.add_argument(
        "--ignore_vocab_padding",
        action="store_true",
        help="compare only the shared rows of transformer.wte.weight when one side keeps Megatron's padding",
    )
    parser.add_argument("--iteration_a", default=None, help="Megatron iteration of A (default: its tracker file)")
    parser.add_argument("--iteration_b", default=None, help="Megatron iteration of B (default: its tracker file)")
    parser.add_argument("--max_lines", type=int, default=50, help="print at most this many lines per category")
    args = parser.parse_args(argv)
    try:
        result, how = diff_checkpoints(
            args.a, args.b, args.atol, args.ignore_dtype, args.ignore_vocab_padding, args.iteration_a, args.iteration_b
        )
    except (MegatronCheckpointError, HFCheckpointError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(how)
    for note in result.notes:
        print(f"note: {note}")
    for title, lines in (
        ("only in A", result.only_a),
        ("only in B", result.only_b),
        ("shape mismatch", result.shape),
        ("dtype mismatch", result.dtype),
        ("values differ", result.values),
    ):
        for line in lines[: args.max_lines]:
            print(f"{title}: {line}")
        if len(lines) > args.max_lines:
            print(f"{title}: ... and {len(lines) - args.max_lines} more")
    print(
        f"{result.compared} tensors compared, {result.equal} equal; {len(result.only_a)} only in A, "
        f"{len(result.only_b)} only in B, {len(result.shape)} shape, {len(result.dtype)} dtype, "
        f"{len(result.values)} value mismatches"
    )
    return 1 if result.mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
