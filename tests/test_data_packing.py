"""Packing: every example exactly once, rows within max_length, rows built exactly from their examples."""

from __future__ import annotations

import random

import numpy as np
import pytest

from hf_starcoder_ft.data.packing import gather_rows, pack_examples


@pytest.mark.parametrize("strategy", ["best_fit", "greedy"])
def test_every_example_packed_once_within_capacity(strategy):
    rng = random.Random(0)
    lengths = [rng.choice([rng.randint(1, 60), rng.randint(100, 512)]) for _ in range(2000)]
    rows = pack_examples(lengths, 512, strategy)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 512 for row in rows)
    if strategy == "greedy":  # stream order is kept
        assert [i for row in rows for i in row] == list(range(len(lengths)))


def test_best_fit_is_tighter_than_greedy():
    rng = random.Random(1)
    lengths = [int(min(2047, rng.lognormvariate(5, 1))) + 1 for _ in range(3000)]
    efficiency = {}
    for strategy in ("best_fit", "greedy"):
        rows = pack_examples(lengths, 2048, strategy)
        efficiency[strategy] = sum(lengths) / (len(rows) * 2048)
    assert efficiency["best_fit"] > 0.97
    assert efficiency["best_fit"] > efficiency["greedy"]


def test_pack_rejects_too_long_and_unknown_strategy():
    with pytest.raises(ValueError, match="example 1 has length 9"):
        pack_examples([3, 9], 8)
    with pytest.raises(ValueError, match="packing strategy"):
        pack_examples([3], 8, "random")


def test_gather_rows_builds_rows_and_positions():
    values = {"input_ids": np.arange(10, 20), "labels": np.arange(20, 30)}
    offsets = np.array([0, 3, 5, 10])  # examples of length 3, 2, 5
    table = gather_rows(values, offsets, [[1, 0], [2]], packed=True).to_pydict()
    assert table["input_ids"] == [[13, 14, 10, 11, 12], [15, 16, 17, 18, 19]]
    assert table["labels"] == [[23, 24, 20, 21, 22], [25, 26, 27, 28, 29]]
    assert table["position_ids"] == [[0, 1, 0, 1, 2], [0, 1, 2, 3, 4]]
    unpacked = gather_rows(values, offsets, [[2], [0]], packed=False).to_pydict()
    assert "position_ids" not in unpacked and unpacked["input_ids"] == [[15, 16, 17, 18, 19], [10, 11, 12]]


@pytest.mark.parametrize("chunk_tokens", [1, 4, 7, 1 << 22])
def test_gather_rows_in_bounded_chunks_gives_the_same_table(monkeypatch, chunk_tokens):
    """The index arithmetic runs GATHER_CHUNK_TOKENS tokens at a time (at least one example per chunk, so an
    example longer than a chunk is still whole); the table must not depend on the chunk size."""
    from hf_starcoder_ft.data import packing

    rng = np.random.default_rng(0)
    example_lengths = rng.integers(1, 12, size=40)
    offsets = np.concatenate([[0], np.cumsum(example_lengths)])
    values = {"input_ids": rng.integers(0, 50000, size=offsets[-1]), "labels": rng.integers(-100, 50000, offsets[-1])}
    order = rng.permutation(40).tolist()
    rows = [order[i : i + 3] for i in range(0, 40, 3)]
    expected_ids = [[int(v) for i in row for v in values["input_ids"][offsets[i] : offsets[i + 1]]] for row in rows]
    expected_positions = [[p for i in row for p in range(example_lengths[i])] for row in rows]
    monkeypatch.setattr(packing, "GATHER_CHUNK_TOKENS", chunk_tokens)
    table = gather_rows(values, offsets, rows, packed=True)
    assert table.column("input_ids").to_pylist() == expected_ids
    assert table.column("position_ids").to_pylist() == expected_positions
    assert table.column("labels").type.value_type == "int32"
