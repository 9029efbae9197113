"""Round trips between HF and Megatron (bitwise), logits parity with the Megatron reference forward, and the
megatron-to-hf options (tokenizer, dtype, sharding, activation, --verify, --print_structure)."""

from __future__ import annotations

import errno
import json
import os
import shutil

import pytest
import torch
from _convert_fixtures import (
    assert_states_bitwise_equal,
    encoder,
    fake_megatron_modules,
    load_flat_rank,
    load_safetensors_dir,
    rank_dir,
    rewrite_rank_file,
    tiny_bf16_model_dir_fixture,  # noqa: F401  (provides `tiny_bf16_model_dir`)
    write_reference_checkpoint,
)

from hf_starcoder_ft.convert import cli as convert_cli
from hf_starcoder_ft.convert import hf_format as hf_format_module
from hf_starcoder_ft.convert import megatron_to_hf as megatron_to_hf_module
from hf_starcoder_ft.convert import verify as verify_module
from hf_starcoder_ft.convert.hf_to_megatron import convert_hf_to_megatron
from hf_starcoder_ft.convert.megatron_format import load_rank_file
from hf_starcoder_ft.convert.megatron_to_hf import convert_megatron_to_hf
from hf_starcoder_ft.convert.verify import verify_conversion

QUIET = {"progress": False, "log": lambda _: None}
GRID = [(tp, pp) for tp in (1, 2, 4) for pp in (1, 2)]


def _logits(model_dir, input_ids):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():
        return model, model(input_ids=input_ids, use_cache=False).logits


@pytest.mark.parametrize("tp,pp", GRID)
def test_hf_to_megatron_to_hf_is_bitwise(tiny_model_dir, tokenizer_json, tmp_path, tp, pp):
    convert_hf_to_megatron(tiny_model_dir, tmp_path / "megatron", tp=tp, pp=pp, **QUIET)
    report = convert_megatron_to_hf(tmp_path / "megatron", tmp_path / "hf", tokenizer=tokenizer_json, **QUIET)
    assert report.padded_vocab_size == (384 if tp == 1 else 512) and report.vocab_rows == 384
    assert_states_bitwise_equal(load_safetensors_dir(tmp_path / "hf"), load_safetensors_dir(tiny_model_dir))
    original = json.loads((tiny_model_dir / "config.json").read_text())
    converted = json.loads((tmp_path / "hf" / "config.json").read_text())
    for key in ("vocab_size", "n_embd", "n_layer", "n_head", "n_inner", "n_positions", "multi_query"):
        assert converted[key] == original[key], key
    assert converted["activation_function"] == "gelu_pytorch_tanh"
    assert converted["tie_word_embeddings"] is True


@pytest.mark.parametrize(
    "tp,pp,dtype,distributed,multi_query",
    [
        (1, 1, torch.float32, False, True),
        (2, 2, torch.bfloat16, True, True),
        (4, 2, torch.float32, False, True),
        (4, 1, torch.float32, True, False),
        (1, 2, torch.bfloat16, False, False),
        (2, 1, torch.bfloat16, False, False),
    ],
)
def test_megatron_to_hf_to_megatron_is_bitwise(
    tiny_mqa_model_dir, tokenizer_json, tmp_path, tp, pp, dtype, distributed, multi_query
):
    from conftest import save_tiny_model

    hf_source = tiny_mqa_model_dir if multi_query else save_tiny_model(tmp_path / "mha", tokenizer_json, False)
    original = write_reference_checkpoint(
        tmp_path / "original", hf_source, tp, pp, dtype=dtype, distributed_optimizer=distributed, padding_seed=7
    )
    convert_megatron_to_hf(original, tmp_path / "hf", **QUIET)  # no tokenizer: the (random) padding rows stay
    convert_hf_to_megatron(
        tmp_path / "hf", tmp_path / "again", tp=tp, pp=pp, distributed_optimizer=distributed, **QUIET
    )
    file_name = "model_rng.pt" if distributed else "model_optim_rng.pt"
    for t in range(tp):
        for p in range(pp):
            before = load_flat_rank(original / "release" / rank_dir(t, p, pp) / file_name)["flat"]
            after = load_flat_rank(tmp_path / "again" / "release" / rank_dir(t, p, pp) / file_name)["flat"]
            assert_states_bitwise_equal(after, before)
            assert all(tensor.dtype == dtype for tensor in after.values())


