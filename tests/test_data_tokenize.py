"""Exact label masks: inputs -100, targets supervised, EOS appended once, special tokens as their ids."""

from __future__ import annotations

import pytest

from hf_starcoder_ft.data.tokenize import build_example, encode_texts, tokenize_batch


def test_build_example_masks_inputs_and_appends_eos():
    ids, labels, reason, truncated = build_example([15, 87, 16], [17, 88], eos_id=0, max_length=8, truncation="skip")
    assert ids == [15, 87, 16, 17, 88, 0]
    assert labels == [-100, -100, -100, 17, 88, 0]
    assert (reason, truncated) == ("", False)


def test_build_example_never_doubles_eos():
    ids, labels, _, _ = build_example([5], [9, 0], eos_id=0, max_length=8, truncation="skip")
    assert ids == [5, 9, 0] and labels == [-100, 9, 0]


@pytest.mark.parametrize(
    ("inputs", "targets", "reason"),
    [([], [9], "empty_input"), ([5], [], "empty_target"), ([5], [0], "empty_target")],
)
def test_build_example_rejects_empty(inputs, targets, reason):
    assert build_example(inputs, targets, eos_id=0, max_length=8, truncation="skip")[2] == reason


def test_too_long_skipped_or_input_truncated_from_left():
    assert build_example([1, 2, 3, 4], [7, 8], 0, max_length=6, truncation="skip")[2] == "too_long"
    # exactly max_length fits
    assert build_example([1, 2, 3], [7, 8], 0, max_length=6, truncation="skip")[2] == ""
    ids, labels, reason, truncated = build_example([1, 2, 3, 4], [7, 8], 0, max_length=5, truncation="truncate_input")
    assert (ids, labels, reason, truncated) == ([3, 4, 7, 8, 0], [-100, -100, 7, 8, 0], "", True)
    # the whole target (with EOS) must fit beside at least one input token
    assert build_example([1], [7, 8, 9], 0, max_length=4, truncation="truncate_input")[2] == "target_too_long"


def test_tokenize_batch_with_real_tokenizer(tokenizer):
    batch = {
        "inputs": ["<commit_before>x = 1<commit_msg>Fix<commit_after>", ""],
        "targets": ["x = 2<|endoftext|>", "y"],
    }
    out = tokenize_batch(batch, tokenizer, max_length=64, truncation="skip").to_pydict()
    inputs_ids = encode_texts(tokenizer, [batch["inputs"][0]])[0]
    target_ids = tokenizer("x = 2", add_special_tokens=False)["input_ids"]
    # separate tokenization, special strings -> special ids, EOS (id 0) ends the target exactly once
    assert inputs_ids[0] == 15 and 16 in inputs_ids and inputs_ids[-1] == 17
    assert out["input_ids"][0] == inputs_ids + target_ids + [0]
    assert out["labels"][0] == [-100] * len(inputs_ids) + target_ids + [0]
    assert out["num_target_tokens"][0] == len(target_ids) + 1
    assert out["drop_reason"] == ["", "empty_input"]
    assert out["input_ids"][1] == [] and out["length"] == [len(out["input_ids"][0]), 0]


def test_no_bos_added(tokenizer):
    ids = encode_texts(tokenizer, ["def f"])[0]
    assert ids == tokenizer("def f", add_special_tokens=False)["input_ids"]
    assert 0 not in ids
