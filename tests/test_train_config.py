"""Bad configurations fail before any heavy work (no data prepared, no weights read) with a message that names
the key or file; plus the DeepSpeed checks and the CPU DeepSpeed state repair, unit by unit."""

from __future__ import annotations

import json

import pytest
from _train_fixtures import REPO_ROOT, addition_data_fixture, base_args, train_model_dir_fixture  # noqa: F401

from hf_starcoder_ft.config import ConfigError
from hf_starcoder_ft.train import check_deepspeed_config, main


@pytest.fixture
def run_bad(addition_data, tmp_path, capsys):
    """Run main(); assert exit status 2, that the data cache was never created, and return stderr."""

    def _run(argv: list[str]) -> str:
        cache = tmp_path / "fresh-cache"
        argv = [*argv, "--data_cache_dir", str(cache)]
        assert main(argv) == 2
        assert not cache.exists(), "data was prepared before the configuration was checked"
        return capsys.readouterr().err

    return _run


def test_unknown_yaml_key_names_it_and_the_file(run_bad, train_model_dir, addition_data, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text((REPO_ROOT / "configs" / "tiny_cpu.yaml").read_text() + "\nlearning_rat: 0.1\n")
    argv = base_args(train_model_dir, addition_data, tmp_path / "out", config=recipe)
    err = run_bad(argv)
    assert f"Unknown arguments from config file {recipe}" in err and "learning_rat" in err


def test_unknown_cli_flag(run_bad, train_model_dir, addition_data, tmp_path):
    err = run_bad(base_args(train_model_dir, addition_data, tmp_path / "out") + ["--no_such_flag", "1"])
    assert "--no_such_flag" in err


def test_global_batch_that_does_not_divide(run_bad, train_model_dir, addition_data, tmp_path):
    argv = base_args(
        train_model_dir, addition_data, tmp_path / "out", global_batch_size=6, per_device_train_batch_size=4
    )
    assert "global_batch_size 6 is not divisible by per_device_train_batch_size 4" in run_bad(argv)


def test_missing_model_directory(run_bad, train_model_dir, addition_data, tmp_path):
    missing = tmp_path / "no-model"
    argv = base_args(train_model_dir, addition_data, tmp_path / "out", model_name_or_path=missing)
    assert f"model_name_or_path {missing}: no such model directory" in run_bad(argv)


def test_missing_tokenizer(run_bad, train_model_dir, addition_data, tmp_path):
    missing = tmp_path / "tokenizer.json"
    argv = base_args(train_model_dir, addition_data, tmp_path / "out", tokenizer=missing)
    assert f"tokenizer: {missing}: tokenizer not found" in run_bad(argv)


def test_tokenizer_larger_than_model_vocabulary(run_bad, tokenizer_json, addition_data, tmp_path):
    from conftest import save_tiny_model

    small = save_tiny_model(tmp_path / "small-vocab", tokenizer_json, vocab_size=128)
    err = run_bad(base_args(small, addition_data, tmp_path / "out"))
    assert "tokenizer has 384 entries but the model's vocab_size is 128" in err


def test_max_length_above_n_positions(run_bad, train_model_dir, addition_data, tmp_path):
    err = run_bad(base_args(train_model_dir, addition_data, tmp_path / "out", max_length=512))
    assert "max_length 512 is larger than the model's n_positions 256" in err


def test_lora_on_a_module_that_does_not_exist(run_bad, train_model_dir, addition_data, tmp_path):
    argv = base_args(train_model_dir, addition_data, tmp_path / "out") + [
        "--use_lora",
        "--lora_target_modules",
        "c_attn",
        "q_proj",
    ]
    err = run_bad(argv)
    assert "['q_proj'] match no linear layer" in err and "c_fc" in err


def test_eval_without_validation_data(run_bad, train_model_dir, addition_data, tmp_path):
    argv = [a for a in base_args(train_model_dir, addition_data, tmp_path / "out")]
    index = argv.index("--valid_data")
    del argv[index : index + 2]
    assert "no valid_data" in run_bad(argv)


def test_push_without_repository_id(run_bad, train_model_dir, addition_data, tmp_path):
    argv = base_args(train_model_dir, addition_data, tmp_path / "out") + ["--push_to_hub"]
    assert "--hub_model_id" in run_bad(argv)


def test_model_and_random_init_together(run_bad, train_model_dir, addition_data, tmp_path):
    argv = base_args(train_model_dir, addition_data, tmp_path / "out", init_from_config="tiny")
    assert "not both" in run_bad(argv)


def test_resume_from_a_directory_that_is_not_a_checkpoint(run_bad, train_model_dir, addition_data, tmp_path):
    argv = base_args(train_model_dir, addition_data, tmp_path / "out", resume_from_checkpoint=tmp_path)
    assert "not a checkpoint directory" in run_bad(argv)


def test_attention_implementation_that_cannot_isolate_documents(run_bad, train_model_dir, addition_data, tmp_path):
    argv = base_args(train_model_dir, addition_data, tmp_path / "out", attn_implementation="flex_attention")
    assert "attn_implementation 'flex_attention' is not supported for packed training" in run_bad(argv)


def test_zero3_without_gathered_weights_is_refused():
    config = json.loads((REPO_ROOT / "configs" / "deepspeed" / "zero3.json").read_text())
    check_deepspeed_config(config)
    config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = False
    with pytest.raises(ConfigError, match="stage3_gather_16bit_weights_on_model_save"):
        check_deepspeed_config(config)
