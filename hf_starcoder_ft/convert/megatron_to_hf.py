"""Megatron-LM (bigcode fork, any TP/PP, multi-query or multi-head) -> Hugging Face GPTBigCode, streaming.

    hf-starcoder-ft convert megatron-to-hf --megatron starcoderbase-megatron --out starcoder-hf \\
        --tokenizer tokenizer.json --verify

One pipeline stage is opened at a time (its TP rank files, memory-mapped, so opening reads only the pickle),
and within it one HF tensor at a time is produced and appended to the open safetensors shard, whose header is
written first because every name, shape and dtype is planned from `args`. Bytes that lie contiguously in a rank
file are copied file to file (`copy_file_range`): row-split shards whole, one after another, column-split
shards one row segment at a time. Only what must be computed passes through memory (replicated tensors checked
for agreement across ranks, dtype casts, files in the pre-zip format), and the pages of each consumed tensor are
released at once. Peak memory stays near the interpreter's own, whatever the model's size.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hf_starcoder_ft.convert.hf_format import (
    DTYPE_CHOICES,
    ColumnSlices,
    FileSlice,
    Piece,
    PlannedTensor,
    StreamingSafetensorsWriter,
    parse_size,
)
from hf_starcoder_ft.convert.keymap import (
    HEAD_EMBEDDINGS,
    HF_WTE,
    WORD_EMBEDDINGS,
    BoundRule,
    Split,
    all_rules,
    hf_shape,
    megatron_shape,
    merge_tensor_parallel,
    stage_megatron_keys,
    stage_rules,
)
from hf_starcoder_ft.convert.megatron_format import (
    MegatronCheckpoint,
    MegatronCheckpointError,
    ModelSpec,
    RankFile,
    activation_from_args,
    flatten_model_state,
    open_checkpoint,
)
from hf_starcoder_ft.io_utils import atomic_output_dir

STARCODER_EOS_ID = 0


def _list_keys(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (and {len(keys) - limit} more)" if len(keys) > limit else "")


def check_stage_tensors(spec: ModelSpec, pp_rank: int, ranks: list[RankFile]) -> list[dict[str, torch.Tensor]]:
    """Flatten each TP rank file of a stage and check its keys and shapes exactly; errors name file and key."""
    expected = stage_megatron_keys(spec, pp_rank)
    expected_set = set(expected)
    flats = []
    for rank in ranks:
        flat = flatten_model_state(rank.content["model"])
        unknown = sorted(set(flat) - expected_set)
        missing = [key for key in expected if key not in flat]
        if unknown:
            raise MegatronCheckpointError(f"{rank.path}: unknown keys for a GPTBigCode model: {_list_keys(unknown)}")
        if missing:
            raise MegatronCheckpointError(f"{rank.path}: missing keys: {_list_keys(missing)}")
        for key in expected:
            value = flat[key]
            if not isinstance(value, torch.Tensor):
                raise MegatronCheckpointError(f"{rank.path}: {key} is a {type(value).__name__}, not a tensor")
            want = megatron_shape(spec, key)
            if tuple(value.shape) != want:
                raise MegatronCheckpointError(
                    f"{rank.path}: {key} has shape {list(value.shape)}, expected {list(want)} from args "
                    f"(TP={spec.tp}, hidden={spec.hidden_size}, heads={spec.num_attention_heads})"
                )
        flats.append(flat)
    return flats


COMPARE_CHUNK_BYTES = 1 << 20  # byte comparisons of tensors in files read this much at a time


@dataclass(frozen=True)
class _TensorBytes:
    """Where a tensor's bytes can be read again later, once its rank file is no longer loaded: a file range,
    or (pre-zip files, which cannot be located) a digest of the bytes."""

    path: Path
    offset: int | None
    nbytes: int
    digest: str | None = None

    @classmethod
    def of(cls, rank: RankFile, tensor: torch.Tensor) -> _TensorBytes:
        offset = rank.file_offset(tensor)
        nbytes = tensor.numel() * tensor.element_size()
        if offset is not None:
            return cls(rank.path, offset, nbytes)
        flat = tensor.contiguous().reshape(-1)
        digest = hashlib.sha256(memoryview(flat.view(torch.uint8).numpy()).cast("B")).hexdigest()
        return cls(rank.path, None, nbytes, digest)

    def chunks(self, size: int | None = None) -> Iterator[bytes | bytearray]:
        """The bytes, `size` (default `COMPARE_CHUNK_BYTES`) at a time, read into one reused buffer: each chunk
        is valid only until the next one is asked for. A cache-sized buffer compares faster than fresh large
        allocations (the tied-head check reads 2 x 200 MB of a 15B checkpoint's embeddings)."""
        buffer = bytearray(max(1, min(size or COMPARE_CHUNK_BYTES, self.nbytes)))
        view = memoryview(buffer)
        with open(self.path, "rb", buffering=0) as file:
            offset, remaining = self.offset, self.nbytes
            file.seek(offset)
            while remaining:
                count = min(remaining, len(buffer))
                if file.readinto(view[:count]) != count:
                    raise MegatronCheckpointError(f"{self.path}: file ends before byte {offset + count}, in a tensor")
                yield buffer if count == len(buffer) else bytes(view[:count])
                offset += count
                remaining -= count

    def sha256(self) -> str:
        if self.digest is not None:
            return self.digest
        digest = hashlib.sha256()
        for chunk in self.chunks():
            digest.update(chunk)
        return digest.hexdigest()

    def same_as(self, other: _TensorBytes) -> bool:
        """Byte equality, read from both files in chunks (no pages of either kept resident)."""
        if self.nbytes != other.nbytes:
            return False
        if self.offset is None or other.offset is None:
            return self.sha256() == other.sha256()
        return all(a == b for a, b in zip(self.chunks(), other.chunks(), strict=True))


def _limit_rows(pieces: list[Piece], rows: int) -> list[Piece]:
    """Keep the first `rows` rows of pieces that concatenate along dim 0 (vocabulary padding removal)."""
    kept, remaining = [], rows
    for piece in pieces:
        if remaining <= 0:
            break
        kept.append(piece.first_rows(remaining) if isinstance(piece, FileSlice) else piece[:remaining])
        remaining -= piece.shape[0]
    return kept


def rule_pieces(
    rule: BoundRule,
    ranks: list[RankFile],
    flats: list[dict[str, torch.Tensor]],
    warn: Callable[[str], None] | None,
    file_slices: bool = False,
) -> list[Piece]:
    """The pieces (concatenating along dim 0) of one HF tensor, from one stage's TP rank files.

    Row-split shards are returned as they are (written back to back, never joined in memory); column-split
    ones are joined; replicated ones are checked for agreement and taken from rank 0. With `file_slices`, a
    piece that lies contiguously in its rank file comes back as a `FileSlice` (column-split shards as one
    `ColumnSlices`), for a file-to-file copy.
    """

    def as_piece(rank: RankFile, tensor: torch.Tensor) -> Piece:
        offset = rank.file_offset(tensor) if file_slices else None
        return tensor if offset is None else FileSlice(tensor, rank.path, offset)

    pieces: list[Piece] = []
    for part in rule.parts:
        shards = [flat[part.megatron] for flat in flats]
        if part.split is Split.ROWS:
            pieces += [as_piece(rank, shard) for rank, shard in zip(ranks, shards, strict=True)]
        elif part.split is Split.REPLICATED:
            pieces.append(as_piece(ranks[0], merge_tensor_parallel(shards, part.split, part.megatron, warn)))
        else:
            in_files = [as_piece(rank, shard) for rank, shard in zip(ranks, shards, strict=True)]
            if all(isinstance(piece, FileSlice) for piece in in_files):
                pieces.append(in_files[0] if len(in_files) == 1 else ColumnSlices(tuple(in_files)))
                continue
            for rank, shard in zip(ranks, shards, strict=True):
                rank.prefetch(shard)  # about to be read whole: map it in one call
            pieces.append(merge_tensor_parallel(shards, part.split, part.megatron, warn))
    return pieces


def iter_hf_tensors(
    checkpoint: MegatronCheckpoint,
    vocab_rows: int | None = None,
    on_warning: Callable[[str], None] | None = None,
    release_pages: bool = True,
) -> Iterator[tuple[str, list[Piece]]]:
    """Yield `(hf_key, pieces)` in HF order, stage by stage; the pieces concatenate along dim 0 to the tensor.

    Pieces are `FileSlice`s (bytes lying in a rank file, to copy file to file) or tensors (column-split
    weights merged in memory); either is valid only until the next item is requested, when the pages of the
    consumed rank-file tensors are released. `vocab_rows` cuts the vocabulary padding (None keeps it). The
    tied head copy of PP > 1 checkpoints is checked byte for byte against the word embeddings, as HF keeps one.
    """
    spec = checkpoint.spec
    vocab_rows = spec.padded_vocab_size if vocab_rows is None else vocab_rows
    warn = on_warning or (lambda message: print(f"warning: {message}", file=sys.stderr))
    embeddings: list[_TensorBytes] = []  # stage 0's word embedding shards, to check the head copy against
    for pp_rank, ranks in checkpoint.iter_stages():
        flats = check_stage_tensors(spec, pp_rank, ranks)
        for rule in stage_rules(spec, pp_rank):
            pieces = rule_pieces(rule, ranks, flats, warn, file_slices=True)
            if rule.hf == HF_WTE:
                if spec.pp > 1:
                    embeddings = [
                        _TensorBytes.of(rank, flat[WORD_EMBEDDINGS]) for rank, flat in zip(ranks, flats, strict=True)
                    ]
                pieces = _limit_rows(pieces, vocab_rows)
            yield rule.hf, pieces
            del pieces
            if release_pages:
                for rank, flat in zip(ranks, flats, strict=True):
                    for part in rule.parts:
                        rank.release(flat[part.megatron])
        if spec.pp > 1 and pp_rank == spec.pp - 1:
            for tp_rank, (rank, flat) in enumerate(zip(ranks, flats, strict=True)):
                head = flat[HEAD_EMBEDDINGS]
                if not _TensorBytes.of(rank, head).same_as(embeddings[tp_rank]):
                    warn(
                        f"{rank.path}: {HEAD_EMBEDDINGS} differs from the first stage's {WORD_EMBEDDINGS} "
                        f"(TP rank {tp_rank}); HF ties lm_head to wte, so the word embeddings are used for both"
                    )
                if release_pages:
                    rank.release(head)
        del flats, ranks


class MegatronAsHF:
    """Random access to a Megatron checkpoint in HF key space (for `diff`): one stage's rank files mapped at a
    time, each tensor merged only when asked for. Asking for keys in HF order loads each stage once."""

    def __init__(self, checkpoint: MegatronCheckpoint, on_warning: Callable[[str], None] | None = None):
        self.checkpoint = checkpoint
        self.warn = on_warning
        self._rules = {
            rule.hf: (pp_rank, rule)
            for pp_rank in range(checkpoint.spec.pp)
            for rule in stage_rules(checkpoint.spec, pp_rank)
        }
        self._stage: tuple[int, list[RankFile], list[dict]] | None = None

    def keys(self) -> list[str]:
        return list(self._rules)

    def __contains__(self, key: str) -> bool:
        return key in self._rules

    def shape(self, key: str) -> tuple[int, ...]:
        return hf_shape(self.checkpoint.spec, key, self.checkpoint.spec.padded_vocab_size)

    def get(self, key: str) -> torch.Tensor:
        pp_rank, rule = self._rules[key]
        if self._stage is None or self._stage[0] != pp_rank:
            self._stage = None
            ranks = [self.checkpoint.load_rank(tp_rank, pp_rank) for tp_rank in range(self.checkpoint.spec.tp)]
            self._stage = (pp_rank, ranks, check_stage_tensors(self.checkpoint.spec, pp_rank, ranks))
        pieces = rule_pieces(rule, self._stage[1], self._stage[2], self.warn)
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=0)

    def file_of(self, key: str) -> Path:
        pp_rank, _ = self._rules[key]
        return self.checkpoint.rank_path(0, pp_rank).parent

    def release(self, key: str) -> None:
        """Drop the mapped pages behind `key`'s shards (they are read again if the tensor is touched)."""
        pp_rank, rule = self._rules[key]
        if self._stage is not None and self._stage[0] == pp_rank:
            for rank, flat in zip(self._stage[1], self._stage[2], strict=True):
                for part in rule.parts:
                    rank.release(flat[part.megatron])


