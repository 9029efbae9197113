"""Load the tokenizer and the GPTBigCode model for training, add LoRA adapters, merge them back.

    hf-starcoder-ft merge-lora --adapter runs/lora --output_dir runs/lora-merged          # base from the adapter
    hf-starcoder-ft merge-lora --adapter runs/lora --base models/starcoderbase --output_dir merged --dtype bfloat16

Training (`hf_starcoder_ft.train`) calls, in this order, the cheap checks first so a bad configuration fails
before any weights are read:

1. `resolve_tokenizer` and `resolve_model_config` (config.json or a preset, no weights);
2. `check_model_fits` (tokenizer vocabulary <= model vocabulary, max_length <= n_positions) and
   `check_lora_targets` (every LoRA target names a linear layer of this architecture);
3. `load_model` (weights, or a random init for smoke tests) and `add_lora`.

Remote code is never run: GPTBigCode is built into transformers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from hf_starcoder_ft.config import ConfigError, LoraArguments, ModelArguments
from hf_starcoder_ft.tokenizer import TokenizerError, load_tokenizer

# Random-init presets for `--init_from_config NAME` (smoke tests and benchmarks, never real training).
# `vocab_size` None means: the tokenizer's size rounded up to a multiple of 128 (as Megatron pads it).
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(n_embd=64, n_layer=2, n_head=4, n_inner=256, n_positions=512, multi_query=True, vocab_size=None),
    # StarCoderBase-1B's shape: 24 layers, hidden 2048, 16 heads, multi-query, ffn 8192, 8192 positions.
    "starcoderbase-1b": dict(
        n_embd=2048, n_layer=24, n_head=16, n_inner=8192, n_positions=8192, multi_query=True, vocab_size=49152
    ),
}
_PRESET_COMMON = dict(
    activation_function="gelu_pytorch_tanh",
    resid_pdrop=0.0,
    embd_pdrop=0.0,
    attn_pdrop=0.0,
    use_cache=True,
    tie_word_embeddings=True,
    bos_token_id=0,
    eos_token_id=0,
)


def resolve_tokenizer(model_args: ModelArguments, tokenizer_path: str | None):
    """The data config's tokenizer when given, else the model directory's own."""
    if tokenizer_path is None and model_args.model_name_or_path is not None:
        if not Path(model_args.model_name_or_path).is_dir():
            raise ConfigError(
                f"model_name_or_path {model_args.model_name_or_path}: no such model directory (the tokenizer is "
                "read from it unless --tokenizer is given)"
            )
    path = tokenizer_path or model_args.model_name_or_path
    if path is None:
        raise ConfigError("no tokenizer: set tokenizer (a tokenizer.json or model directory) with init_from_config")
    try:
        return load_tokenizer(path)
    except (TokenizerError, OSError, ValueError) as error:
        raise ConfigError(f"tokenizer: {error}") from error


def resolve_model_config(model_args: ModelArguments, tokenizer=None):
    """The model's `GPTBigCodeConfig` without reading weights, with the dropout override applied."""
    from transformers import AutoConfig, GPTBigCodeConfig

    if model_args.init_from_config is not None:
        source = model_args.init_from_config
        if source in MODEL_PRESETS:
            values = {**_PRESET_COMMON, **MODEL_PRESETS[source]}
            if values["vocab_size"] is None:
                if tokenizer is None:
                    raise ConfigError(f"preset {source!r} sizes its vocabulary from the tokenizer; none was given")
                values["vocab_size"] = -(-len(tokenizer) // 128) * 128
            config = GPTBigCodeConfig(**values)
        elif Path(source).is_file():
            try:
                config = GPTBigCodeConfig.from_json_file(source)
            except (json.JSONDecodeError, TypeError, ValueError) as error:
                raise ConfigError(f"init_from_config {source}: not a GPTBigCode config.json ({error})") from error
        else:
            raise ConfigError(
                f"init_from_config {source!r}: neither a config.json file nor a preset ({', '.join(MODEL_PRESETS)})"
            )
    else:
        path = model_args.model_name_or_path
        if not Path(path).exists() and (path.startswith((".", "/", "~")) or path.count("/") > 1):
            raise ConfigError(f"model_name_or_path {path}: no such directory")
        try:
            config = AutoConfig.from_pretrained(path, trust_remote_code=False)
        except (OSError, ValueError) as error:
            raise ConfigError(f"model_name_or_path {path}: cannot read its config.json ({error})") from error
    if config.model_type != "gpt_bigcode":
        raise ConfigError(
            f"{model_args.model_name_or_path or model_args.init_from_config}: model_type {config.model_type!r}, "
            "expected 'gpt_bigcode' (StarCoder family)"
        )
    if model_args.dropout is not None:
        config.resid_pdrop = config.embd_pdrop = config.attn_pdrop = model_args.dropout
    return config


def check_model_fits(config, tokenizer, max_length: int) -> None:
    """Token ids must exist in the embedding table, and rows must fit the learned position table."""
    if len(tokenizer) > config.vocab_size:
        raise ConfigError(
            f"tokenizer has {len(tokenizer)} entries but the model's vocab_size is {config.vocab_size}: "
            "ids beyond the embedding table would crash training; use the model's own tokenizer"
        )
    if max_length > config.n_positions:
        raise ConfigError(
            f"max_length {max_length} is larger than the model's n_positions {config.n_positions} "
            "(learned absolute positions); lower max_length"
        )


def linear_module_names(config) -> list[str]:
    """Names of the linear layers of a GPTBigCode model, built on the meta device (no memory, no weights)."""
    import torch
    from transformers import GPTBigCodeForCausalLM

    with torch.device("meta"):
        model = GPTBigCodeForCausalLM(config)
    return [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]


def check_lora_targets(config, target_modules: list[str]) -> None:
    """Every LoRA target must match at least one linear layer (PEFT's rule: the name or a `.`-suffix of it)."""
    names = linear_module_names(config)
    missing = [t for t in target_modules if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        available = sorted({n.rsplit(".", 1)[-1] for n in names})
        raise ConfigError(
            f"lora_target_modules {missing} match no linear layer of this GPTBigCode model; "
            f"available: {', '.join(available)}"
        )


def resolve_dtype(model_dtype: str, bf16: bool, uses_deepspeed: bool, use_lora: bool):
    """'auto' loads bf16 weights only where an fp32 copy of the trained weights exists (DeepSpeed's master
    weights, or LoRA's fp32 adapters over a frozen base); plain full fine-tuning keeps fp32 weights and runs bf16
    as autocast, since AdamW updates applied to bf16 weights lose most of their bits."""
    import torch

    if model_dtype != "auto":
        return getattr(torch, model_dtype)
    return torch.bfloat16 if bf16 and (uses_deepspeed or use_lora) else torch.float32


def load_model(model_args: ModelArguments, config, dtype):
    """Weights from `model_name_or_path`, or a random init from `config` (seed it first)."""
    from transformers import AutoModelForCausalLM

    if model_args.init_from_config is not None:
        model = AutoModelForCausalLM.from_config(
            config, dtype=dtype, attn_implementation=model_args.attn_implementation
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(
            model_args.model_name_or_path,
            config=config,
            dtype=dtype,
            attn_implementation=model_args.attn_implementation,
            trust_remote_code=False,
        )
    if config.tie_word_embeddings:
        model.tie_weights()
    return model


def add_lora(model, lora_args: LoraArguments):
    """Wrap the model with LoRA adapters (PEFT); only adapter weights train."""
    from peft import LoraConfig, get_peft_model

    lora_config = LoraConfig(
        r=lora_args.lora_r,
        lora_alpha=lora_args.lora_alpha,
        lora_dropout=lora_args.lora_dropout,
        target_modules=list(lora_args.lora_target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora_config)


# ---------------------------------------------------------------------------------------------- merge-lora


def merge_lora(adapter_dir: str | Path, base: str | Path | None, dtype_name: str = "bfloat16"):
    """Load base + adapter in `dtype_name` and fold the adapter into the base weights. Returns (model, base path)."""
    import torch
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ConfigError(f"{adapter_dir}: no adapter_config.json (not a LoRA adapter directory)")
    base = str(base) if base is not None else PeftConfig.from_pretrained(str(adapter_dir)).base_model_name_or_path
    if not base:
        raise ConfigError(f"{adapter_dir}/adapter_config.json names no base model; pass --base")
    dtype = getattr(torch, dtype_name)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype, trust_remote_code=False)
    model = PeftModel.from_pretrained(model, str(adapter_dir), torch_dtype=dtype)
    merged = model.merge_and_unload()
    return merged.to(dtype), base


def merge_lora_main(argv: list[str] | None = None) -> int:
    from hf_starcoder_ft.io_utils import OutputExistsError, atomic_output_dir

    parser = argparse.ArgumentParser(
        prog="hf-starcoder-ft merge-lora",
        description="Merge a LoRA adapter into its base model and save a full model (weights, config, tokenizer).",
    )
    parser.add_argument("--adapter", required=True, help="Directory holding adapter_config.json (a LoRA run).")
    parser.add_argument(
        "--base", default=None, help="Base model directory or Hub id (default: the one named in adapter_config.json)."
    )
    parser.add_argument("--output_dir", required=True, help="Where the merged full model is written.")
    parser.add_argument(
        "--dtype",
        default="bfloat16",
        choices=["bfloat16", "float16", "float32"],
        help="dtype of the merge and of the saved weights (default bfloat16).",
    )
    parser.add_argument("--overwrite", action="store_true", help="Replace output_dir if it exists.")
    args = parser.parse_args(argv)
    try:
        merged, base = merge_lora(args.adapter, args.base, args.dtype)
        tokenizer_source = args.adapter if (Path(args.adapter) / "tokenizer.json").is_file() else base
        tokenizer = load_tokenizer(tokenizer_source)
        with atomic_output_dir(args.output_dir, overwrite=args.overwrite) as tmp:
            merged.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    except (ConfigError, OutputExistsError, TokenizerError, OSError, ValueError) as error:
        print(f"hf-starcoder-ft merge-lora: error: {error}", file=sys.stderr)
        return 1
    print(f"merged {args.adapter} into {base} ({args.dtype}); full model written to {args.output_dir}")
    return 0