@pytest.mark.parametrize("tp,pp", [(2, 2), (4, 1), (1, 2)])
def test_logits_parity_with_megatron_reference(tiny_model_dir, tokenizer_json, tmp_path, tp, pp):
    megatron = write_reference_checkpoint(tmp_path / "megatron", tiny_model_dir, tp, pp)
    convert_megatron_to_hf(megatron, tmp_path / "hf", tokenizer=tokenizer_json, **QUIET)
    report = verify_conversion(megatron, tmp_path / "hf", num_sequences=3, seq_len=24)
    assert report.passed, report.problems
    assert report.max_logit_diff < 1e-4
    assert len(report.tensors) == 4 + 12 * 2 and all(check.max_diff == 0.0 for check in report.tensors)
    # The converted model reproduces the model the checkpoint was made from, bit for bit.
    input_ids = torch.randint(0, 384, (2, 20), generator=torch.Generator().manual_seed(3))
    converted, converted_logits = _logits(tmp_path / "hf", input_ids)
    _, original_logits = _logits(tiny_model_dir, input_ids)
    assert torch.equal(converted_logits, original_logits)
    assert converted.lm_head.weight.data_ptr() == converted.transformer.wte.weight.data_ptr()
    # and the Megatron math itself agrees with HF on the original model.
    checkpoint = verify_module.open_checkpoint(megatron)
    reference = verify_module.megatron_reference_logits(checkpoint, input_ids)[..., :384]
    assert (reference - original_logits).abs().max().item() < 1e-4


def test_bf16_checkpoint_parity_and_fp32_output(tiny_bf16_model_dir, tokenizer_json, tmp_path):
    megatron = write_reference_checkpoint(tmp_path / "megatron", tiny_bf16_model_dir, tp=2, pp=2)
    convert_megatron_to_hf(megatron, tmp_path / "bf16", tokenizer=tokenizer_json, **QUIET)
    state = load_safetensors_dir(tmp_path / "bf16")
    assert all(tensor.dtype == torch.bfloat16 for tensor in state.values())
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    report = verify_conversion(megatron, tmp_path / "bf16")
    assert report.passed and report.max_logit_diff < 1e-4

    convert_megatron_to_hf(megatron, tmp_path / "fp32", tokenizer=tokenizer_json, dtype="fp32", **QUIET)
    upcast = load_safetensors_dir(tmp_path / "fp32")
    assert sorted(upcast) == sorted(state)
    for key, tensor in upcast.items():
        assert tensor.dtype == torch.float32 and torch.equal(tensor, state[key].float()), key
    assert json.loads((tmp_path / "fp32" / "config.json").read_text())["dtype"] == "float32"


def test_verify_catches_a_wrong_tensor(tiny_mqa_model_dir, tokenizer_json, tmp_path, capsys):
    from safetensors.torch import save_file

    megatron = write_reference_checkpoint(tmp_path / "megatron", tiny_mqa_model_dir, tp=2, pp=1)
    convert_megatron_to_hf(megatron, tmp_path / "hf", tokenizer=tokenizer_json, **QUIET)
    state = load_safetensors_dir(tmp_path / "hf")
    state["transformer.h.1.mlp.c_proj.weight"][3, 5] += 0.25
    save_file(state, str(tmp_path / "hf" / "model.safetensors"), metadata={"format": "pt"})
    report = verify_conversion(megatron, tmp_path / "hf")
    assert not report.passed
    bad = [check for check in report.tensors if check.max_diff > 0]
    assert [check.key for check in bad] == ["transformer.h.1.mlp.c_proj.weight"]
    assert bad[0].max_diff == pytest.approx(0.25, abs=1e-6)
    assert report.max_logit_diff > 1e-4
    argv = ["--megatron", str(megatron), "--hf", str(tmp_path / "hf")]
    assert verify_module.main(argv) == 1
    output = capsys.readouterr().out
    assert "transformer.h.1.mlp.c_proj.weight" in output and "MISMATCH" in output and "FAIL" in output


