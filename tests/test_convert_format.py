"""Megatron rank files: safe loading, the exporter's exact format, and every bad-input error."""

from __future__ import annotations

import argparse
import builtins
import os
import shutil
from pathlib import Path

import pytest
import torch
from _convert_fixtures import PositionEmbeddingType as MegatronPositionEmbeddingType
from _convert_fixtures import (
    encoder,
    fake_megatron_modules,
    load_flat_rank,
    reference_rank_states,
    rewrite_rank_file,
    tiny_bf16_model_dir_fixture,  # noqa: F401  (provides `tiny_bf16_model_dir`)
    write_reference_checkpoint,
)

from hf_starcoder_ft.convert import cli as convert_cli
from hf_starcoder_ft.convert.hf_format import HFCheckpointError
from hf_starcoder_ft.convert.hf_to_megatron import convert_hf_to_megatron
from hf_starcoder_ft.convert.megatron_format import (
    MegatronCheckpointError,
    PositionEmbeddingType,
    UnsafeCheckpointError,
    load_rank_file,
    open_checkpoint,
    pickle_globals,
)
from hf_starcoder_ft.convert.megatron_to_hf import convert_megatron_to_hf

# Every args field SPEC.md section 6 lists as used by converters.
SPEC_ARGS_FIELDS = (
    "num_layers hidden_size ffn_hidden_size num_attention_heads kv_channels max_position_embeddings "
    "padded_vocab_size attention_head_type tensor_model_parallel_size pipeline_model_parallel_size params_dtype "
    "bias_gelu_fusion openai_gelu apply_query_key_layer_scaling attention_softmax_in_fp32 "
    "make_vocab_size_divisible_by"
).split()


@pytest.fixture
def reference_checkpoint(tiny_mqa_model_dir, tmp_path):
    """A TP2 x PP2 multi-query checkpoint from the independent test writer."""
    return write_reference_checkpoint(tmp_path / "megatron", tiny_mqa_model_dir, tp=2, pp=2)


# ---------------------------------------------------------------------------------------------------------------
# Safe loading


def test_real_format_rank_file_loads_without_megatron(reference_checkpoint):
    path = reference_checkpoint / "release" / "mp_rank_01_001" / "model_optim_rng.pt"
    assert {"megatron.model.enums.PositionEmbeddingType", "megatron.model.enums.ModelType"} <= pickle_globals(path)
    rank = load_rank_file(path)
    args = rank.content["args"]
    assert args.position_embedding_type is PositionEmbeddingType.absolute
    assert args.model_type.name == "encoder_or_decoder"
    assert args.params_dtype is torch.float32
    assert rank.content["rng_state"][0]["np_rng_state"][1].shape == (624,)  # NumPy state came through
    assert rank.mmapped
    assert rank.content["model"]["word_embeddings_for_head"]["weight"].shape == (256, 32)


def _write_malicious(path: Path, payload) -> None:
    class Payload:
        def __reduce__(self):
            return payload

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"args": argparse.Namespace(num_layers=2), "model": {"language_model": Payload()}}, path)


