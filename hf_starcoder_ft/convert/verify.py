"""Check a converted HF model against the Megatron checkpoint it came from.

    hf-starcoder-ft verify-conversion --megatron starcoderbase-megatron --hf starcoder-hf
    hf-starcoder-ft convert megatron-to-hf ... --verify          # the same check, right after converting

Two checks, both read the Megatron rank files directly:

1. A reference forward pass written here in plain torch from Megatron's own math, on the rank files as they
   are (tensor parallelism simulated by per-rank partial matmuls summed like Megatron's all-reduce; vocabulary-
   parallel embedding and head): learned positions, pre-LayerNorm, multi-query or multi-head causal attention
   with 1/sqrt(head_dim) scaling, GELU chosen by `args` (fused tanh, OpenAI tanh or erf), tied head. Neither
   the HF model code nor the converter is used for it. Its logits are compared with the HF model's on a few
   random sequences, in fp32.
2. A per-tensor table: every HF tensor, cut back into TP shards, against each rank file's tensor.

The largest logit difference must stay within --atol and every tensor within --tensor_atol.

Memory stays near one layer, so a 15B checkpoint verifies on an ordinary machine: the HF model is built on the
meta device and its own `forward` runs with each block's weights loaded (in fp32) just before the block runs
and dropped after it; the reference forward releases each layer's mapped pages once it is done with them.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from hf_starcoder_ft.convert.megatron_format import (
    MegatronCheckpoint,
    MegatronCheckpointError,
    activation_from_args,
    flatten_model_state,
    open_checkpoint,
)
from hf_starcoder_ft.tools.diff import max_abs_difference

# Megatron key names, spelled out from SPEC.md section 6 rather than taken from the converter's key map.
_EMBEDDING = "model.language_model.embedding."
_ENCODER = "model.language_model.encoder."
_HEAD = "model.word_embeddings_for_head.weight"


def megatron_gelu(activation: str):
    """Megatron's MLP activation for each `args` setting (the formulas Megatron implements)."""
    if activation == "gelu_pytorch_tanh":  # bias_gelu_fusion: fused bias + tanh-approximate GELU
        return lambda x: x * 0.5 * (1.0 + torch.tanh(0.79788456 * x * (1 + 0.044715 * x * x)))
    if activation == "gelu_new":  # openai_gelu
        return lambda x: 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))
    return lambda x: x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Causal attention. query [b, s, n, d]; key/value [b, s, n or 1, d]. Returns [b, s, n * d]."""
    batch, length, heads, _ = query.shape
    scores = torch.einsum("bqnd,bknd->bnqk", query, key.expand(-1, -1, heads, -1)) / math.sqrt(head_dim)
    future = torch.triu(torch.ones(length, length, dtype=torch.bool), diagonal=1)
    scores = scores.masked_fill(future, float("-inf"))
    probabilities = torch.softmax(scores, dim=-1)
    context = torch.einsum("bnqk,bknd->bqnd", probabilities, value.expand(-1, -1, heads, -1))
    return context.reshape(batch, length, heads * head_dim)


def _reference_layer(x: torch.Tensor, ranks: list[dict], prefix: str, spec, gelu) -> torch.Tensor:
    def w(rank: dict, name: str) -> torch.Tensor:
        return rank[prefix + name].float()

    hidden, head_dim, eps = spec.hidden_size, spec.kv_channels, spec.layernorm_epsilon
    first = ranks[0]
    normed = F.layer_norm(x, (hidden,), w(first, "input_layernorm.weight"), w(first, "input_layernorm.bias"), eps)
    attention_out = w(first, "self_attention.dense.bias").clone()
    for rank in ranks:
        if spec.multi_query:
            query = normed @ w(rank, "self_attention.query.weight").T + w(rank, "self_attention.query.bias")
            query = query.view(*x.shape[:2], -1, head_dim)
            key_value = normed @ w(rank, "self_attention.key_value.weight").T + w(rank, "self_attention.key_value.bias")
            key, value = key_value[..., :head_dim].unsqueeze(2), key_value[..., head_dim:].unsqueeze(2)
        else:
            mixed = normed @ w(rank, "self_attention.query_key_value.weight").T
            mixed = (mixed + w(rank, "self_attention.query_key_value.bias")).view(*x.shape[:2], -1, 3 * head_dim)
            query, key, value = mixed.split(head_dim, dim=-1)
        context = _attention(query, key, value, head_dim)
        attention_out = attention_out + context @ w(rank, "self_attention.dense.weight").T
    x = x + attention_out
    normed = F.layer_norm(
        x, (hidden,), w(first, "post_attention_layernorm.weight"), w(first, "post_attention_layernorm.bias"), eps
    )
    mlp_out = w(first, "mlp.dense_4h_to_h.bias").clone()
    for rank in ranks:
        inner = gelu(normed @ w(rank, "mlp.dense_h_to_4h.weight").T + w(rank, "mlp.dense_h_to_4h.bias"))
        mlp_out = mlp_out + inner @ w(rank, "mlp.dense_4h_to_h.weight").T
    return x + mlp_out


def megatron_reference_logits(
    checkpoint: MegatronCheckpoint, input_ids: torch.Tensor, on_layer: Callable[[], None] | None = None
) -> torch.Tensor:
    """Logits [batch, seq, padded_vocab] of the Megatron model, computed stage by stage from its rank files
    (`on_layer` is called after each layer, for a progress bar)."""
    spec = checkpoint.spec
    activation, _ = activation_from_args(checkpoint.args)
    gelu = megatron_gelu(activation)
    positions = torch.arange(input_ids.shape[1])
    x: torch.Tensor | None = None
    embedding_shards: list[torch.Tensor] = []
    with torch.no_grad():
        for pp_rank, rank_files in checkpoint.iter_stages():
            ranks = [flatten_model_state(rank.content["model"]) for rank in rank_files]
            if pp_rank == 0:
                # Vocabulary-parallel embedding: each rank looks up the ids in its slice, the rest read zero.
                x = torch.zeros(*input_ids.shape, spec.hidden_size)
                start = 0
                for rank in ranks:
                    table = rank[_EMBEDDING + "word_embeddings.weight"].float()
                    inside = (input_ids >= start) & (input_ids < start + table.shape[0])
                    local = torch.where(inside, input_ids - start, 0)
                    x = x + table[local] * inside.unsqueeze(-1)
                    start += table.shape[0]
                    embedding_shards.append(table)
                x = x + ranks[0][_EMBEDDING + "position_embeddings.weight"].float()[positions]
            for local in range(spec.layers_per_stage):
                prefix = f"{_ENCODER}layers.{local}."
                x = _reference_layer(x, ranks, prefix, spec, gelu)
                for rank_file, rank in zip(rank_files, ranks, strict=True):
                    for key in [key for key in rank if key.startswith(prefix)]:
                        if isinstance(rank[key], torch.Tensor):
                            rank_file.release(rank[key])
                if on_layer is not None:
                    on_layer()
            if pp_rank == spec.pp - 1:
                final = ranks[0]
                x = F.layer_norm(
                    x,
                    (spec.hidden_size,),
                    final[_ENCODER + "final_layernorm.weight"].float(),
                    final[_ENCODER + "final_layernorm.bias"].float(),
                    spec.layernorm_epsilon,
                )
                heads = [rank[_HEAD].float() for rank in ranks] if spec.pp > 1 else embedding_shards
                return torch.cat([x @ head.T for head in heads], dim=-1)
    raise MegatronCheckpointError(f"{checkpoint.iteration_dir}: no pipeline stages")


@dataclass
class TensorCheck:
    key: str
    shape: tuple[int, ...]
    hf_dtype: str
    megatron_dtype: str
    max_diff: float
    note: str = ""


@dataclass
class VerificationReport:
    max_logit_diff: float
    atol: float
    tensor_atol: float
    tensors: list[TensorCheck] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        worst = max((check.max_diff for check in self.tensors), default=0.0)
        return not self.problems and self.max_logit_diff <= self.atol and worst <= self.tensor_atol

    def table(self) -> str:
        width = max((len(check.key) for check in self.tensors), default=10)
        lines = [f"{'tensor':<{width}}  {'shape':<16}  {'hf/megatron dtype':<18}  max |diff|  status"]
        for check in self.tensors:
            status = "ok" if check.max_diff <= self.tensor_atol else "MISMATCH"
            dtypes = f"{check.hf_dtype}/{check.megatron_dtype}"
            lines.append(
                f"{check.key:<{width}}  {str(list(check.shape)):<16}  {dtypes:<18}  {check.max_diff:<10.3g}  "
                f"{status}{'  ' + check.note if check.note else ''}"
            )
        return "\n".join(lines)


def compare_tensors(
    checkpoint: MegatronCheckpoint,
    hf_dir: Path,
    report: VerificationReport,
    on_tensor: Callable[[], None] | None = None,
) -> None:
    """Cut every HF tensor back into TP shards and compare each with the rank file's tensor (in fp32)."""
    from hf_starcoder_ft.convert.hf_format import HFCheckpoint
    from hf_starcoder_ft.convert.keymap import (
        HF_WTE,
        Split,
        part_rows,
        split_fused_rows,
        split_tensor_parallel,
        stage_rules,
    )

    hf = HFCheckpoint(hf_dir)
    spec = checkpoint.spec
    seen: set[str] = set()
    for pp_rank, rank_files in checkpoint.iter_stages():
        ranks = [flatten_model_state(rank.content["model"]) for rank in rank_files]
        for rule in stage_rules(spec, pp_rank):
            seen.add(rule.hf)
            if rule.hf not in hf:
                report.problems.append(f"{rule.hf}: missing from {hf_dir}")
                continue
            tensor = hf.get(rule.hf)
            note = ""
            if rule.hf == HF_WTE and tensor.shape[0] < spec.padded_vocab_size:
                note = f"{spec.padded_vocab_size - tensor.shape[0]} padding rows not compared"
                padding = torch.zeros(spec.padded_vocab_size - tensor.shape[0], *tensor.shape[1:], dtype=tensor.dtype)
                tensor_full = torch.cat([tensor, padding])
            else:
                tensor_full = tensor
            try:
                pieces = (
                    split_fused_rows(tensor_full, part_rows(spec, rule), rule.hf)
                    if len(rule.parts) > 1
                    else [tensor_full]
                )
            except MegatronCheckpointError as error:
                report.problems.append(f"{error} (in {hf_dir})")
                continue
            worst = 0.0
            megatron_dtype = ""
            for part, piece in zip(rule.parts, pieces, strict=True):
                for tp_rank, expected in enumerate(split_tensor_parallel(piece, part.split, spec.tp, part.megatron)):
                    stored = ranks[tp_rank][part.megatron]
                    megatron_dtype = str(stored.dtype).removeprefix("torch.")
                    if stored.shape != expected.shape:
                        report.problems.append(
                            f"{rule.hf}: shard shape {list(expected.shape)} vs {part.megatron} {list(stored.shape)}"
                        )
                        continue
                    if rule.hf == HF_WTE and part.split is Split.ROWS:
                        # Padding rows exist only on the Megatron side; compare real vocabulary rows only.
                        first_row = tp_rank * expected.shape[0]
                        real = max(0, min(expected.shape[0], tensor.shape[0] - first_row))
                        stored, expected = stored[:real], expected[:real]
                    worst = max(worst, max_abs_difference(stored, expected))
            report.tensors.append(
                TensorCheck(
                    rule.hf, tuple(tensor.shape), str(tensor.dtype).removeprefix("torch."), megatron_dtype, worst, note
                )
            )
            for rank_file, rank in zip(rank_files, ranks, strict=True):
                for part in rule.parts:
                    rank_file.release(rank[part.megatron])
            if on_tensor is not None:
                on_tensor()
    extra = sorted(set(hf.keys()) - seen - {"lm_head.weight"})
    for key in extra:
        report.problems.append(f"{key}: in {hf_dir} but not produced by the Megatron checkpoint")