@pytest.mark.parametrize(
    "fusion,openai,activation",
    [
        (True, False, "gelu_pytorch_tanh"),
        (False, True, "gelu_new"),
        (False, False, "gelu"),
        (True, True, "gelu_pytorch_tanh"),
    ],
)
def test_activation_follows_args(tiny_mqa_model_dir, tokenizer_json, tmp_path, capsys, fusion, openai, activation):
    overrides = {"bias_gelu_fusion": fusion, "openai_gelu": openai}
    megatron = write_reference_checkpoint(tmp_path / "m", tiny_mqa_model_dir, 1, 1, args_overrides=overrides)
    argv = ["megatron-to-hf", "--megatron", str(megatron), "--out", str(tmp_path / "hf"), "--no_progress"]
    assert convert_cli.main([*argv, "--tokenizer", str(tokenizer_json), "--verify", "--atol", "1e-4"]) == 0
    output = capsys.readouterr().out
    assert f"activation_function: {activation} (" in output
    assert "PASS" in output
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["activation_function"] == activation


def test_vocabulary_padding_kept_without_tokenizer(tiny_mqa_model_dir, tokenizer_json, tmp_path, capsys):
    megatron = write_reference_checkpoint(tmp_path / "m", tiny_mqa_model_dir, tp=4, pp=1, padding_seed=1)
    argv = ["megatron-to-hf", "--megatron", str(megatron), "--no_progress"]
    assert convert_cli.main([*argv, "--out", str(tmp_path / "padded")]) == 0
    assert "keeping all 512 rows" in capsys.readouterr().out
    padded = load_safetensors_dir(tmp_path / "padded")["transformer.wte.weight"]
    assert padded.shape == (512, 32)
    assert json.loads((tmp_path / "padded" / "config.json").read_text())["vocab_size"] == 512
    assert not (tmp_path / "padded" / "tokenizer.json").exists()

    assert convert_cli.main([*argv, "--out", str(tmp_path / "cut"), "--tokenizer", str(tokenizer_json)]) == 0
    assert "512 padded rows -> 384" in capsys.readouterr().out
    cut = load_safetensors_dir(tmp_path / "cut")["transformer.wte.weight"]
    assert torch.equal(cut, padded[:384])
    assert torch.equal(cut, load_safetensors_dir(tiny_mqa_model_dir)["transformer.wte.weight"])
    config = json.loads((tmp_path / "cut" / "config.json").read_text())
    assert (config["vocab_size"], config["bos_token_id"], config["eos_token_id"]) == (384, 0, 0)
    from transformers import AutoConfig, GenerationConfig, GPTBigCodeConfig

    loaded = AutoConfig.from_pretrained(tmp_path / "cut")
    assert isinstance(loaded, GPTBigCodeConfig) and loaded.tie_word_embeddings and loaded.n_inner == 64
    generation = GenerationConfig.from_pretrained(tmp_path / "cut")
    assert (generation.bos_token_id, generation.eos_token_id) == (0, 0)
    from hf_starcoder_ft.tokenizer import load_tokenizer

    assert len(load_tokenizer(tmp_path / "cut")) == 384


def test_sharded_output_with_index(tiny_mqa_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    megatron = write_reference_checkpoint(tmp_path / "m", tiny_mqa_model_dir, tp=2, pp=2)
    report = convert_megatron_to_hf(megatron, tmp_path / "hf", max_shard_size="20KB", **QUIET)
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) == len(report.shard_files) > 2
    assert files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    state = load_safetensors_dir(tmp_path / "hf")
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in state.values())
    assert "lm_head.weight" not in state
    for name in files:  # a shard passes the limit only when it holds one tensor bigger than the limit
        keys = [key for key, file in index["weight_map"].items() if file == name]
        assert sum(state[k].numel() * state[k].element_size() for k in keys) <= 20_000 or len(keys) == 1
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert torch.equal(model.lm_head.weight, state["transformer.wte.weight"])
    single = write_reference_checkpoint(tmp_path / "m1", tiny_mqa_model_dir, tp=2, pp=2)
    convert_megatron_to_hf(single, tmp_path / "single", **QUIET)
    assert_states_bitwise_equal(load_safetensors_dir(tmp_path / "single"), state)


