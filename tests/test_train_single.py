"""One-process training runs, in process: exact resume after a SIGTERM, what the output directory holds,
evaluation, refusing to overwrite a run, and the Hub push against a local fake Hub (token never shown)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from _train_fixtures import (  # noqa: F401
    addition_data_fixture,
    base_args,
    eval_entries,
    fake_hub_fixture,
    load_weights,
    step_losses,
    train_model_dir_fixture,
)

from hf_starcoder_ft.train import main
from hf_starcoder_ft.trainer import StarCoderTrainer

TOKEN = "hf_TESTtokenNEVERshown0123456789"


@pytest.fixture(scope="module")
def straight_run(train_model_dir, addition_data, tmp_path_factory):
    """6 steps uninterrupted, dropout 0.1 (so the RNG state matters), eval and checkpoint every 3 steps."""
    out = tmp_path_factory.mktemp("straight") / "run"
    assert main(base_args(train_model_dir, addition_data, out, dropout=0.1)) == 0
    return out


def test_resume_after_sigterm_reproduces_the_uninterrupted_run(
    straight_run, train_model_dir, addition_data, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "run"
    argv = base_args(train_model_dir, addition_data, out, dropout=0.1)
    original = StarCoderTrainer.get_batch_samples

    def preempt_during_step_3(self, *args, **kwargs):
        if self.state.global_step == 2:  # fetching step 3's batches: the job is told to stop
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(StarCoderTrainer, "get_batch_samples", preempt_during_step_3)
    assert main(argv) == 0
    monkeypatch.setattr(StarCoderTrainer, "get_batch_samples", original)
    printed = capsys.readouterr().out
    assert "stopped by SIGTERM at step 3" in printed
    assert (out / "checkpoint-3" / "optimizer.pt").is_file()
    assert not (out / "checkpoint-6").exists() and not (out / "config.json").exists()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handler removed after training

    assert main(argv + ["--resume_from_checkpoint", "auto"]) == 0
    assert "resuming from" in capsys.readouterr().out

    expected, resumed = step_losses(straight_run), step_losses(out)
    assert sorted(expected) == sorted(resumed) == [1, 2, 3, 4, 5, 6]
    assert resumed == expected  # bitwise: same loss at every step
    assert eval_entries(out)[6]["eval_loss"] == eval_entries(straight_run)[6]["eval_loss"]
    straight_weights, resumed_weights = load_weights(straight_run), load_weights(out)
    assert straight_weights.keys() == resumed_weights.keys()
    for name in straight_weights:
        assert torch.equal(straight_weights[name], resumed_weights[name]), name


def test_resume_without_rng_state_differs(straight_run, train_model_dir, addition_data, tmp_path):
    """Guard: with dropout on, the resume test above only passes because RNG state is restored."""
    out = tmp_path / "run"
    argv = base_args(train_model_dir, addition_data, out, dropout=0.1)
    resume_from = tmp_path / "checkpoint-3"
    import shutil

    shutil.copytree(straight_run / "checkpoint-3", resume_from)
    (resume_from / "rng_state.pth").unlink()
    (resume_from / "checkpoint_complete.json").unlink()  # else the missing file is refused as damage (tested below)
    assert main(argv + ["--resume_from_checkpoint", str(resume_from)]) == 0
    assert step_losses(out)[4] != step_losses(straight_run)[4]


def test_output_directory_holds_a_loadable_model_with_cache_restored(straight_run, train_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(straight_run)
    assert model.config.use_cache is True  # off while training, back on for generation
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()  # still tied
    saved = load_weights(straight_run)
    start = load_weights(train_model_dir)
    assert any(not torch.equal(saved[k], start[k]) for k in saved)  # it trained
    for name, tensor in model.state_dict().items():
        source = saved.get(name, saved["transformer.wte.weight"] if name == "lm_head.weight" else None)
        assert torch.equal(tensor, source), name
    summary = json.loads((straight_run / "run_summary.json").read_text())
    assert summary["hyperparameters"]["gradient_accumulation_steps"] == 4
    assert summary["hyperparameters"]["loss_normalization"] == "example"
    assert summary["data"]["stats"]["splits"]["train"]["examples"] == 240
    card = (straight_run / "README.md").read_text()
    assert "eval_perplexity" in card and "loss_normalization" in card
    assert not (straight_run / ".final-model.tmp").exists()


def test_loss_falls_and_eval_reports_perplexity(straight_run):
    losses = step_losses(straight_run)
    assert losses[6] < losses[1] - 0.2
    assert all(losses[step] < losses[1] for step in range(3, 7))
    evals = eval_entries(straight_run)
    assert sorted(evals) == [3, 6]
    for entry in evals.values():
        assert entry["eval_perplexity"] == pytest.approx(torch.tensor(entry["eval_token_loss"]).exp().item())
    assert evals[6]["eval_loss"] < evals[3]["eval_loss"]


def test_refuses_to_train_over_an_existing_run(straight_run, train_model_dir, addition_data, capsys):
    assert main(base_args(train_model_dir, addition_data, straight_run)) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_push_to_hub_uploads_model_and_card_and_never_shows_the_token(
    fake_hub, train_model_dir, addition_data, tmp_path, capfd
):
    out = tmp_path / "run"
    argv = base_args(train_model_dir, addition_data, out, max_steps=2, eval_steps=2, save_steps=2)
    argv += ["--push_to_hub", "--hub_model_id", "someone/tiny-addition", "--hub_token", TOKEN]
    assert main(argv) == 0
    captured = capfd.readouterr()
    assert TOKEN not in captured.out + captured.err
    assert "pushed" in captured.out

    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json", "run_summary.json"} <= set(
        fake_hub.files
    )
    assert not any(path.startswith("checkpoint-") for path in fake_hub.files)
    assert fake_hub.files["model.safetensors"] == (out / "model.safetensors").read_bytes()
    card = fake_hub.files["README.md"].decode()
    assert "someone/tiny-addition" in card and "eval_loss" in card
    assert all(TOKEN.encode() not in content for content in fake_hub.files.values())
    assert all(header == f"Bearer {TOKEN}" for header in fake_hub.authorizations)
    assert ("POST", "/api/repos/create") in fake_hub.requests


def test_push_dry_run_lists_files_and_uploads_nothing(fake_hub, train_model_dir, addition_data, tmp_path, capsys):
    out = tmp_path / "run"
    argv = base_args(train_model_dir, addition_data, out, max_steps=1, eval_strategy="no", save_strategy="no")
    argv += ["--push_to_hub", "--hub_model_id", "someone/dry", "--push_dry_run"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "would upload" in printed and "model.safetensors" in printed and "someone/dry" in printed
    assert fake_hub.requests == []


def test_failed_push_keeps_the_model_and_hides_the_token(fake_hub, train_model_dir, addition_data, tmp_path, capfd):
    from _train_fixtures import free_port

    os.environ["HF_ENDPOINT"] = f"http://127.0.0.1:{free_port()}"  # nothing listens there (restored by monkeypatch)
    out = tmp_path / "run"
    argv = base_args(train_model_dir, addition_data, out, max_steps=1, eval_strategy="no", save_strategy="no")
    argv += ["--push_to_hub", "--hub_model_id", "someone/unreachable", "--hub_token", TOKEN]
    assert main(argv) == 1
    captured = capfd.readouterr()
    assert "push to someone/unreachable failed" in captured.err and "hf upload" in captured.err
    assert TOKEN not in captured.out + captured.err
    assert (out / "model.safetensors").is_file()


def test_activation_checkpointing_with_lora_gives_the_same_losses(train_model_dir, addition_data, tmp_path):
    """Recomputing activations (with LoRA's frozen inputs needing grads) changes memory, not the numbers."""
    runs = {}
    for checkpointing in ("false", "true"):
        out = tmp_path / f"lora-{checkpointing}"
        argv = base_args(train_model_dir, addition_data, out, max_steps=2, eval_strategy="no", save_strategy="no")
        argv += ["--use_lora", "--lora_dropout", "0.0", "--activation_checkpointing", checkpointing]
        assert main(argv) == 0
        runs[checkpointing] = step_losses(out)
        assert (out / "adapter_model.safetensors").is_file()
        summary = json.loads((out / "run_summary.json").read_text())
        assert summary["hyperparameters"]["activation_checkpointing"] is (checkpointing == "true")
    assert runs["true"] == pytest.approx(runs["false"], rel=1e-6)


@pytest.mark.parametrize("source", ["preset", "config_json"])
def test_init_from_config_builds_a_random_model_for_smoke_tests(
    source, tokenizer_json, train_model_dir, addition_data, tmp_path
):
    from transformers import AutoModelForCausalLM

    init = "tiny" if source == "preset" else str(train_model_dir / "config.json")
    out = tmp_path / "run"
    argv = base_args(train_model_dir, addition_data, out, max_steps=1, eval_strategy="no", save_strategy="no")
    index = argv.index("--model_name_or_path")
    del argv[index : index + 2]
    assert main(argv + ["--init_from_config", init, "--tokenizer", str(tokenizer_json)]) == 0
    model = AutoModelForCausalLM.from_pretrained(out)
    expected = (64, 384) if source == "preset" else (32, 384)  # preset: vocab = tokenizer size rounded to 128
    assert (model.config.n_embd, model.config.vocab_size) == expected
    key = "transformer.h.0.attn.c_attn.weight"
    assert load_weights(out)[key].shape != load_weights(train_model_dir)[key].shape or not torch.equal(
        load_weights(out)[key], load_weights(train_model_dir)[key]
    )


def test_checkpoints_are_marked_complete_with_every_file(straight_run):
    from hf_starcoder_ft.trainer import CHECKPOINT_COMPLETE, checkpoint_problem

    for step in (3, 6):
        folder = straight_run / f"checkpoint-{step}"
        marker = json.loads((folder / CHECKPOINT_COMPLETE).read_text())
        assert marker["global_step"] == step and marker["world_size"] == 1
        on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - {CHECKPOINT_COMPLETE}
        assert set(marker["files"]) == on_disk
        assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"} <= on_disk
        assert checkpoint_problem(folder) is None


def test_auto_resume_skips_incomplete_and_damaged_checkpoints(straight_run, tmp_path, capsys):
    import shutil

    from hf_starcoder_ft.config import ConfigError
    from hf_starcoder_ft.train import resolve_resume

    out = tmp_path / "run"
    for step in (3, 6):
        shutil.copytree(straight_run / f"checkpoint-{step}", out / f"checkpoint-{step}")
    assert resolve_resume("auto", str(out)) == str(out / "checkpoint-6")
    # a save that never finished (no marker), and a whole-looking one whose optimizer file was cut short
    shutil.copytree(straight_run / "checkpoint-6", out / "checkpoint-9")
    (out / "checkpoint-9" / "checkpoint_complete.json").unlink()
    shutil.copytree(straight_run / "checkpoint-6", out / "checkpoint-8")
    optimizer = out / "checkpoint-8" / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:100])
    capsys.readouterr()
    assert resolve_resume("auto", str(out)) == str(out / "checkpoint-6")
    err = capsys.readouterr().err
    assert "skipping incomplete checkpoint-9: no checkpoint_complete.json" in err
    assert "skipping incomplete checkpoint-8: optimizer.pt has 100 bytes" in err
    with pytest.raises(ConfigError, match="damaged checkpoint \\(optimizer.pt has 100 bytes"):
        resolve_resume(str(out / "checkpoint-8"), str(out))
    for step in (3, 6):
        shutil.rmtree(out / f"checkpoint-{step}")
    with pytest.raises(ConfigError, match="no complete checkpoint to resume \\(checkpoint-9: .*; checkpoint-8: "):
        resolve_resume("auto", str(out))
    assert resolve_resume("auto", str(tmp_path / "fresh")) is None


