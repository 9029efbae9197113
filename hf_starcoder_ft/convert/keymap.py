"""The Megatron (bigcode fork) <-> Hugging Face GPTBigCode key map, and the tensor surgery between them.

    hf-starcoder-ft convert megatron-to-hf --megatron DIR --out DIR
    hf-starcoder-ft convert hf-to-megatron --hf DIR --out DIR --tp 2 --pp 2

Every HF tensor is the concatenation, along dim 0, of one or more Megatron tensors ("parts"); each part is
split across tensor-parallel ranks in one of three ways. `{}` in a name is the layer slot (global number on
the HF side, stage-local on the Megatron side). No transposes, and no QKV reordering at checkpoint_version >= 2:

    HF c_attn (multi-query) = cat([query (rows split over TP), key_value (copied on every TP rank)], dim 0)
    HF c_attn (multi-head)  = query_key_value (rows split over TP; heads stay [q, k, v] interleaved per head)

Functions here are pure (tensors in, tensors out); file I/O lives in megatron_to_hf.py / hf_to_megatron.py.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from hf_starcoder_ft.convert.megatron_format import MegatronCheckpointError, ModelSpec


class Split(enum.Enum):
    """How a Megatron tensor is laid out over tensor-parallel ranks."""

    ROWS = "rows"  # split on dim 0 (column-parallel weights and their biases, vocabulary)
    COLUMNS = "columns"  # split on dim 1 (row-parallel weights)
    REPLICATED = "replicated"  # the same full tensor on every rank


@dataclass(frozen=True)
class Part:
    megatron: str  # full dotted key, with `{}` for the stage-local layer number
    split: Split


@dataclass(frozen=True)
class TensorRule:
    hf: str  # `{}` is the global layer number
    parts: tuple[Part, ...]  # concatenated along dim 0, in this order


LAYER = "model.language_model.encoder.layers.{}."
WORD_EMBEDDINGS = "model.language_model.embedding.word_embeddings.weight"
POSITION_EMBEDDINGS = "model.language_model.embedding.position_embeddings.weight"
HEAD_EMBEDDINGS = "model.word_embeddings_for_head.weight"  # last stage, PP > 1: the tied copy
FINAL_LAYERNORM = "model.language_model.encoder.final_layernorm."

HF_WTE = "transformer.wte.weight"
HF_LM_HEAD = "lm_head.weight"


def _rule(hf: str, *parts: tuple[str, Split]) -> TensorRule:
    return TensorRule(hf, tuple(Part(name, split) for name, split in parts))


def _layer(hf_suffix: str, *parts: tuple[str, Split]) -> TensorRule:
    return _rule(f"transformer.h.{{}}.{hf_suffix}", *((LAYER + name, split) for name, split in parts))


R, C, REP = Split.ROWS, Split.COLUMNS, Split.REPLICATED

FIRST_STAGE_RULES = (
    _rule(HF_WTE, (WORD_EMBEDDINGS, R)),
    _rule("transformer.wpe.weight", (POSITION_EMBEDDINGS, REP)),
)

_ATTENTION_MULTI_QUERY = (
    _layer("attn.c_attn.weight", ("self_attention.query.weight", R), ("self_attention.key_value.weight", REP)),
    _layer("attn.c_attn.bias", ("self_attention.query.bias", R), ("self_attention.key_value.bias", REP)),
)
_ATTENTION_MULTI_HEAD = (
    _layer("attn.c_attn.weight", ("self_attention.query_key_value.weight", R)),
    _layer("attn.c_attn.bias", ("self_attention.query_key_value.bias", R)),
)


def layer_rules(multi_query: bool) -> tuple[TensorRule, ...]:
    """The rules of one transformer layer, in Megatron's module order."""
    return (
        _layer("ln_1.weight", ("input_layernorm.weight", REP)),
        _layer("ln_1.bias", ("input_layernorm.bias", REP)),
        *(_ATTENTION_MULTI_QUERY if multi_query else _ATTENTION_MULTI_HEAD),
        _layer("attn.c_proj.weight", ("self_attention.dense.weight", C)),
        _layer("attn.c_proj.bias", ("self_attention.dense.bias", REP)),
        _layer("ln_2.weight", ("post_attention_layernorm.weight", REP)),
        _layer("ln_2.bias", ("post_attention_layernorm.bias", REP)),
        _layer("mlp.c_fc.weight", ("mlp.dense_h_to_4h.weight", R)),
        _layer("mlp.c_fc.bias", ("mlp.dense_h_to_4h.bias", R)),
        _layer("mlp.c_proj.weight", ("mlp.dense_4h_to_h.weight", C)),
        _layer("mlp.c_proj.bias", ("mlp.dense_4h_to_h.bias", REP)),
    )


