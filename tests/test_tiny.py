"""`init-tiny`: the quickstart's model is StarCoder-shaped and loads through the real code paths."""

from __future__ import annotations

from _data_fixtures import commit_like_records, write_jsonl

from hf_starcoder_ft.tokenizer import STARCODER_SPECIAL_TOKENS, load_tokenizer
from hf_starcoder_ft.tools.tiny import main


def test_init_tiny_writes_loadable_starcoder_shaped_model(tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    data = write_jsonl(tmp_path / "d.jsonl", commit_like_records(50))
    out = tmp_path / "tiny"
    assert main(["--data", str(data), "--output_dir", str(out), "--vocab_size", "400", "--n_positions", "128"]) == 0
    tokenizer = load_tokenizer(out)
    assert [tokenizer.convert_tokens_to_ids(t) for t in STARCODER_SPECIAL_TOKENS] == list(range(19))
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.multi_query and model.config.use_cache and model.config.n_positions == 128
    assert model.config.vocab_size == len(tokenizer) <= 400
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    assert main(["--data", str(data), "--output_dir", str(out)]) == 1
    assert "--overwrite" in capsys.readouterr().err


def test_init_tiny_missing_data_is_a_clear_error(tmp_path, capsys):
    assert main(["--data", str(tmp_path / "nope.jsonl"), "--output_dir", str(tmp_path / "o")]) == 1
    assert "nope.jsonl: data file not found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