@pytest.mark.parametrize("kind", ["os.system", "builtins.exec"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, kind, capsys):
    marker = tmp_path / "MARKER"
    payload = (os.system, (f"touch {marker}",))
    if kind == "builtins.exec":
        payload = (builtins.exec, (f"open({str(marker)!r}, 'w').close()",))
    checkpoint = tmp_path / "evil"
    _write_malicious(checkpoint / "release" / "mp_rank_00" / "model_optim_rng.pt", payload)
    (checkpoint / "latest_checkpointed_iteration.txt").write_text("release\n")

    with pytest.raises(UnsafeCheckpointError, match="refused to load") as error:
        load_rank_file(checkpoint / "release" / "mp_rank_00" / "model_optim_rng.pt")
    assert "mp_rank_00/model_optim_rng.pt" in str(error.value)
    assert ("system" if kind == "os.system" else "exec") in str(error.value)
    assert not marker.exists()

    assert convert_cli.main(["megatron-to-hf", "--megatron", str(checkpoint), "--out", str(tmp_path / "hf")]) == 2
    assert "refused to load" in capsys.readouterr().err
    assert not marker.exists()
    assert not (tmp_path / "hf").exists()


def test_truncated_rank_file_is_named(reference_checkpoint):
    path = reference_checkpoint / "release" / "mp_rank_00_001" / "model_optim_rng.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MegatronCheckpointError, match="truncated or corrupt") as error:
        load_rank_file(path)
    assert str(path) in str(error.value)


def test_garbage_file_is_named(tmp_path):
    path = tmp_path / "model_optim_rng.pt"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(MegatronCheckpointError, match="model_optim_rng.pt"):
        load_rank_file(path)


# ---------------------------------------------------------------------------------------------------------------
# Layout errors


def test_missing_rank_file_is_named(reference_checkpoint):
    missing = reference_checkpoint / "release" / "mp_rank_01_001" / "model_optim_rng.pt"
    missing.unlink()
    missing.parent.rmdir()
    with pytest.raises(MegatronCheckpointError, match="missing") as error:
        open_checkpoint(reference_checkpoint)
    assert str(missing) in str(error.value)


def test_rank_folders_outside_args_tp_are_refused(reference_checkpoint):
    release = reference_checkpoint / "release"
    shutil.copytree(release / "mp_rank_01_000", release / "mp_rank_02_000")
    with pytest.raises(MegatronCheckpointError, match="mp_rank_02_000 lie outside TP=2, PP=2"):
        open_checkpoint(reference_checkpoint)


def test_args_pp_disagreeing_with_folder_names(tiny_mqa_model_dir, tmp_path):
    checkpoint = write_reference_checkpoint(tmp_path / "m", tiny_mqa_model_dir, tp=2, pp=1)

    def claim_pp2(content):
        content["args"].pipeline_model_parallel_size = 2

    for rank in ("mp_rank_00", "mp_rank_01"):
        rewrite_rank_file(checkpoint / "release" / rank / "model_optim_rng.pt", claim_pp2)
    with pytest.raises(MegatronCheckpointError, match=r"named mp_rank_XX \(no pipeline rank\), .* PP=2"):
        open_checkpoint(checkpoint)


def test_rank_args_disagreeing_with_rank_zero(reference_checkpoint, tmp_path):
    def claim_tp4(content):
        content["args"].tensor_model_parallel_size = 4

    path = reference_checkpoint / "release" / "mp_rank_01_000" / "model_optim_rng.pt"
    rewrite_rank_file(path, claim_tp4)
    with pytest.raises(MegatronCheckpointError, match="tensor_model_parallel_size=4 disagrees") as error:
        convert_megatron_to_hf(reference_checkpoint, tmp_path / "hf", progress=False)
    assert str(path) in str(error.value)


def test_tracker_and_iteration_errors(reference_checkpoint, tmp_path):
    (reference_checkpoint / "latest_checkpointed_iteration.txt").unlink()
    with pytest.raises(MegatronCheckpointError, match="pass --iteration"):
        open_checkpoint(reference_checkpoint)
    assert open_checkpoint(reference_checkpoint, "release").spec.tp == 2
    with pytest.raises(MegatronCheckpointError, match="iter_0000250"):
        open_checkpoint(reference_checkpoint, 250)
    (reference_checkpoint / "latest_checkpointed_iteration.txt").write_text("last one\n")
    with pytest.raises(MegatronCheckpointError, match="latest_checkpointed_iteration.txt: expected an iteration"):
        open_checkpoint(reference_checkpoint)


def test_numbered_iteration_and_distributed_optimizer_layout(tiny_mqa_model_dir, tmp_path):
    checkpoint = write_reference_checkpoint(
        tmp_path / "m", tiny_mqa_model_dir, tp=2, pp=1, iteration=250, distributed_optimizer=True
    )
    # PP=1 with the distributed optimizer: mp_rank_00_000/optim.pt sits beside mp_rank_00/model_rng.pt.
    assert (checkpoint / "iter_0000250" / "mp_rank_00_000" / "optim.pt").is_file()
    opened = open_checkpoint(checkpoint)
    assert (opened.iteration, opened.file_name, opened.spec.tp, opened.spec.pp) == (250, "model_rng.pt", 2, 1)


# ---------------------------------------------------------------------------------------------------------------
# Key and shape errors


def test_unknown_key_is_named(reference_checkpoint, tmp_path):
    path = reference_checkpoint / "release" / "mp_rank_00_001" / "model_optim_rng.pt"
    rewrite_rank_file(path, lambda c: encoder(c).__setitem__("layers.0.self_attention.rotary.inv_freq", torch.ones(4)))
    with pytest.raises(MegatronCheckpointError, match="unknown keys") as error:
        convert_megatron_to_hf(reference_checkpoint, tmp_path / "hf", progress=False)
    assert "model.language_model.encoder.layers.0.self_attention.rotary.inv_freq" in str(error.value)
    assert str(path) in str(error.value)
    assert not (tmp_path / "hf").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["megatron"]  # no temporary output left behind


def test_missing_key_is_named(reference_checkpoint, tmp_path):
    path = reference_checkpoint / "release" / "mp_rank_01_001" / "model_optim_rng.pt"
    rewrite_rank_file(path, lambda c: encoder(c).pop("final_layernorm.bias"))
    with pytest.raises(
        MegatronCheckpointError, match="missing keys: model.language_model.encoder.final_layernorm.bias"
    ):
        convert_megatron_to_hf(reference_checkpoint, tmp_path / "hf", progress=False)


def test_shape_mismatch_is_named(reference_checkpoint, tmp_path):
    path = reference_checkpoint / "release" / "mp_rank_01_000" / "model_optim_rng.pt"
    key = "layers.0.mlp.dense_h_to_4h.weight"
    rewrite_rank_file(path, lambda c: encoder(c).__setitem__(key, torch.zeros(64, 32)))
    with pytest.raises(
        MegatronCheckpointError, match=r"dense_h_to_4h.weight has shape \[64, 32\], expected \[32, 32\]"
    ):
        convert_megatron_to_hf(reference_checkpoint, tmp_path / "hf", progress=False)


def test_args_the_model_cannot_express(tiny_mqa_model_dir, tmp_path):
    rotary = write_reference_checkpoint(
        tmp_path / "rotary",
        tiny_mqa_model_dir,
        tp=1,
        pp=1,
        args_overrides={"position_embedding_type": MegatronPositionEmbeddingType.rotary},
    )
    with pytest.raises(MegatronCheckpointError, match="position_embedding_type"):
        open_checkpoint(rotary)


def test_tokenizer_larger_than_checkpoint_vocab(tiny_mqa_model_dir, tmp_path, tokenizer_json):
    checkpoint = write_reference_checkpoint(tmp_path / "m", tiny_mqa_model_dir, tp=1, pp=1)
    rewrite_rank_file(
        checkpoint / "release" / "mp_rank_00" / "model_optim_rng.pt",
        lambda c: setattr(c["args"], "padded_vocab_size", 128),
    )
    with pytest.raises(MegatronCheckpointError, match="tokenizer has 384 tokens"):
        convert_megatron_to_hf(checkpoint, tmp_path / "hf", tokenizer=tokenizer_json, progress=False)


def test_existing_output_refused_unless_overwrite(reference_checkpoint, tmp_path, capsys):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    argv = ["megatron-to-hf", "--megatron", str(reference_checkpoint), "--out", str(out), "--no_progress"]
    assert convert_cli.main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").exists()
    assert convert_cli.main([*argv, "--overwrite"]) == 0
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()


# ---------------------------------------------------------------------------------------------------------------
# The exporter's format, checked against the independent writer


@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 2), (4, 1), (1, 2)])
def test_exporter_matches_the_reference_writer(tiny_model_dir, tmp_path, tp, pp):
    import json

    from safetensors.torch import load_file

    out = tmp_path / "exported"
    convert_hf_to_megatron(tiny_model_dir, out, tp=tp, pp=pp, progress=False, log=lambda _: None)
    config = json.loads((tiny_model_dir / "config.json").read_text())
    hf_state = load_file(str(tiny_model_dir / "model.safetensors"))
    padded = 384 if tp == 1 else 512
    expected = reference_rank_states(hf_state, config, tp, pp, padded)
    assert (out / "latest_checkpointed_iteration.txt").read_text().strip() == "release"
    found_dirs = sorted(p.name for p in (out / "release").iterdir())
    assert found_dirs == sorted(
        (f"mp_rank_{t:02d}" if pp == 1 else f"mp_rank_{t:02d}_{p:03d}") for t in range(tp) for p in range(pp)
    )
    for (t, p), flat in expected.items():
        name = f"mp_rank_{t:02d}" if pp == 1 else f"mp_rank_{t:02d}_{p:03d}"
        path = out / "release" / name / "model_optim_rng.pt"
        globals_in_pickle = pickle_globals(path)
        assert "megatron.model.enums.PositionEmbeddingType" in globals_in_pickle
        assert not any(g.startswith("hf_starcoder_ft") for g in globals_in_pickle), globals_in_pickle
        loaded = load_flat_rank(path)  # the test's own loader, resolving Megatron's names
        content, got = loaded["content"], loaded["flat"]
        assert content["checkpoint_version"] == 3.0 and content["iteration"] == 0
        assert list(got) == list(flat), "key names and module order"
        for key, tensor in flat.items():
            assert got[key].dtype == tensor.dtype and got[key].shape == tensor.shape, key
            assert torch.equal(got[key], tensor), key
            # Each rank file stores only its own shard, not the parent tensor of a view.
            assert got[key].untyped_storage().nbytes() == tensor.numel() * tensor.element_size(), key
        args = content["args"]
        for field in SPEC_ARGS_FIELDS:
            assert hasattr(args, field), field
        assert (args.tensor_model_parallel_size, args.pipeline_model_parallel_size) == (tp, pp)
        assert args.padded_vocab_size == padded and args.make_vocab_size_divisible_by == 128
        assert args.attention_head_type == ("multiquery" if config["multi_query"] else "multihead")
        assert args.params_dtype is torch.float32
        assert args.position_embedding_type.name == "absolute"
        assert (args.bias_gelu_fusion, args.openai_gelu) == (True, False)  # the fixture's gelu_pytorch_tanh