def plan_hf_tensors(spec: ModelSpec, vocab_rows: int, dtype: torch.dtype) -> list[PlannedTensor]:
    return [PlannedTensor(rule.hf, hf_shape(spec, rule.hf, vocab_rows), dtype) for rule in all_rules(spec)]


def hf_config_for(spec: ModelSpec, args, vocab_rows: int, dtype: torch.dtype, bos_id: int, eos_id: int) -> dict:
    """config.json of the GPTBigCode model that reproduces the Megatron one (activation and epsilon follow `args`).

    Written as plain JSON so that converting does not pay for importing transformers; the tests load it back
    with `from_pretrained`.
    """
    hidden_dropout = float(getattr(args, "hidden_dropout", 0.1) or 0.0)
    attention_dropout = float(getattr(args, "attention_dropout", 0.1) or 0.0)
    return {
        "architectures": ["GPTBigCodeForCausalLM"],
        "model_type": "gpt_bigcode",
        "vocab_size": vocab_rows,
        "n_positions": spec.max_position_embeddings,
        "n_embd": spec.hidden_size,
        "n_layer": spec.num_layers,
        "n_head": spec.num_attention_heads,
        "n_inner": spec.ffn_hidden_size,
        "multi_query": spec.multi_query,
        "activation_function": spec.activation,
        "layer_norm_epsilon": spec.layernorm_epsilon,
        "resid_pdrop": hidden_dropout,
        "embd_pdrop": hidden_dropout,
        "attn_pdrop": attention_dropout,
        "initializer_range": float(getattr(args, "init_method_std", 0.02) or 0.02),
        "scale_attn_weights": True,
        "attention_softmax_in_fp32": spec.attention_softmax_in_fp32,
        "scale_attention_softmax_in_fp32": spec.attention_softmax_in_fp32,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": None,
        "use_cache": True,
        "tie_word_embeddings": True,
        "dtype": str(dtype).removeprefix("torch."),
    }


