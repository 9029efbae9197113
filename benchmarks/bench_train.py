"""Benchmark training throughput: our packed, target-only pipeline vs TRL `SFTTrainer` (completion-only loss,
padding), same data, same model, same process; and, on a GPU, the MFU of a StarCoderBase-1B-shaped model.

    .venv/bin/python benchmarks/bench_train.py                   # CPU: tiny model, ~3 minutes
    .venv/bin/python benchmarks/bench_train.py --mfu             # GPU: adds MFU of the 1B shape in bf16

Goals (issue 4): target tokens/s of ours >= 2x TRL's (the gain comes from packing: no compute spent on padding);
MFU >= 45% for the 1B shape on an A100/H100-class GPU.

Both trainers see the same records (commit-like, log-normal lengths), the same random-initialised GPTBigCode
and the same micro-batch size in rows, with max_length as the row length. Target tokens are the supervised
tokens (labels != -100); each side counts them in its own batches. Time is measured per optimizer step (callback
from step begin to step end) after warm-up steps; the ratio is what matters, absolute numbers depend on the host.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

WORDS = "def class return self value items index result data config parse load save model token batch".split()


def synthetic_records(count: int, max_words: int, log_mean_words: float = 4.0, seed: int = 0) -> list[dict[str, str]]:
    """Commit-like records: a code-ish prompt and target, log-normal total lengths (a long tail, capped)."""
    rng = random.Random(seed)

    def text(n: int) -> str:
        return " ".join(rng.choice(WORDS) + (f"_{rng.randint(0, 99)}" if rng.random() < 0.3 else "") for _ in range(n))

    records = []
    for i in range(count):
        # ~2 tokens per word with the benchmark tokenizer; the whole example stays under max_words so that no
        # record is dropped (ours) or truncated (TRL): both train on exactly the same tokens.
        total = min(max_words, max(8, int(rng.lognormvariate(log_mean_words, 0.8))))
        n_inputs = max(2, int(total * rng.uniform(0.3, 0.7)))
        records.append(
            {
                "inputs": f"<commit_before>{text(n_inputs)}<commit_msg>fix {i}",
                "targets": f"<commit_after>{text(total - n_inputs)}<|endoftext|>",
            }
        )
    return records


class StepTimer:
    """Callback: seconds and target tokens per optimizer step, after `warmup` steps."""

    def __init__(self, counter: dict[str, int], warmup: int) -> None:
        from transformers import TrainerCallback

        timer = self

        class _Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                timer._begin(state.global_step)

            def on_step_end(self, args, state, control, **kwargs):
                timer._end()

        self.callback = _Callback()
        self.counter, self.warmup = counter, warmup
        self.seconds, self.targets, self.positions, self.steps = 0.0, 0, 0, 0
        self._measure = False
        self._started = None
        self._seen = (0, 0)

    def _begin(self, step: int) -> None:
        # The step's micro-batches were already collated (Trainer prefetches them): take the counter's delta.
        targets, positions = self.counter["targets"] - self._seen[0], self.counter["positions"] - self._seen[1]
        self._seen = (self.counter["targets"], self.counter["positions"])
        self._measure = step >= self.warmup
        if self._measure:
            self.targets += targets
            self.positions += positions
        self._started = time.perf_counter()

    def _end(self) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if self._measure:
            self.seconds += time.perf_counter() - self._started
            self.steps += 1


def counting(collator, counter: dict[str, int]):
    def collate(features):
        batch = collator(features)
        counter["targets"] += int((batch["labels"][:, 1:] != -100).sum())
        counter["positions"] += batch["input_ids"].numel()
        return batch

    return collate


def shared_training_settings(args) -> dict:
    """What both trainers are given alike, so only the data path and the loss differ between them."""
    return {
        "per_device_train_batch_size": args.batch_size,
        "max_steps": args.steps,
        "learning_rate": 1e-4,
        "report_to": "none",
        "save_strategy": "no",
        "logging_steps": 10**6,
        "disable_tqdm": True,
        "dataloader_pin_memory": False,
        "seed": 0,
    }


def run_ours(model_dir: Path, tokenizer, train_jsonl: Path, work: Path, args) -> StepTimer:
    import torch
    from transformers import AutoModelForCausalLM

    from hf_starcoder_ft.config import StarCoderTrainingArguments
    from hf_starcoder_ft.data.collator import PackedCollator
    from hf_starcoder_ft.data.config import DataConfig
    from hf_starcoder_ft.data.prepare import load_datasets
    from hf_starcoder_ft.trainer import StarCoderTrainer

    data = DataConfig(train_data=str(train_jsonl), max_length=args.max_length, data_cache_dir=str(work / "cache"))
    prepared = load_datasets(data, tokenizer, seed=0, progress=False)
    train = prepared.splits["train"]
    dropped = {k: v for k, v in prepared.stats["totals"]["dropped"].items() if v}
    if dropped:
        print(f"warning: ours dropped records {dropped}; the comparison is not on identical data", file=sys.stderr)
    counter = {"targets": 0, "positions": 0}
    timer = StepTimer(counter, warmup=args.warmup)
    training_args = StarCoderTrainingArguments(
        output_dir=str(work / "ours"), loss_normalization="token", **shared_training_settings(args)
    )
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.config.use_cache = False
    trainer = StarCoderTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        data_collator=counting(PackedCollator(pad_token_id=tokenizer.pad_token_id), counter),
        loss_normalization="token",
        callbacks=[timer.callback],
    )
    trainer.train()
    return timer


def run_trl(model_dir: Path, tokenizer, records: list[dict], work: Path, args) -> StepTimer:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    dataset = datasets.Dataset.from_list(
        [{"prompt": r["inputs"], "completion": r["targets"].removesuffix("<|endoftext|>")} for r in records]
    )
    counter = {"targets": 0, "positions": 0}
    timer = StepTimer(counter, warmup=args.warmup)
    config = SFTConfig(
        output_dir=str(work / "trl"),
        max_length=args.max_length,
        packing=False,
        padding_free=False,
        completion_only_loss=True,
        bf16=False,  # same precision as ours: fp32 on CPU
        **shared_training_settings(args),
    )
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    trainer.data_collator = counting(trainer.data_collator, counter)
    trainer.add_callback(timer.callback)
    trainer.train()
    return timer


def bench_packing_vs_trl(args) -> dict:
    import torch
    from transformers import GPTBigCodeConfig, GPTBigCodeForCausalLM

    from hf_starcoder_ft.tokenizer import load_tokenizer, train_tiny_tokenizer

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench_train_"))
    records = synthetic_records(args.records, max_words=args.max_length // 3)
    train_jsonl = work / "train.jsonl"
    train_jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
    texts = (r["inputs"] + r["targets"] for r in records)
    tokenizer_json = train_tiny_tokenizer(texts, work / "tok" / "tokenizer.json")
    tokenizer = load_tokenizer(tokenizer_json)
    torch.manual_seed(0)
    config = GPTBigCodeConfig(
        vocab_size=-(-len(tokenizer) // 128) * 128,
        n_positions=args.max_length,
        n_embd=args.hidden,
        n_layer=args.layers,
        n_head=4,
        n_inner=4 * args.hidden,
        multi_query=True,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    model_dir = work / "model"
    GPTBigCodeForCausalLM(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)

    runners = {
        "ours": lambda: run_ours(model_dir, tokenizer, train_jsonl, work, args),
        "trl": lambda: run_trl(model_dir, tokenizer, records, work, args),
    }
    totals = {name: {"steps": 0, "seconds": 0.0, "targets": 0, "positions": 0} for name in runners}
    # Alternate the sides over several rounds so that load from other processes hits both alike.
    for round_index in range(args.rounds):
        order = list(runners) if round_index % 2 == 0 else list(reversed(runners))
        for name in order:
            timer = runners[name]()
            for key in totals[name]:
                totals[name][key] += getattr(timer, key)
    results = {}
    for name, total in totals.items():
        results[name] = {
            "steps": total["steps"],
            "seconds": total["seconds"],
            "target_tokens_per_second": total["targets"] / total["seconds"],
            "positions_per_second": total["positions"] / total["seconds"],
            "target_fraction_of_positions": total["targets"] / total["positions"],
        }
    results["ratio_target_tokens_per_second"] = (
        results["ours"]["target_tokens_per_second"] / results["trl"]["target_tokens_per_second"]
    )
    # How much of the ratio is packing (share of computed positions that are supervised) and how much is the
    # speed of a position (sdpa on full rows with a block mask vs. padded batches, TRL's per-step metrics).
    results["ratio_target_share"] = (
        results["ours"]["target_fraction_of_positions"] / results["trl"]["target_fraction_of_positions"]
    )
    results["ratio_positions_per_second"] = (
        results["ours"]["positions_per_second"] / results["trl"]["positions_per_second"]
    )
    return results


def bench_mfu(args) -> dict:
    """StarCoderBase-1B shape, bf16, one GPU, packed rows of 8192 random tokens; MFU from our trainer's log."""
    import datasets
    import torch
    from transformers import GPTBigCodeForCausalLM

    from hf_starcoder_ft.config import ModelArguments, StarCoderTrainingArguments
    from hf_starcoder_ft.data.collator import PackedCollator
    from hf_starcoder_ft.model import resolve_model_config
    from hf_starcoder_ft.trainer import StarCoderTrainer

    if not torch.cuda.is_available() and args.peak_tflops is None:
        raise SystemExit("--mfu needs a CUDA GPU (or --peak_tflops to estimate against on this device)")

    class StarCoderVocabulary:  # presets without a vocabulary size take it from a tokenizer: StarCoder's
        def __len__(self) -> int:
            return 49152

    config = resolve_model_config(ModelArguments(init_from_config=args.mfu_preset), StarCoderVocabulary())
    length = min(args.mfu_length, config.n_positions)
    rng = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(args.mfu_rows):
        ids, labels, positions = [], [], []
        while len(ids) < length:  # documents of 512..2048 tokens, half of each supervised
            n = min(int(torch.randint(512, 2049, (1,), generator=rng)), length - len(ids))
            doc = torch.randint(19, config.vocab_size, (n,), generator=rng).tolist()
            ids += doc
            labels += [-100] * (n // 2) + doc[n // 2 :]
            positions += list(range(n))
        rows.append({"input_ids": ids, "labels": labels, "position_ids": positions})
    dataset = datasets.Dataset.from_list(rows)
    model = GPTBigCodeForCausalLM._from_config(config, dtype=torch.bfloat16, attn_implementation=args.mfu_attention)
    model.config.use_cache = False
    work = Path(tempfile.mkdtemp(prefix="bench_mfu_"))
    training_args = StarCoderTrainingArguments(
        output_dir=str(work),
        per_device_train_batch_size=1,
        gradient_accumulation_steps=args.mfu_accumulation,
        max_steps=args.mfu_steps,
        learning_rate=1e-5,
        bf16=True,
        use_cpu=not torch.cuda.is_available(),  # a CPU dry run of this code path (MFU then needs --peak_tflops)
        activation_checkpointing=args.mfu_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
        optim="adamw_torch_fused" if torch.cuda.is_available() else "adamw_torch",
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        loss_normalization="token",
        peak_tflops=args.peak_tflops,
    )
    trainer = StarCoderTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=PackedCollator(pad_token_id=4),
        loss_normalization="token",
        attn_implementation=args.mfu_attention,
        seq_length=length,
        peak_tflops=args.peak_tflops,
    )
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "mfu" in entry][args.warmup :]
    if not logs:
        raise SystemExit("no MFU in the logs: unknown device peak; pass --peak_tflops")
    return {
        "preset": args.mfu_preset,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "peak_tflops": trainer.peak_tflops,
        "seq_length": length,
        "tokens_per_second": sum(e["tokens_per_second"] for e in logs) / len(logs),
        "mfu": sum(e["mfu"] for e in logs) / len(logs),
        "max_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=400, help="Synthetic records (default 400).")
    parser.add_argument("--max_length", type=int, default=512, help="Row length / max sequence length.")
    parser.add_argument("--batch_size", type=int, default=4, help="Rows per micro-batch, both sides.")
    parser.add_argument("--steps", type=int, default=8, help="Optimizer steps per side and round.")
    parser.add_argument("--rounds", type=int, default=2, help="Rounds, each running both sides (alternating).")
    parser.add_argument("--warmup", type=int, default=2, help="Steps of each run left out of the timing.")
    # Hidden 384 at rows of 512 keeps attention's share of the FLOPs near StarCoder's (8192 rows, hidden 6144).
    parser.add_argument("--hidden", type=int, default=384, help="Hidden size of the small model.")
    parser.add_argument("--layers", type=int, default=2, help="Layers of the small model.")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads.")
    parser.add_argument("--skip_trl", action="store_true", help="Only the MFU part.")
    parser.add_argument("--mfu", action="store_true", help="Also measure MFU of a StarCoderBase-1B shape (GPU).")
    parser.add_argument("--mfu_preset", default="starcoderbase-1b", help="Model preset for the MFU run.")
    parser.add_argument("--mfu_length", type=int, default=8192, help="Row length of the MFU run.")
    parser.add_argument("--mfu_rows", type=int, default=64, help="Rows of random tokens for the MFU run.")
    parser.add_argument("--mfu_steps", type=int, default=12, help="Optimizer steps of the MFU run.")
    parser.add_argument("--mfu_accumulation", type=int, default=4, help="Accumulation steps of the MFU run.")
    parser.add_argument("--mfu_attention", default="sdpa", help="attn_implementation of the MFU run.")
    parser.add_argument(
        "--mfu_checkpointing", action=argparse.BooleanOptionalAction, default=True, help="Activation checkpointing."
    )
    parser.add_argument("--peak_tflops", type=float, default=None, help="Override the device peak for MFU.")
    args = parser.parse_args(argv)

    report = {}
    if not args.skip_trl:
        report["packing_vs_trl"] = bench_packing_vs_trl(args)
        ours, trl = report["packing_vs_trl"]["ours"], report["packing_vs_trl"]["trl"]
        print(f"{'':6} {'target tok/s':>13} {'positions/s':>12} {'target share':>13}")
        for name, row in (("ours", ours), ("trl", trl)):
            print(
                f"{name:6} {row['target_tokens_per_second']:13.1f} {row['positions_per_second']:12.1f} "
                f"{row['target_fraction_of_positions']:13.3f}"
            )
        ratio = report["packing_vs_trl"]["ratio_target_tokens_per_second"]
        print(f"ratio (ours / TRL SFTTrainer) target tokens/s: {ratio:.2f}x  (goal >= 2x)")
        print(
            f"  of which packing (target share of positions) {report['packing_vs_trl']['ratio_target_share']:.2f}x, "
            f"speed per position {report['packing_vs_trl']['ratio_positions_per_second']:.2f}x"
        )
    if args.mfu:
        report["mfu"] = bench_mfu(args)
        print(f"MFU {report['mfu']['mfu']:.1%} on {report['mfu']['device']} ({args.mfu_preset}, bf16)  (goal >= 45%)")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