def test_replicated_and_head_copy_disagreements_are_reported(tiny_mqa_model_dir, tmp_path):
    megatron = write_reference_checkpoint(tmp_path / "m", tiny_mqa_model_dir, tp=2, pp=2)
    rank = megatron / "release" / "mp_rank_01_000" / "model_optim_rng.pt"

    def drift_key_value(content):
        encoder(content)["layers.0.self_attention.key_value.weight"][0, 0] += 1.0

    rewrite_rank_file(rank, drift_key_value)

    def drift_head(content):
        content["model"]["word_embeddings_for_head"]["weight"][1, 1] += 1.0

    rewrite_rank_file(megatron / "release" / "mp_rank_00_001" / "model_optim_rng.pt", drift_head)
    report = convert_megatron_to_hf(megatron, tmp_path / "hf", **QUIET)
    assert len(report.warnings) == 2
    assert "layers.0.self_attention.key_value.weight: replicated tensor differs" in report.warnings[0]
    assert "using rank 0's copy" in report.warnings[0]
    assert "word_embeddings_for_head.weight differs" in report.warnings[1] and "mp_rank_00_001" in report.warnings[1]


@pytest.mark.parametrize("chunk", [60, 132, 136, 1 << 20])
def test_head_copy_compared_in_chunks_finds_a_difference_anywhere(tiny_mqa_model_dir, tmp_path, monkeypatch, chunk):
    """The head check reads both copies a buffer at a time; a difference in a middle or last (partial) chunk of
    the 128 x 32 fp32 shard is still found, and equal copies give no warning."""
    monkeypatch.setattr(megatron_to_hf_module, "COMPARE_CHUNK_BYTES", chunk)
    megatron = write_reference_checkpoint(tmp_path / "m", tiny_mqa_model_dir, tp=2, pp=2)
    assert convert_megatron_to_hf(megatron, tmp_path / "same", **QUIET).warnings == []
    head_rank = megatron / "release" / "mp_rank_01_001" / "model_optim_rng.pt"
    for row, column in [(1, 1), (127, 31)]:  # bytes 132..135 and the very last 4 bytes

        def drift_head(content, row=row, column=column):
            content["model"]["word_embeddings_for_head"]["weight"][row, column] += 1.0

        rewrite_rank_file(head_rank, drift_head)
        report = convert_megatron_to_hf(megatron, tmp_path / f"hf_{row}", **QUIET)
        assert len(report.warnings) == 1 and "(TP rank 1)" in report.warnings[0]

        def restore(content, row=row, column=column):
            content["model"]["word_embeddings_for_head"]["weight"][row, column] -= 1.0

        rewrite_rank_file(head_rank, restore)


def test_released_pages_read_back_unchanged(tiny_mqa_model_dir, tmp_path):
    megatron = write_reference_checkpoint(tmp_path / "m", tiny_mqa_model_dir, tp=1, pp=1)
    rank = load_rank_file(megatron / "release" / "mp_rank_00" / "model_optim_rng.pt")
    assert rank.mmapped
    table = rank.content["model"]["language_model"]["embedding"]["word_embeddings"]["weight"]  # 48 KiB: whole pages
    before = table.clone()
    rank.release(table)
    assert torch.equal(table, before)


def test_print_structure(tiny_mqa_model_dir, tmp_path, capsys):
    megatron = write_reference_checkpoint(tmp_path / "m", tiny_mqa_model_dir, tp=2, pp=2)
    assert convert_cli.main(["megatron-to-hf", "--megatron", str(megatron), "--print_structure"]) == 0
    output = capsys.readouterr().out
    assert "TP=2 PP=2" in output
    assert "attention_head_type = 'multiquery'" in output
    assert "position_embedding_type = <PositionEmbeddingType.absolute: 2>" in output
    assert "mp_rank_01_001/model_optim_rng.pt (tp=1, pp=1):" in output
    assert "model.word_embeddings_for_head.weight  [256, 32]  float32" in output
    assert "model.language_model.encoder.layers.0.self_attention.key_value.weight  [16, 32]  float32" in output