@dataclass
class MegatronToHFReport:
    out_dir: Path
    iteration: int | str
    tp: int
    pp: int
    vocab_rows: int
    padded_vocab_size: int
    dtype: torch.dtype
    activation: str
    activation_reason: str
    shard_files: list[str]
    num_tensors: int
    warnings: list[str] = field(default_factory=list)


def _resolve_dtype(dtype: str, checkpoint: MegatronCheckpoint) -> torch.dtype:
    if dtype != "auto":
        return DTYPE_CHOICES[dtype]
    rank = checkpoint.load_rank(0, 0)
    stored = flatten_model_state(rank.content["model"]).get(WORD_EMBEDDINGS)
    if not isinstance(stored, torch.Tensor):
        raise MegatronCheckpointError(f"{rank.path}: missing key {WORD_EMBEDDINGS}")
    return stored.dtype


def convert_megatron_to_hf(
    megatron_dir: str | Path,
    out_dir: str | Path,
    iteration: str | int | None = None,
    tokenizer: str | Path | None = None,
    dtype: str = "auto",
    max_shard_size: str | int = "5GB",
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    release_pages: bool = True,
) -> MegatronToHFReport:
    """Convert a Megatron checkpoint folder into an HF model folder (written atomically).

    `release_pages=False` keeps each stage's mapped pages resident until the stage is dropped (for the benchmark's
    comparison; there is no reason to use it otherwise).
    """
    from tqdm.auto import tqdm

    checkpoint = open_checkpoint(megatron_dir, iteration)
    spec = checkpoint.spec
    out_dtype = _resolve_dtype(dtype, checkpoint)
    warnings: list[str] = []

    def warn(message: str) -> None:
        warnings.append(message)
        print(f"warning: {message}", file=sys.stderr)

    loaded_tokenizer = None
    if tokenizer is not None:
        from hf_starcoder_ft.tokenizer import load_tokenizer

        loaded_tokenizer = load_tokenizer(tokenizer)
        vocab_rows = len(loaded_tokenizer)
        if vocab_rows > spec.padded_vocab_size:
            raise MegatronCheckpointError(
                f"{tokenizer}: the tokenizer has {vocab_rows} tokens but the checkpoint's embedding has only "
                f"{spec.padded_vocab_size} rows (args.padded_vocab_size); wrong tokenizer?"
            )
        log(f"vocabulary: {spec.padded_vocab_size} padded rows -> {vocab_rows} (the tokenizer's size)")
        bos_id, eos_id = loaded_tokenizer.bos_token_id, loaded_tokenizer.eos_token_id
    else:
        vocab_rows = spec.padded_vocab_size
        log(
            f"vocabulary: keeping all {vocab_rows} rows including Megatron's padding "
            "(pass --tokenizer to cut the embedding to the tokenizer's size)"
        )
        bos_id = eos_id = STARCODER_EOS_ID
        log(f"bos/eos token id: {STARCODER_EOS_ID} (StarCoder's <|endoftext|>; no --tokenizer given)")

    activation, reason = activation_from_args(checkpoint.args)
    log(f"activation_function: {activation} ({reason})")
    log(
        f"reading {checkpoint.iteration_dir} (iteration {checkpoint.iteration}, TP={spec.tp}, PP={spec.pp}, "
        f"{'multi-query' if spec.multi_query else 'multi-head'}, {checkpoint.file_name}); "
        f"writing {str(out_dtype).removeprefix('torch.')}"
    )

    plan = plan_hf_tensors(spec, vocab_rows, out_dtype)
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        writer = StreamingSafetensorsWriter(tmp, plan, parse_size(max_shard_size))
        bar = tqdm(total=len(plan), desc="megatron-to-hf", unit="tensor", disable=not progress)
        try:
            for key, pieces in iter_hf_tensors(checkpoint, vocab_rows, on_warning=warn, release_pages=release_pages):
                if dtype == "auto" and any(piece.dtype != out_dtype for piece in pieces):
                    raise MegatronCheckpointError(
                        f"{key}: stored as {pieces[0].dtype}, other tensors as {out_dtype}; pass --dtype to choose one"
                    )
                writer.write(key, pieces)
                bar.update(1)
            writer.close()
        except BaseException:
            writer.abort()
            raise
        finally:
            bar.close()

        config = hf_config_for(spec, checkpoint.args, vocab_rows, out_dtype, bos_id, eos_id)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        generation = {"bos_token_id": bos_id, "eos_token_id": eos_id}
        (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
        if loaded_tokenizer is not None:
            loaded_tokenizer.save_pretrained(tmp)

    log(f"wrote {out_dir}: {len(plan)} tensors in {len(writer.file_names)} safetensors file(s)")
    return MegatronToHFReport(
        out_dir=Path(out_dir),
        iteration=checkpoint.iteration,
        tp=spec.tp,
        pp=spec.pp,
        vocab_rows=vocab_rows,
        padded_vocab_size=spec.padded_vocab_size,
        dtype=out_dtype,
        activation=activation,
        activation_reason=reason,
        shard_files=list(writer.file_names),
        num_tensors=len(plan),
        warnings=warnings,
    )
