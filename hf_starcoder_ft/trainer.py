"""`StarCoderTrainer`: a `transformers.Trainer` whose loss is exact over the whole global batch, on packed rows.

    accelerate launch --config_file launch/zero3_cpu_2proc.yaml train.py --config configs/tiny_cpu.yaml ...

What it changes, and why:

- Forward: the model is called WITHOUT labels, with the document-isolating attention inputs of
  `hf_starcoder_ft.attention` (4-D block mask or flash varlen kwargs, `use_cache=False`).
- Loss: `masked_target_loss` gives the weighted SUM over this micro-batch's target tokens; it is divided by the
  units (target tokens, or examples) of the GLOBAL batch: every micro-batch of the accumulation step on every
  data-parallel rank, counted in `get_batch_samples` and all-reduced. Trainer and DeepSpeed are told not to divide
  by the accumulation steps (`loss_is_scaled_for_ga`), and the loss is multiplied by the number of processes
  because DDP/DeepSpeed average gradients over ranks. Net gradient: d(global sum / global units), the same for any
  split of the global batch into ranks and micro-batches.
- Evaluation: loss (in the training normalization) and perplexity (exp of the token-normalized loss) with the same
  masking and isolation, each rank taking every N-th row, all-reduced; ranks with fewer rows run zero-weight
  batches so ZeRO-3's collective forward passes stay in step.
- Logging: tokens/s (positions processed, padding included), target tokens/s and an MFU estimate.
- Preemption: SIGTERM/SIGINT ask for a checkpoint at the end of the current optimizer step (all ranks agree via
  an all-reduce), then training stops cleanly.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from hf_starcoder_ft.attention import FLASH_IMPLEMENTATIONS, document_attention_inputs
from hf_starcoder_ft.loss import IGNORE_INDEX, loss_units, masked_target_loss

# Dense bf16 peak TFLOP/s per device, matched against torch.cuda.get_device_name(). Order matters (PCIe first).
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10", 125.0),
)


def device_peak_tflops(override: float | None = None) -> float | None:
    """Peak dense bf16 TFLOP/s of this process's device, or None when unknown (no MFU is then reported)."""
    if override is not None:
        return override
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in name:
            return tflops
    return None


def training_flops_per_token(config, seq_length: int) -> float:
    """Model FLOPs per trained token, forward + backward (PaLM's accounting, no recomputation counted):
    6 x (matmul parameters: blocks + LM head) + 12 x layers x hidden x sequence length (attention scores).
    Position embeddings and norms do no matmuls and are left out."""
    hidden, layers = config.n_embd, config.n_layer
    inner = config.n_inner or 4 * hidden
    kv_dim = hidden // config.n_head if config.multi_query else hidden
    block = hidden * (hidden + 2 * kv_dim) + hidden * hidden + 2 * hidden * inner
    matmul_params = layers * block + config.vocab_size * hidden
    return 6.0 * matmul_params + 12.0 * layers * hidden * seq_length


CHECKPOINT_COMPLETE = "checkpoint_complete.json"  # written last into each checkpoint-N (see _save_checkpoint)


def checkpoint_problem(folder: str | Path) -> str | None:
    """Why `folder` is not a whole checkpoint written by this trainer, or None if it is.

    A checkpoint is marked complete only after every rank has written its part; the marker lists every file
    with its size, so a folder left by a crash during saving (no marker) or a file cut short since (size
    differs) is told apart from a whole one.
    """
    folder = Path(folder)
    marker = folder / CHECKPOINT_COMPLETE
    if not marker.is_file():
        return f"no {CHECKPOINT_COMPLETE} (saving did not finish: a crash or kill during the save?)"
    try:
        files = json.loads(marker.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"{CHECKPOINT_COMPLETE} is unreadable ({error})"
    for name, size in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} were written"
    return None


def row_fingerprint(input_ids: torch.Tensor) -> str:
    return hashlib.sha1(input_ids.detach().cpu().numpy().tobytes()).hexdigest()[:16]


class PreemptionHandler:
    """Turns SIGTERM/SIGINT into a request; a second SIGINT falls back to Python's default (KeyboardInterrupt)."""

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        import threading

        if threading.current_thread() is not threading.main_thread():
            return  # Python only delivers signals to the main thread; a caller elsewhere keeps its own handling
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        self.requested = True
        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        print(
            f"\n{self.signal_name} received: saving a checkpoint at the end of this optimizer step, then stopping.",
            flush=True,
        )


class _StepCallback(TrainerCallback):
    """Per optimizer step: throughput bookkeeping and the preemption check."""

    def __init__(self, trainer: StarCoderTrainer) -> None:
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        trainer = self.trainer
        trainer._end_step_timing()
        if trainer.preemption is not None and trainer._any_rank_preempted():
            # every rank stops after this same step (a ZeRO-3 checkpoint is collective), signalled or not
            trainer.preempted_at_step = state.global_step
            control.should_save = True
            control.should_training_stop = True
        return control


