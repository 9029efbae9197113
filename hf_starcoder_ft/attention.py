"""Keep packed documents apart inside the model: the attention inputs for each attention implementation.

A packed row holds several examples back to back; `position_ids` restart at 0 where each one begins. That
restart is the only document boundary the model gets, and on its own it is not enough (SPEC.md section 8):
GPTBigCode does not hand `position_ids` to its attention, and with `use_cache: true` (as StarCoder ships) the
automatic packed-sequence detection is skipped. So we always build the isolation explicitly:

- `sdpa`: a boolean 4-D block-diagonal causal mask (True = may attend).
- `eager`: the same mask as a float 4-D mask (0 where allowed, the dtype minimum elsewhere); eager ignores
  boolean masks.
- `flash_attention_2` / `flash_attention_3`: the batch is flattened to one row and the varlen kernels get
  `cu_seq_lens_q/k` and `max_length_q/k`, which transformers 5 passes through to the attention call.

Row `position_ids = [0 1 2 0 1]` (two documents, of 3 and 2 tokens) allows this attention (rows attend to
columns; `x` = allowed):

    q\\k  0 1 2 3 4
    0    x . . . .
    1    x x . . .
    2    x x x . .
    3    . . . x .
    4    . . . x x

Padding appended by the collator starts its own "document" (positions restart at 0), so real tokens never see
pad tokens and pad tokens never see real ones.
"""

from __future__ import annotations

import torch

FLASH_IMPLEMENTATIONS = ("flash_attention_2", "flash_attention_3")
SUPPORTED_IMPLEMENTATIONS = ("sdpa", "eager", *FLASH_IMPLEMENTATIONS)


def document_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """Number the documents of each row from the restarts of `position_ids`.

    >>> document_ids(torch.tensor([[0, 1, 2, 0, 1]])).tolist()
    [[1, 1, 1, 2, 2]]
    """
    return torch.cumsum((position_ids == 0).to(torch.long), dim=-1)


def block_causal_mask(position_ids: torch.Tensor) -> torch.Tensor:
    """Boolean `[batch, 1, L, L]` mask: token i may attend to token j iff j <= i and both are in one document."""
    docs = document_ids(position_ids)
    length = position_ids.shape[-1]
    same_document = docs[:, :, None] == docs[:, None, :]
    causal = torch.ones(length, length, dtype=torch.bool, device=position_ids.device).tril()
    return (same_document & causal)[:, None, :, :]


def flash_varlen_kwargs(position_ids: torch.Tensor) -> dict[str, torch.Tensor | int]:
    """`cu_seq_lens_q/k` and `max_length_q/k` for the flattened batch (documents in reading order).

    >>> flash_varlen_kwargs(torch.tensor([[0, 1, 2, 0, 1]]))["cu_seq_lens_q"].tolist()
    [0, 3, 5]
    """
    flat = position_ids.reshape(-1)
    starts = torch.nonzero(flat == 0, as_tuple=False).reshape(-1)
    if starts.numel() == 0 or starts[0].item() != 0:
        raise ValueError("position_ids must start every row with 0 (a document start)")
    ends = torch.cat([starts[1:], torch.tensor([flat.numel()], device=flat.device)])
    cu = torch.cat([torch.zeros(1, dtype=torch.int32, device=flat.device), ends.to(torch.int32)])
    max_length = int((ends - starts).max().item())
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": max_length, "max_length_k": max_length}


def document_attention_inputs(
    input_ids: torch.Tensor, position_ids: torch.Tensor, attn_implementation: str
) -> dict[str, torch.Tensor | int]:
    """The keyword arguments for a GPTBigCode forward pass that keep every document to itself.

    Returns `input_ids`, `position_ids` and the mask or varlen arguments; always `use_cache=False` (a KV cache
    built during training is waste, and it also disables transformers' own packed-sequence handling). For the
    flash implementations the batch comes back flattened to shape `[1, batch * L]`; `masked_target_loss` in
    `hf_starcoder_ft.loss` gives the same result on flattened or unflattened tensors.
    """
    if attn_implementation not in SUPPORTED_IMPLEMENTATIONS:
        raise ValueError(
            f"attn_implementation {attn_implementation!r} is not supported for packed training; "
            f"choose one of {', '.join(SUPPORTED_IMPLEMENTATIONS)}"
        )
    if attn_implementation in FLASH_IMPLEMENTATIONS:
        return {
            "input_ids": input_ids.reshape(1, -1),
            "position_ids": position_ids.reshape(1, -1),
            "use_cache": False,
            **flash_varlen_kwargs(position_ids),
        }
    mask = block_causal_mask(position_ids)
    if attn_implementation == "eager":
        float_mask = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
        mask = float_mask.masked_fill_(~mask, torch.finfo(torch.float32).min)
    return {"input_ids": input_ids, "position_ids": position_ids, "attention_mask": mask, "use_cache": False}
