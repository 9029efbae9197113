"""Model card and Hub upload for a finished run (`--push_to_hub --hub_model_id ID`, or `--push_dry_run`).

    accelerate launch train.py --config configs/lora_starcoderbase.yaml ... --push_to_hub --hub_model_id me/my-model

The upload goes through `huggingface_hub.HfApi` to the endpoint in `HF_ENDPOINT` (read when the push happens,
default huggingface.co). The token comes from `--hub_token`, else `HF_TOKEN`, else the cached `hf auth login`;
it is never printed, logged, written into the model card, or left in the uploaded `training_args.bin`.

What is uploaded: the final model (or adapter) files at the top of the output directory, the generated
`README.md`, `run_summary.json` and the TensorBoard logs under `runs/`; never `checkpoint-*` directories or
batch fingerprints.
"""

from __future__ import annotations

import fnmatch
import json
import os
from pathlib import Path
from typing import Any

IGNORE_PATTERNS = ("checkpoint-*", "checkpoint-*/*", "batch_fingerprints/*", ".*", "*/.*")
HYPERPARAMETER_KEYS = (
    "learning_rate",
    "lr_scheduler_type",
    "lr_scheduler_kwargs",
    "warmup_steps",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "max_grad_norm",
    "max_steps",
    "num_train_epochs",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "global_batch_size",
    "loss_normalization",
    "bf16",
    "activation_checkpointing",
    "seed",
)


def files_to_upload(folder: str | Path, exclude: tuple[str, ...] = ()) -> list[tuple[str, int]]:
    """(relative path, size in bytes) of every file the push would send, sorted; `exclude` adds name patterns."""
    folder = Path(folder)
    found = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        relative = path.relative_to(folder).as_posix()
        if any(fnmatch.fnmatch(relative, pattern) for pattern in (*IGNORE_PATTERNS, *exclude)):
            continue
        if relative.split("/")[0].startswith("checkpoint-"):
            continue
        found.append((relative, path.stat().st_size))
    return found


def _yaml_list(values: list[str]) -> str:
    return "".join(f"\n  - {json.dumps(v)}" for v in values)


def build_model_card(
    *,
    repo_id: str | None,
    base_model: str,
    is_adapter: bool,
    data_stats: dict[str, Any] | None,
    hyperparameters: dict[str, Any],
    eval_metrics: dict[str, float],
    train_metrics: dict[str, float],
) -> str:
    """A README.md with Hub metadata (base model when it is a Hub id) and what the run did."""
    metadata = ["---", "library_name: peft" if is_adapter else "library_name: transformers"]
    is_hub_id = not Path(base_model).exists() and base_model.count("/") == 1
    if is_hub_id:
        metadata.append(f"base_model: {json.dumps(base_model)}")
    metadata.append("tags:" + _yaml_list(["hf_starcoder_ft", "gpt_bigcode", "code"] + (["lora"] if is_adapter else [])))
    metadata.append("---")

    title = repo_id or "Fine-tuned StarCoder model"
    kind = "a LoRA adapter for" if is_adapter else "a full fine-tune of"
    lines = [
        "\n".join(metadata),
        "",
        f"# {title}",
        "",
        f"This is {kind} `{base_model}`, trained with hf_starcoder_ft (target-only loss on packed examples, "
        "documents isolated in attention).",
        "",
        "## Evaluation",
        "",
    ]
    if eval_metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.6g} |" for k, v in sorted(eval_metrics.items()) if isinstance(v, int | float)]
    else:
        lines.append("No validation split was given.")
    lines += ["", "## Training data", ""]
    if data_stats:
        for source in data_stats.get("sources", []):
            lines.append(f"- `{source.get('path', '?')}`: {source.get('records', source.get('lines', '?'))} records")
        for split, info in data_stats.get("splits", {}).items():
            lines.append(
                f"- split `{split}`: {info.get('examples', '?')} examples, {info.get('rows', '?')} rows, "
                f"{info.get('tokens', '?')} tokens ({info.get('target_tokens', '?')} target tokens)"
            )
    else:
        lines.append("Data statistics were not available.")
    lines += ["", "## Hyperparameters", "", "| name | value |", "|---|---|"]
    lines += [f"| {k} | {json.dumps(v) if not isinstance(v, str) else v} |" for k, v in hyperparameters.items()]
    if train_metrics:
        lines += ["", "## Training result", ""]
        lines += [f"- {k}: {v:.6g}" for k, v in sorted(train_metrics.items()) if isinstance(v, int | float)]
    return "\n".join(lines) + "\n"


def hyperparameters_of(training_args, lora_args=None, model_args=None) -> dict[str, Any]:
    values = {key: getattr(training_args, key, None) for key in HYPERPARAMETER_KEYS}
    values = {k: (v.value if hasattr(v, "value") else v) for k, v in values.items() if v is not None}
    values["world_size"] = training_args.world_size
    if model_args is not None:
        values["attn_implementation"] = model_args.attn_implementation
        if model_args.dropout is not None:
            values["dropout"] = model_args.dropout
    if lora_args is not None and lora_args.use_lora:
        values.update(
            lora_r=lora_args.lora_r,
            lora_alpha=lora_args.lora_alpha,
            lora_dropout=lora_args.lora_dropout,
            lora_target_modules=list(lora_args.lora_target_modules),
        )
    return values


def describe_upload(
    folder: str | Path,
    repo_id: str,
    endpoint: str | None = None,
    extra_files: dict[str, bytes] | None = None,
    exclude: tuple[str, ...] = (),
) -> str:
    extra_files = extra_files or {}
    files = [(path, size) for path, size in files_to_upload(folder, exclude) if path not in extra_files]
    files += [(name, len(data)) for name, data in extra_files.items()]
    total = sum(size for _, size in files)
    target = f"{endpoint or os.environ.get('HF_ENDPOINT', 'https://huggingface.co')}/{repo_id}"
    lines = [f"would upload {len(files)} files ({total / 1e6:.2f} MB) from {folder} to {target}:"]
    lines += [f"  {path}  ({size} bytes{', generated' if path in extra_files else ''})" for path, size in sorted(files)]
    return "\n".join(lines)


def push_folder(
    folder: str | Path,
    repo_id: str,
    token: str | None,
    private: bool | None = None,
    commit_message: str = "Upload fine-tuned model (hf_starcoder_ft)",
    extra_files: dict[str, bytes] | None = None,
    exclude: tuple[str, ...] = (),
) -> str:
    """Create the repo if needed and upload, in one commit, the files `files_to_upload` lists plus `extra_files`
    (name -> bytes, e.g. a generated model card; they replace a folder file of the same name). Returns the repo
    URL. Errors are re-raised with the token removed from their text.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    extra_files = extra_files or {}
    operations = [
        CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(Path(folder) / path))
        for path, _ in files_to_upload(folder, exclude)
        if path not in extra_files
    ]
    operations += [CommitOperationAdd(path_in_repo=name, path_or_fileobj=data) for name, data in extra_files.items()]
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.create_commit(repo_id=repo_id, operations=operations, commit_message=commit_message)
    except Exception as error:
        message = str(error)
        if token:
            message = message.replace(token, "<redacted>")
        raise RuntimeError(f"push to {repo_id} failed: {message}") from None
    return str(url)