def hf_logits_layer_by_layer(
    hf_dir: str | Path, input_ids: torch.Tensor, on_layer: Callable[[], None] | None = None
) -> torch.Tensor:
    """The HF model's fp32 logits from its own `forward` (eager attention), holding only the embeddings, the
    final norm and one block's weights at a time: the model is built on the meta device, and hooks load each
    block from the safetensors files just before it runs and send it back to meta right after."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from hf_starcoder_ft.convert.hf_format import HFCheckpoint, HFCheckpointError

    weights = HFCheckpoint(hf_dir)
    config = AutoConfig.from_pretrained(str(hf_dir), trust_remote_code=False)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(
            config, dtype=torch.float32, attn_implementation="eager", trust_remote_code=False
        )
    model.eval()

    def load(module: torch.nn.Module, prefix: str) -> None:
        module.to_empty(device="cpu", recurse=True)
        with torch.no_grad():
            for name, parameter in module.named_parameters():
                stored = weights.get(prefix + name)
                if stored.shape != parameter.shape:
                    raise HFCheckpointError(
                        f"{hf_dir}: {prefix + name} has shape {list(stored.shape)}, config.json implies "
                        f"{list(parameter.shape)}"
                    )
                parameter.copy_(stored)

    base = model.base_model
    prefix = f"{model.base_model_prefix}."
    blocks = base.h
    for name, child in base.named_children():
        if child is not blocks:
            load(child, f"{prefix}{name}.")
    for name, buffer in list(base.named_buffers(recurse=False)):
        if name == "bias" and buffer.dtype == torch.bool:  # the causal-mask buffer (not stored, not used by forward)
            base.register_buffer(name, torch.ones(1, 1, dtype=torch.bool).tril(), persistent=False)
    if config.tie_word_embeddings:
        model.lm_head.weight = base.wte.weight
    else:
        load(model.lm_head, "lm_head.")

    def drop(module: torch.nn.Module, _args, _output) -> None:  # a hook that returned a value would replace the output
        module.to(device="meta")
        if on_layer is not None:
            on_layer()

    for index, block in enumerate(blocks):
        block.register_forward_pre_hook(lambda module, _args, index=index: load(module, f"{prefix}h.{index}."))
        block.register_forward_hook(drop)
    with torch.no_grad():
        return model(input_ids=input_ids, use_cache=False).logits.float()


def verify_conversion(
    megatron_dir: str | Path,
    hf_dir: str | Path,
    iteration: str | int | None = None,
    num_sequences: int = 3,
    seq_len: int = 16,
    seed: int = 0,
    atol: float = 1e-3,
    tensor_atol: float = 0.0,
    progress: bool = False,
) -> VerificationReport:
    """Run both checks; the caller prints the report. `progress` shows one bar over the layers of both forward
    passes and the tensors of the table (minutes for a 15B model)."""
    from tqdm.auto import tqdm
    from transformers import AutoConfig

    from hf_starcoder_ft.convert.keymap import stage_rules

    checkpoint = open_checkpoint(megatron_dir, iteration)
    config = AutoConfig.from_pretrained(str(hf_dir), trust_remote_code=False)
    vocab = config.vocab_size
    if vocab > checkpoint.spec.padded_vocab_size:
        raise MegatronCheckpointError(
            f"{hf_dir}: vocab_size {vocab} exceeds the checkpoint's {checkpoint.spec.padded_vocab_size} rows"
        )
    length = min(seq_len, checkpoint.spec.max_position_embeddings)
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab, (num_sequences, length), generator=generator)
    layers = checkpoint.spec.num_layers
    tensors = sum(len(stage_rules(checkpoint.spec, pp_rank)) for pp_rank in range(checkpoint.spec.pp))
    with tqdm(total=2 * layers + tensors, desc="verify", unit="step", disable=not progress) as bar:
        bar.set_postfix_str("Megatron reference forward")
        reference = megatron_reference_logits(checkpoint, input_ids, on_layer=lambda: bar.update(1))[..., :vocab]
        bar.set_postfix_str("HF forward, layer by layer")
        logits = hf_logits_layer_by_layer(hf_dir, input_ids, on_layer=lambda: bar.update(1))
        report = VerificationReport(
            max_logit_diff=(logits - reference).abs().max().item(), atol=atol, tensor_atol=tensor_atol
        )
        if not config.tie_word_embeddings:
            report.problems.append(f"{hf_dir}/config.json: tie_word_embeddings is false; Megatron ties the head")
        bar.set_postfix_str("tensor table")
        compare_tensors(checkpoint, Path(hf_dir), report, on_tensor=lambda: bar.update(1))
    return report


def print_report(report: VerificationReport, stream=None) -> None:
    stream = stream or sys.stdout
    print(report.table(), file=stream)
    for problem in report.problems:
        print(f"problem: {problem}", file=stream)
    verdict = "PASS" if report.passed else "FAIL"
    print(
        f"largest logit difference: {report.max_logit_diff:.3g} (atol {report.atol:g}); "
        f"largest tensor difference: {max((c.max_diff for c in report.tensors), default=0.0):.3g} "
        f"(tensor_atol {report.tensor_atol:g}): {verdict}",
        file=stream,
    )


def add_verify_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num_sequences", type=int, default=3, help="random sequences to run through both models")
    parser.add_argument("--seq_len", type=int, default=16, help="tokens per sequence (capped at the position table)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random token ids")
    parser.add_argument(
        "--atol", type=float, default=1e-3, help="largest allowed |logit difference| (fp32 tiny models reach < 1e-5)"
    )
    parser.add_argument(
        "--tensor_atol",
        type=float,
        default=0.0,
        help="largest allowed |difference| of any tensor after upcasting to fp32 (0: bitwise equal values)",
    )


def run_verification(megatron: Path, hf: Path, iteration: str | None, args: argparse.Namespace) -> int:
    """Verify with the options of `add_verify_options`, print the report; exit status 0 (pass) or 1 (fail)."""
    report = verify_conversion(
        megatron,
        hf,
        iteration,
        args.num_sequences,
        args.seq_len,
        args.seed,
        args.atol,
        args.tensor_atol,
        progress=not getattr(args, "no_progress", False),
    )
    print_report(report)
    return 0 if report.passed else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hf-starcoder-ft verify-conversion",
        description="Compare a Megatron checkpoint's reference forward pass and tensors with a converted HF model.",
    )
    parser.add_argument("--megatron", required=True, type=Path, help="Megatron checkpoint directory")
    parser.add_argument("--hf", required=True, type=Path, help="converted Hugging Face model directory")
    parser.add_argument("--iteration", default=None, help="iteration number or `release` (default: the tracker file)")
    add_verify_options(parser)
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    from hf_starcoder_ft.convert.hf_format import HFCheckpointError

    try:
        return run_verification(args.megatron, args.hf, args.iteration, args)
    except (MegatronCheckpointError, HFCheckpointError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