LAST_STAGE_RULES = (
    _rule("transformer.ln_f.weight", (FINAL_LAYERNORM + "weight", REP)),
    _rule("transformer.ln_f.bias", (FINAL_LAYERNORM + "bias", REP)),
)


@dataclass(frozen=True)
class BoundRule:
    """A rule with its layer slot filled in: concrete HF and Megatron names for one stage."""

    hf: str
    parts: tuple[Part, ...]


def stage_rules(spec: ModelSpec, pp_rank: int) -> list[BoundRule]:
    """Every HF tensor a pipeline stage produces, in the order the converter writes them."""
    bound: list[BoundRule] = []
    if pp_rank == 0:
        bound += [BoundRule(rule.hf, rule.parts) for rule in FIRST_STAGE_RULES]
    for local, global_layer in enumerate(spec.stage_layers(pp_rank)):
        for rule in layer_rules(spec.multi_query):
            parts = tuple(Part(part.megatron.format(local), part.split) for part in rule.parts)
            bound.append(BoundRule(rule.hf.format(global_layer), parts))
    if pp_rank == spec.pp - 1:
        bound += [BoundRule(rule.hf, rule.parts) for rule in LAST_STAGE_RULES]
    return bound


def all_rules(spec: ModelSpec) -> list[BoundRule]:
    return [rule for pp_rank in range(spec.pp) for rule in stage_rules(spec, pp_rank)]


def stage_megatron_keys(spec: ModelSpec, pp_rank: int) -> list[str]:
    """The exact tensor keys every TP rank file of this stage holds, in Megatron's module order (each module's
    weight then bias: `query.weight, query.bias, key_value.weight, ...`)."""
    by_module: dict[str, list[str]] = {}
    for rule in stage_rules(spec, pp_rank):
        for part in rule.parts:
            by_module.setdefault(part.megatron.rsplit(".", 1)[0], []).append(part.megatron)
    keys = [key for module_keys in by_module.values() for key in module_keys]
    if spec.pp > 1 and pp_rank == spec.pp - 1:
        keys.append(HEAD_EMBEDDINGS)
    return keys


# ----------------------------------------------------------------------------------------------------------------
# Shapes.


def hf_shape(spec: ModelSpec, hf_key: str, vocab_rows: int) -> tuple[int, ...]:
    """The full HF shape of a tensor (the vocabulary has `vocab_rows` rows)."""
    hidden, ffn = spec.hidden_size, spec.ffn_hidden_size
    qkv = hidden + spec.kv_rows if spec.multi_query else 3 * hidden
    suffix = hf_key.split(".", 3)[-1] if hf_key.startswith("transformer.h.") else hf_key
    table = {
        HF_WTE: (vocab_rows, hidden),
        "transformer.wpe.weight": (spec.max_position_embeddings, hidden),
        "attn.c_attn.weight": (qkv, hidden),
        "attn.c_attn.bias": (qkv,),
        "attn.c_proj.weight": (hidden, hidden),
        "mlp.c_fc.weight": (ffn, hidden),
        "mlp.c_fc.bias": (ffn,),
        "mlp.c_proj.weight": (hidden, ffn),
    }
    return table.get(suffix, (hidden,))


