"""The real launcher: `accelerate launch` with DeepSpeed ZeRO-3 on 2 CPU processes (launch/zero3_cpu_2proc.yaml).

Three launches (each tens of seconds on a small CPU): a full fine-tune that checkpoints halfway, its resume from
that checkpoint, and a LoRA run. The full run is checked against a one-process run on the same data with
4 accumulation steps: same global batches, so the same loss at every step and the same final weights. That
single comparison shows that the ranks read different data, that the loss is normalized over the global batch
across ranks, and that the model saved under ZeRO-3 is the trained one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch
from _train_fixtures import (  # noqa: F401
    addition_data_fixture,
    base_args,
    eval_entries,
    fingerprints,
    launch,
    launch_command,
    load_weights,
    step_losses,
    train_model_dir_fixture,
)

from hf_starcoder_ft.train import main

REPO_ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def zero3_run(train_model_dir, addition_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("zero3") / "run"
    result = launch(base_args(train_model_dir, addition_data, out, log_batch_fingerprints="true"))
    assert "global batch 4 = 1 per device x 2 accumulation x 2 processes" in result.stdout
    return out


@pytest.fixture(scope="module")
def single_process_run(train_model_dir, addition_data, tmp_path_factory):
    """The same global batches in one process: 1 row per micro-batch, 4 accumulation steps."""
    out = tmp_path_factory.mktemp("single") / "run"
    assert main(base_args(train_model_dir, addition_data, out, log_batch_fingerprints="true")) == 0
    return out


@pytest.fixture(scope="module")
def zero3_resumed(zero3_run, train_model_dir, addition_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("zero3_resumed") / "run"
    argv = base_args(train_model_dir, addition_data, out, resume_from_checkpoint=zero3_run / "checkpoint-3")
    result = launch(argv)
    assert "resuming from" in result.stdout
    return out


@pytest.fixture(scope="module")
def lora_run(train_model_dir, addition_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "run"
    argv = base_args(train_model_dir, addition_data, out, max_steps=3, eval_steps=3, save_steps=3, learning_rate=0.01)
    launch(argv + ["--use_lora", "--lora_r", "4", "--lora_alpha", "8"])
    return out


def test_ranks_read_different_rows_which_together_are_the_global_batch(zero3_run, single_process_run):
    distributed, single = fingerprints(zero3_run), fingerprints(single_process_run)
    assert {r["rank"] for r in distributed} == {0, 1}
    for step in range(1, 7):
        by_rank = {
            rank: [row for r in distributed if r["step"] == step and r["rank"] == rank for row in r["rows"]]
            for rank in (0, 1)
        }
        assert len(by_rank[0]) == len(by_rank[1]) == 2  # 2 micro-batches of 1 row per rank
        assert not set(by_rank[0]) & set(by_rank[1]), f"step {step}: both ranks trained on the same row"
        expected = sorted(row for r in single if r["step"] == step for row in r["rows"])
        assert sorted(by_rank[0] + by_rank[1]) == expected
    all_rows = [row for r in distributed for row in r["rows"]]
    assert len(all_rows) == len(set(all_rows)) == 24  # 6 steps x 4 rows, all different (no epoch wrapped)


def test_zero3_losses_and_weights_equal_the_single_process_run(zero3_run, single_process_run):
    distributed, single = step_losses(zero3_run), step_losses(single_process_run)
    assert sorted(distributed) == [1, 2, 3, 4, 5, 6]
    for step in distributed:
        assert distributed[step] == pytest.approx(single[step], rel=1e-5, abs=1e-6), step
    for step, entry in eval_entries(zero3_run).items():
        assert entry["eval_loss"] == pytest.approx(eval_entries(single_process_run)[step]["eval_loss"], rel=1e-5)
    zero3_weights, single_weights = load_weights(zero3_run), load_weights(single_process_run)
    assert zero3_weights.keys() == single_weights.keys()
    for name, tensor in zero3_weights.items():
        torch.testing.assert_close(tensor, single_weights[name], rtol=1e-4, atol=2e-5, msg=name)


def test_loss_falls_on_the_toy_task(zero3_run):
    losses = step_losses(zero3_run)
    assert losses[6] < losses[1] - 0.2
    evals = eval_entries(zero3_run)
    assert evals[6]["eval_loss"] < evals[3]["eval_loss"]


def test_saved_model_loads_and_is_the_trained_one(zero3_run, train_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(zero3_run)
    assert model.config.use_cache is True
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    saved, start = load_weights(zero3_run), load_weights(train_model_dir)
    for name, tensor in model.state_dict().items():
        key = "transformer.wte.weight" if name == "lm_head.weight" else name
        assert torch.equal(tensor, saved[key]), name
        assert tensor.numel() > 0, f"{name} saved empty (ZeRO-3 partition placeholder)"
    assert sum(not torch.equal(saved[k], start[k]) for k in saved) == len(saved)  # every tensor trained
    checkpoint = load_weights(zero3_run / "checkpoint-3")
    assert checkpoint.keys() == saved.keys() and all(t.numel() > 0 for t in checkpoint.values())


def test_zero3_resume_reproduces_the_uninterrupted_run(zero3_run, zero3_resumed):
    assert step_losses(zero3_resumed) == step_losses(zero3_run)  # exact, every step
    straight, resumed = load_weights(zero3_run), load_weights(zero3_resumed)
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    state = json.loads((zero3_resumed / "trainer_state.json").read_text())
    assert state["global_step"] == 6


def test_lora_adapter_is_saved_nonempty_and_merges_exactly(lora_run, train_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from hf_starcoder_ft.model import merge_lora_main

    assert not (lora_run / "model.safetensors").exists()
    adapter = load_weights(lora_run, "adapter_model.safetensors")
    assert len(adapter) == 2 * 2 * 4  # 2 layers x (c_attn, attn.c_proj, c_fc, mlp.c_proj) x (A, B)
    for name, tensor in adapter.items():
        assert tensor.numel() > 0 and 4 in tensor.shape, name
        if "lora_B" in name:
            assert tensor.abs().max() > 0, f"{name} is still zero: the adapter did not train (or saved empty)"

    merged_dir = tmp_path / "merged"
    assert merge_lora_main(["--adapter", str(lora_run), "--output_dir", str(merged_dir), "--dtype", "float32"]) == 0
    base = AutoModelForCausalLM.from_pretrained(train_model_dir, dtype=torch.float32)
    with_adapter = PeftModel.from_pretrained(base, str(lora_run)).eval()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    plain = AutoModelForCausalLM.from_pretrained(train_model_dir).eval()
    ids = torch.randint(19, 384, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = with_adapter(input_ids=ids).logits, merged(input_ids=ids).logits
        before = plain(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (expected - before).abs().max() > 1e-3  # the adapter changes the outputs

    bf16_dir = tmp_path / "merged-bf16"
    assert merge_lora_main(["--adapter", str(lora_run), "--output_dir", str(bf16_dir)]) == 0
    merged_bf16 = AutoModelForCausalLM.from_pretrained(bf16_dir)
    assert merged_bf16.dtype == torch.bfloat16
    with torch.no_grad():
        got_bf16 = merged_bf16(input_ids=ids).logits.float()
    assert (got_bf16 - expected).abs().max() < 0.1 * (expected - before).abs().max() + 0.05


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _local_rank(pid: int) -> int | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in environ:
        if item.startswith(b"LOCAL_RANK="):
            return int(item.split(b"=", 1)[1])
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the worker processes through /proc")
@pytest.mark.parametrize("target", ["rank 1", "launcher"])
def test_sigterm_stops_both_ranks_at_the_same_step_with_a_resumable_checkpoint(
    train_model_dir, addition_data, tmp_path, target
):
    """Under ZeRO-3 a checkpoint is a collective: if one rank saved at step N and the other at N+1 the run would
    hang. SIGTERM to rank 1 only: both ranks must agree (all-reduce) to save at the same step and stop, and the
    launcher exits 0. SIGTERM to the launcher (what a scheduler sends): torchrun forwards it to every worker,
    which checkpoint and stop; the launcher itself then exits 1 (torchrun's SignalException). Either way the
    checkpoint is complete and resumes."""
    out = tmp_path / "run"
    argv = base_args(train_model_dir, addition_data, out, max_steps=200, save_steps=1000, eval_steps=1000)
    command, env = launch_command(argv)
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 240
        while sum("'loss'" in line for line in lines) < 3:
            assert process.poll() is None, "".join(lines)[-4000:]
            assert time.monotonic() < deadline, "no training progress:\n" + "".join(lines)[-4000:]
            time.sleep(0.2)
        workers = {}
        for child in _children(process.pid):  # accelerate -> workers (or one level deeper)
            for pid in [child, *_children(child)]:
                rank = _local_rank(pid)
                if rank is not None:
                    workers[rank] = pid
        assert set(workers) == {0, 1}, workers
        os.kill(workers[1] if target == "rank 1" else process.pid, signal.SIGTERM)
        assert process.wait(timeout=180) == (0 if target == "rank 1" else 1), "".join(lines)[-4000:]
    finally:
        if process.poll() is None:
            process.kill()
        reader.join(timeout=10)
    output = "".join(lines)
    received = output.count("SIGTERM received: saving a checkpoint")
    assert received == (1 if target == "rank 1" else 2), output[-4000:]
    stopped = [line for line in output.splitlines() if line.startswith("stopped by")]
    expected = "stopped by SIGTERM (sent to another process) at step" if target == "rank 1" else "stopped by SIGTERM at"
    assert len(stopped) == 1 and stopped[0].startswith(expected), stopped
    step = int(stopped[0].split(" at step ")[1].split(";")[0])
    assert 3 <= step < 200
    checkpoints = sorted(path.name for path in out.glob("checkpoint-*"))
    assert checkpoints == [f"checkpoint-{step}"]
    shards = sorted(path.name for path in (out / f"checkpoint-{step}").rglob("*model_states.pt"))
    assert len(shards) == 2, shards  # each rank's ZeRO-3 partition: both ranks took part in the save
    from hf_starcoder_ft.trainer import CHECKPOINT_COMPLETE, checkpoint_problem

    marker = json.loads((out / f"checkpoint-{step}" / CHECKPOINT_COMPLETE).read_text())
    assert marker["world_size"] == 2 and sum(name.endswith("model_states.pt") for name in marker["files"]) == 2
    assert checkpoint_problem(out / f"checkpoint-{step}") is None
    resumed = launch(base_args(train_model_dir, addition_data, out, max_steps=step + 2, save_steps=1000,
                               eval_steps=1000, resume_from_checkpoint="auto"))  # fmt: skip
    assert f"resuming from {out / f'checkpoint-{step}'}" in resumed.stdout
    assert max(step_losses(out)) == step + 2
