"""The `hf-starcoder-ft` command: one table maps each subcommand to the function that runs it.

    hf-starcoder-ft --help
    hf-starcoder-ft prepare --help

Each target is `module:function`, imported only when its subcommand runs (so `--help` stays fast and a
subcommand's heavy imports are paid only by that subcommand). A target takes the remaining argv and
returns an exit status.
"""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "commits": (
        "hf_starcoder_ft.data.commits:main",
        "Build inputs/targets jsonl from git repositories or CommitPack records.",
    ),
    "prepare": (
        "hf_starcoder_ft.data.prepare:main",
        "Tokenize, mask, filter and pack jsonl sources into a training dataset.",
    ),
    "check-packing": (
        "hf_starcoder_ft.check_packing:main",
        "Check that packed rows give the same logits as each example alone.",
    ),
    "train": ("hf_starcoder_ft.train:main", "Fine-tune (same as `accelerate launch train.py ...`)."),
    "merge-lora": (
        "hf_starcoder_ft.model:merge_lora_main",
        "Merge a LoRA adapter into its base model and save a full model.",
    ),
    "convert": ("hf_starcoder_ft.convert.cli:main", "Convert checkpoints: megatron-to-hf | hf-to-megatron."),
    "verify-conversion": (
        "hf_starcoder_ft.convert.verify:main",
        "Compare a Megatron checkpoint's forward pass with a converted HF model.",
    ),
    "diff": ("hf_starcoder_ft.tools.diff:main", "Compare two checkpoints key by key."),
    "generate": ("hf_starcoder_ft.tools.generate:main", "Generate a completion from a model (smoke test)."),
    "push": ("hf_starcoder_ft.tools.push:main", "Upload a model or adapter folder to the Hugging Face Hub."),
    "init-tiny": (
        "hf_starcoder_ft.tools.tiny:main",
        "Tiny random model + tokenizer from a jsonl (smoke tests).",
    ),
}


def _usage() -> str:
    width = max(len(name) for name in SUBCOMMANDS)
    lines = ["usage: hf-starcoder-ft <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_text}" for name, (_, help_text) in SUBCOMMANDS.items()]
    lines += ["", "Run `hf-starcoder-ft <command> --help` for the options of one command."]
    return "\n".join(lines)


def resolve(target: str):
    module_name, function_name = target.split(":")
    return getattr(importlib.import_module(module_name), function_name)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        from hf_starcoder_ft import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"hf-starcoder-ft: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    result = resolve(SUBCOMMANDS[name][0])(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