def megatron_shape(spec: ModelSpec, key: str) -> tuple[int, ...]:
    """The shape of one Megatron tensor on one TP rank."""
    hidden, ffn, tp = spec.hidden_size, spec.ffn_hidden_size, spec.tp
    if key in (WORD_EMBEDDINGS, HEAD_EMBEDDINGS):
        return (spec.padded_vocab_size // tp, hidden)
    if key == POSITION_EMBEDDINGS:
        return (spec.max_position_embeddings, hidden)
    suffix = key.split(".", 5)[-1] if key.startswith("model.language_model.encoder.layers.") else key
    table = {
        "self_attention.query.weight": (hidden // tp, hidden),
        "self_attention.query.bias": (hidden // tp,),
        "self_attention.key_value.weight": (spec.kv_rows, hidden),
        "self_attention.key_value.bias": (spec.kv_rows,),
        "self_attention.query_key_value.weight": (3 * hidden // tp, hidden),
        "self_attention.query_key_value.bias": (3 * hidden // tp,),
        "self_attention.dense.weight": (hidden, hidden // tp),
        "mlp.dense_h_to_4h.weight": (ffn // tp, hidden),
        "mlp.dense_h_to_4h.bias": (ffn // tp,),
        "mlp.dense_4h_to_h.weight": (hidden, ffn // tp),
    }
    return table.get(suffix, (hidden,))


def padded_vocab_size(vocab_size: int, divisible_by: int, tp: int) -> int:
    """Megatron's padding: the smallest multiple of `divisible_by * tp` that holds `vocab_size` rows."""
    multiple = divisible_by * tp
    return -(-vocab_size // multiple) * multiple


# ----------------------------------------------------------------------------------------------------------------
# Tensor surgery.


def merge_tensor_parallel(
    shards: Sequence[torch.Tensor], split: Split, key: str, on_mismatch: Callable[[str], None] | None = None
) -> torch.Tensor:
    """Join one tensor's TP shards.

    Replicated tensors must agree bitwise across ranks; when they do not, rank 0's copy is used and
    `on_mismatch` is told (with the largest difference), or the mismatch is an error when no callback is given.
    """
    if split is Split.REPLICATED:
        first = shards[0]
        for rank, other in enumerate(shards[1:], start=1):
            if not torch.equal(first, other):
                difference = (first.float() - other.float()).abs().max().item()
                message = (
                    f"{key}: replicated tensor differs between TP rank 0 and rank {rank} (max |diff| {difference:.3g})"
                )
                if on_mismatch is None:
                    raise MegatronCheckpointError(message)
                on_mismatch(message + "; using rank 0's copy")
        return first
    if len(shards) == 1:
        return shards[0]
    return torch.cat(list(shards), dim=0 if split is Split.ROWS else 1)


def split_tensor_parallel(tensor: torch.Tensor, split: Split, tp: int, key: str) -> list[torch.Tensor]:
    """Cut one full tensor into its TP shards (views; replicated tensors are the same tensor on every rank)."""
    if split is Split.REPLICATED:
        return [tensor] * tp
    dim = 0 if split is Split.ROWS else 1
    if tensor.shape[dim] % tp:
        raise MegatronCheckpointError(f"{key}: dim {dim} of shape {list(tensor.shape)} does not divide by TP={tp}")
    return list(torch.chunk(tensor, tp, dim=dim))


def split_fused_rows(tensor: torch.Tensor, rows: Sequence[int], key: str) -> list[torch.Tensor]:
    """Cut a fused HF tensor (e.g. c_attn = [query; key_value]) back into its parts along dim 0."""
    if tensor.shape[0] != sum(rows):
        raise MegatronCheckpointError(
            f"{key}: expected {sum(rows)} rows to split into {list(rows)}, got {tensor.shape[0]}"
        )
    return list(torch.split(tensor, list(rows), dim=0))


def part_rows(spec: ModelSpec, rule: BoundRule) -> list[int]:
    """Full (merged) row count of each part of a rule, to split a fused HF tensor."""
    rows = []
    for part in rule.parts:
        shape = megatron_shape(spec, part.megatron)
        rows.append(shape[0] * (spec.tp if part.split is Split.ROWS else 1))
    return rows


def pad_vocab_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """Append zero rows up to `rows` (Megatron's padded vocabulary; padded ids are never produced)."""
    if tensor.shape[0] == rows:
        return tensor
    padding = torch.zeros((rows - tensor.shape[0], *tensor.shape[1:]), dtype=tensor.dtype)
    return torch.cat([tensor, padding], dim=0)
