"""Every shipped recipe, DeepSpeed JSON and launcher config parses against the code, and says what it claims."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from _train_fixtures import REPO_ROOT, train_model_dir_fixture  # noqa: F401

from hf_starcoder_ft.config import parse_train_args

RECIPES = sorted((REPO_ROOT / "configs").glob("*.yaml"))
DEEPSPEED_CONFIGS = sorted((REPO_ROOT / "configs" / "deepspeed").glob("*.json"))
LAUNCH_CONFIGS = sorted((REPO_ROOT / "launch").glob("*.yaml"))


def test_the_expected_files_ship():
    assert {p.name for p in RECIPES} >= {"octopack_starcoderbase.yaml", "lora_starcoderbase.yaml", "tiny_cpu.yaml"}
    assert {p.name for p in DEEPSPEED_CONFIGS} == {"zero3.json", "zero3_offload.json", "zero2.json"}
    assert {p.name for p in LAUNCH_CONFIGS} >= {
        "single_gpu.yaml",
        "zero3_1node.yaml",
        "zero3_multinode.yaml",
        "zero3_cpu_2proc.yaml",
    }
    assert (REPO_ROOT / "launch" / "slurm_multinode.sbatch").is_file()


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_parses_and_starts_with_its_command(recipe, train_model_dir, tmp_path):
    assert "train.py --config" in recipe.read_text().split("\n\n")[0], "a recipe starts with the command that runs it"
    argv = ["--config", str(recipe), "--model_name_or_path", str(train_model_dir), "--train_data", "x.jsonl"]
    argv += ["--output_dir", str(tmp_path / "out"), "--use_cpu", "true"]  # bf16 recipes parse on a CPU this way
    model_args, lora_args, data_config, training_args = parse_train_args(argv)
    assert training_args.effective_global_batch_size() == training_args.global_batch_size
    assert training_args.loss_normalization in ("token", "example")


def test_octopack_recipe_is_the_original_one(train_model_dir, tmp_path):
    argv = ["--config", str(REPO_ROOT / "configs" / "octopack_starcoderbase.yaml")]
    argv += ["--model_name_or_path", str(train_model_dir), "--train_data", "x", "--output_dir", str(tmp_path)]
    model_args, lora_args, data, args = parse_train_args(argv + ["--use_cpu", "true"])
    assert (args.learning_rate, args.lr_scheduler_kwargs, args.lr_scheduler_type.value) == (
        5e-5,
        {"min_lr": 5e-6},
        "cosine_with_min_lr",
    )
    assert (args.warmup_steps, args.max_steps, args.eval_steps, args.save_steps) == (100, 10000, 250, 250)
    assert (args.weight_decay, args.adam_beta2, args.adam_epsilon, args.max_grad_norm) == (0.05, 0.95, 1e-8, 1.0)
    assert (args.global_batch_size, data.max_length, args.loss_normalization) == (128, 8192, "example")
    assert args.bf16 and args.activation_checkpointing and model_args.dropout == 0.1
    assert not lora_args.use_lora


def test_lora_recipe_targets_the_default_modules(train_model_dir, tmp_path):
    argv = ["--config", str(REPO_ROOT / "configs" / "lora_starcoderbase.yaml")]
    argv += ["--model_name_or_path", str(train_model_dir), "--train_data", "x", "--output_dir", str(tmp_path)]
    _, lora_args, _, _ = parse_train_args(argv + ["--use_cpu", "true"])
    assert lora_args.use_lora and lora_args.lora_target_modules == ["c_attn", "c_proj", "c_fc"]


def test_cli_overrides_the_recipe(train_model_dir, tmp_path):
    argv = ["--config", str(REPO_ROOT / "configs" / "tiny_cpu.yaml"), "--model_name_or_path", str(train_model_dir)]
    argv += ["--train_data", "x", "--output_dir", str(tmp_path), "--learning_rate", "0.25", "--max_length", "32"]
    _, _, data, args = parse_train_args(argv)
    assert args.learning_rate == 0.25 and data.max_length == 32
    assert args.gradient_accumulation_steps == 4  # global 8 / (2 per device x 1 process)


@pytest.mark.parametrize("path", DEEPSPEED_CONFIGS, ids=lambda p: p.name)
def test_deepspeed_config_is_filled_by_the_trainer(path):
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    from hf_starcoder_ft.train import check_deepspeed_config

    config = json.loads(path.read_text())
    check_deepspeed_config(config)  # ZeRO-3 files gather 16-bit weights on save
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        assert config[key] == "auto", key
    assert config["bf16"]["enabled"] == "auto"
    assert HfTrainerDeepSpeedConfig(config).is_zero3() == (config["zero_optimization"]["stage"] == 3)
    if path.name == "zero3_offload.json":
        zero = config["zero_optimization"]
        assert zero["offload_optimizer"]["device"] == zero["offload_param"]["device"] == "cpu"


@pytest.mark.parametrize("path", LAUNCH_CONFIGS, ids=lambda p: p.name)
def test_launch_config_loads_in_accelerate(path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    assert config.num_processes >= 1
    if str(config.distributed_type).endswith("DEEPSPEED"):
        ds_file = REPO_ROOT / config.deepspeed_config["deepspeed_config_file"]
        assert ds_file.is_file(), ds_file
        assert json.loads(ds_file.read_text())["zero_optimization"]["stage"] == 3
        assert not config.use_cpu  # use_cpu would switch DeepSpeed off


def test_slurm_script_is_valid_bash_and_uses_the_multinode_config():
    script = REPO_ROOT / "launch" / "slurm_multinode.sbatch"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "launch/zero3_multinode.yaml" in text and (REPO_ROOT / "launch" / "zero3_multinode.yaml").is_file()
    needles = ("--machine_rank \\$SLURM_NODEID", "--main_process_ip", "--export=ALL", "--resume_from_checkpoint auto")
    for needle in needles:
        assert needle in text, needle
    assert Path(REPO_ROOT / "configs" / "octopack_starcoderbase.yaml").is_file()
