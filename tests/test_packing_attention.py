"""Packed rows give the logits of each example alone (use_cache true, sdpa and eager), and the target-only loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _data_fixtures import commit_like_records, write_jsonl
from transformers import AutoModelForCausalLM

from hf_starcoder_ft import check_packing
from hf_starcoder_ft.attention import block_causal_mask, document_attention_inputs, flash_varlen_kwargs
from hf_starcoder_ft.data.collator import PackedCollator
from hf_starcoder_ft.data.config import DataConfig
from hf_starcoder_ft.data.prepare import prepare_data
from hf_starcoder_ft.loss import loss_units, masked_target_loss


def packed_batch():
    # two rows: [doc 5 tokens | doc 3 tokens | doc 4 tokens] and [doc 6 tokens], collated with padding
    torch.manual_seed(0)
    docs = [[torch.randint(19, 384, (n,)).tolist() for n in (5, 3, 4)], [torch.randint(19, 384, (6,)).tolist()]]
    features = []
    for row in docs:
        ids = [t for doc in row for t in doc]
        positions = [p for doc in row for p in range(len(doc))]
        features.append({"input_ids": ids, "labels": ids, "position_ids": positions})
    return docs, PackedCollator(pad_token_id=4)(features)


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_packed_logits_equal_alone_with_use_cache_true(tiny_model_dir, attn_implementation):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=attn_implementation).eval()
    assert model.config.use_cache is True  # as StarCoder ships it: the setting that breaks naive packing
    docs, batch = packed_batch()
    with torch.no_grad():
        packed = model(
            **document_attention_inputs(batch["input_ids"], batch["position_ids"], attn_implementation)
        ).logits
        naive = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        worst = naive_worst = 0.0
        for row, row_docs in enumerate(docs):
            start = 0
            for doc in row_docs:
                alone = model(input_ids=torch.tensor([doc])).logits[0]
                end = start + len(doc)
                worst = max(worst, (alone - packed[row, start:end]).abs().max().item())
                naive_worst = max(naive_worst, (alone - naive[row, start:end]).abs().max().item())
                start = end
    assert worst < 1e-5
    assert naive_worst > 1e-3  # the trap is real, so the check above has teeth


def test_block_causal_mask_and_varlen_kwargs():
    mask = block_causal_mask(torch.tensor([[0, 1, 2, 0, 1]]))[0, 0].int().tolist()
    assert mask == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 1, 1]]
    kwargs = flash_varlen_kwargs(torch.tensor([[0, 1, 2, 0, 1], [0, 1, 2, 3, 0]]))
    assert kwargs["cu_seq_lens_q"].tolist() == [0, 3, 5, 9, 10] and kwargs["max_length_q"] == 4
    flat = document_attention_inputs(
        torch.zeros(2, 5, dtype=torch.long), torch.tensor([[0, 1, 2, 0, 1]] * 2), "flash_attention_2"
    )
    assert flat["input_ids"].shape == (1, 10) and flat["use_cache"] is False
    eager = document_attention_inputs(torch.zeros(1, 5, dtype=torch.long), torch.tensor([[0, 1, 2, 0, 1]]), "eager")
    assert eager["attention_mask"].dtype == torch.float32 and eager["attention_mask"][0, 0, 3, 2] < -1e30
    with pytest.raises(ValueError, match="not supported"):
        document_attention_inputs(torch.zeros(1, 2, dtype=torch.long), torch.tensor([[0, 1]]), "flex_attention")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA and flash-attn")
def test_flash_attention_packed_logits_equal_alone(tiny_mqa_model_dir):
    pytest.importorskip("flash_attn")
    model = (
        AutoModelForCausalLM.from_pretrained(
            tiny_mqa_model_dir, attn_implementation="flash_attention_2", dtype=torch.bfloat16
        )
        .cuda()
        .eval()
    )
    docs, batch = packed_batch()
    kwargs = document_attention_inputs(batch["input_ids"].cuda(), batch["position_ids"].cuda(), "flash_attention_2")
    with torch.no_grad():
        packed = model(**kwargs).logits.reshape(*batch["input_ids"].shape, -1)
        start = 0
        for doc in docs[0]:
            alone = model(input_ids=torch.tensor([doc]).cuda()).logits[0]
            assert (alone.float() - packed[0, start : start + len(doc)].float()).abs().max().item() < 5e-2
            start += len(doc)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_cuda_bf16_packed_logits_equal_alone(tiny_mqa_model_dir, attn_implementation):
    """The CUDA kernels (sdpa picks memory-efficient or math with a boolean 4-D mask) in bf16, as training runs."""
    model = (
        AutoModelForCausalLM.from_pretrained(
            tiny_mqa_model_dir, attn_implementation=attn_implementation, dtype=torch.bfloat16
        )
        .cuda()
        .eval()
    )
    docs, batch = packed_batch()
    inputs = document_attention_inputs(batch["input_ids"].cuda(), batch["position_ids"].cuda(), attn_implementation)
    with torch.no_grad():
        packed = model(**inputs).logits.float()
        for row, row_docs in enumerate(docs):
            start = 0
            for doc in row_docs:
                alone = model(input_ids=torch.tensor([doc]).cuda()).logits[0].float()
                assert (alone - packed[row, start : start + len(doc)]).abs().max().item() < 5e-2
                start += len(doc)


def test_loss_matches_hand_computation_for_both_normalizations():
    torch.manual_seed(0)
    logits = torch.randn(1, 6, 11)
    labels = torch.tensor([[-100, 5, 6, -100, -100, 9]])
    positions = torch.tensor([[0, 1, 2, 0, 1, 2]])

    def ce(t, target):
        return -F.log_softmax(logits[0, t], dim=-1)[target].item()

    l5, l6, l9 = ce(0, 5), ce(1, 6), ce(4, 9)  # pair 2->3 crosses into document 2 and is skipped
    assert masked_target_loss(logits, labels, positions, "token").item() == pytest.approx(l5 + l6 + l9, rel=1e-6)
    assert loss_units(labels, positions, "token") == 3
    assert masked_target_loss(logits, labels, positions, "example").item() == pytest.approx(
        (l5 + l6) / 2 + l9, rel=1e-6
    )
    assert loss_units(labels, positions, "example") == 2
    # a cross-boundary target is never scored even if labelled: doc 2 starting with a target token
    labels_b = torch.tensor([[-100, 5, 6, 7, -100, 9]])
    assert masked_target_loss(logits, labels_b, positions, "token").item() == pytest.approx(l5 + l6 + l9, rel=1e-6)


def test_loss_is_the_same_flattened_and_batched():
    torch.manual_seed(1)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[-100, 1, 2, -100, 3], [-100, -100, 4, 5, 6]])
    positions = torch.tensor([[0, 1, 2, 0, 1], [0, 1, 2, 3, 4]])
    for norm in ("token", "example"):
        batched = masked_target_loss(logits, labels, positions, norm)
        flat = masked_target_loss(logits.reshape(1, 10, 7), labels.reshape(1, 10), positions.reshape(1, 10), norm)
        assert batched.item() == pytest.approx(flat.item(), rel=1e-6)
    assert loss_units(labels, positions, "example") == 3
    assert loss_units(labels, positions, "token") == 6


def test_collator_pads_as_its_own_document():
    features = [
        {"input_ids": [7, 8, 9], "labels": [-100, 8, 9], "position_ids": [0, 1, 0]},
        {"input_ids": [5], "labels": [-100]},
    ]
    batch = PackedCollator(pad_token_id=4, pad_to_multiple_of=4)(features)
    assert batch["input_ids"].tolist() == [[7, 8, 9, 4], [5, 4, 4, 4]]
    assert batch["labels"].tolist() == [[-100, 8, 9, -100], [-100, -100, -100, -100]]
    assert batch["position_ids"].tolist() == [[0, 1, 0, 0], [0, 0, 1, 2]]
    with pytest.raises(ValueError, match="feature lengths differ"):
        PackedCollator(4)([{"input_ids": [1, 2], "labels": [1]}])


def test_check_packing_command_passes_and_catches_leaks(tmp_path, tiny_model_dir, tokenizer, capsys, monkeypatch):
    path = write_jsonl(tmp_path / "d.jsonl", commit_like_records(30))
    prepare_data(DataConfig(train_data=str(path), max_length=256), tokenizer, 0, tmp_path / "data", progress=False)
    args = ["--model", str(tiny_model_dir), "--data", str(tmp_path / "data"), "--rows", "2"]
    assert check_packing.main(args) == 0
    out = capsys.readouterr().out
    assert "sdpa" in out and "eager" in out and "ok" in out

    def leaky(input_ids, position_ids, attn_implementation):  # what naive packing does
        return {"input_ids": input_ids, "position_ids": position_ids}

    monkeypatch.setattr(check_packing, "document_attention_inputs", leaky)
    assert check_packing.main([*args, "--attn_implementations", "sdpa"]) == 1
    assert "FAIL" in capsys.readouterr().out