@pytest.mark.parametrize("crash_point", ["optimizer", "marker"])
def test_crash_during_a_save_resumes_from_the_previous_checkpoint_exactly(
    straight_run, train_model_dir, addition_data, tmp_path, monkeypatch, capsys, crash_point
):
    """A crash while checkpoint-6 is being written (after the weights, before the optimizer; or after every file,
    before the completeness marker) leaves a folder that must not be resumed from; `auto` takes checkpoint-3, the
    partial folder is replaced, and the run ends as the uninterrupted one did. save_total_limit 1 must not have
    removed checkpoint-3 before 6 was marked whole."""
    from transformers import Trainer

    from hf_starcoder_ft import io_utils

    out = tmp_path / "run"
    argv = base_args(train_model_dir, addition_data, out, dropout=0.1, save_total_limit=1)
    real_save, real_atomic_write = Trainer._save_optimizer_and_scheduler, io_utils.atomic_write

    def crash_at_step_6(self, output_dir):
        if self.state.global_step == 6:
            (out / "checkpoint-6" / "stale-from-the-crash").write_text("x")
            raise RuntimeError("simulated crash while saving")
        return real_save(self, output_dir)

    def crash_before_marking_6(path, *args, **kwargs):
        if Path(path).name == "checkpoint_complete.json" and Path(path).parent.name == "checkpoint-6":
            (out / "checkpoint-6" / "stale-from-the-crash").write_text("x")
            raise RuntimeError("simulated crash while saving")
        return real_atomic_write(path, *args, **kwargs)

    if crash_point == "optimizer":
        monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", crash_at_step_6)
    else:
        monkeypatch.setattr(io_utils, "atomic_write", crash_before_marking_6)
    with pytest.raises(RuntimeError, match="simulated crash"):
        main(argv)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", real_save)
    monkeypatch.setattr(io_utils, "atomic_write", real_atomic_write)
    capsys.readouterr()
    assert main(argv + ["--resume_from_checkpoint", "auto"]) == 0
    captured = capsys.readouterr()
    assert "skipping incomplete checkpoint-6" in captured.err and "resuming from" in captured.out
    assert not (out / "checkpoint-6" / "stale-from-the-crash").exists()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-6"]  # rotated once 6 was whole
    assert step_losses(out) == step_losses(straight_run)


