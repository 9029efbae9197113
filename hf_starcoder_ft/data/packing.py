"""Pack whole examples into rows of at most `max_length` tokens, never splitting an example.

    rows = pack_examples(lengths=[5, 3, 4, 2], max_length=8, strategy="best_fit")
    # [[0, 1], [2, 3]]  (example indices per row)

Strategies:
- `best_fit` (default): best-fit decreasing. Examples are taken longest first; each goes into the open row with
  the least room that still fits it, or opens a new row. Rows end up nearly full (>= 0.97 non-pad tokens on
  realistic length mixes), and a seeded shuffle of the rows afterwards removes the length ordering.
- `greedy`: Megatron's `finetune_mtf.py` way. Examples in stream order fill the current row; an example that does
  not fit closes it and starts the next one.

In a packed row the position ids restart at 0 for each example, and the attention inputs built from them
(`hf_starcoder_ft.attention`) keep each example to itself. A row with examples A (3 tokens) and B (2 tokens):

    input_ids     a0 a1 a2 b0 b1
    position_ids   0  1  2  0  1
    attention     A sees only A (causally), B sees only B

Rows are not padded on disk; the collator pads each batch.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from hf_starcoder_ft.data.config import PACKING_STRATEGIES


def pack_examples(lengths: Sequence[int], max_length: int, strategy: str = "best_fit") -> list[list[int]]:
    """Group example indices into rows whose total length is at most `max_length`.

    >>> pack_examples([5, 3, 4, 2], max_length=8, strategy="greedy")
    [[0, 1], [2, 3]]
    >>> pack_examples([6, 5, 2, 3], max_length=8)
    [[0, 2], [1, 3]]
    """
    lengths = [int(n) for n in lengths]
    too_long = [i for i, n in enumerate(lengths) if n > max_length or n <= 0]
    if too_long:
        i = too_long[0]
        raise ValueError(f"example {i} has length {lengths[i]}, outside 1..{max_length}")
    if strategy == "greedy":
        return _pack_greedy(lengths, max_length)
    if strategy == "best_fit":
        return _pack_best_fit(lengths, max_length)
    raise ValueError(f"packing strategy must be one of {PACKING_STRATEGIES}, got {strategy!r}")


def _pack_greedy(lengths: list[int], max_length: int) -> list[list[int]]:
    rows: list[list[int]] = []
    current: list[int] = []
    used = 0
    for index, length in enumerate(lengths):
        if current and used + length > max_length:
            rows.append(current)
            current, used = [], 0
        current.append(index)
        used += length
    if current:
        rows.append(current)
    return rows


def _pack_best_fit(lengths: list[int], max_length: int) -> list[list[int]]:
    # Open rows are bucketed by remaining room; `rooms` is the sorted list of rooms that have a row, at most
    # max_length distinct values, so finding the tightest fit is one bisect.
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    buckets: dict[int, list[int]] = {}
    rooms: list[int] = []
    for index in order:
        length = lengths[index]
        position = bisect.bisect_left(rooms, length)
        if position == len(rooms):
            row = len(rows)
            rows.append([index])
            room = max_length - length
        else:
            old_room = rooms[position]
            bucket = buckets[old_room]
            row = bucket.pop()
            if not bucket:
                del buckets[old_room]
                rooms.pop(position)
            rows[row].append(index)
            room = old_room - length
        if room > 0:
            if room not in buckets:
                buckets[room] = []
                bisect.insort(rooms, room)
            buckets[room].append(row)
    return rows


GATHER_CHUNK_TOKENS = 1 << 22  # index arithmetic of gather_rows runs this many tokens at a time (bounded memory)


def gather_rows(
    token_values: dict[str, np.ndarray], offsets: np.ndarray, rows: list[list[int]], packed: bool
) -> pa.Table:
    """Build the Arrow table of rows from flat per-example token arrays.

    `token_values[name]` holds the tokens of all examples end to end and example i spans
    `offsets[i]:offsets[i+1]`. Each row concatenates its examples' tokens; `position_ids` (packed only) restart at
    0 for each example:

        input_ids [10 11 12 | 13 14 | 15 16 17 18 19], offsets [0, 3, 5, 10], rows [[1, 0], [2]]
        -> input_ids    [[13, 14, 10, 11, 12], [15, 16, 17, 18, 19]]
           position_ids [[ 0,  1,  0,  1,  2], [ 0,  1,  2,  3,  4]]

    Done with numpy index arithmetic, no Python loop over tokens, into int32 arrays that Arrow then wraps without
    a copy; the 64-bit index temporaries cover `GATHER_CHUNK_TOKENS` tokens at a time, so memory is the output plus
    a fixed amount, however large the split.
    """
    example_order = np.fromiter((i for row in rows for i in row), dtype=np.int64)
    examples_per_row = np.fromiter((len(row) for row in rows), dtype=np.int64)
    starts = offsets[:-1][example_order]
    lengths = (offsets[1:] - offsets[:-1])[example_order]
    ends = np.cumsum(lengths)  # where each example ends in the output
    total = int(ends[-1]) if len(ends) else 0
    outputs = {name: np.empty(total, dtype=np.int32) for name in token_values}
    if packed:
        outputs["position_ids"] = np.empty(total, dtype=np.int32)
    first = 0
    while first < len(example_order):
        begin = int(ends[first] - lengths[first])
        last = max(first + 1, int(np.searchsorted(ends, begin + GATHER_CHUNK_TOKENS, side="right")))
        chunk_lengths = lengths[first:last]
        size = int(chunk_lengths.sum())
        within = np.arange(size, dtype=np.int64) - np.repeat(np.cumsum(chunk_lengths) - chunk_lengths, chunk_lengths)
        gather = np.repeat(starts[first:last], chunk_lengths) + within
        for name, values in token_values.items():
            outputs[name][begin : begin + size] = values[gather]
        if packed:
            outputs["position_ids"][begin : begin + size] = within
        first = last
    row_lengths = np.add.reduceat(lengths, np.concatenate([[0], np.cumsum(examples_per_row)[:-1]])) if rows else lengths
    # Arrow's 32-bit list offsets cap a column at 2**31 - 1 tokens; larger splits use 64-bit offsets.
    list_type = pa.LargeListArray if total >= 2**31 else pa.ListArray
    offset_type = np.int64 if total >= 2**31 else np.int32
    row_offsets = pa.array(np.concatenate([[0], np.cumsum(row_lengths)]).astype(offset_type))
    return pa.table({name: list_type.from_arrays(row_offsets, pa.array(values)) for name, values in outputs.items()})
