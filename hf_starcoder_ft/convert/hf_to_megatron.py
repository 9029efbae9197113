"""Hugging Face GPTBigCode -> Megatron-LM (bigcode fork) checkpoint for any TP and PP.

    hf-starcoder-ft convert hf-to-megatron --hf starcoder-hf --out starcoder-megatron --tp 4 --pp 4

Writes the layout Megatron's `load_checkpoint` reads: `latest_checkpointed_iteration.txt`, `release/` (or
`iter_NNNNNNN/`), one `mp_rank_XX[_YYY]/model_optim_rng.pt` (or `model_rng.pt` with --distributed_optimizer)
per rank, holding `args`, `checkpoint_version` 3.0, `iteration` and `model`. The vocabulary is padded with zero
rows to a multiple of `make_vocab_size_divisible_by * TP`; multi-query `key_value` is copied to every TP rank;
the last stage of a PP > 1 model holds `word_embeddings_for_head`. Only weights are written (no optimizer or
RNG state): start Megatron with `--finetune --no-load-optim --no-load-rng`.

Safetensors weights are mapped, not read: a rank file is written from the mapped bytes where its tensors are
whole tensors or runs of rows, and from copies only for column-split shards, padded vocabularies and dtype casts,
one rank at a time.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from hf_starcoder_ft.convert.hf_format import DTYPE_CHOICES, HFCheckpoint, HFCheckpointError
from hf_starcoder_ft.convert.keymap import (
    HEAD_EMBEDDINGS,
    HF_LM_HEAD,
    HF_WTE,
    Split,
    all_rules,
    hf_shape,
    pad_vocab_rows,
    padded_vocab_size,
    part_rows,
    split_fused_rows,
    split_tensor_parallel,
    stage_megatron_keys,
    stage_rules,
)
from hf_starcoder_ft.convert.megatron_format import (
    CHECKPOINT_VERSION,
    MODEL_FILE,
    MODEL_FILE_DISTRIBUTED_OPTIMIZER,
    SUPPORTED_ACTIVATIONS,
    TRACKER_FILE,
    ModelSpec,
    build_args,
    iteration_dir_name,
    parse_iteration,
    rank_dir_name,
    save_rank_file,
)
from hf_starcoder_ft.io_utils import atomic_output_dir


def spec_from_hf_config(config: dict, tp: int, pp: int, divisible_by: int, vocab_rows: int, source: Path) -> ModelSpec:
    """Check an HF GPTBigCode config can be laid out over TP x PP and describe it; errors name config.json."""
    if config.get("model_type") != "gpt_bigcode":
        raise HFCheckpointError(f"{source}: model_type is {config.get('model_type')!r}, expected 'gpt_bigcode'")
    hidden, heads, layers = config["n_embd"], config["n_head"], config["n_layer"]
    ffn = config.get("n_inner") or 4 * hidden
    activation = config.get("activation_function", "gelu_pytorch_tanh")
    if activation not in SUPPORTED_ACTIVATIONS:
        raise HFCheckpointError(
            f"{source}: activation_function {activation!r} has no Megatron equivalent "
            f"(supported: {', '.join(SUPPORTED_ACTIVATIONS)})"
        )
    if not config.get("tie_word_embeddings", True):
        raise HFCheckpointError(f"{source}: tie_word_embeddings is false; the bigcode Megatron model ties its head")
    if hidden % heads:
        raise HFCheckpointError(f"{source}: n_embd={hidden} is not divisible by n_head={heads}")
    if tp < 1 or pp < 1:
        raise HFCheckpointError(f"--tp and --pp must be >= 1 (got TP={tp}, PP={pp})")
    if heads % tp or ffn % tp:
        raise HFCheckpointError(f"{source}: n_head={heads} and n_inner={ffn} must both divide by TP={tp}")
    if layers % pp:
        raise HFCheckpointError(f"{source}: n_layer={layers} is not divisible by PP={pp}")
    if config.get("vocab_size", vocab_rows) != vocab_rows:
        raise HFCheckpointError(f"{source}: vocab_size={config.get('vocab_size')} but {HF_WTE} has {vocab_rows} rows")
    return ModelSpec(
        num_layers=layers,
        hidden_size=hidden,
        ffn_hidden_size=ffn,
        num_attention_heads=heads,
        kv_channels=hidden // heads,
        max_position_embeddings=config["n_positions"],
        padded_vocab_size=padded_vocab_size(vocab_rows, divisible_by, tp),
        multi_query=config.get("multi_query", True),
        activation=activation,
        layernorm_epsilon=config.get("layer_norm_epsilon", 1e-5),
        attention_softmax_in_fp32=config.get("attention_softmax_in_fp32", True),
        apply_query_key_layer_scaling=True,
        tp=tp,
        pp=pp,
        make_vocab_size_divisible_by=divisible_by,
    )


def check_hf_tensors(hf: HFCheckpoint, spec: ModelSpec, vocab_rows: int) -> None:
    """Exact key set and shapes; a stored `lm_head.weight` must be the tied copy of `wte`."""
    expected = [rule.hf for rule in all_rules(spec)]
    present = set(hf.keys())
    unknown = sorted(present - set(expected) - {HF_LM_HEAD})
    missing = [key for key in expected if key not in present]
    if unknown:
        files = sorted({str(hf.file_of(key)) for key in unknown})
        raise HFCheckpointError(f"{', '.join(files)}: unknown keys for GPTBigCode: {', '.join(unknown[:6])}")
    if missing:
        raise HFCheckpointError(f"{hf.path}: missing keys: {', '.join(missing[:6])}")
    for key in expected:
        shape, want = hf.shape(key), hf_shape(spec, key, vocab_rows)
        if shape != want:
            raise HFCheckpointError(f"{hf.file_of(key)}: {key} has shape {list(shape)}, expected {list(want)}")
    if HF_LM_HEAD in present and not torch.equal(hf.get(HF_LM_HEAD), hf.get(HF_WTE)):
        raise HFCheckpointError(
            f"{hf.file_of(HF_LM_HEAD)}: {HF_LM_HEAD} differs from {HF_WTE}; an untied head has no place in Megatron"
        )


def _owned(tensor: torch.Tensor, hf: HFCheckpoint | None = None) -> torch.Tensor:
    """`tensor` if `torch.save` would write exactly its bytes; a run of rows of a mapped safetensors tensor re-made
    over the same mapped bytes; else a copy (saving a view writes its whole parent)."""
    nbytes = tensor.numel() * tensor.element_size()
    if tensor.is_contiguous() and tensor.storage_offset() == 0 and tensor.untyped_storage().nbytes() == nbytes:
        return tensor
    exact = hf.exact_storage(tensor) if hf is not None else None
    return exact if exact is not None else tensor.clone()


def megatron_rank_shard(
    spec: ModelSpec,
    pp_rank: int,
    tp_rank: int,
    hf_tensors: dict[str, torch.Tensor],
    dtype: torch.dtype,
    hf: HFCheckpoint | None = None,
) -> dict[str, torch.Tensor]:
    """One TP rank's flat Megatron state (stage-local layer numbers) cut from its stage's HF tensors.

    Only what must be is copied: a whole tensor that owns its storage is used as it is, and with `hf` (whose
    `get_mapped` gave the tensors) a run of rows (row-split shards, the query or key/value rows of a fused
    weight) is saved straight from the file mapping. Column-split shards, padded vocabularies and dtype casts
    are new tensors, one rank's at a time.
    """
    shard: dict[str, torch.Tensor] = {}
    for rule in stage_rules(spec, pp_rank):
        tensor = hf_tensors[rule.hf].to(dtype)
        if rule.hf == HF_WTE:
            tensor = pad_vocab_rows(tensor, spec.padded_vocab_size)
        pieces = split_fused_rows(tensor, part_rows(spec, rule), rule.hf) if len(rule.parts) > 1 else [tensor]
        for part, piece in zip(rule.parts, pieces, strict=True):
            if part.split is not Split.REPLICATED:
                piece = split_tensor_parallel(piece, part.split, spec.tp, part.megatron)[tp_rank]
            shard[part.megatron] = _owned(piece, hf)
    if spec.pp > 1 and pp_rank == spec.pp - 1:
        head = pad_vocab_rows(hf_tensors[HF_WTE].to(dtype), spec.padded_vocab_size)
        shard[HEAD_EMBEDDINGS] = _owned(split_tensor_parallel(head, Split.ROWS, spec.tp, HEAD_EMBEDDINGS)[tp_rank], hf)
    return {key: shard[key] for key in stage_megatron_keys(spec, pp_rank)}


def megatron_rank_shards(
    spec: ModelSpec, pp_rank: int, hf_tensors: dict[str, torch.Tensor], dtype: torch.dtype
) -> list[dict[str, torch.Tensor]]:
    """Every TP rank's flat Megatron state for one stage (see `megatron_rank_shard`)."""
    return [megatron_rank_shard(spec, pp_rank, tp_rank, hf_tensors, dtype) for tp_rank in range(spec.tp)]


