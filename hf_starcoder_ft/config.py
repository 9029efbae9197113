"""Training configuration: the dataclasses behind `train.py` and the parser that reads YAML recipes plus CLI flags.

    accelerate launch --config_file launch/zero3_1node.yaml train.py --config configs/octopack_starcoderbase.yaml \\
        --model_name_or_path models/starcoderbase-hf --train_data data/train_paths.txt --output_dir runs/octopack

    from hf_starcoder_ft.config import parse_train_args
    model_args, lora_args, data_config, training_args = parse_train_args(["--config", "configs/tiny_cpu.yaml", ...])

Four dataclasses, one per concern, parsed together by TRL's `TrlParser` (YAML gives defaults, CLI flags override,
an unknown key fails loudly):

- `ModelArguments`: where the weights come from (an HF directory, or a random model for smoke tests), dtype,
  attention implementation, dropout;
- `LoraArguments`: LoRA through PEFT (off by default: full fine-tune);
- `DataConfig` (from `hf_starcoder_ft.data.config`, shared with `hf-starcoder-ft prepare`);
- `StarCoderTrainingArguments`: `transformers.TrainingArguments` plus our knobs (`global_batch_size`,
  `loss_normalization`, `push_dry_run`, ...). Its `global_batch_size` is stated once; the gradient accumulation
  steps are derived from it as `global / (per_device_train_batch_size * world_size)`, an error when that does not
  divide.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from functools import cached_property

from transformers import TrainingArguments

from hf_starcoder_ft.data.config import DataConfig
from hf_starcoder_ft.loss import LOSS_NORMALIZATIONS

DEFAULT_LORA_TARGETS = ("c_attn", "c_proj", "c_fc")
MODEL_DTYPES = ("auto", "bfloat16", "float16", "float32")


class ConfigError(ValueError):
    """A configuration that cannot work, found before any heavy work; the message names the key or file."""


@dataclass
class ModelArguments:
    """Which model to fine-tune and how to load it."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "HF model directory (e.g. one converted from Megatron) or Hub id to fine-tune."},
    )
    init_from_config: str | None = field(
        default=None,
        metadata={
            "help": "For smoke tests only: build a RANDOM model from a GPTBigCode config.json or a preset name "
            "('tiny', 'starcoderbase-1b') instead of loading weights. Excludes --model_name_or_path."
        },
    )
    attn_implementation: str = field(
        default="sdpa",
        metadata={"help": "Attention kernel: 'sdpa' (default), 'eager', 'flash_attention_2' (when installed)."},
    )
    model_dtype: str = field(
        default="auto",
        metadata={
            "help": "dtype the weights are loaded in. 'auto': bfloat16 when --bf16 is on and DeepSpeed or LoRA "
            "holds fp32 copies where needed, else float32 (bf16 then runs as autocast)."
        },
    )
    dropout: float | None = field(
        default=None,
        metadata={"help": "Set resid/embd/attn dropout of the model (the OctoPack recipe used 0.1). None: keep."},
    )

    def __post_init__(self) -> None:
        if self.model_name_or_path and self.init_from_config:
            raise ConfigError("give either model_name_or_path (weights) or init_from_config (random init), not both")
        if not self.model_name_or_path and not self.init_from_config:
            raise ConfigError("model_name_or_path is required (or init_from_config for a random smoke-test model)")
        from hf_starcoder_ft.attention import SUPPORTED_IMPLEMENTATIONS

        if self.attn_implementation not in SUPPORTED_IMPLEMENTATIONS:
            raise ConfigError(
                f"attn_implementation {self.attn_implementation!r} is not supported for packed training; "
                f"choose one of {', '.join(SUPPORTED_IMPLEMENTATIONS)}"
            )
        if self.attn_implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            raise ConfigError("attn_implementation flash_attention_2 needs the flash-attn package; use sdpa")
        if self.model_dtype not in MODEL_DTYPES:
            raise ConfigError(f"model_dtype must be one of {MODEL_DTYPES}, got {self.model_dtype!r}")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")