def test_exporter_iteration_and_distributed_optimizer(tiny_bf16_model_dir, tmp_path):
    out = tmp_path / "exported"
    report = convert_hf_to_megatron(
        tiny_bf16_model_dir, out, tp=2, pp=2, iteration=250, distributed_optimizer=True, progress=False
    )
    assert (out / "latest_checkpointed_iteration.txt").read_text().strip() == "250"
    assert report.file_name == "model_rng.pt" and len(report.rank_files) == 4
    content = load_flat_rank(out / "iter_0000250" / "mp_rank_01_001" / "model_rng.pt")["content"]
    assert content["iteration"] == 250
    assert content["args"].params_dtype is torch.bfloat16 and content["args"].bf16 is True
    assert content["args"].use_distributed_optimizer is True
    head = content["model"]["word_embeddings_for_head"]["weight"]
    assert head.dtype == torch.bfloat16 and head.shape == (256, 32)


@pytest.mark.parametrize(
    "activation,expected",
    [("gelu_pytorch_tanh", (True, False)), ("gelu_new", (False, True)), ("gelu", (False, False))],
)
def test_exporter_records_the_activation(tokenizer_json, tmp_path, activation, expected):
    from conftest import save_tiny_model

    model = save_tiny_model(tmp_path / "hf", tokenizer_json, activation_function=activation)
    convert_hf_to_megatron(model, tmp_path / "m", progress=False, log=lambda _: None)
    args = load_flat_rank(tmp_path / "m" / "release" / "mp_rank_00" / "model_optim_rng.pt")["content"]["args"]
    assert (args.bias_gelu_fusion, args.openai_gelu) == expected