def nest_megatron_state(flat: dict[str, torch.Tensor]) -> dict:
    """Flat `model.*` keys -> the nested `model` tree Megatron saves (the encoder stays one flat dict)."""
    tree: dict = {}
    encoder_prefix = "model.language_model.encoder."
    for key, tensor in flat.items():
        if key.startswith(encoder_prefix):
            tree.setdefault("language_model", {}).setdefault("encoder", {})[key[len(encoder_prefix) :]] = tensor
            continue
        node = tree
        *parents, leaf = key.split(".")[1:]
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = tensor
    # Megatron's module order: embedding before encoder.
    language_model = tree.get("language_model", {})
    ordered = {name: language_model[name] for name in ("embedding", "encoder") if name in language_model}
    tree["language_model"] = ordered
    return tree


@dataclass
class HFToMegatronReport:
    out_dir: Path
    tp: int
    pp: int
    iteration: int | str
    padded_vocab_size: int
    vocab_rows: int
    file_name: str
    rank_files: list[Path]


def convert_hf_to_megatron(
    hf_dir: str | Path,
    out_dir: str | Path,
    tp: int = 1,
    pp: int = 1,
    iteration: str | int = "release",
    distributed_optimizer: bool = False,
    dtype: str = "auto",
    make_vocab_size_divisible_by: int = 128,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> HFToMegatronReport:
    """Export an HF GPTBigCode folder as a Megatron checkpoint (written atomically)."""
    from tqdm.auto import tqdm

    hf = HFCheckpoint(hf_dir)
    if not hf.config:
        raise HFCheckpointError(f"{hf.path}: no config.json; hf-to-megatron needs the model's config")
    if HF_WTE not in hf:
        raise HFCheckpointError(f"{hf.path}: missing key {HF_WTE}")
    vocab_rows = hf.shape(HF_WTE)[0]
    spec = spec_from_hf_config(hf.config, tp, pp, make_vocab_size_divisible_by, vocab_rows, hf.path / "config.json")
    check_hf_tensors(hf, spec, vocab_rows)
    stored_dtype = hf.get(HF_WTE).dtype
    out_dtype = stored_dtype if dtype == "auto" else DTYPE_CHOICES[dtype]
    iteration = parse_iteration(str(iteration), "--iteration")
    file_name = MODEL_FILE_DISTRIBUTED_OPTIMIZER if distributed_optimizer else MODEL_FILE
    args = build_args(spec, out_dtype, distributed_optimizer)
    args.hidden_dropout = float(hf.config.get("resid_pdrop", 0.1))
    args.attention_dropout = float(hf.config.get("attn_pdrop", 0.1))
    args.init_method_std = float(hf.config.get("initializer_range", 0.02))
    log(
        f"vocabulary: {vocab_rows} rows padded to {spec.padded_vocab_size} "
        f"(multiple of make_vocab_size_divisible_by={make_vocab_size_divisible_by} x TP={tp})"
    )
    log(
        f"activation_function {spec.activation}: "
        f"args.bias_gelu_fusion={args.bias_gelu_fusion}, args.openai_gelu={args.openai_gelu}"
    )

    rank_files: list[Path] = []
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        folder = tmp / iteration_dir_name(iteration)
        bar = tqdm(total=tp * pp, desc="hf-to-megatron", unit="rank file", disable=not progress)
        try:
            for pp_rank in range(pp):
                needed = [rule.hf for rule in stage_rules(spec, pp_rank)]
                if pp > 1 and pp_rank == pp - 1:
                    needed.append(HF_WTE)
                stage = {key: hf.get_mapped(key) for key in dict.fromkeys(needed)}
                for tp_rank in range(tp):
                    flat = megatron_rank_shard(spec, pp_rank, tp_rank, stage, out_dtype, hf)
                    path = folder / rank_dir_name(tp_rank, pp_rank, pp) / file_name
                    content = {
                        "args": args,
                        "checkpoint_version": CHECKPOINT_VERSION,
                        "iteration": 0 if iteration == "release" else iteration,
                        "model": nest_megatron_state(flat),
                    }
                    save_rank_file(content, path)
                    del flat, content
                    hf.release_pages()
                    rank_files.append(Path(out_dir) / path.relative_to(tmp))
                    bar.update(1)
                del stage
        finally:
            bar.close()
        (tmp / TRACKER_FILE).write_text(f"{iteration}\n")
    log(f"wrote {out_dir}: {len(rank_files)} rank files ({file_name}) in {iteration_dir_name(iteration)}/")
    if distributed_optimizer:
        print(
            "note: no optimizer state is written; start Megatron with --finetune --no-load-optim --no-load-rng",
            file=sys.stderr,
        )
    return HFToMegatronReport(
        out_dir=Path(out_dir),
        tp=tp,
        pp=pp,
        iteration=iteration,
        padded_vocab_size=spec.padded_vocab_size,
        vocab_rows=vocab_rows,
        file_name=file_name,
        rank_files=rank_files,
    )


__all__ = [
    "convert_hf_to_megatron",
    "spec_from_hf_config",
    "megatron_rank_shard",
    "megatron_rank_shards",
    "nest_megatron_state",
]
