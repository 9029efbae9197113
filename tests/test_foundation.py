"""The fixtures and the command table that everything else stands on."""

from __future__ import annotations

import pytest

from hf_starcoder_ft import cli
from hf_starcoder_ft.tokenizer import STARCODER_SPECIAL_TOKENS, TokenizerError, load_tokenizer


def test_tokenizer_fixture_has_starcoder_special_ids(tokenizer_json, tokenizer_dir):
    for source in (tokenizer_json, tokenizer_dir):
        tok = load_tokenizer(source)
        for index, token in enumerate(STARCODER_SPECIAL_TOKENS):
            assert tok.convert_tokens_to_ids(token) == index
        assert tok.eos_token == tok.bos_token == "<|endoftext|>"
        assert tok.eos_token_id == 0
        assert tok.pad_token_id == 4
        # Special-token strings inside text become the special ids; digits are split one by one.
        ids = tok("<commit_before>x = 12<commit_after>", add_special_tokens=False)["input_ids"]
        assert ids[0] == 15 and 17 in ids
        assert tok.convert_ids_to_tokens(ids).count("1") == 1


def test_load_tokenizer_errors_name_the_path(tmp_path):
    with pytest.raises(TokenizerError, match="not found"):
        load_tokenizer(tmp_path / "missing.json")
    with pytest.raises(TokenizerError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)


def test_tiny_model_loads_through_from_pretrained(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert model.config.use_cache is True
    assert model.transformer.wte.weight.data_ptr() == model.lm_head.weight.data_ptr()
    logits = model(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, model.config.vocab_size)


def test_every_cli_target_resolves():
    for name, (target, _) in cli.SUBCOMMANDS.items():
        assert callable(cli.resolve(target)), name


def test_cli_unknown_command(capsys):
    assert cli.main(["no-such-command"]) == 2
    assert "unknown command" in capsys.readouterr().err