def test_legacy_format_and_no_copy_file_range_give_the_same_bytes(tiny_mqa_model_dir, tmp_path, monkeypatch):
    megatron = write_reference_checkpoint(tmp_path / "m", tiny_mqa_model_dir, tp=2, pp=2)
    convert_megatron_to_hf(megatron, tmp_path / "zip", **QUIET)  # file-to-file copies (copy_file_range)
    expected = load_safetensors_dir(tmp_path / "zip")

    # Pre-zip serialization cannot be memory-mapped: tensors are read whole and written from memory.
    legacy = tmp_path / "legacy"
    shutil.copytree(megatron, legacy)
    for path in sorted(legacy.rglob("model_optim_rng.pt")):
        content = load_flat_rank(path)["content"]
        with fake_megatron_modules():
            torch.save(content, path, _use_new_zipfile_serialization=False)
        assert not load_rank_file(path).mmapped
    convert_megatron_to_hf(legacy, tmp_path / "from_legacy", **QUIET)
    assert_states_bitwise_equal(load_safetensors_dir(tmp_path / "from_legacy"), expected)

    # A filesystem pair without copy_file_range: the writer falls back to read + write.
    refused = []

    def refuse(*args, **_kwargs):
        refused.append(args)
        raise OSError(errno.EXDEV, "cross-device")

    monkeypatch.setattr(os, "copy_file_range", refuse)
    convert_megatron_to_hf(megatron, tmp_path / "fallback", **QUIET)
    assert len(refused) == 1  # tried once, then read + write for the rest of the file
    assert_states_bitwise_equal(load_safetensors_dir(tmp_path / "fallback"), expected)


@pytest.mark.parametrize("tp", [2, 4])
def test_column_split_gather_blocks_and_row_copies_give_the_same_bytes(tiny_mqa_model_dir, tmp_path, monkeypatch, tp):
    """Row-parallel weights (c_proj) interleave their TP shards row by row. The fast path gathers blocks of rows
    through `preadv`; a buffer of a few rows (so blocks end mid-tensor, the last one short) and the per-row
    `copy_file_range` path where `preadv` is missing must both give the bytes of the reference HF model."""
    from safetensors.torch import load_file

    reference = load_file(str(tiny_mqa_model_dir / "model.safetensors"))
    megatron = write_reference_checkpoint(tmp_path / "m", tiny_mqa_model_dir, tp=tp, pp=1)
    calls = []
    real_preadv = os.preadv

    def counting_preadv(*args):
        calls.append(len(args[1]))
        return real_preadv(*args)

    monkeypatch.setattr(os, "preadv", counting_preadv)
    convert_megatron_to_hf(megatron, tmp_path / "whole", **QUIET)
    whole_blocks = len(calls)
    assert set(calls) == {32}  # one block per shard: all 32 rows of each c_proj
    # c_proj rows are 32 x 4 bytes (attention) and 64 x 4 bytes (MLP): blocks of 3 attention rows (the last one
    # of 2) and of 1 MLP row
    monkeypatch.setattr(hf_format_module, "GATHER_BUFFER_BYTES", 3 * 128)
    calls.clear()
    convert_megatron_to_hf(megatron, tmp_path / "blocks", **QUIET)
    assert len(calls) > whole_blocks and set(calls) == {1, 2, 3}
    monkeypatch.delattr(os, "preadv")
    convert_megatron_to_hf(megatron, tmp_path / "rows", **QUIET)
    whole = load_safetensors_dir(tmp_path / "whole")
    projections = [key for key in reference if key.endswith("c_proj.weight")]
    assert len(projections) == 4
    assert_states_bitwise_equal({key: whole[key] for key in projections}, {key: reference[key] for key in projections})
    for name in ("blocks", "rows"):
        assert_states_bitwise_equal(load_safetensors_dir(tmp_path / name), whole)


