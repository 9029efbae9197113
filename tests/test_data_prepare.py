"""End-to-end `prepare`: accounting, disjoint splits, mixing, packing output, caching, the CLI."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest
from _data_fixtures import commit_like_records, write_jsonl

from hf_starcoder_ft.data.config import DataConfig
from hf_starcoder_ft.data.errors import DataError
from hf_starcoder_ft.data.prepare import load_datasets, main, prepare_data
from hf_starcoder_ft.io_utils import OutputExistsError


def documents(dataset):
    """Split packed rows back into examples: (input ids, target ids) per document."""
    out = []
    for row in dataset:
        positions = row.get("position_ids") or list(range(len(row["input_ids"])))
        starts = [i for i, p in enumerate(positions) if p == 0] + [len(positions)]
        for a, b in zip(starts[:-1], starts[1:], strict=True):
            ids, labels = row["input_ids"][a:b], row["labels"][a:b]
            n_in = sum(1 for label in labels if label == -100)
            assert labels[:n_in] == [-100] * n_in and labels[n_in:] == ids[n_in:]
            out.append((ids[:n_in], ids[n_in:]))
    return out


def record_names(dataset, tokenizer):
    names = []
    for _, target in documents(dataset):
        assert target[-1] == tokenizer.eos_token_id
        names.append(re.match(r"def (\w+)\(", tokenizer.decode(target)).group(1))
    return names


def test_accounting_adds_up_with_every_drop_reason(tmp_path, tokenizer):
    records = commit_like_records(40)
    records += [records[0], {"inputs": "", "targets": "x"}, {"inputs": "a", "targets": ""}]
    records += [{"inputs": "x " * 400, "targets": "y"}, '{"inputs": 1', '{"inputs": "a", "targets": 5}']
    path = write_jsonl(tmp_path / "d.jsonl", records)
    config = DataConfig(train_data=str(path), max_length=256, skip_bad_records=True)
    prepared = prepare_data(config, tokenizer, seed=1, output_dir=tmp_path / "out", progress=False)
    stats = prepared.stats
    totals = stats["totals"]
    assert totals["records_read"] == 46
    assert totals["records_used"] == 40
    assert totals["dropped"] == {
        "malformed_json": 1,
        "not_a_string": 1,
        "duplicate": 1,
        "unassigned": 0,
        "empty_input": 1,
        "empty_target": 1,
        "too_long": 1,
        "target_too_long": 0,
    }
    assert totals["records_read"] == totals["records_used"] + sum(totals["dropped"].values())
    train = prepared.splits["train"]
    assert set(train.column_names) == {"input_ids", "labels", "position_ids"}
    assert sorted(record_names(train, tokenizer)) == sorted(f"r{i}" for i in range(40))
    assert all(len(row) <= 256 for row in train["input_ids"])
    split = stats["splits"]["train"]
    assert split["tokens"] == sum(len(row) for row in train["input_ids"])
    assert split["target_tokens"] == sum(sum(1 for x in row if x != -100) for row in train["labels"])
    assert split["packing_efficiency"] == pytest.approx(split["tokens"] / (len(train) * 256))
    assert (tmp_path / "out" / "stats.json").is_file()
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert "records read 46 = used 40" in summary and "duplicate 1" in summary


def test_exact_example_round_trip(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [{"inputs": "<commit_before>a<commit_msg>", "outputs": "b = 1"}])
    prepared = prepare_data(
        DataConfig(train_data=str(path), max_length=32), tokenizer, 0, tmp_path / "o", progress=False
    )
    row = prepared.splits["train"][0]
    in_ids = tokenizer("<commit_before>a<commit_msg>", add_special_tokens=False)["input_ids"]
    tgt_ids = tokenizer("b = 1", add_special_tokens=False)["input_ids"] + [0]
    assert row["input_ids"] == in_ids + tgt_ids
    assert row["labels"] == [-100] * len(in_ids) + tgt_ids
    assert row["position_ids"] == list(range(len(in_ids) + len(tgt_ids)))


def test_megatron_ranges_give_disjoint_splits(tmp_path, tokenizer):
    write_jsonl(tmp_path / "d.jsonl", commit_like_records(100))
    (tmp_path / "train.txt").write_text('"train: 1.0 0:0.95 d.jsonl"\n')
    (tmp_path / "valid.txt").write_text('"valid: 1.0 0.95:1.0 d.jsonl"\n')
    config = DataConfig(train_data=str(tmp_path / "train.txt"), valid_data=str(tmp_path / "valid.txt"), max_length=256)
    prepared = prepare_data(config, tokenizer, 3, tmp_path / "out", progress=False)
    train = set(record_names(prepared.splits["train"], tokenizer))
    valid = set(record_names(prepared.splits["valid"], tokenizer))
    assert len(train) == 95 and len(valid) == 5
    assert not train & valid  # the mtf loader's bug would put valid's records in train too
    assert train | valid == {f"r{i}" for i in range(100)}
    assert prepared.stats["sources"][0]["used_by"] == {"train": [0, 95], "valid": [95, 100]}


def test_several_validation_groups_become_splits(tmp_path, tokenizer):
    write_jsonl(tmp_path / "a.jsonl", commit_like_records(20, "a"))
    write_jsonl(tmp_path / "b.jsonl", commit_like_records(20, "b"))
    (tmp_path / "valid.txt").write_text('"code: 1 0.5:1 a.jsonl" "docs: 1 0.5:1 b.jsonl"')
    (tmp_path / "train.txt").write_text('"train: 1 0:0.5 a.jsonl, 1 0:0.5 b.jsonl"')
    config = DataConfig(train_data=str(tmp_path / "train.txt"), valid_data=str(tmp_path / "valid.txt"), max_length=256)
    prepared = prepare_data(config, tokenizer, 3, tmp_path / "out", progress=False)
    assert list(prepared.splits) == ["train", "valid_code", "valid_docs"]
    assert {n[0] for n in record_names(prepared.splits["valid_docs"], tokenizer)} == {"b"}


def test_weights_set_the_training_mixture(tmp_path, tokenizer):
    write_jsonl(tmp_path / "a.jsonl", commit_like_records(60, "a"))
    write_jsonl(tmp_path / "b.jsonl", commit_like_records(60, "b"))
    (tmp_path / "mix.yaml").write_text("- {path: a.jsonl, weight: 3}\n- {path: b.jsonl, weight: 1}\n")
    config = DataConfig(train_data=str(tmp_path / "mix.yaml"), max_length=256)
    prepared = prepare_data(config, tokenizer, 5, tmp_path / "out", progress=False)
    names = record_names(prepared.splits["train"], tokenizer)
    by_source = Counter(name[0] for name in names)
    assert by_source == {"a": 90, "b": 30}  # 3:1 of the natural size 120
    assert max(Counter(n for n in names if n[0] == "b").values()) == 1  # b down-sampled without repeats
    assert [s["sampled"] for s in prepared.stats["splits"]["train"]["sources"]] == [90, 30]


def test_unpacked_mode_and_truncation(tmp_path, tokenizer):
    records = commit_like_records(10) + [{"inputs": "x " * 200, "targets": "def long():\n    pass"}]
    path = write_jsonl(tmp_path / "d.jsonl", records)
    config = DataConfig(train_data=str(path), max_length=160, packing=False, truncation="truncate_input")
    prepared = prepare_data(config, tokenizer, 0, tmp_path / "out", progress=False)
    train = prepared.splits["train"]
    assert "position_ids" not in train.column_names and len(train) == 11
    assert prepared.stats["splits"]["train"]["sources"][0]["truncated"] == 1
    assert max(len(r) for r in train["input_ids"]) == 160


def test_same_inputs_reuse_and_any_change_invalidates(tmp_path, tokenizer, tokenizer_json, copy_dir):
    path = write_jsonl(tmp_path / "d.jsonl", commit_like_records(30))
    config = DataConfig(train_data=str(path), max_length=256, data_cache_dir=str(tmp_path / "cache"))
    first = load_datasets(config, tokenizer, seed=1, progress=False)
    again = load_datasets(config, tokenizer, seed=1, progress=False)
    assert again.reused and again.directory == first.directory
    assert again.splits["train"]["input_ids"] == first.splits["train"]["input_ids"]

    def key(cfg, tok=tokenizer, seed=1):
        return load_datasets(cfg, tok, seed=seed, progress=False).directory.name

    base = first.directory.name
    assert key(DataConfig(**{**config.__dict__, "max_length": 200})) != base
    assert key(DataConfig(**{**config.__dict__, "packing": False})) != base
    assert key(DataConfig(**{**config.__dict__, "truncation": "truncate_input"})) != base
    assert key(config, seed=2) != base
    other_tokenizer = __import__("hf_starcoder_ft.tokenizer", fromlist=["x"]).load_tokenizer(tokenizer_json)
    other_tokenizer.add_tokens(["<extra_token>"])
    assert key(config, tok=other_tokenizer) != base
    write_jsonl(path, commit_like_records(31))
    assert key(config) != base


def test_prepared_dir_with_other_tokenizer_is_refused(tmp_path, tokenizer, tokenizer_json):
    from hf_starcoder_ft.tokenizer import load_tokenizer

    path = write_jsonl(tmp_path / "d.jsonl", commit_like_records(5))
    prepare_data(DataConfig(train_data=str(path), max_length=256), tokenizer, 0, tmp_path / "p", progress=False)
    assert len(load_datasets(DataConfig(prepared_data=str(tmp_path / "p")), tokenizer, 0).splits["train"]) > 0
    other = load_tokenizer(tokenizer_json)
    other.add_tokens(["<zzz>"])
    with pytest.raises(DataError, match="prepared with another tokenizer"):
        load_datasets(DataConfig(prepared_data=str(tmp_path / "p")), other, 0)


def test_output_holding_other_data_needs_overwrite(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", commit_like_records(5))
    out = tmp_path / "out"
    prepare_data(DataConfig(train_data=str(path), max_length=256), tokenizer, 0, out, progress=False)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        prepare_data(DataConfig(train_data=str(path), max_length=200), tokenizer, 0, out, progress=False)
    prepared = prepare_data(DataConfig(train_data=str(path), max_length=200), tokenizer, 0, out, True, progress=False)
    assert prepared.stats["config"]["max_length"] == 200


def test_num_proc_gives_identical_output(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", commit_like_records(1500))
    one = prepare_data(DataConfig(train_data=str(path), max_length=256), tokenizer, 0, tmp_path / "a", progress=False)
    two = prepare_data(
        DataConfig(train_data=str(path), max_length=256, num_proc=2), tokenizer, 0, tmp_path / "b", progress=False
    )
    assert one.stats["fingerprint"] == two.stats["fingerprint"]
    assert one.splits["train"].to_dict() == two.splits["train"].to_dict()


def test_the_same_file_anywhere_gives_the_same_split_and_another_seed_does_not(tmp_path, tokenizer):
    """The shuffle that decides which records fall in `0:0.9` vs `0.9:1` is seeded by the run's seed and the file's
    content, not its path: moving or copying the data keeps the train/valid split."""
    records = commit_like_records(60)
    outputs = {}
    for name, seed in (("here", 0), ("elsewhere/deeper", 0), ("other_seed", 1)):
        folder = tmp_path / name
        folder.mkdir(parents=True)
        write_jsonl(folder / "data.jsonl", records)
        (folder / "train.txt").write_text('"train: 1.0 0:0.9 data.jsonl"\n')
        (folder / "valid.txt").write_text('"valid: 1.0 0.9:1.0 data.jsonl"\n')
        config = DataConfig(train_data=str(folder / "train.txt"), valid_data=str(folder / "valid.txt"), max_length=256)
        prepared = prepare_data(config, tokenizer, seed, tmp_path / f"out_{seed}_{len(outputs)}", progress=False)
        outputs[name] = {split: sorted(record_names(prepared.splits[split], tokenizer)) for split in ("train", "valid")}
    assert outputs["here"] == outputs["elsewhere/deeper"]
    assert outputs["here"]["valid"] != outputs["other_seed"]["valid"]
    assert len(outputs["here"]["valid"]) == 6 and not set(outputs["here"]["valid"]) & set(outputs["here"]["train"])


def test_cli_summary_config_file_and_errors(tmp_path, tokenizer_json, capsys):
    path = write_jsonl(tmp_path / "d.jsonl", commit_like_records(12))
    args = ["--train_data", str(path), "--tokenizer", str(tokenizer_json), "--max_length", "256", "--quiet"]
    assert main([*args, "--output_dir", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "records read 12 = used 12" in out and "packing efficiency" in out
    assert main([*args, "--output_dir", str(tmp_path / "out")]) == 0
    assert "reusing it" in capsys.readouterr().out
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["splits"]["train"]["examples"] == 12

    config = tmp_path / "prep.yaml"
    config.write_text(f"train_data: {path}\ntokenizer: {tokenizer_json}\nmax_length: 64\npacking: false\n")
    assert main(["--config", str(config), "--output_dir", str(tmp_path / "o2"), "--max_length", "200"]) == 0
    stats = json.loads((tmp_path / "o2" / "stats.json").read_text())
    assert stats["config"]["max_length"] == 200 and stats["config"]["packing"] is False

    config.write_text(f"train_data: {path}\ntokenizer: {tokenizer_json}\nmax_lenght: 64\n")
    with pytest.raises((SystemExit, ValueError), match="max_lenght"):
        main(["--config", str(config), "--output_dir", str(tmp_path / "o3")])

    bad = write_jsonl(tmp_path / "bad.jsonl", [{"inputs": "a", "targets": "b"}, "{oops"])
    assert (
        main(["--train_data", str(bad), "--tokenizer", str(tokenizer_json), "--output_dir", str(tmp_path / "o4")]) == 1
    )
    err = capsys.readouterr().err
    assert "bad.jsonl:2: malformed JSON" in err and "--skip_bad_records" in err
    assert not (tmp_path / "o4").exists()
