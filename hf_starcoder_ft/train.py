"""Fine-tune a StarCoder-family model: full or LoRA, one device or DeepSpeed ZeRO-3 on many.

    accelerate launch --config_file launch/zero3_1node.yaml train.py --config configs/octopack_starcoderbase.yaml \\
        --model_name_or_path models/starcoderbase --train_data data/train_paths.txt --valid_data data/valid_paths.txt \\
        --output_dir runs/octopack
    python train.py --config configs/tiny_cpu.yaml --init_from_config tiny --tokenizer tokenizer.json ...
    hf-starcoder-ft train ...   # the same

`main()` runs named phases: parse, seed, tokenizer + cheap checks, data, model, collator, trainer, train (fresh
or resumed), save, push. A fresh run loads weights only (no optimizer or RNG state, like Megatron's
`--no-load-optim --no-load-rng --finetune`); `--resume_from_checkpoint PATH|auto` restores optimizer, scheduler,
RNG and data position, so the resumed run reproduces the uninterrupted one step for step.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from hf_starcoder_ft.config import ConfigError, parse_train_args

FINAL_TMP_NAME = ".final-model.tmp"
SUMMARY_FILE = "run_summary.json"


# ------------------------------------------------------------------------------------------- phase helpers


def resolve_resume(resume: str | None, output_dir: str) -> str | None:
    """`auto` -> the newest complete checkpoint in output_dir (None on a first run); a path must be a Trainer
    checkpoint. Incomplete checkpoints (a crash while saving) are skipped with a message naming them, and a
    folder holding only incomplete ones is an error rather than a silent fresh start."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    from hf_starcoder_ft.trainer import CHECKPOINT_COMPLETE, checkpoint_problem

    if resume is None or resume in ("", "false", "False", "no"):
        return None
    if resume == "auto":
        root = Path(output_dir)
        if not root.is_dir():
            return None
        pattern = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
        found = sorted(
            ((int(match[1]), path) for path in root.iterdir() if path.is_dir() and (match := pattern.match(path.name))),
            reverse=True,
        )
        skipped = []
        for _, path in found:
            problem = checkpoint_problem(path)
            if problem is None:
                for name, reason in skipped:
                    print(f"warning: skipping incomplete {name}: {reason}", file=sys.stderr, flush=True)
                return str(path)
            skipped.append((path.name, problem))
        if skipped:
            listed = "; ".join(f"{name}: {reason}" for name, reason in skipped)
            raise ConfigError(
                f"{output_dir}: no complete checkpoint to resume ({listed}); pass one with "
                "--resume_from_checkpoint PATH if you know it is whole, or start over with --overwrite_output_dir"
            )
        return None
    if not (Path(resume) / "trainer_state.json").is_file():
        raise ConfigError(f"resume_from_checkpoint {resume}: not a checkpoint directory (no trainer_state.json)")
    problem = checkpoint_problem(resume)
    if problem is not None and (Path(resume) / CHECKPOINT_COMPLETE).is_file():
        raise ConfigError(f"resume_from_checkpoint {resume}: damaged checkpoint ({problem})")
    if problem is not None:
        print(
            f"warning: {resume} has no completeness marker (saved by another tool, or a save that did not "
            "finish); resuming from it because it was named",
            file=sys.stderr,
            flush=True,
        )
    return resume


def check_output_dir(output_dir: str, resuming: bool, overwrite: bool) -> None:
    """Refuse to silently train over an earlier run's checkpoints or final model."""
    path = Path(output_dir)
    if resuming or overwrite or not path.is_dir():
        return
    if any(path.glob("checkpoint-*")) or (path / "config.json").exists() or (path / "adapter_config.json").exists():
        raise ConfigError(
            f"output_dir {output_dir} already holds a run; continue it with --resume_from_checkpoint auto, "
            "or pass --overwrite_output_dir, or choose another directory"
        )


