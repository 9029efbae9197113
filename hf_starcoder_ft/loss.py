"""Target-only loss with two normalizations: `token` (plain mean) and `example` (OctoPack's --norm-target-loss).

Labels are stored unshifted: `labels[t]` is the id at position t when it is a target token, else -100. The
model's logits at position t predict token t+1, so the loss pairs `logits[:, t]` with `labels[:, t+1]`, and
skips every pair that crosses a document boundary (where `position_ids[t+1] == 0`).

- `token`: every target token weighs 1; the sum is divided by the number of target tokens of the whole global
  batch (all micro-batches of a gradient-accumulation step, all data-parallel ranks).
- `example`: every target token of an example weighs 1/T, T being that example's number of target tokens, so
  each example contributes its mean token loss once; the sum is divided by the number of examples (with at least
  one target token) in the global batch.

Both are computed as a *sum* here plus a *count* (`loss_units`); the caller divides by the global count, which
is what makes gradient accumulation and data parallelism exact.

Worked example, one row `position_ids = [0 1 2 0 1 2]`, `labels = [-100 5 6 -100 -100 9]`:
pairs (t -> t+1) 0->1 (target 5), 1->2 (target 6), 2->3 (crosses into document 2: skipped), 3->4 (input),
4->5 (target 9). Document 1 has T=2 and document 2 has T=1, so with per-pair losses l5, l6, l9:
`token` sum = l5 + l6 + l9, units = 3; `example` sum = (l5 + l6) / 2 + l9, units = 2.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from hf_starcoder_ft.attention import document_ids

LossNormalization = Literal["token", "example"]
LOSS_NORMALIZATIONS = ("token", "example")
IGNORE_INDEX = -100


def shifted_targets(labels: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """Labels aligned with the logits that predict them (`[batch, L-1]`), -100 across document boundaries."""
    targets = labels[:, 1:].clone()
    targets[position_ids[:, 1:] == 0] = IGNORE_INDEX
    return targets


def target_token_weights(labels: torch.Tensor, position_ids: torch.Tensor, normalization: str) -> torch.Tensor:
    """Per-pair weights `[batch, L-1]`: 1 per target token (`token`) or 1/T of its example (`example`)."""
    if normalization not in LOSS_NORMALIZATIONS:
        raise ValueError(f"loss normalization must be one of {LOSS_NORMALIZATIONS}, got {normalization!r}")
    targets = shifted_targets(labels, position_ids)
    is_target = (targets != IGNORE_INDEX).to(torch.float32)
    if normalization == "token":
        return is_target
    docs = document_ids(position_ids)[:, 1:]
    # Count target tokens per (row, document) with a scatter over a flattened index.
    n_docs = int(docs.max().item()) + 1 if docs.numel() else 1
    flat_index = docs + torch.arange(docs.shape[0], device=docs.device)[:, None] * n_docs
    counts = torch.zeros(docs.shape[0] * n_docs, device=docs.device).scatter_add_(
        0, flat_index.reshape(-1), is_target.reshape(-1)
    )
    per_token_count = counts[flat_index]
    return torch.where(is_target > 0, 1.0 / per_token_count.clamp(min=1.0), torch.zeros_like(is_target))


def loss_units(labels: torch.Tensor, position_ids: torch.Tensor, normalization: str) -> int:
    """What the summed loss is divided by: target tokens (`token`) or examples with a target (`example`)."""
    weights = target_token_weights(labels, position_ids, normalization)
    return int(round(weights.sum().item()))


def masked_target_loss(
    logits: torch.Tensor, labels: torch.Tensor, position_ids: torch.Tensor, normalization: str = "token"
) -> torch.Tensor:
    """The weighted sum of per-token cross entropies over target tokens (divide by the global `loss_units`).

    Works on `[batch, L, vocab]` logits or on the flattened `[1, batch*L, vocab]` ones of the flash path
    (rows start with position 0, so flattening adds no pair that is not skipped).
    """
    if labels.shape != position_ids.shape or logits.shape[:2] != labels.shape:
        raise ValueError(
            f"shape mismatch: logits {tuple(logits.shape)}, labels {tuple(labels.shape)}, "
            f"position_ids {tuple(position_ids.shape)}"
        )
    weights = target_token_weights(labels, position_ids, normalization)
    targets = shifted_targets(labels, position_ids)
    per_token = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    )
    return (per_token * weights.reshape(-1)).sum()