def test_exporter_refuses_what_megatron_cannot_hold(tokenizer_json, tmp_path, copy_dir, tiny_mqa_model_dir):
    import json

    from conftest import save_tiny_model

    relu = save_tiny_model(tmp_path / "relu", tokenizer_json, activation_function="relu")
    with pytest.raises(HFCheckpointError, match="activation_function 'relu'"):
        convert_hf_to_megatron(relu, tmp_path / "m1", progress=False)
    with pytest.raises(HFCheckpointError, match="n_head=4 and n_inner=64 must both divide by TP=3"):
        convert_hf_to_megatron(tiny_mqa_model_dir, tmp_path / "m2", tp=3, progress=False)
    with pytest.raises(HFCheckpointError, match="n_layer=2 is not divisible by PP=3"):
        convert_hf_to_megatron(tiny_mqa_model_dir, tmp_path / "m3", pp=3, progress=False)

    from safetensors.torch import load_file, save_file

    extra = copy_dir(tiny_mqa_model_dir, "extra")
    state = load_file(str(extra / "model.safetensors"))
    state["transformer.h.0.attn.rotary.weight"] = torch.zeros(2)
    state["lm_head.weight"] = state["transformer.wte.weight"] + 1
    save_file(state, str(extra / "model.safetensors"))
    with pytest.raises(HFCheckpointError, match="unknown keys for GPTBigCode: transformer.h.0.attn.rotary.weight"):
        convert_hf_to_megatron(extra, tmp_path / "m4", progress=False)
    del state["transformer.h.0.attn.rotary.weight"]
    save_file(state, str(extra / "model.safetensors"))
    with pytest.raises(HFCheckpointError, match="lm_head.weight differs"):
        convert_hf_to_megatron(extra, tmp_path / "m5", progress=False)

    config = json.loads((extra / "config.json").read_text())
    config["model_type"] = "llama"
    (extra / "config.json").write_text(json.dumps(config))
    with pytest.raises(HFCheckpointError, match="config.json: model_type is 'llama'"):
        convert_hf_to_megatron(extra, tmp_path / "m6", progress=False)
    assert not any((tmp_path / name).exists() for name in ("m1", "m2", "m3", "m4", "m5", "m6"))