def deepspeed_config_dict(training_args) -> dict[str, Any] | None:
    """The DeepSpeed JSON this run uses: `--deepspeed` or the accelerate launcher's config file."""
    source = training_args.deepspeed or os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if not source:
        return None
    if isinstance(source, dict):
        return source
    try:
        return json.loads(Path(source).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"DeepSpeed config {source}: {error}") from error


def check_deepspeed_config(ds_config: dict[str, Any] | None) -> None:
    """ZeRO-3 without gathering 16-bit weights on save writes no usable model (SPEC.md section 8)."""
    if not ds_config:
        return
    zero = ds_config.get("zero_optimization", {})
    if zero.get("stage") == 3 and zero.get("stage3_gather_16bit_weights_on_model_save") is not True:
        raise ConfigError(
            "DeepSpeed ZeRO-3 config must set zero_optimization.stage3_gather_16bit_weights_on_model_save: true, "
            "otherwise the saved model (or LoRA adapter) is empty"
        )


def expected_max_length(data_config) -> int:
    """max_length of the rows training will see (from stats.json for a prepared directory)."""
    if data_config.prepared_data is not None:
        stats_path = Path(data_config.prepared_data) / "stats.json"
        try:
            return int(json.loads(stats_path.read_text())["config"]["max_length"])
        except (OSError, KeyError, ValueError) as error:
            raise ConfigError(f"prepared_data: cannot read {stats_path} ({error})") from error
    return data_config.max_length


def split_datasets(splits: dict[str, Any]):
    """train split, and the validation split(s): one dataset for `valid`, a dict for `valid_<name>` splits."""
    if "train" not in splits:
        raise ConfigError(f"the data has no train split (splits: {', '.join(splits)})")
    valid = {name: ds for name, ds in splits.items() if name == "valid" or name.startswith("valid_")}
    if not valid:
        return splits["train"], None
    if list(valid) == ["valid"]:
        return splits["train"], valid["valid"]
    return splits["train"], {name.removeprefix("valid_"): ds for name, ds in valid.items()}


