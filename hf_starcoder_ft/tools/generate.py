"""Generate a completion from a model: the smoke test after training or conversion.

    hf-starcoder-ft generate starcoder-hf --prompt "def print_hello_world():" --max_new_tokens 32

The model loads with `trust_remote_code=False` (GPTBigCode is part of transformers) and the tokenizer through
`hf_starcoder_ft.tokenizer.load_tokenizer` (from the model folder unless --tokenizer is given). Decoding is
greedy unless --temperature is given. The prompt and its completion are printed as one text.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def pick_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but torch sees no CUDA device")
    return requested


def generate(
    model_path: str | Path,
    prompt: str,
    max_new_tokens: int = 32,
    device: str = "auto",
    dtype: str = "auto",
    temperature: float | None = None,
    top_p: float = 1.0,
    seed: int = 0,
    tokenizer_path: str | Path | None = None,
) -> str:
    import torch
    from transformers import AutoModelForCausalLM

    from hf_starcoder_ft.tokenizer import load_tokenizer

    device = pick_device(device)
    tokenizer = load_tokenizer(tokenizer_path or model_path)
    torch_dtype = "auto" if dtype == "auto" else getattr(torch, DTYPES[dtype])
    model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch_dtype, trust_remote_code=False)
    model.to(device).eval()
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(device)
    sampling = temperature is not None
    if sampling:
        torch.manual_seed(seed)
    options = dict(max_new_tokens=max_new_tokens, do_sample=sampling, pad_token_id=tokenizer.pad_token_id)
    options["eos_token_id"] = tokenizer.eos_token_id
    if sampling:
        options.update(temperature=temperature, top_p=top_p)
    else:
        options.update(temperature=None, top_p=None, top_k=None)
    with torch.no_grad():
        output = model.generate(**inputs, **options)
    return tokenizer.decode(output[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hf-starcoder-ft generate", description="Complete a prompt with a local model (smoke test)."
    )
    parser.add_argument("model", type=Path, help="model folder (config.json, weights, tokenizer)")
    parser.add_argument("--prompt", required=True, help="text to complete, e.g. 'def print_hello_world():'")
    parser.add_argument("--max_new_tokens", type=int, default=32, help="tokens to generate at most (default 32)")
    parser.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto", help="where to run (auto: cuda if available)"
    )
    parser.add_argument(
        "--dtype", choices=["auto", *DTYPES], default="auto", help="weights dtype (auto: as saved in config.json)"
    )
    decoding = parser.add_mutually_exclusive_group()
    decoding.add_argument("--greedy", action="store_true", help="greedy decoding (the default)")
    decoding.add_argument("--temperature", type=float, default=None, help="sample at this temperature instead")
    parser.add_argument("--top_p", type=float, default=1.0, help="nucleus sampling mass (with --temperature)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (with --temperature)")
    parser.add_argument("--tokenizer", type=Path, default=None, help="tokenizer.json or folder (default: the model's)")
    args = parser.parse_args(argv)
    if args.temperature is not None and args.temperature <= 0:
        parser.error("--temperature must be > 0 (use --greedy for deterministic decoding)")
    from hf_starcoder_ft.tokenizer import TokenizerError

    try:
        text = generate(
            args.model,
            args.prompt,
            args.max_new_tokens,
            args.device,
            args.dtype,
            args.temperature,
            args.top_p,
            args.seed,
            args.tokenizer,
        )
    except (TokenizerError, OSError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