def test_fake_megatron_modules_are_removed_after_use():
    import sys

    with fake_megatron_modules():
        assert "megatron.model.enums" in sys.modules
    assert "megatron.model.enums" not in sys.modules


@pytest.mark.parametrize("tp", [1, 2])
def test_export_copies_only_what_it_must_and_saves_no_parent_bytes(tiny_mqa_model_dir, tp):
    """hf-to-megatron maps the safetensors files and writes one TP rank at a time: every shard's storage is
    exactly its bytes (`torch.save` of a view would write the whole parent tensor); whole tensors and runs of
    rows (row-split shards, the query / key_value rows of the fused c_attn) point into the file mapping, and
    only column-split shards are copies."""
    from hf_starcoder_ft.convert.hf_format import HFCheckpoint
    from hf_starcoder_ft.convert.hf_to_megatron import megatron_rank_shard, spec_from_hf_config

    hf = HFCheckpoint(tiny_mqa_model_dir)
    spec = spec_from_hf_config(hf.config, tp, 1, 128, 384, tiny_mqa_model_dir / "config.json")
    stage = {key: hf.get_mapped(key) for key in hf.keys()}
    layer = "model.language_model.encoder.layers.0."
    for tp_rank in range(tp):
        shard = megatron_rank_shard(spec, 0, tp_rank, stage, torch.float32, hf)
        for key, tensor in shard.items():
            assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size(), key
        fc, c_fc = shard[layer + "mlp.dense_h_to_4h.weight"], stage["transformer.h.0.mlp.c_fc.weight"]
        assert torch.equal(fc, c_fc.chunk(tp)[tp_rank])
        assert fc.data_ptr() == c_fc.chunk(tp)[tp_rank].data_ptr()  # rows of the mapping, not a copy
        query, c_attn = shard[layer + "self_attention.query.weight"], stage["transformer.h.0.attn.c_attn.weight"]
        assert query.data_ptr() == c_attn[:32].chunk(tp)[tp_rank].data_ptr()
        key_value = shard[layer + "self_attention.key_value.weight"]
        assert key_value.data_ptr() == c_attn[32:].data_ptr() and torch.equal(key_value, c_attn[32:])
        ln = shard[layer + "input_layernorm.weight"]
        assert ln.data_ptr() == stage["transformer.h.0.ln_1.weight"].data_ptr()
        proj, c_proj = shard[layer + "mlp.dense_4h_to_h.weight"], stage["transformer.h.0.mlp.c_proj.weight"]
        assert torch.equal(proj, c_proj.chunk(tp, dim=1)[tp_rank])
        assert (proj.data_ptr() == c_proj.data_ptr()) == (tp == 1)  # column shards of TP > 1 are copies