@dataclass
class LoraArguments:
    """LoRA adapters through PEFT. Off by default (full fine-tune)."""

    use_lora: bool = field(default=False, metadata={"help": "Train LoRA adapters instead of all weights."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: list(DEFAULT_LORA_TARGETS),
        metadata={"help": "Module names (suffixes) that get adapters; GPTBigCode: c_attn c_proj c_fc."},
    )

    def __post_init__(self) -> None:
        if self.lora_r < 1:
            raise ConfigError(f"lora_r must be >= 1, got {self.lora_r}")
        if not self.lora_target_modules:
            raise ConfigError("lora_target_modules is empty")


@dataclass
class StarCoderTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the knobs of this toolkit. Defaults differ in two places: TensorBoard logging is
    on and `remove_unused_columns` is off (our datasets hold exactly the columns the collator needs)."""

    report_to: None | str | list[str] = field(
        default="tensorboard",
        metadata={"help": "Where logs go: 'tensorboard' (default, under output_dir/runs), 'wandb', 'none', ..."},
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep dataset columns (position_ids is needed for packing)."}
    )
    global_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Rows per optimizer step over all processes. Derives gradient_accumulation_steps = "
            "global / (per_device_train_batch_size * world_size); an error when it does not divide."
        },
    )
    loss_normalization: str = field(
        default="example",
        metadata={
            "help": "'example': each example weighs the same (OctoPack's --norm-target-loss); 'token': every "
            "target token weighs the same (plain HF). Applies to the whole global batch."
        },
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Allow an output_dir that already holds checkpoints or a model."}
    )
    push_dry_run: bool = field(
        default=False, metadata={"help": "With --push_to_hub: list what would be uploaded, upload nothing."}
    )
    peak_tflops: float | None = field(
        default=None,
        metadata={"help": "Peak TFLOP/s of one device for the MFU estimate (default: known GPUs, else no MFU)."},
    )
    log_batch_fingerprints: bool = field(
        default=False,
        metadata={
            "help": "Write a hash of every row each rank trains on to output_dir/batch_fingerprints/rank<N>.jsonl "
            "(to check that data-parallel ranks read different data)."
        },
    )

    def __post_init__(self) -> None:
        if self.loss_normalization not in LOSS_NORMALIZATIONS:
            raise ConfigError(
                f"loss_normalization must be one of {LOSS_NORMALIZATIONS}, got {self.loss_normalization!r}"
            )
        launched_world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if self.global_batch_size is not None:
            self.gradient_accumulation_steps = derive_gradient_accumulation(
                self.global_batch_size,
                self.per_device_train_batch_size,
                launched_world_size,
                self.gradient_accumulation_steps,
            )
        super().__post_init__()
        if self.global_batch_size is not None and self.world_size != launched_world_size:
            raise ConfigError(
                f"WORLD_SIZE is {launched_world_size} but the distributed setup has {self.world_size} processes; "
                "cannot derive gradient accumulation from global_batch_size"
            )
        if self.n_gpu > 1:
            raise ConfigError(
                f"{self.n_gpu} GPUs are visible to one process; launch one process per GPU with "
                "`accelerate launch` (see launch/), or restrict CUDA_VISIBLE_DEVICES"
            )

    @cached_property
    def _setup_devices(self):
        device = TrainingArguments._setup_devices.func(self)
        repair_cpu_deepspeed_state(self)
        return device

    def effective_global_batch_size(self) -> int:
        return self.per_device_train_batch_size * self.gradient_accumulation_steps * self.world_size


def derive_gradient_accumulation(
    global_batch_size: int, per_device_batch_size: int, world_size: int, given_accumulation: int = 1
) -> int:
    """Gradient accumulation steps so that per-device batch x accumulation x world size == global batch size.

    >>> derive_gradient_accumulation(128, 1, 64)
    2
    """
    if global_batch_size < 1 or per_device_batch_size < 1:
        raise ConfigError(
            f"global_batch_size ({global_batch_size}) and per_device_train_batch_size ({per_device_batch_size}) "
            "must be positive"
        )
    per_step = per_device_batch_size * world_size
    if global_batch_size % per_step != 0:
        raise ConfigError(
            f"global_batch_size {global_batch_size} is not divisible by per_device_train_batch_size "
            f"{per_device_batch_size} x world size {world_size} = {per_step}; change one of them"
        )
    accumulation = global_batch_size // per_step
    if given_accumulation not in (1, accumulation):
        raise ConfigError(
            f"gradient_accumulation_steps {given_accumulation} contradicts global_batch_size {global_batch_size} "
            f"(which gives {accumulation}); set only global_batch_size"
        )
    return accumulation


def repair_cpu_deepspeed_state(args: TrainingArguments) -> None:
    """Make the process count right when DeepSpeed runs on CPU (SPEC.md section 8).

    Cause: with DeepSpeed, `TrainingArguments` builds accelerate's `PartialState` without a backend; DeepSpeed
    initialises the process group itself (gloo on CPU), but accelerate, seeing no backend and no GPU, records
    `num_processes = 1`. The Trainer then neither shards the data (both ranks read the same batches) nor counts
    the ranks in DeepSpeed's `train_batch_size`. The fix rebuilds the state with the backend that is actually
    running, before anything reads it.
    """
    import torch.distributed as dist
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    state = args.distributed_state
    if state is None or state.distributed_type != DistributedType.DEEPSPEED:
        return
    if not dist.is_available() or not dist.is_initialized() or state.num_processes == dist.get_world_size():
        return
    AcceleratorState._reset_state(reset_partial_state=True)
    previous = os.environ.get("ACCELERATE_USE_DEEPSPEED")
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    try:
        args.distributed_state = PartialState(backend=dist.get_backend())
    finally:
        if previous is None:
            del os.environ["ACCELERATE_USE_DEEPSPEED"]
        else:
            os.environ["ACCELERATE_USE_DEEPSPEED"] = previous
    if args.distributed_state.num_processes != dist.get_world_size():
        raise RuntimeError(
            f"could not repair the distributed state: accelerate sees {args.distributed_state.num_processes} "
            f"processes, torch.distributed {dist.get_world_size()}"
        )


TRAIN_DATACLASSES = (ModelArguments, LoraArguments, DataConfig, StarCoderTrainingArguments)


def build_parser(prog: str = "train.py"):
    from trl import TrlParser

    return TrlParser(TRAIN_DATACLASSES, prog=prog)


def parse_train_args(
    argv: list[str] | None = None, prog: str = "train.py"
) -> tuple[ModelArguments, LoraArguments, DataConfig, StarCoderTrainingArguments]:
    """Parse `--config file.yaml` plus CLI overrides into the four dataclasses; unknown keys raise ConfigError."""
    parser = build_parser(prog)
    config_path = _config_path(argv)
    if config_path is not None and not os.path.isfile(config_path):
        raise ConfigError(f"config file {config_path} not found")
    try:
        model_args, lora_args, data_config, training_args = parser.parse_args_and_config(args=argv)
    except ConfigError:
        raise
    except ValueError as error:
        message = str(error)
        if config_path and "config file" in message:
            message = message.replace("config file", f"config file {config_path}", 1)
        raise ConfigError(message) from error
    return model_args, lora_args, data_config, training_args


def _config_path(argv: list[str] | None) -> str | None:
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if "--config" in args:
        index = args.index("--config")
        return args[index + 1] if index + 1 < len(args) else None
    return None
