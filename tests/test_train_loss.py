"""StarCoderTrainer's loss: gradients over an accumulated global batch equal those of one big batch and of a
hand-written per-example loss (each document run alone, no packing), for both normalizations; evaluation
metrics equal hand-computed ones; weight decay skips biases and norms; batch-size arithmetic."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hf_starcoder_ft.config import ConfigError, StarCoderTrainingArguments, derive_gradient_accumulation
from hf_starcoder_ft.data.collator import PackedCollator
from hf_starcoder_ft.trainer import StarCoderTrainer, training_flops_per_token

PAD = 4


def _document(rng: torch.Generator, n_input: int, n_target: int) -> tuple[list[int], list[int]]:
    ids = torch.randint(19, 384, (n_input + n_target,), generator=rng).tolist()
    return ids, [-100] * n_input + ids[n_input:]


def _row(rng, shapes) -> dict[str, list[int]]:
    """A packed row of documents with (input length, target length) shapes; positions restart per document."""
    ids, labels, positions = [], [], []
    for n_input, n_target in shapes:
        doc_ids, doc_labels = _document(rng, n_input, n_target)
        ids += doc_ids
        labels += doc_labels
        positions += list(range(len(doc_ids)))
    return {"input_ids": ids, "labels": labels, "position_ids": positions}


@pytest.fixture(scope="module")
def rows():
    rng = torch.Generator().manual_seed(0)
    return [
        _row(rng, [(3, 4), (5, 2), (2, 6)]),
        _row(rng, [(6, 9)]),
        _row(rng, [(4, 1), (1, 3)]),
        _row(rng, [(2, 2), (7, 5), (3, 3), (2, 1)]),
    ]


def _documents(rows):
    for row in rows:
        starts = [i for i, p in enumerate(row["position_ids"]) if p == 0] + [len(row["position_ids"])]
        for begin, end in zip(starts, starts[1:], strict=False):
            yield row["input_ids"][begin:end], row["labels"][begin:end]


def hand_written_loss(model, rows, normalization: str) -> torch.Tensor:
    """Every document alone through the model; cross entropy of each target token given its prefix."""
    total, units = 0.0, 0
    for ids, labels in _documents(rows):
        logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0]
        targets = torch.tensor(labels[1:])
        mask = targets != -100
        if not mask.any():
            continue
        per_token = F.cross_entropy(logits[:-1][mask], targets[mask], reduction="none")
        if normalization == "token":
            total, units = total + per_token.sum(), units + int(mask.sum())
        else:
            total, units = total + per_token.mean(), units + 1
    return total / units


def _make_trainer(model, tmp_path, normalization, per_device=2):
    args = StarCoderTrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=per_device,
        per_device_eval_batch_size=per_device,
        report_to="none",
        use_cpu=True,
        loss_normalization=normalization,
        weight_decay=0.05,
    )
    return StarCoderTrainer(
        model=model, args=args, data_collator=PackedCollator(pad_token_id=PAD), loss_normalization=normalization
    )


def _grads(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


def _accumulate(trainer, model, batches) -> tuple[dict[str, torch.Tensor], float]:
    model.zero_grad(set_to_none=True)
    samples, units = trainer.get_batch_samples(iter(batches), len(batches), torch.device("cpu"))
    logged = sum(float(trainer.training_step(model, batch, units)) for batch in samples)
    return _grads(model), logged


@pytest.mark.parametrize("normalization", ["token", "example"])
def test_accumulated_gradient_equals_one_batch_and_hand_written_loss(tiny_mqa_model_dir, tmp_path, rows, normalization):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_mqa_model_dir, dtype=torch.float32)
    trainer = _make_trainer(model, tmp_path, normalization)
    collate = PackedCollator(pad_token_id=PAD)

    accumulated, logged_accumulated = _accumulate(trainer, model, [collate(rows[:2]), collate(rows[2:])])
    one_batch, logged_one = _accumulate(trainer, model, [collate(rows)])

    model.zero_grad(set_to_none=True)
    reference_loss = hand_written_loss(model, rows, normalization)
    reference_loss.backward()
    reference = _grads(model)

    assert set(accumulated) == set(reference) == set(one_batch)
    for name in reference:
        torch.testing.assert_close(accumulated[name], reference[name], rtol=1e-4, atol=1e-6, msg=name)
        torch.testing.assert_close(one_batch[name], reference[name], rtol=1e-4, atol=1e-6, msg=name)
    # The logged loss (sum over micro-batches) is the global batch's loss.
    assert logged_accumulated == pytest.approx(reference_loss.item(), rel=1e-5)
    assert logged_one == pytest.approx(reference_loss.item(), rel=1e-5)


def test_normalizations_differ_on_uneven_documents(tiny_mqa_model_dir, rows):
    """Guard against the test above passing vacuously: the two losses really are different numbers."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_mqa_model_dir, dtype=torch.float32)
    with torch.no_grad():
        token, example = hand_written_loss(model, rows, "token"), hand_written_loss(model, rows, "example")
    assert abs(token.item() - example.item()) > 1e-4


def test_evaluation_metrics_equal_hand_written(tiny_mqa_model_dir, tmp_path, rows):
    import datasets
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_mqa_model_dir, dtype=torch.float32)
    trainer = _make_trainer(model, tmp_path, "example", per_device=3)  # 4 rows -> a full and a partial batch
    dataset = datasets.Dataset.from_list(rows)
    metrics = trainer.evaluate(dataset)
    with torch.no_grad():
        token = hand_written_loss(model, rows, "token").item()
        example = hand_written_loss(model, rows, "example").item()
    assert metrics["eval_loss"] == pytest.approx(example, rel=1e-5)
    assert metrics["eval_token_loss"] == pytest.approx(token, rel=1e-5)
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(token), rel=1e-5)
    assert metrics["eval_target_tokens"] == sum(sum(1 for x in r["labels"][1:] if x != -100) for r in rows)


def test_weight_decay_skips_biases_and_norms(tiny_mqa_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_mqa_model_dir, dtype=torch.float32)
    trainer = _make_trainer(model, tmp_path, "token")
    optimizer = trainer.create_optimizer()
    decay_of = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    for name, param in model.named_parameters():
        expected = 0.0 if name.endswith(".bias") or ".ln_" in name else 0.05
        assert decay_of[id(param)] == expected, name
    assert decay_of[id(model.transformer.wte.weight)] == 0.05


def test_global_batch_size_derives_accumulation():
    assert derive_gradient_accumulation(128, 1, 64) == 2  # the OctoPack recipe on 64 GPUs
    assert derive_gradient_accumulation(128, 2, 8) == 8
    with pytest.raises(ConfigError, match="not divisible.*3 x world size 2"):
        derive_gradient_accumulation(128, 3, 2)
    with pytest.raises(ConfigError, match="contradicts"):
        derive_gradient_accumulation(128, 1, 8, given_accumulation=4)


def test_training_flops_per_token_counts_matmuls():
    from conftest import tiny_config

    config = tiny_config(multi_query=True)  # n_embd 32, 2 layers, 4 heads, ffn 64, vocab 384
    head_dim = 32 // 4
    block = 32 * (32 + 2 * head_dim) + 32 * 32 + 2 * 32 * 64
    assert training_flops_per_token(config, 100) == 6 * (2 * block + 384 * 32) + 12 * 2 * 32 * 100
