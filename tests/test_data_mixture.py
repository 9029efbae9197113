"""Data specs (Megatron data-path files, YAML mixtures), disjoint ranges and weighted mixing."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from hf_starcoder_ft.data.errors import DataError
from hf_starcoder_ft.data.mixture import SourceSpec, check_disjoint, mix_by_weight, parse_data_spec


def test_single_jsonl_is_one_full_source(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("{}\n")
    assert parse_data_spec(path, "train") == {"train": [SourceSpec(path=path)]}


def test_megatron_data_path_file(tmp_path):
    spec = tmp_path / "valid_paths.txt.tmp"
    spec.write_text('"valid1: 1.0 0.95:1.0 a.jsonl, 2 0.9:1 /abs/b.jsonl"\n"valid2: 0.5 0:0.1 c.jsonl"\n')
    groups = parse_data_spec(spec, "valid")
    assert groups == {
        "valid1": [
            SourceSpec(path=tmp_path / "a.jsonl", weight=1.0, start=0.95, end=1.0),
            SourceSpec(path=Path("/abs/b.jsonl"), weight=2.0, start=0.9, end=1.0),
        ],
        "valid2": [SourceSpec(path=tmp_path / "c.jsonl", weight=0.5, start=0.0, end=0.1)],
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('"train 1.0 0:1 a.jsonl"', r"paths.txt:1: bad data-path group"),
        ('\n"train: 1.0 0-1 a.jsonl"', r"paths.txt:2: bad weight or range"),
        ('"train: 1.0 a.jsonl"', r"paths.txt:1: bad source"),
        ('"train: 1.0 0.9:0.1 a.jsonl"', r"paths.txt:1: .*0 <= start < end <= 1"),
        ('"train: 0 0:1 a.jsonl"', r"paths.txt:1: .*weight must be > 0"),
        ('"train: 1.0 0:1 a.jsonl', r"paths.txt: cannot split"),
        ("", r"paths.txt: no data-path group"),
    ],
)
def test_bad_data_path_lines(tmp_path, text, message):
    spec = tmp_path / "paths.txt"
    spec.write_text(text)
    with pytest.raises(DataError, match=message):
        parse_data_spec(spec, "train")


def test_yaml_mixture_forms_and_errors(tmp_path):
    spec = tmp_path / "mix.yaml"
    spec.write_text("- {path: a.jsonl, weight: 3, end: 0.9}\n- {path: b.jsonl}\n")
    assert parse_data_spec(spec, "train") == {
        "train": [
            SourceSpec(path=tmp_path / "a.jsonl", weight=3.0, start=0.0, end=0.9),
            SourceSpec(path=tmp_path / "b.jsonl"),
        ]
    }
    spec.write_text("- {path: a.jsonl, wieght: 3}\n")
    with pytest.raises(DataError, match=r"mix.yaml: train\[0\]: unknown key\(s\) \['wieght'\]"):
        parse_data_spec(spec, "train")
    spec.write_text("- {weight: 3}\n")
    with pytest.raises(DataError, match="missing key 'path'"):
        parse_data_spec(spec, "train")


def test_overlapping_ranges_of_one_source_are_refused(tmp_path):
    a = tmp_path / "a.jsonl"
    ok = {"train": [SourceSpec(a, 1, 0, 0.95)], "valid": [SourceSpec(a, 1, 0.95, 1.0)]}
    check_disjoint(ok)
    bad = {"train": [SourceSpec(a, 1, 0, 0.95)], "valid": [SourceSpec(a, 1, 0.9, 1.0)]}
    with pytest.raises(DataError, match="'train' .*and 'valid' .*overlap"):
        check_disjoint(bad)


def test_mix_by_weight_proportions_and_determinism():
    counts, weights = [1000, 300, 50], [0.5, 0.3, 0.2]
    stream = mix_by_weight(counts, weights, seed=7)
    assert stream == mix_by_weight(counts, weights, seed=7)
    assert stream != mix_by_weight(counts, weights, seed=8)
    total = sum(counts)
    per_source = Counter(s for s, _ in stream)
    for source, weight in enumerate(weights):
        assert per_source[source] == round(weight * total)
    # down-sampled source: no example twice; up-sampled source: every example at least floor(k/n) times
    source0 = Counter(j for s, j in stream if s == 0)
    assert max(source0.values()) == 1
    source2 = Counter(j for s, j in stream if s == 2)
    assert len(source2) == 50 and min(source2.values()) >= round(0.2 * total) // 50
    # shuffled: the sources are interleaved, not in blocks
    assert {s for s, _ in stream[:100]} == {0, 1, 2}


def test_mix_single_source_keeps_every_example_once():
    assert sorted(mix_by_weight([5], [0.3], seed=1)) == [(0, j) for j in range(5)]