def test_rank_file_truncated_during_gather_is_named(tiny_mqa_model_dir, tmp_path, monkeypatch):
    megatron = write_reference_checkpoint(tmp_path / "m", tiny_mqa_model_dir, tp=2, pp=1)
    real_preadv = os.preadv

    def short_preadv(fd, buffers, offset):
        return real_preadv(fd, buffers, offset) - 1  # as if the file ended one byte early

    monkeypatch.setattr(os, "preadv", short_preadv)
    with pytest.raises(RuntimeError, match=r"mp_rank_0[01]/model_optim_rng.pt: file ends before byte \d+"):
        convert_megatron_to_hf(megatron, tmp_path / "hf", **QUIET)
    assert not (tmp_path / "hf").exists()


def test_layer_by_layer_hf_forward_equals_the_loaded_model_one_block_at_a_time(
    tiny_model_dir, tiny_bf16_model_dir, monkeypatch
):
    """verify runs the HF model's own forward with one block's weights at a time: the logits are bitwise those of
    the model loaded whole (fp32 and bf16 weights), and no other block holds real weights while one runs."""
    from transformers.models.gpt_bigcode import modeling_gpt_bigcode

    real_forward = modeling_gpt_bigcode.GPTBigCodeBlock.forward
    seen = []

    def watching_forward(self, *args, **kwargs):
        assert {parameter.device.type for parameter in self.parameters()} == {"cpu"}
        for other in seen:
            assert {parameter.device.type for parameter in other.parameters()} == {"meta"}
        seen.append(self)
        return real_forward(self, *args, **kwargs)

    input_ids = torch.randint(0, 384, (2, 20), generator=torch.Generator().manual_seed(5))
    for model_dir in (tiny_model_dir, tiny_bf16_model_dir):
        _, whole = _logits(model_dir, input_ids)
        monkeypatch.setattr(modeling_gpt_bigcode.GPTBigCodeBlock, "forward", watching_forward)
        seen.clear()
        streamed = verify_module.hf_logits_layer_by_layer(model_dir, input_ids)
        monkeypatch.setattr(modeling_gpt_bigcode.GPTBigCodeBlock, "forward", real_forward)
        assert len(seen) == 2
        assert streamed.dtype == torch.float32 and torch.equal(streamed, whole.float())


def test_layer_by_layer_hf_forward_names_a_tensor_that_does_not_fit_the_config(tiny_mqa_model_dir, copy_dir):
    model_dir = copy_dir(tiny_mqa_model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps(config | {"n_inner": 96}))
    with pytest.raises(ValueError, match=r"transformer\.h\.0\.mlp\.c_fc\.weight has shape \[64, 32\]"):
        verify_module.hf_logits_layer_by_layer(model_dir, torch.zeros(1, 4, dtype=torch.long))


@pytest.mark.parametrize("shape", [(37, 5), (3,), (), (1000, 3, 2)])
def test_max_abs_difference_in_row_slices(shape):
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(shape, generator=generator).to(torch.bfloat16)
    b = a.clone()
    b.view(-1)[-1] += 3.0  # in the last slice
    expected = (a.float() - b.float()).abs().max().item()
    assert verify_module.max_abs_difference(a, b, chunk_elements=7) == expected
    assert verify_module.max_abs_difference(a, a, chunk_elements=7) == 0.0


def test_verify_progress_bar_counts_every_layer_and_tensor(tiny_mqa_model_dir, tmp_path, capsys):
    megatron = write_reference_checkpoint(tmp_path / "megatron", tiny_mqa_model_dir, tp=2, pp=2)
    convert_megatron_to_hf(megatron, tmp_path / "hf", **QUIET)
    assert verify_module.main(["--megatron", str(megatron), "--hf", str(tmp_path / "hf")]) == 0
    captured = capsys.readouterr()
    assert "verify: 100%" in captured.err and "32/32" in captured.err  # 2 x 2 layers + 28 tensors
    assert ": PASS" in captured.out
    argv = ["--megatron", str(megatron), "--hf", str(tmp_path / "hf"), "--no_progress"]
    assert verify_module.main(argv) == 0
    assert "verify:" not in capsys.readouterr().err