class StarCoderTrainer(Trainer):
    """Trainer with a global-batch-exact target-only loss on packed rows (see the module docstring)."""

    # compute_loss divides by the global batch's units itself: nothing else may divide by accumulation steps.
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        *args,
        loss_normalization: str = "token",
        attn_implementation: str = "sdpa",
        seq_length: int | None = None,
        peak_tflops: float | None = None,
        fingerprint_dir: str | Path | None = None,
        preemption: PreemptionHandler | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.loss_normalization = loss_normalization
        self.attn_implementation = attn_implementation
        self.preemption = preemption
        self.preempted_at_step: int | None = None
        self.fingerprint_dir = Path(fingerprint_dir) if fingerprint_dir is not None else None
        config = self.accelerator.unwrap_model(self.model).config
        self.flops_per_token = training_flops_per_token(config, seq_length or config.n_positions)
        self.peak_tflops = device_peak_tflops(peak_tflops)
        self._step_counts: torch.Tensor | None = None
        self._step_started: float | None = None
        self._meter = {"seconds": 0.0, "tokens": 0, "target_tokens": 0}
        self.add_callback(_StepCallback(self))

    # ------------------------------------------------------------------------------------------- training

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's checkpoint, made crash-safe: a partial folder of this step left by an earlier crash is
        removed first, and once every rank has written its part (ZeRO-3 partitions included) the main process
        writes `checkpoint_complete.json` atomically; only then are old checkpoints rotated out, so a crash at
        any point leaves the previous complete checkpoint in place. `--resume_from_checkpoint auto` takes the
        newest complete one."""
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        from hf_starcoder_ft.io_utils import atomic_write

        folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save and folder.is_dir() and checkpoint_problem(folder) is not None:
            shutil.rmtree(folder)  # a partial save of this very step: no stale files may mix with the new ones
        self.accelerator.wait_for_everyone()
        limit = self.args.save_total_limit
        self.args.save_total_limit = None  # rotate only after the new checkpoint is marked complete
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            files = {
                path.relative_to(folder).as_posix(): path.stat().st_size
                for path in sorted(folder.rglob("*"))
                if path.is_file()
            }
            marker = {"global_step": self.state.global_step, "world_size": self.args.world_size, "files": files}
            with atomic_write(folder / CHECKPOINT_COMPLETE) as tmp:
                tmp.write_text(json.dumps(marker, indent=1) + "\n")
            self._rotate_after_marking(folder.parent, limit)
        self.accelerator.wait_for_everyone()

    def _rotate_after_marking(self, run_dir: Path, limit: int | None) -> None:
        try:  # a function since transformers 5.2; a Trainer method before
            from transformers.trainer_utils import rotate_checkpoints
        except ImportError:  # the method reads args.save_total_limit, restored by now
            self._rotate_checkpoints(use_mtime=True, output_dir=str(run_dir))
            return
        rotate_checkpoints(
            output_dir=str(run_dir),
            save_total_limit=limit,
            best_model_checkpoint=self.state.best_model_checkpoint,
            use_mtime=True,
        )

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """Fetch the micro-batches of one optimizer step and count the global batch's loss units.

        Returns the batches and the all-reduced unit count (what `compute_loss` divides by). Also counts, for
        logging, the positions and target tokens of the global batch.
        """
        self._step_started = time.perf_counter()
        batches = []
        for _ in range(num_batches):
            try:
                batches.append(next(epoch_iterator))
            except StopIteration:
                break
        counts = torch.zeros(3, dtype=torch.long)
        for batch in batches:
            counts[0] += loss_units(batch["labels"], batch["position_ids"], self.loss_normalization)
            counts[1] += batch["input_ids"].numel()
            counts[2] += int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        counts = counts.to(device)
        if self.accelerator.num_processes > 1:
            counts = self.accelerator.reduce(counts, reduction="sum")
        self._step_counts = counts
        if self.fingerprint_dir is not None and batches:
            self._write_fingerprints(batches)
        return batches, counts[0]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels, position_ids = inputs["labels"], inputs["position_ids"]
        outputs = model(**document_attention_inputs(inputs["input_ids"], position_ids, self.attn_implementation))
        if self.attn_implementation in FLASH_IMPLEMENTATIONS:
            labels, position_ids = labels.reshape(1, -1), position_ids.reshape(1, -1)
        loss_sum = masked_target_loss(outputs.logits, labels, position_ids, self.loss_normalization)
        if num_items_in_batch is None:
            # A lone batch (not from the training loop): its own mean.
            loss = loss_sum / max(loss_units(labels, position_ids, self.loss_normalization), 1)
        else:
            # DDP and DeepSpeed average gradients over ranks; multiplying by the rank count turns that average
            # into the sum that (global sum / global units) needs.
            global_units = num_items_in_batch.clamp(min=1).to(loss_sum.dtype)
            loss = loss_sum / global_units * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss

    def _write_fingerprints(self, batches) -> None:
        self.fingerprint_dir.mkdir(parents=True, exist_ok=True)
        rank = self.accelerator.process_index
        with open(self.fingerprint_dir / f"rank{rank}.jsonl", "a") as out:
            for micro, batch in enumerate(batches):
                rows = [row_fingerprint(row) for row in batch["input_ids"]]
                record = {"step": self.state.global_step + 1, "rank": rank, "micro_batch": micro, "rows": rows}
                out.write(json.dumps(record) + "\n")

    def _any_rank_preempted(self) -> bool:
        """True on every rank if any rank was signalled; a rank that was not learns the signal's name."""
        signum = torch.tensor([self.preemption.signum or 0], device=self.args.device)
        if self.accelerator.num_processes > 1:
            signum = self.accelerator.reduce(signum, reduction="max")  # max: a sum of signal numbers is no signal
        received = int(signum.item())
        if received and not self.preemption.requested:
            self.preemption.signal_name = f"{signal.Signals(received).name} (sent to another process)"
        return received > 0

    # -------------------------------------------------------------------------------------------- logging

    def _end_step_timing(self) -> None:
        if self._step_started is None or self._step_counts is None:
            return
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._meter["seconds"] += time.perf_counter() - self._step_started
        counts = self._step_counts.tolist()
        self._meter["tokens"] += counts[1]
        self._meter["target_tokens"] += counts[2]
        self._step_started = None

    def throughput_metrics(self) -> dict[str, float]:
        """Global tokens/s, target tokens/s and MFU since the last training log line (then reset)."""
        seconds = self._meter["seconds"]
        if seconds <= 0:
            return {}
        metrics = {
            "tokens_per_second": self._meter["tokens"] / seconds,
            "target_tokens_per_second": self._meter["target_tokens"] / seconds,
        }
        if self.peak_tflops:
            achieved = metrics["tokens_per_second"] * self.flops_per_token
            metrics["mfu"] = achieved / (self.peak_tflops * 1e12 * self.accelerator.num_processes)
        self._meter = {"seconds": 0.0, "tokens": 0, "target_tokens": 0}
        return metrics

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            logs.update(self.throughput_metrics())
        super().log(logs, start_time)

    # ----------------------------------------------------------------------------------------- evaluation

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Validation loss (training normalization) and perplexity (token normalization) on packed rows."""
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if dataset is None:
            raise ValueError("evaluate() needs an eval dataset")
        if isinstance(dataset, dict):
            metrics = {}
            for name, split in dataset.items():
                metrics.update(self.evaluate(split, ignore_keys, f"{metric_key_prefix}_{name}"))
            return metrics
        start = time.time()
        sums = self.evaluation_sums(dataset)
        token_loss = sums["token_loss"] / max(sums["target_tokens"], 1.0)
        metrics = {
            f"{metric_key_prefix}_loss": sums["loss"] / max(sums["units"], 1.0),
            f"{metric_key_prefix}_token_loss": token_loss,
            f"{metric_key_prefix}_perplexity": math.exp(min(token_loss, 700.0)),
            f"{metric_key_prefix}_target_tokens": sums["target_tokens"],
            f"{metric_key_prefix}_rows": float(len(dataset)),
            f"{metric_key_prefix}_runtime": round(time.time() - start, 4),
        }
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    @torch.no_grad()
    def evaluation_sums(self, dataset) -> dict[str, float]:
        """All-reduced sums over the dataset: loss sum and units (training normalization), token loss sum and
        target tokens. Rank r evaluates rows r, r+N, r+2N, ...; every rank runs the same number of batches."""
        from torch.utils.data import DataLoader, Subset

        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        batch_size = self.args.per_device_eval_batch_size
        shard = Subset(dataset, list(range(rank, len(dataset), world)))
        loader = DataLoader(shard, batch_size=batch_size, collate_fn=self.data_collator, shuffle=False)
        batches_needed = math.ceil(math.ceil(len(dataset) / world) / batch_size)
        model = self.model
        was_training = model.training
        model.eval()
        sums = torch.zeros(4, dtype=torch.float64, device=self.args.device)
        batches = iter(loader)
        for _ in range(batches_needed):
            batch = next(batches, None)
            weight = 1.0
            if batch is None:  # this rank ran out of rows: keep the collective forward passes in step
                batch, weight = self.data_collator([dataset[0]]), 0.0
            batch = self._prepare_inputs(batch)
            labels, positions = batch["labels"], batch["position_ids"]
            outputs = model(**document_attention_inputs(batch["input_ids"], positions, self.attn_implementation))
            if self.attn_implementation in FLASH_IMPLEMENTATIONS:
                labels, positions = labels.reshape(1, -1), positions.reshape(1, -1)
            logits = outputs.logits
            sums[0] += weight * masked_target_loss(logits, labels, positions, self.loss_normalization).double()
            sums[1] += weight * loss_units(labels, positions, self.loss_normalization)
            sums[2] += weight * masked_target_loss(logits, labels, positions, "token").double()
            sums[3] += weight * loss_units(labels, positions, "token")
        if world > 1:
            sums = self.accelerator.reduce(sums, reduction="sum")
        model.train(was_training)
        loss, units, token_loss, target_tokens = sums.tolist()
        return {"loss": loss, "units": units, "token_loss": token_loss, "target_tokens": target_tokens}
