"""Tokenize `(inputs, targets)` into `{"input_ids", "labels"}`: the one place the loss mask is applied.

Inputs and targets are tokenized separately (as Megatron's two preprocessing passes did), with no BOS/EOS
added, and the ids are concatenated. Special-token strings written in the text (`<commit_before>`,
`<|endoftext|>`, ...) become their special ids. The target ends with EOS: appended when the target text does
not already end with it, never twice. Labels are -100 on every input position and equal to the ids on every
target position (EOS included: it is supervised).

Worked example with StarCoder ids (`<commit_before>`=15, `<commit_msg>`=16, `<commit_after>`=17, EOS=0), and
pretend ids x=87, y=88:

    inputs  = "<commit_before>x<commit_msg>"  -> [15, 87, 16]
    targets = "<commit_after>y"               -> [17, 88] + [0]
    input_ids = [15, 87, 16, 17, 88, 0]
    labels    = [-100, -100, -100, 17, 88, 0]

Examples that cannot be used are not returned as rows but given a `drop_reason`:
`empty_input`, `empty_target`, `too_long` (input + target > max_length with truncation 'skip'), or
`target_too_long` (with 'truncate_input', when not even one input token fits beside the whole target).
With 'truncate_input', inputs lose tokens from the left; such examples are counted as `truncated`.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pyarrow as pa

IGNORE_INDEX = -100
DROP_REASONS = ("empty_input", "empty_target", "too_long", "target_too_long")


def encode_texts(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text with no special tokens added (the fast backend, batched).

    `encode_batch_fast` (tokenizers >= 0.21) gives the same ids without computing character offsets, which we
    never use; older versions fall back to `encode_batch`.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
        return [encoding.ids for encoding in encode(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def fit_example(
    input_ids: list[int], target_ids: list[int], eos_id: int, max_length: int, truncation: str
) -> tuple[list[int], list[int], str, bool]:
    """Apply the rules to one example: `(input ids, target ids ending in EOS, drop_reason or "", truncated)`.

    >>> fit_example([15, 87, 16], [17, 88, 0], eos_id=0, max_length=8, truncation="skip")
    ([15, 87, 16], [17, 88, 0], '', False)
    """
    if not input_ids:
        return [], [], "empty_input", False
    content = target_ids[:-1] if target_ids and target_ids[-1] == eos_id else target_ids
    if not content:
        return [], [], "empty_target", False
    target_ids = content + [eos_id]
    if len(input_ids) + len(target_ids) <= max_length:
        return input_ids, target_ids, "", False
    if truncation == "skip":
        return [], [], "too_long", False
    room = max_length - len(target_ids)
    if room < 1:
        return [], [], "target_too_long", False
    return input_ids[-room:], target_ids, "", True


def build_example(
    input_ids: list[int], target_ids: list[int], eos_id: int, max_length: int, truncation: str
) -> tuple[list[int], list[int], str, bool]:
    """Concatenate one example and mask its inputs: `(ids, labels, drop_reason or "", truncated)`.

    >>> build_example([15, 87, 16], [17, 88], eos_id=0, max_length=8, truncation="skip")
    ([15, 87, 16, 17, 88, 0], [-100, -100, -100, 17, 88, 0], '', False)
    >>> build_example([15, 87, 16], [17, 88], eos_id=0, max_length=5, truncation="truncate_input")
    ([87, 16, 17, 88, 0], [-100, -100, 17, 88, 0], '', True)
    """
    inputs, targets, reason, truncated = fit_example(input_ids, target_ids, eos_id, max_length, truncation)
    return inputs + targets, [IGNORE_INDEX] * len(inputs) + targets, reason, truncated


def tokenize_batch(batch: dict[str, list[Any]], tokenizer, max_length: int, truncation: str) -> pa.Table:
    """`datasets.map(batched=True)` function: columns `inputs`, `targets` -> an Arrow table with `input_ids`,
    `labels` (int32 lists), `length`, `num_target_tokens`, `drop_reason` and `truncated`.

    Dropped examples keep empty id lists. The rows are built as flat arrays (no per-token Python work beyond
    one pass to gather the ids), which keeps `prepare` close to the tokenizer's own speed.
    """
    eos_id = tokenizer.eos_token_id
    input_ids = encode_texts(tokenizer, batch["inputs"])
    target_ids = encode_texts(tokenizer, batch["targets"])
    pieces: list[list[int]] = []
    input_lengths, target_lengths, reasons, truncated = [], [], [], []
    for inputs, targets in zip(input_ids, target_ids, strict=True):
        inputs, targets, reason, cut = fit_example(inputs, targets, eos_id, max_length, truncation)
        pieces += (inputs, targets)
        input_lengths.append(len(inputs))
        target_lengths.append(len(targets))
        reasons.append(reason)
        truncated.append(cut)
    n_in = np.asarray(input_lengths, dtype=np.int64)
    n_tgt = np.asarray(target_lengths, dtype=np.int64)
    lengths = n_in + n_tgt
    total = int(lengths.sum())
    ids = np.fromiter(itertools.chain.from_iterable(pieces), dtype=np.int32, count=total)
    labels = ids.copy()
    # Input positions: within each example, the first n_in tokens.
    example_start = np.repeat(np.cumsum(lengths) - lengths, lengths)
    labels[(np.arange(total) - example_start) < np.repeat(n_in, lengths)] = IGNORE_INDEX
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    return pa.table(
        {
            "input_ids": pa.ListArray.from_arrays(offsets, pa.array(ids)),
            "labels": pa.ListArray.from_arrays(offsets, pa.array(labels)),
            "length": pa.array(lengths),
            "num_target_tokens": pa.array(n_tgt),
            "drop_reason": pa.array(reasons, type=pa.string()),
            "truncated": pa.array(truncated, type=pa.bool_()),
        }
    )
