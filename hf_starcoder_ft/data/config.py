"""The data configuration shared by `hf-starcoder-ft prepare` and training (same names in YAML and on the CLI).

    hf-starcoder-ft prepare --train_data data/train.jsonl --tokenizer tokenizer.json --max_length 2048 \
        --output_dir prepared
    accelerate launch train.py --config configs/tiny_cpu.yaml --train_data data/train.jsonl

A data SPEC (`train_data`, `valid_data`, `test_data`) is one of:
- a jsonl file (`.jsonl`, `.jsonl.gz`, `.json`): the whole file is used;
- a Megatron data-path file, one quoted line per group: `"train: 1.0 0:0.95 data.jsonl"`; several sources as
  `"train: 0.7 0:0.95 a.jsonl, 0.3 0:0.95 b.jsonl"` (weight, start:end fraction of the records, path);
- a YAML mixture file (`.yaml`/`.yml`): a list of `{path, weight, start, end}` (or a mapping with key `sources`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

TRUNCATION_MODES = ("skip", "truncate_input")
PACKING_STRATEGIES = ("best_fit", "greedy")


@dataclass
class DataConfig:
    """Where the examples come from and how they become token rows."""

    train_data: str | None = field(
        default=None,
        metadata={"help": "Training data: a jsonl path, a Megatron data-path file, or a YAML mixture file."},
    )
    valid_data: str | None = field(
        default=None, metadata={"help": "Validation data SPEC (same forms as train_data). Optional."}
    )
    test_data: str | None = field(default=None, metadata={"help": "Test data SPEC (same forms). Optional."})
    prepared_data: str | None = field(
        default=None,
        metadata={"help": "A directory written by `hf-starcoder-ft prepare`; used instead of the *_data sources."},
    )
    tokenizer: str | None = field(
        default=None,
        metadata={"help": "tokenizer.json file or model directory (training defaults to the model's own)."},
    )
    max_length: int = field(default=8192, metadata={"help": "Tokens per row (per example when not packing)."})
    packing: bool = field(
        default=True, metadata={"help": "Pack whole examples into rows of max_length (documents isolated)."}
    )
    packing_strategy: str = field(
        default="best_fit",
        metadata={"help": "How examples are packed: 'best_fit' (best-fit decreasing) or 'greedy' (Megatron's order)."},
    )
    truncation: str = field(
        default="skip",
        metadata={
            "help": "Examples longer than max_length: 'skip' them (as the original did) or 'truncate_input' "
            "(drop input tokens from the left, keep the whole target)."
        },
    )
    skip_bad_records: bool = field(
        default=False, metadata={"help": "Skip and count malformed jsonl lines instead of stopping at the first."}
    )
    deduplicate: bool = field(default=True, metadata={"help": "Drop exact duplicate (inputs, targets) records."})
    num_proc: int = field(default=1, metadata={"help": "Worker processes for tokenization."})
    pad_to_multiple_of: int | None = field(
        default=None, metadata={"help": "Round each batch's padded length up to a multiple of this."}
    )
    data_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Where prepared data is cached (default: ~/.cache/hf_starcoder_ft/prepared)."},
    )

    def __post_init__(self) -> None:
        if self.max_length <= 1:
            raise ValueError(f"max_length must be at least 2, got {self.max_length}")
        if self.truncation not in TRUNCATION_MODES:
            raise ValueError(f"truncation must be one of {TRUNCATION_MODES}, got {self.truncation!r}")
        if self.packing_strategy not in PACKING_STRATEGIES:
            raise ValueError(f"packing_strategy must be one of {PACKING_STRATEGIES}, got {self.packing_strategy!r}")
        if self.num_proc < 1:
            raise ValueError(f"num_proc must be >= 1, got {self.num_proc}")
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be >= 1, got {self.pad_to_multiple_of}")

    def has_sources(self) -> bool:
        return self.prepared_data is not None or self.train_data is not None
