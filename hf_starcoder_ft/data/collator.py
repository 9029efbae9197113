"""Batch packed (or unpacked) examples into tensors. The collator pads; it never rebuilds labels.

Input features hold `input_ids` and `labels` (the loss mask was applied once, at tokenization) and, for
packed rows, `position_ids` that restart at 0 for each example. Unpacked features get `0..n-1`.

Padding goes on the right with `pad_token_id` (StarCoder's `<fim_pad>`, id 4), labels -100, and positions that
restart at 0, so the padding is a document of its own that no real token can attend to (see
`hf_starcoder_ft.attention`). Worked example with pad id 4:

    features = [{"input_ids": [7, 8, 9], "labels": [-100, 8, 9], "position_ids": [0, 1, 0]},
                {"input_ids": [5],       "labels": [-100]}]
    batch["input_ids"]    = [[7, 8, 9], [5, 4, 4]]
    batch["labels"]       = [[-100, 8, 9], [-100, -100, -100]]
    batch["position_ids"] = [[0, 1, 0], [0, 0, 1]]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

IGNORE_INDEX = -100


@dataclass
class PackedCollator:
    """Pad a list of examples to the longest (rounded up to `pad_to_multiple_of`) and stack them."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("cannot collate an empty batch")
        longest = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            longest = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch_ids, batch_labels, batch_positions = [], [], []
        for feature in features:
            ids = list(feature["input_ids"])
            labels = list(feature["labels"])
            positions = list(feature["position_ids"]) if "position_ids" in feature else list(range(len(ids)))
            if not (len(ids) == len(labels) == len(positions)):
                raise ValueError(
                    f"feature lengths differ: input_ids {len(ids)}, labels {len(labels)}, position_ids {len(positions)}"
                )
            pad = longest - len(ids)
            batch_ids.append(ids + [self.pad_token_id] * pad)
            batch_labels.append(labels + [IGNORE_INDEX] * pad)
            batch_positions.append(positions + list(range(pad)))
        return {
            "input_ids": torch.tensor(batch_ids, dtype=torch.long),
            "labels": torch.tensor(batch_labels, dtype=torch.long),
            "position_ids": torch.tensor(batch_positions, dtype=torch.long),
        }