def save_final_model(trainer, output_dir: str, use_cache: bool) -> None:
    """Save the final model (or adapter) into output_dir: written to a temporary folder by every rank (ZeRO-3
    gathers collectively), then moved in file by file with config.json / adapter_config.json last, so a
    crash never leaves a loadable but incomplete model."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    config = model.get_base_model().config if hasattr(model, "get_base_model") else model.config
    config.use_cache = use_cache  # off during training; restored for generation
    tmp = Path(output_dir) / FINAL_TMP_NAME
    if trainer.args.should_save and tmp.exists():
        shutil.rmtree(tmp)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))
    if trainer.args.should_save:
        last = {"config.json", "adapter_config.json"}
        names = sorted(p.name for p in tmp.iterdir())
        for name in [n for n in names if n not in last] + [n for n in names if n in last]:
            destination = Path(output_dir) / name
            if destination.is_dir():
                shutil.rmtree(destination)
            os.replace(tmp / name, destination)
        tmp.rmdir()
    trainer.accelerator.wait_for_everyone()


def final_eval_metrics(trainer) -> dict[str, float]:
    """The evaluation of the final weights: reused when training just evaluated at its last step."""
    history = trainer.state.log_history
    for entry in reversed(history):
        if entry.get("step") != trainer.state.global_step:
            break
        if any(key.startswith("eval_") and key.endswith("_loss") for key in entry):
            return {k: v for k, v in entry.items() if k.startswith("eval_")}
    return trainer.evaluate()


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    from hf_starcoder_ft.io_utils import atomic_write

    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")


# ------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    try:
        return _run(argv)
    except ConfigError as error:
        print(f"train: error: {error}", file=sys.stderr)
        return 2


def _run(argv: list[str] | None) -> int:
    from transformers import set_seed

    from hf_starcoder_ft import hub
    from hf_starcoder_ft.data.collator import PackedCollator
    from hf_starcoder_ft.data.errors import DataError
    from hf_starcoder_ft.data.prepare import load_datasets
    from hf_starcoder_ft.model import (
        add_lora,
        check_lora_targets,
        check_model_fits,
        load_model,
        resolve_dtype,
        resolve_model_config,
        resolve_tokenizer,
    )
    from hf_starcoder_ft.trainer import PreemptionHandler, StarCoderTrainer

    # parse: YAML + CLI into dataclasses; batch arithmetic and unknown keys fail here
    model_args, lora_args, data_config, training_args = parse_train_args(argv)
    is_main = training_args.process_index == 0
    push_requested, hub_token = training_args.push_to_hub, training_args.hub_token
    # We push once, at the end, with a generated card. The Trainer must neither push on every save nor pickle the
    # token into training_args.bin (which would then be uploaded).
    training_args.push_to_hub, training_args.hub_token = False, None
    if push_requested and not training_args.hub_model_id:
        raise ConfigError("--push_to_hub needs --hub_model_id (e.g. your-name/starcoder-commits)")
    if lora_args.use_lora and model_args.init_from_config:
        raise ConfigError("LoRA needs pretrained weights: use --model_name_or_path, not --init_from_config")
    if not data_config.has_sources():
        raise ConfigError("no training data: set train_data (jsonl, data-path file or mixture) or prepared_data")
    if training_args.eval_strategy != "no" and data_config.prepared_data is None and data_config.valid_data is None:
        raise ConfigError(f"eval_strategy is {training_args.eval_strategy.value!r} but no valid_data is given")
    ds_config = deepspeed_config_dict(training_args)
    check_deepspeed_config(ds_config)
    resume = resolve_resume(training_args.resume_from_checkpoint, training_args.output_dir)
    check_output_dir(training_args.output_dir, resume is not None, training_args.overwrite_output_dir)

    # seed: weights init (random-init runs), LoRA init and dropout start from here; data order uses it too
    set_seed(training_args.seed)

    # tokenizer and the checks that need no weights
    tokenizer = resolve_tokenizer(model_args, data_config.tokenizer)
    model_config = resolve_model_config(model_args, tokenizer)
    max_length = expected_max_length(data_config)
    check_model_fits(model_config, tokenizer, max_length)
    if lora_args.use_lora:
        check_lora_targets(model_config, lora_args.lora_target_modules)

    # data: prepared once (main process first), cached, reused by the other ranks
    try:
        with training_args.main_process_first(desc="preparing data"):
            prepared = load_datasets(data_config, tokenizer, seed=training_args.seed, progress=is_main)
    except DataError as error:
        raise ConfigError(f"data: {error}") from error
    train_dataset, eval_dataset = split_datasets(prepared.splits)
    if training_args.eval_strategy != "no" and eval_dataset is None:
        raise ConfigError(f"eval_strategy is {training_args.eval_strategy.value!r} but the data has no valid split")

    # model: weights in the dtype that keeps an fp32 copy where it is needed; KV cache off while training
    uses_deepspeed = ds_config is not None or training_args.deepspeed_plugin is not None
    dtype = resolve_dtype(model_args.model_dtype, training_args.bf16, uses_deepspeed, lora_args.use_lora)
    model = load_model(model_args, model_config, dtype)
    saved_use_cache = bool(model.config.use_cache)
    model.config.use_cache = False
    if lora_args.use_lora:
        if training_args.activation_checkpointing:
            model.enable_input_require_grads()
        model = add_lora(model, lora_args)

    # collator: pads with <fim_pad> as its own attention "document"; never rebuilds labels
    collator = PackedCollator(pad_token_id=tokenizer.pad_token_id, pad_to_multiple_of=data_config.pad_to_multiple_of)

    # trainer
    if training_args.activation_checkpointing and training_args.activation_checkpointing_kwargs is None:
        training_args.activation_checkpointing_kwargs = {"use_reentrant": False}
    preemption = PreemptionHandler()
    fingerprints = None
    if training_args.log_batch_fingerprints:
        fingerprints = Path(training_args.output_dir) / "batch_fingerprints"
    trainer = StarCoderTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        processing_class=tokenizer,
        loss_normalization=training_args.loss_normalization,
        attn_implementation=model_args.attn_implementation,
        seq_length=max_length,
        peak_tflops=training_args.peak_tflops,
        fingerprint_dir=fingerprints,
        preemption=preemption,
    )
    if is_main:
        print(
            f"training {'LoRA adapters on' if lora_args.use_lora else 'all weights of'} "
            f"{model_args.model_name_or_path or 'a random ' + model_args.init_from_config + ' model'}: "
            f"{len(train_dataset)} rows of <= {max_length} tokens, global batch "
            f"{training_args.effective_global_batch_size()} = {training_args.per_device_train_batch_size} per device "
            f"x {training_args.gradient_accumulation_steps} accumulation x {training_args.world_size} processes, "
            f"loss normalized per {training_args.loss_normalization}"
            + (f", resuming from {resume}" if resume else ", fresh start (weights only)"),
            flush=True,
        )

    # train, fresh or resumed; SIGTERM/SIGINT end it with a checkpoint
    preemption.install()
    try:
        train_result = trainer.train(resume_from_checkpoint=resume)
    finally:
        preemption.uninstall()
    if trainer.preempted_at_step is not None:
        if is_main:
            print(
                f"stopped by {preemption.signal_name} at step {trainer.preempted_at_step}; checkpoint saved in "
                f"{training_args.output_dir}/checkpoint-{trainer.preempted_at_step}. "
                "Continue with --resume_from_checkpoint auto.",
                flush=True,
            )
        return 0
    eval_metrics = final_eval_metrics(trainer) if eval_dataset is not None else {}

    # save: final model or adapter, tokenizer, state, summary, model card
    save_final_model(trainer, training_args.output_dir, saved_use_cache)
    summary = {
        "base_model": model_args.model_name_or_path or f"random init ({model_args.init_from_config})",
        "lora": lora_args.use_lora,
        "train": train_result.metrics,
        "eval": eval_metrics,
        "hyperparameters": hub.hyperparameters_of(training_args, lora_args, model_args),
        "data": {"directory": str(prepared.directory), "stats": prepared.stats},
    }
    output_dir = Path(training_args.output_dir)
    if is_main:
        from hf_starcoder_ft.io_utils import atomic_write

        with atomic_write(output_dir / "trainer_state.json") as tmp:
            trainer.state.save_to_json(str(tmp))
        write_json_atomic(output_dir / SUMMARY_FILE, summary)
        card = hub.build_model_card(
            repo_id=training_args.hub_model_id,
            base_model=summary["base_model"],
            is_adapter=lora_args.use_lora,
            data_stats=prepared.stats,
            hyperparameters=summary["hyperparameters"],
            eval_metrics=eval_metrics,
            train_metrics=train_result.metrics,
        )
        with atomic_write(output_dir / "README.md") as tmp:
            tmp.write_text(card)
        print(f"saved the final {'adapter' if lora_args.use_lora else 'model'} to {output_dir}", flush=True)

    # push: once, from the main process, token never printed
    status = 0
    if push_requested and is_main:
        if training_args.push_dry_run:
            print(hub.describe_upload(output_dir, training_args.hub_model_id))
        else:
            try:
                url = hub.push_folder(output_dir, training_args.hub_model_id, hub_token, training_args.hub_private_repo)
            except RuntimeError as error:
                print(
                    f"train: error: {error}\nThe trained model is saved in {output_dir}; push it later with "
                    f"`hf upload {training_args.hub_model_id} {output_dir}`.",
                    file=sys.stderr,
                )
                status = 1
            else:
                print(f"pushed {output_dir} to {url}", flush=True)
    trainer.accelerator.wait_for_everyone()
    return status


if __name__ == "__main__":
    sys.exit(main())
