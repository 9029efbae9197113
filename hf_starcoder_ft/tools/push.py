"""Upload a model folder to the Hugging Face Hub: a converted checkpoint, a merged LoRA model, an adapter, or a
finished run (training's `--push_to_hub` does the last one itself).

    hf-starcoder-ft push starcoderbase-hf --repo_id me/starcoderbase-hf [--private] [--dry_run]

The folder is checked before anything is sent: a `config.json` with weights (safetensors, with every shard its
index names) or an adapter (`adapter_config.json` + `adapter_model.*`); pickled `.bin` weights are refused unless
`--allow_pickle`, since whoever loads them runs their pickle. Hidden files, `checkpoint-*` folders and a run's
own state (`training_args.bin`, RNG, optimizer and scheduler state) are never sent. A folder without a
`README.md` gets a generated model card (architecture and shapes from config.json). The token comes from
`--token`, else `HF_TOKEN`, else the cached `hf auth login`; it is never printed, and an error's text has it
removed. `HF_ENDPOINT` selects another Hub.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from hf_starcoder_ft import hub

# Pickles a run folder holds that are not the model (the Trainer's arguments, RNG and optimizer state): never sent.
RUN_STATE_FILES = ("training_args.bin", "rng_state*.pth", "optimizer.pt", "scheduler.pt", "scaler.pt")


class PushError(ValueError):
    """A folder that should not be uploaded as it is; the message names the file."""


def check_model_folder(folder: Path, allow_pickle: bool = False) -> str:
    """`"model"` or `"adapter"` for a folder that loads as one, else `PushError` naming what is missing."""
    if not folder.is_dir():
        raise PushError(f"{folder}: not a directory")
    sent = {path for path, _ in hub.files_to_upload(folder, RUN_STATE_FILES)}
    pickled = sorted(path for path in sent if path.endswith((".bin", ".pt", ".pth", ".pkl")))
    if pickled and not allow_pickle:
        raise PushError(
            f"{folder}: {', '.join(pickled)} are pickles, which run code when loaded; convert to safetensors "
            "(or pass --allow_pickle to upload them anyway)"
        )
    if (folder / "adapter_config.json").is_file():
        if not any(path.startswith("adapter_model.") for path in sent):
            raise PushError(f"{folder}: adapter_config.json but no adapter_model.safetensors")
        return "adapter"
    if not (folder / "config.json").is_file():
        raise PushError(f"{folder}: no config.json (or adapter_config.json): not a model folder")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
            raise PushError(f"{index}: not a valid index ({error!r})") from None
        missing = [shard for shard in shards if shard not in sent]
        if missing:
            raise PushError(f"{index}: names {', '.join(missing)}, missing from the folder")
    elif "model.safetensors" not in sent and not any(path.startswith("pytorch_model") for path in sent):
        raise PushError(f"{folder}: config.json but no model.safetensors (or index) to upload")
    return "model"


def model_card(folder: Path, repo_id: str, kind: str) -> str:
    """A short README.md for a folder that has none: Hub metadata and the model's shape from its config."""
    config_name = "adapter_config.json" if kind == "adapter" else "config.json"
    config = json.loads((folder / config_name).read_text())
    library = "peft" if kind == "adapter" else "transformers"
    lines = ["---", f"library_name: {library}", "tags:", "  - hf_starcoder_ft", "  - gpt_bigcode", "  - code"]
    base = config.get("base_model_name_or_path")
    if kind == "adapter" and isinstance(base, str) and base.count("/") == 1 and not Path(base).exists():
        lines.append(f"base_model: {json.dumps(base)}")
    lines += ["---", "", f"# {repo_id}", ""]
    if kind == "adapter":
        lines.append(f"A LoRA adapter (r={config.get('r')}, alpha={config.get('lora_alpha')}) for `{base}`.")
    else:
        attention = "multi-query" if config.get("multi_query", True) else "multi-head"
        lines.append(
            f"A GPTBigCode model: {config.get('n_layer')} layers, hidden size {config.get('n_embd')}, "
            f"{config.get('n_head')} heads ({attention} attention), {config.get('n_positions')} positions, "
            f"vocabulary {config.get('vocab_size')}, weights in {config.get('dtype') or config.get('torch_dtype')}."
        )
    lines += ["", "Uploaded with hf_starcoder_ft (`hf-starcoder-ft push`)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hf-starcoder-ft push", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="model or adapter folder")
    parser.add_argument("--repo_id", required=True, help="Hub repository, e.g. me/starcoderbase-octopack")
    parser.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN, else the cached login)")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--dry_run", action="store_true", help="list what would be uploaded; upload nothing")
    parser.add_argument("--commit_message", default="Upload model (hf_starcoder_ft)", help="the Hub commit message")
    parser.add_argument("--allow_pickle", action="store_true", help="upload pickled .bin/.pt weights too")
    args = parser.parse_args(argv)
    if args.repo_id.count("/") != 1 or any(not part for part in args.repo_id.split("/")):
        parser.error(f"--repo_id {args.repo_id!r}: expected OWNER/NAME")
    try:
        kind = check_model_folder(args.folder, args.allow_pickle)
    except PushError as error:
        print(f"hf-starcoder-ft push: error: {error}", file=sys.stderr)
        return 2
    extra = {}
    if not (args.folder / "README.md").is_file():
        extra["README.md"] = model_card(args.folder, args.repo_id, kind).encode()
    if not (args.folder / "tokenizer.json").is_file() and kind == "model":
        print(f"warning: {args.folder} has no tokenizer.json; the model will be pushed without one", file=sys.stderr)
    if args.dry_run:
        print(hub.describe_upload(args.folder, args.repo_id, extra_files=extra, exclude=RUN_STATE_FILES))
        return 0
    token = args.token or os.environ.get("HF_TOKEN")
    try:
        url = hub.push_folder(
            args.folder, args.repo_id, token, private=args.private or None, commit_message=args.commit_message,
            extra_files=extra, exclude=RUN_STATE_FILES,
        )  # fmt: skip
    except RuntimeError as error:
        print(f"hf-starcoder-ft push: error: {error}", file=sys.stderr)
        return 1
    print(f"pushed {args.folder} ({kind}) to {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