def test_rotation_after_marking_on_transformers_without_the_rotate_function(
    train_model_dir, addition_data, tmp_path, monkeypatch
):
    """Before transformers 5.2, rotation was the Trainer method `_rotate_checkpoints`: the fallback must call it
    after the marker is written, with save_total_limit restored."""
    import transformers.trainer_utils

    from hf_starcoder_ft.trainer import CHECKPOINT_COMPLETE

    monkeypatch.delattr(transformers.trainer_utils, "rotate_checkpoints")
    calls = []

    def old_rotate(self, use_mtime=False, output_dir=None):
        marked = sorted(p.parent.name for p in Path(output_dir).glob(f"checkpoint-*/{CHECKPOINT_COMPLETE}"))
        calls.append((use_mtime, Path(output_dir), self.args.save_total_limit, marked))

    monkeypatch.setattr(StarCoderTrainer, "_rotate_checkpoints", old_rotate, raising=False)
    out = tmp_path / "run"
    argv = base_args(train_model_dir, addition_data, out, max_steps=4, save_steps=2, eval_strategy="no")
    assert main(argv + ["--save_total_limit", "1"]) == 0
    assert calls == [(True, out, 1, ["checkpoint-2"]), (True, out, 1, ["checkpoint-2", "checkpoint-4"])]
