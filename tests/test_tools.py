"""`hf-starcoder-ft diff` (HF and Megatron checkpoints, key by key) and `hf-starcoder-ft generate`."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from _convert_fixtures import load_safetensors_dir, rewrite_rank_file, write_reference_checkpoint
from _train_fixtures import fake_hub_fixture  # noqa: F401  (provides `fake_hub`)
from safetensors.torch import save_file

from hf_starcoder_ft import cli
from hf_starcoder_ft.tools import diff, generate


def _run_diff(capsys, *argv) -> tuple[int, str]:
    status = cli.main(["diff", *map(str, argv)])
    return status, capsys.readouterr().out


def _resave(src, dst, state: dict) -> None:
    """A copy of an HF folder with its weights replaced by `state` (one safetensors file)."""
    dst.mkdir()
    shutil.copy(src / "config.json", dst / "config.json")
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})


def test_identical_folders_and_bin_shards(tiny_mqa_model_dir, tmp_path, capsys):
    status, output = _run_diff(capsys, tiny_mqa_model_dir, tiny_mqa_model_dir)
    assert status == 0 and "28 tensors compared, 28 equal" in output

    # The same weights as two .bin shards with an index, lm_head stored as the tied copy.
    state = load_safetensors_dir(tiny_mqa_model_dir)
    keys = sorted(state)
    bins = tmp_path / "bins"
    bins.mkdir()
    shutil.copy(tiny_mqa_model_dir / "config.json", bins / "config.json")
    first = {key: state[key] for key in keys[:10]}
    second = {key: state[key] for key in keys[10:]} | {"lm_head.weight": state["transformer.wte.weight"].clone()}
    torch.save(first, bins / "pytorch_model-00001-of-00002.bin")
    torch.save(second, bins / "pytorch_model-00002-of-00002.bin")
    weight_map = {key: "pytorch_model-00001-of-00002.bin" for key in first}
    weight_map |= {key: "pytorch_model-00002-of-00002.bin" for key in second}
    (bins / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    status, output = _run_diff(capsys, tiny_mqa_model_dir, bins)
    assert status == 0
    assert "B: lm_head.weight is a tied copy of transformer.wte.weight" in output
    assert "28 tensors compared, 28 equal" in output


def test_each_kind_of_difference_is_reported(tiny_mqa_model_dir, tmp_path, capsys):
    state = load_safetensors_dir(tiny_mqa_model_dir)
    changed = dict(state)
    changed["transformer.h.0.attn.c_proj.weight"] = state["transformer.h.0.attn.c_proj.weight"].clone()
    changed["transformer.h.0.attn.c_proj.weight"][2, 3] += 0.5
    changed["transformer.ln_f.bias"] = state["transformer.ln_f.bias"].to(torch.float16)
    changed["transformer.wpe.weight"] = state["transformer.wpe.weight"][:128].clone()
    del changed["transformer.h.1.ln_2.bias"]
    changed["transformer.h.9.extra"] = torch.zeros(3)
    _resave(tiny_mqa_model_dir, tmp_path / "b", changed)

    status, output = _run_diff(capsys, tiny_mqa_model_dir, tmp_path / "b")
    assert status == 1
    assert "values differ: transformer.h.0.attn.c_proj.weight: max |diff| 0.5\n" in output
    assert "dtype mismatch: transformer.ln_f.bias: A float32 vs B float16" in output
    assert "shape mismatch: transformer.wpe.weight: A [256, 32] vs B [128, 32]" in output
    assert "only in A: transformer.h.1.ln_2.bias" in output
    assert "only in B: transformer.h.9.extra" in output
    assert "1 only in A, 1 only in B, 1 shape, 1 dtype" in output

    result, _ = diff.diff_checkpoints(tiny_mqa_model_dir, tmp_path / "b", atol=1.0, ignore_dtype=True)
    assert (result.values, result.dtype) == ([], [])  # ln_f.bias fp16 differs by rounding only, < atol


def test_atol(tiny_mqa_model_dir, tmp_path, capsys):
    state = load_safetensors_dir(tiny_mqa_model_dir)
    state["transformer.h.1.mlp.c_fc.bias"] = state["transformer.h.1.mlp.c_fc.bias"] + 1e-3
    _resave(tiny_mqa_model_dir, tmp_path / "b", state)
    assert _run_diff(capsys, tiny_mqa_model_dir, tmp_path / "b")[0] == 1
    assert _run_diff(capsys, tiny_mqa_model_dir, tmp_path / "b", "--atol", "1e-2")[0] == 0


def test_megatron_against_hf_and_against_other_layouts(tiny_mqa_model_dir, tmp_path, capsys):
    tp1 = write_reference_checkpoint(tmp_path / "tp1", tiny_mqa_model_dir, tp=1, pp=2)
    status, output = _run_diff(capsys, tiny_mqa_model_dir, tp1)
    assert status == 0 and "in HF key space" in output and "28 tensors compared, 28 equal" in output

    tp2 = write_reference_checkpoint(tmp_path / "tp2", tiny_mqa_model_dir, tp=2, pp=2)
    status, output = _run_diff(capsys, tiny_mqa_model_dir, tp2)
    assert status == 1 and "transformer.wte.weight: A [384, 32] vs B [512, 32]" in output
    status, output = _run_diff(capsys, tiny_mqa_model_dir, tp2, "--ignore_vocab_padding")
    assert status == 0 and "compared the first 384 rows" in output

    tp4 = write_reference_checkpoint(tmp_path / "tp4", tiny_mqa_model_dir, tp=4, pp=1)
    assert _run_diff(capsys, tp2, tp4)[0] == 0  # both padded to 512 with zeros

    def drift(content):
        content["model"]["language_model"]["encoder"]["layers.1.mlp.dense_4h_to_h.weight"][0, 0] += 2.0

    rewrite_rank_file(tp4 / "release" / "mp_rank_03" / "model_optim_rng.pt", drift)
    status, output = _run_diff(capsys, tp2, tp4)
    # dense_4h_to_h is split on dim 1: rank 3's column 0 is column 48 of the merged weight.
    assert status == 1 and "values differ: transformer.h.1.mlp.c_proj.weight: max |diff| 2" in output


def test_megatron_same_layout_compares_rank_files(tiny_mqa_model_dir, tmp_path, capsys):
    a = write_reference_checkpoint(tmp_path / "a", tiny_mqa_model_dir, tp=2, pp=2)
    b = write_reference_checkpoint(tmp_path / "b", tiny_mqa_model_dir, tp=2, pp=2)
    status, output = _run_diff(capsys, a, b)
    assert status == 0 and "compared rank file by rank file" in output
    assert "66 tensors compared, 66 equal" in output  # (16 + 17 tensors per stage) x 2 TP ranks

    def drift(content):
        content["model"]["word_embeddings_for_head"]["weight"][5, 1] -= 0.25

    rewrite_rank_file(b / "release" / "mp_rank_01_001" / "model_optim_rng.pt", drift)
    status, output = _run_diff(capsys, a, b)
    assert status == 1
    assert "values differ: mp_rank_01_001: model.word_embeddings_for_head.weight: max |diff| 0.25" in output


def test_unreadable_input_exits_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli.main(["diff", str(tmp_path / "empty"), str(tmp_path / "empty")]) == 2
    assert "no model.safetensors" in capsys.readouterr().err


def test_generate_is_greedy_and_matches_a_manual_argmax_loop(tiny_mqa_model_dir, capsys):
    from transformers import AutoModelForCausalLM

    from hf_starcoder_ft.tokenizer import load_tokenizer

    prompt = "def add(a, b):"
    assert cli.main(["generate", str(tiny_mqa_model_dir), "--prompt", prompt, "--max_new_tokens", "6"]) == 0
    printed = capsys.readouterr().out.rstrip("\n")

    tokenizer = load_tokenizer(tiny_mqa_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_mqa_model_dir, dtype=torch.float32)
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        for _ in range(6):
            next_id = model(input_ids=ids, use_cache=False).logits[0, -1].argmax()
            ids = torch.cat([ids, next_id.view(1, 1)], dim=1)
            if next_id.item() == tokenizer.eos_token_id:
                break
    assert printed == tokenizer.decode(ids[0])
    assert printed.startswith(prompt) and len(printed) > len(prompt)


def test_generate_sampling_is_seeded_and_options_are_checked(tiny_mqa_model_dir, tmp_path, capsys):
    text_a = generate.generate(tiny_mqa_model_dir, "x = ", max_new_tokens=8, temperature=1.5, seed=3, device="cpu")
    text_b = generate.generate(tiny_mqa_model_dir, "x = ", max_new_tokens=8, temperature=1.5, seed=3, device="cpu")
    assert text_a == text_b and text_a.startswith("x = ")
    with pytest.raises(SystemExit):
        generate.main([str(tiny_mqa_model_dir), "--prompt", "x", "--temperature", "0"])
    no_tokenizer = tmp_path / "weights_only"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_mqa_model_dir / name, no_tokenizer / name)
    capsys.readouterr()
    assert generate.main([str(no_tokenizer), "--prompt", "x"]) == 2
    assert "no tokenizer.json" in capsys.readouterr().err


def test_safetensors_reader_matches_safetensors_and_names_bad_files(tmp_path):
    """HFCheckpoint reads .safetensors with plain reads (no mapping held open): every dtype and shape comes back
    bitwise as the safetensors library wrote it (float8 and uint32 too), and a truncated or malformed file is
    named with the key."""
    from safetensors.torch import load_file, save_file

    from hf_starcoder_ft.convert.hf_format import HFCheckpoint, HFCheckpointError, SafetensorsFile

    generator = torch.Generator().manual_seed(0)
    state = {
        "bf16": torch.randn(7, 3, generator=generator).to(torch.bfloat16),
        "f32": torch.randn(5, generator=generator),
        "f16": torch.randn(2, 2, 2, generator=generator).half(),
        "i64": torch.arange(6).reshape(2, 3),
        "bool": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 4),
        "scalar": torch.tensor(2.5),
        "f8": torch.randn(4, 2, generator=generator).to(torch.float8_e4m3fn),
        "u32": torch.tensor([0, 7, 2**31 + 5], dtype=torch.int64).to(torch.uint32),
    }
    path = tmp_path / "model.safetensors"
    save_file(state, str(path), metadata={"format": "pt"})
    checkpoint = HFCheckpoint(path)
    expected = load_file(str(path))
    assert sorted(checkpoint.keys()) == sorted(state)
    for key, tensor in expected.items():
        read = checkpoint.get(key)
        assert read.dtype == tensor.dtype and read.shape == tensor.shape, key
        assert torch.equal(read.reshape(-1).view(torch.uint8), tensor.reshape(-1).view(torch.uint8)), key
        assert checkpoint.shape(key) == tuple(tensor.shape)

    data = path.read_bytes()
    (tmp_path / "short.safetensors").write_bytes(data[:-4])
    with pytest.raises(HFCheckpointError, match=r"short.safetensors: \w+ ends at byte \d+ but the file has \d+"):
        SafetensorsFile(tmp_path / "short.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(HFCheckpointError, match="junk.safetensors: not a safetensors file"):
        SafetensorsFile(tmp_path / "junk.safetensors")
    length = int.from_bytes(data[:8], "little")
    broken = data[:8] + data[8 : 8 + length].replace(b'"F32"', b'"X99"') + data[8 + length :]
    (tmp_path / "dtype.safetensors").write_bytes(broken)
    bad_entry = r"dtype.safetensors: \w+: unsupported or malformed header entry \{'dtype': 'X99'"
    with pytest.raises(HFCheckpointError, match=bad_entry):
        SafetensorsFile(tmp_path / "dtype.safetensors")


PUSH_TOKEN = "hf_PUSHtokenNEVERshown9876543210"


def test_push_uploads_a_converted_model_with_a_generated_card(fake_hub, tiny_mqa_model_dir, tmp_path, capfd):
    """A converted model folder (sharded safetensors, no README) goes up in one commit with a generated card;
    run state, hidden files and checkpoints stay behind; the token is sent but never shown."""
    from hf_starcoder_ft.convert.hf_to_megatron import convert_hf_to_megatron
    from hf_starcoder_ft.convert.megatron_to_hf import convert_megatron_to_hf

    convert_hf_to_megatron(tiny_mqa_model_dir, tmp_path / "m", tp=2, pp=1, progress=False, log=lambda _: None)
    folder = tmp_path / "hf"
    convert_megatron_to_hf(
        tmp_path / "m", folder, tokenizer=tiny_mqa_model_dir, max_shard_size="40KB", progress=False, log=lambda _: None
    )
    (folder / "training_args.bin").write_bytes(b"pickle")
    (folder / ".cache").mkdir()
    (folder / ".cache" / "x").write_text("x")
    (folder / "checkpoint-5").mkdir()
    (folder / "checkpoint-5" / "optimizer.pt").write_bytes(b"x")
    assert cli.main(["push", str(folder), "--repo_id", "someone/converted", "--token", PUSH_TOKEN]) == 0
    captured = capfd.readouterr()
    assert "pushed" in captured.out and PUSH_TOKEN not in captured.out + captured.err
    shards = sorted(p.name for p in folder.glob("model-*.safetensors"))
    assert len(shards) > 1
    expected = {"config.json", "generation_config.json", "model.safetensors.index.json", "README.md", *shards}
    assert expected <= set(fake_hub.files) and "tokenizer.json" in fake_hub.files
    assert not {"training_args.bin", ".cache/x", "checkpoint-5/optimizer.pt"} & set(fake_hub.files)
    for name in shards:
        assert fake_hub.files[name] == (folder / name).read_bytes()
    card = fake_hub.files["README.md"].decode()
    assert "library_name: transformers" in card and "2 layers, hidden size 32" in card and "multi-query" in card
    assert not (folder / "README.md").exists()  # generated for the upload, the folder is left as it was
    assert all(header == f"Bearer {PUSH_TOKEN}" for header in fake_hub.authorizations)
    commits = [path for method, path in fake_hub.requests if "/commit/" in path]
    assert len(commits) == 1


def test_push_checks_the_folder_first_and_dry_run_uploads_nothing(fake_hub, tiny_mqa_model_dir, tmp_path, capsys):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_mqa_model_dir, folder)
    assert cli.main(["push", str(folder), "--repo_id", "someone/dry", "--dry_run"]) == 0
    printed = capsys.readouterr().out
    assert "would upload" in printed and "model.safetensors" in printed and "README.md" in printed
    assert "generated" in printed and fake_hub.requests == []

    (folder / "pytorch_model.bin").write_bytes(b"pickle")
    assert cli.main(["push", str(folder), "--repo_id", "someone/x", "--dry_run"]) == 2
    assert "pytorch_model.bin are pickles" in capsys.readouterr().err
    assert cli.main(["push", str(folder), "--repo_id", "someone/x", "--dry_run", "--allow_pickle"]) == 0
    (folder / "pytorch_model.bin").unlink()
    (folder / "model.safetensors").unlink()
    assert cli.main(["push", str(folder), "--repo_id", "someone/x", "--dry_run"]) == 2
    assert "config.json but no model.safetensors" in capsys.readouterr().err
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model-1.safetensors"}}))
    assert cli.main(["push", str(folder), "--repo_id", "someone/x", "--dry_run"]) == 2
    assert "names model-1.safetensors, missing from the folder" in capsys.readouterr().err
    assert cli.main(["push", str(tmp_path / "nope"), "--repo_id", "someone/x"]) == 2
    with pytest.raises(SystemExit):
        cli.main(["push", str(folder), "--repo_id", "no-owner"])
    assert fake_hub.requests == []


def test_push_failure_exits_1_and_hides_the_token(fake_hub, tiny_mqa_model_dir, monkeypatch, capfd):
    from _train_fixtures import free_port

    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("HF_TOKEN", PUSH_TOKEN)
    assert cli.main(["push", str(tiny_mqa_model_dir), "--repo_id", "someone/unreachable"]) == 1
    captured = capfd.readouterr()
    assert "push to someone/unreachable failed" in captured.err and PUSH_TOKEN not in captured.out + captured.err
