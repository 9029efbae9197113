"""Reading and writing Megatron-LM (bigcode fork) checkpoint rank files, safely.

    hf-starcoder-ft convert megatron-to-hf --megatron DIR --print_structure

A checkpoint directory holds `latest_checkpointed_iteration.txt` (an integer or `release`) and one folder per
iteration (`release/`, `iter_0000250/`) with one subfolder per model-parallel rank: `mp_rank_{tp:02d}` when
PP = 1, `mp_rank_{tp:02d}_{pp:03d}` otherwise. Each holds `model_optim_rng.pt`, or `model_rng.pt` when training
used the distributed optimizer (whose `optim.pt` files live in `..._{dp:03d}` siblings and are not needed here).

Each rank file is a pickle whose `args` Namespace mentions `megatron.model.enums` classes. We load it with
`torch.load(weights_only=True)` and an explicit allow-list in which those names resolve to local stand-in enums,
so Megatron need not be installed and a file whose pickle asks for anything else (`os.system`, `builtins.exec`, ...)
is refused before any of its code can run.
"""

from __future__ import annotations

import argparse
import ctypes
import enum
import io
import mmap as _mmap
import os
import pickle
import re
import struct
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

TRACKER_FILE = "latest_checkpointed_iteration.txt"
MODEL_FILE = "model_optim_rng.pt"
MODEL_FILE_DISTRIBUTED_OPTIMIZER = "model_rng.pt"
CHECKPOINT_VERSION = 3.0


class MegatronCheckpointError(ValueError):
    """A Megatron checkpoint that cannot be used as it is; the message names the file, key or arg."""


class UnsafeCheckpointError(MegatronCheckpointError):
    """A rank file whose pickle asks for a global outside the allow-list (it was not executed)."""


# --------------------------------------------------------------------------------------------------------------
# Stand-ins for megatron.model.enums, so checkpoints unpickle without Megatron installed.


class _TolerantEnum(enum.Enum):
    """An enum that keeps values it does not know (a newer Megatron may add members) instead of failing."""

    @classmethod
    def _missing_(cls, value):
        aliases = getattr(cls, "_value_aliases", {})
        if value in aliases:
            return cls[aliases[value]]
        member = object.__new__(cls)
        member._name_ = f"unknown_{value}"
        member._value_ = value
        return member


class PositionEmbeddingType(_TolerantEnum):
    rotary = 1
    absolute = 2
    alibi = 3


# Later Megatron releases use string values for the same choices.
PositionEmbeddingType._value_aliases = {"learned_absolute": "absolute", "rope": "rotary", "alibi": "alibi"}


class ModelType(_TolerantEnum):
    encoder_or_decoder = 1
    encoder_and_decoder = 2


class LayerType(_TolerantEnum):
    encoder = 1
    decoder = 2


class AttnType(_TolerantEnum):
    self_attn = 1
    cross_attn = 2


class AttnMaskType(_TolerantEnum):
    padding = 1
    causal = 2
    prefix = 3
    custom = 4


_MEGATRON_ENUMS = (PositionEmbeddingType, ModelType, LayerType, AttnType, AttnMaskType)
# The name each stand-in is written under (and read back from) in a pickle.
PICKLE_NAMES: dict[type, str] = {cls: f"megatron.model.enums.{cls.__name__}" for cls in _MEGATRON_ENUMS}


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def safe_globals() -> list:
    """The allow-list for `torch.load(weights_only=True)`: data types only, nothing that runs code.

    Megatron's `rng_state` holds NumPy's random state (an ndarray), hence the NumPy array rebuilders; they
    construct arrays from bytes and nothing else.
    """
    allowed: list = [argparse.Namespace]
    allowed += [(cls, name) for cls, name in PICKLE_NAMES.items()]
    allowed.append((ModelType, "megatron.core.enums.ModelType"))
    reconstruct = _numpy_reconstruct()
    allowed += [
        (reconstruct, "numpy.core.multiarray._reconstruct"),
        (reconstruct, "numpy._core.multiarray._reconstruct"),
        np.ndarray,
        np.dtype,
    ]
    allowed += [dtype_class for dtype_class in vars(np.dtypes).values() if isinstance(dtype_class, type)]
    return allowed


# --------------------------------------------------------------------------------------------------------------
# Loading one rank file.

_MADV_DONTNEED = 4
_MADV_POPULATE_READ = 22  # Linux >= 5.14; older kernels answer EINVAL and the pages fault in one by one
_libc = None


def _madvise(address: int, length: int, advice: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    _libc.madvise(address, length, advice)


def _byte_range(tensor: torch.Tensor) -> tuple[int, int]:
    start = tensor.data_ptr()
    return start, start + tensor.numel() * tensor.element_size()


@dataclass
class RankFile:
    """One loaded rank file. With `mmapped`, tensors are views of a private read-only mapping of the file."""

    path: Path
    content: dict
    mmapped: bool
    _mapping_base: int | None = field(default=None, repr=False)
    _base_known: bool = field(default=False, repr=False)

    def file_offset(self, tensor: torch.Tensor) -> int | None:
        """Where `tensor`'s bytes start in the rank file, so they can be copied file to file without entering
        memory; None when unknown (legacy format, not a contiguous mapped tensor), and then callers read the
        tensor instead.

        torch maps the whole file once and hands out slices, so a tensor's address minus the mapping's start
        is its file offset; the start is found from the zip records' data offsets, and every answer is checked
        against the bytes on disk before it is trusted.
        """
        if not (self._mapped(tensor) and tensor.is_contiguous() and tensor.numel()):
            return None
        if not self._base_known:
            self._base_known = True
            self._mapping_base = _mapping_base(self.path, self.content)
        if self._mapping_base is None:
            return None
        offset = tensor.data_ptr() - self._mapping_base
        size = tensor.numel() * tensor.element_size()
        probe = min(size, 64)
        raw = tensor.reshape(-1).view(torch.uint8)
        with open(self.path, "rb", buffering=0) as file:
            head, tail = os.pread(file.fileno(), probe, offset), os.pread(file.fileno(), probe, offset + size - probe)
        if head != raw[:probe].numpy().tobytes() or tail != raw[size - probe :].numpy().tobytes():
            return None
        return offset

    def _mapped(self, tensor: torch.Tensor) -> bool:
        return self.mmapped and sys.platform.startswith("linux") and tensor.device.type == "cpu"

    def prefetch(self, tensor: torch.Tensor) -> None:
        """Map the pages behind `tensor` in one call instead of one page fault at a time (a speed-up only)."""
        if self._mapped(tensor) and tensor.numel():
            start, end = _byte_range(tensor)
            first = start // _mmap.PAGESIZE * _mmap.PAGESIZE
            _madvise(first, end - first, _MADV_POPULATE_READ)

    def release(self, tensor: torch.Tensor) -> None:
        """Drop the resident pages behind `tensor` once it has been consumed.

        The tensor stays valid: its pages are read again from the file if touched. Only whole pages inside
        the tensor's bytes are released, and only for file mappings (on anonymous memory this would zero data).
        This is what keeps peak memory near one layer rather than one pipeline stage.
        """
        if not self._mapped(tensor):
            return
        page = _mmap.PAGESIZE
        start, end = _byte_range(tensor)
        first, last = -(-start // page) * page, end // page * page
        if last > first:
            _madvise(first, last - first, _MADV_DONTNEED)


def _zip_data_offsets(path: Path) -> list[int]:
    """File offsets of the stored (uncompressed) tensor data records of a torch zip checkpoint."""
    offsets = []
    with zipfile.ZipFile(path) as archive, open(path, "rb") as file:
        for info in archive.infolist():
            if "/data/" not in info.filename or info.file_size == 0 or info.compress_type != zipfile.ZIP_STORED:
                continue
            file.seek(info.header_offset)
            header = file.read(30)  # the local file header: name and extra-field lengths end it
            name_length, extra_length = struct.unpack("<HH", header[26:30])
            offsets.append(info.header_offset + 30 + name_length + extra_length)
    return offsets


def _mapping_base(path: Path, content: dict) -> int | None:
    """The address at which torch mapped `path` (lowest storage address minus lowest data record offset), or
    None if the storages do not line up with the file's records as one mapping of the whole file would."""
    try:
        offsets = _zip_data_offsets(path)
    except (zipfile.BadZipFile, OSError, struct.error):
        return None
    addresses = []

    def visit(node) -> None:
        if isinstance(node, torch.Tensor):
            storage = node.untyped_storage()
            if storage.nbytes():
                addresses.append(storage.data_ptr())
        elif isinstance(node, dict):
            for value in node.values():
                visit(value)
        elif isinstance(node, list | tuple):
            for value in node:
                visit(value)

    visit(content)
    if not offsets or not addresses:
        return None
    base = min(addresses) - min(offsets)
    # Trust it only if every storage starts exactly at one of the file's data records.
    record_starts = set(offsets)
    if any(address - base not in record_starts for address in addresses):
        return None
    return base


_UNSAFE_MARKERS = ("GLOBAL", "allowlisted", "unrecognized function", "blocked", "add_safe_globals")


def load_rank_file(path: str | Path, mmap: bool = True) -> RankFile:
    """Load one rank file with the safe unpickler; `mmap` maps tensors instead of reading them into memory."""
    path = Path(path)
    if not path.is_file():
        raise MegatronCheckpointError(f"{path}: rank file not found")
    mapped = mmap
    try:
        with torch.serialization.safe_globals(safe_globals()):
            try:
                content = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            except RuntimeError as error:
                if not (mmap and "mmap can only be used" in str(error)):
                    raise
                # Legacy (pre-zip) serialization cannot be mapped; read it whole.
                mapped = False
                content = torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    except pickle.UnpicklingError as error:
        message = str(error)
        if any(marker in message for marker in _UNSAFE_MARKERS):
            found = re.search(r"GLOBAL (\S+)", message) or re.search(r"function (\S+)", message)
            what = found.group(1) if found else "an object outside the allow-list"
            raise UnsafeCheckpointError(
                f"{path}: refused to load: its pickle asks for {what}, which is not on the allow-list of data "
                "types (argparse.Namespace, Megatron enums, torch dtypes and tensors). Nothing from the file was "
                "executed. Do not load this file with weights_only=False unless you trust who made it."
            ) from None
        raise MegatronCheckpointError(f"{path}: corrupt pickle ({message.splitlines()[0]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, IndexError, KeyError) as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise MegatronCheckpointError(
            f"{path}: cannot read this rank file (truncated or corrupt?): {first_line}"
        ) from None
    if not isinstance(content, dict):
        raise MegatronCheckpointError(f"{path}: expected a pickled dict, found {type(content).__name__}")
    if "model" not in content:
        if any(key.startswith("model") and key[5:].isdigit() for key in content):
            raise MegatronCheckpointError(
                f"{path}: holds `model0`, `model1`, ... (virtual/interleaved pipeline stages), which is not supported"
            )
        raise MegatronCheckpointError(f"{path}: no `model` entry (top-level keys: {sorted(content)})")
    if "args" not in content or not isinstance(content["args"], argparse.Namespace):
        raise MegatronCheckpointError(f"{path}: no `args` Namespace; cannot tell the model's shape")
    return RankFile(path=path, content=content, mmapped=mapped)


def flatten_model_state(model: dict, prefix: str = "model") -> dict[str, Any]:
    """Flatten the nested `model` tree into dotted keys: `model.language_model.encoder.layers.0....`."""
    flat: dict[str, Any] = {}
    for key, value in model.items():
        name = f"{prefix}.{key}"
        if isinstance(value, dict):
            flat.update(flatten_model_state(value, name))
        else:
            flat[name] = value
    return flat


# --------------------------------------------------------------------------------------------------------------
# Writing one rank file, with the enum stand-ins recorded under Megatron's names.


class _MegatronPickler(pickle._Pickler):
    """Records the stand-in enums as `megatron.model.enums.X`, the names Megatron itself reads back."""

    def save_global(self, obj, name=None):
        qualified = PICKLE_NAMES.get(obj)
        if qualified is None:
            return super().save_global(obj, name)
        module, _, attribute = qualified.rpartition(".")
        if self.proto >= 4:
            self.save(module)
            self.save(attribute)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + module.encode() + b"\n" + attribute.encode() + b"\n")
        self.memoize(obj)


class _MegatronPickleModule:
    Pickler = _MegatronPickler
    Unpickler = pickle.Unpickler


def save_rank_file(content: dict, path: Path) -> None:
    """Write a rank file as Megatron does (`torch.save`, zip format, pickle protocol 2)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(content, path, pickle_module=_MegatronPickleModule, pickle_protocol=2)


def pickle_globals(path: Path) -> set[str]:
    """The `module.name` globals a rank file's pickle refers to (read without unpickling anything)."""
    import pickletools

    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl")
        data = archive.read(name)
    found = set()
    pending: list[str] = []
    for opcode, argument, _ in pickletools.genops(io.BytesIO(data)):
        if opcode.name == "GLOBAL":
            found.add(argument.replace(" ", "."))
        elif opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            pending = (pending + [argument])[-2:]
        elif opcode.name == "STACK_GLOBAL" and len(pending) == 2:
            found.add(".".join(pending))
    return found


# --------------------------------------------------------------------------------------------------------------
# The model's shape, read from (or written into) `args`.

SUPPORTED_ACTIVATIONS = ("gelu_pytorch_tanh", "gelu_new", "gelu")


@dataclass(frozen=True)
class ModelSpec:
    """Everything about a GPTBigCode-shaped model that the conversion needs, independent of the file format."""

    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    kv_channels: int
    max_position_embeddings: int
    padded_vocab_size: int
    multi_query: bool
    activation: str  # an HF activation name from SUPPORTED_ACTIVATIONS
    layernorm_epsilon: float = 1e-5
    attention_softmax_in_fp32: bool = True
    apply_query_key_layer_scaling: bool = True
    tp: int = 1
    pp: int = 1
    make_vocab_size_divisible_by: int = 128

    @property
    def layers_per_stage(self) -> int:
        return self.num_layers // self.pp

    @property
    def kv_rows(self) -> int:
        """Rows of `key_value` (multi-query): K then V of the single shared head."""
        return 2 * self.kv_channels

    def stage_layers(self, pp_rank: int) -> range:
        """Global layer numbers held by pipeline stage `pp_rank` (Megatron names them 0.. locally)."""
        return range(pp_rank * self.layers_per_stage, (pp_rank + 1) * self.layers_per_stage)


def activation_from_args(args: argparse.Namespace) -> tuple[str, str]:
    """The HF activation that reproduces Megatron's MLP, and why (fusion wins over openai_gelu, as in Megatron)."""
    if getattr(args, "bias_gelu_fusion", True):
        return "gelu_pytorch_tanh", "args.bias_gelu_fusion is true: Megatron ran the tanh-approximate GELU"
    if getattr(args, "openai_gelu", False):
        return "gelu_new", "args.openai_gelu is true: Megatron ran OpenAI's tanh-approximate GELU"
    return "gelu", "bias_gelu_fusion and openai_gelu are false: Megatron ran the exact (erf) GELU"


def activation_to_args(activation: str) -> dict[str, bool]:
    """The `bias_gelu_fusion` / `openai_gelu` pair that makes Megatron run `activation`."""
    if activation == "gelu_pytorch_tanh":
        return {"bias_gelu_fusion": True, "openai_gelu": False}
    if activation == "gelu_new":
        return {"bias_gelu_fusion": False, "openai_gelu": True}
    if activation == "gelu":
        return {"bias_gelu_fusion": False, "openai_gelu": False}
    raise MegatronCheckpointError(
        f"activation_function {activation!r} cannot be expressed in Megatron's args "
        f"(supported: {', '.join(SUPPORTED_ACTIVATIONS)})"
    )


def spec_from_args(args: argparse.Namespace, source: Path | str) -> ModelSpec:
    """Read and check the model's shape from a rank file's `args`; errors name the file and the field."""

    def require(field: str):
        value = getattr(args, field, None)
        if value is None:
            raise MegatronCheckpointError(f"{source}: args.{field} is missing")
        return value

    num_layers = int(require("num_layers"))
    hidden = int(require("hidden_size"))
    heads = int(require("num_attention_heads"))
    ffn = int(getattr(args, "ffn_hidden_size", None) or 4 * hidden)
    kv_channels = int(getattr(args, "kv_channels", None) or hidden // heads)
    tp = int(require("tensor_model_parallel_size"))
    pp = int(require("pipeline_model_parallel_size"))
    head_type = getattr(args, "attention_head_type", None) or "multihead"
    if head_type not in ("multihead", "multiquery"):
        raise MegatronCheckpointError(
            f"{source}: args.attention_head_type={head_type!r}; only 'multihead' and 'multiquery' map to GPTBigCode"
        )
    if kv_channels * heads != hidden:
        raise MegatronCheckpointError(
            f"{source}: args.kv_channels={kv_channels} x num_attention_heads={heads} != hidden_size={hidden}; "
            "GPTBigCode needs head_dim = hidden_size / heads"
        )
    position = getattr(args, "position_embedding_type", PositionEmbeddingType.absolute)
    if getattr(position, "name", position) not in ("absolute", "learned_absolute"):
        raise MegatronCheckpointError(
            f"{source}: args.position_embedding_type={position}; GPTBigCode has only learned absolute positions"
        )
    if getattr(args, "apply_residual_connection_post_layernorm", False):
        raise MegatronCheckpointError(
            f"{source}: args.apply_residual_connection_post_layernorm is true; GPTBigCode is pre-LayerNorm only"
        )
    if getattr(args, "untie_embeddings_and_output_weights", False):
        raise MegatronCheckpointError(
            f"{source}: args.untie_embeddings_and_output_weights is true; GPTBigCode ties them"
        )
    if num_layers % pp:
        raise MegatronCheckpointError(f"{source}: args.num_layers={num_layers} is not divisible by PP={pp}")
    if heads % tp or ffn % tp:
        raise MegatronCheckpointError(f"{source}: heads={heads} and ffn_hidden_size={ffn} must divide by TP={tp}")
    padded_vocab = int(require("padded_vocab_size"))
    if padded_vocab % tp:
        raise MegatronCheckpointError(f"{source}: args.padded_vocab_size={padded_vocab} is not divisible by TP={tp}")
    activation, _ = activation_from_args(args)
    return ModelSpec(
        num_layers=num_layers,
        hidden_size=hidden,
        ffn_hidden_size=ffn,
        num_attention_heads=heads,
        kv_channels=kv_channels,
        max_position_embeddings=int(require("max_position_embeddings")),
        padded_vocab_size=padded_vocab,
        multi_query=head_type == "multiquery",
        activation=activation,
        layernorm_epsilon=float(getattr(args, "layernorm_epsilon", 1e-5) or 1e-5),
        attention_softmax_in_fp32=bool(getattr(args, "attention_softmax_in_fp32", False)),
        apply_query_key_layer_scaling=bool(getattr(args, "apply_query_key_layer_scaling", True)),
        tp=tp,
        pp=pp,
        make_vocab_size_divisible_by=int(getattr(args, "make_vocab_size_divisible_by", 128) or 128),
    )


def build_args(
    spec: ModelSpec, params_dtype: torch.dtype, use_distributed_optimizer: bool, **extra
) -> argparse.Namespace:
    """The `args` Namespace the exporter writes: every field SPEC.md section 6 lists, plus what Megatron checks
    on load (`tokenizer_type`, `seq_length`, dtypes, counters), with Megatron's own enum types."""
    fields = dict(
        num_layers=spec.num_layers,
        hidden_size=spec.hidden_size,
        ffn_hidden_size=spec.ffn_hidden_size,
        num_attention_heads=spec.num_attention_heads,
        kv_channels=spec.kv_channels,
        max_position_embeddings=spec.max_position_embeddings,
        seq_length=spec.max_position_embeddings,
        padded_vocab_size=spec.padded_vocab_size,
        make_vocab_size_divisible_by=spec.make_vocab_size_divisible_by,
        attention_head_type="multiquery" if spec.multi_query else "multihead",
        tensor_model_parallel_size=spec.tp,
        pipeline_model_parallel_size=spec.pp,
        data_parallel_size=1,
        world_size=spec.tp * spec.pp,
        params_dtype=params_dtype,
        bf16=params_dtype == torch.bfloat16,
        fp16=params_dtype == torch.float16,
        apply_query_key_layer_scaling=spec.apply_query_key_layer_scaling,
        attention_softmax_in_fp32=spec.attention_softmax_in_fp32,
        layernorm_epsilon=spec.layernorm_epsilon,
        position_embedding_type=PositionEmbeddingType.absolute,
        model_type=ModelType.encoder_or_decoder,
        apply_residual_connection_post_layernorm=False,
        use_distributed_optimizer=use_distributed_optimizer,
        tokenizer_type="TokenizerFromFile",
        consumed_train_samples=0,
        consumed_valid_samples=0,
        **activation_to_args(spec.activation),
    )
    fields.update(extra)
    return argparse.Namespace(**fields)


# --------------------------------------------------------------------------------------------------------------
# Directory layout.


def rank_dir_name(tp_rank: int, pp_rank: int, pp: int) -> str:
    return f"mp_rank_{tp_rank:02d}" if pp == 1 else f"mp_rank_{tp_rank:02d}_{pp_rank:03d}"


def iteration_dir_name(iteration: int | str) -> str:
    return "release" if iteration == "release" else f"iter_{int(iteration):07d}"


def parse_iteration(text: str, source: Path | str) -> int | str:
    text = text.strip()
    if text == "release":
        return "release"
    try:
        value = int(text)
    except ValueError:
        raise MegatronCheckpointError(f"{source}: expected an iteration number or `release`, found {text!r}") from None
    if value < 0:
        raise MegatronCheckpointError(f"{source}: negative iteration {value}")
    return value


_RANK_DIR = re.compile(r"mp_rank_(\d{2})(?:_(\d{3}))?$")


@dataclass
class MegatronCheckpoint:
    """A located checkpoint: which iteration folder, which rank files, and the model's shape from `args`."""

    root: Path
    iteration_dir: Path
    iteration: int | str
    file_name: str
    spec: ModelSpec
    args: argparse.Namespace
    checkpoint_version: float | None

    def rank_path(self, tp_rank: int, pp_rank: int) -> Path:
        return self.iteration_dir / rank_dir_name(tp_rank, pp_rank, self.spec.pp) / self.file_name

    def load_rank(self, tp_rank: int, pp_rank: int, mmap: bool = True) -> RankFile:
        rank = load_rank_file(self.rank_path(tp_rank, pp_rank), mmap=mmap)
        args = rank.content["args"]
        for arg_name, expected in (
            ("tensor_model_parallel_size", self.spec.tp),
            ("pipeline_model_parallel_size", self.spec.pp),
        ):
            if getattr(args, arg_name, None) != expected:
                raise MegatronCheckpointError(
                    f"{rank.path}: args.{arg_name}={getattr(args, arg_name, None)} disagrees with rank 0's {expected}"
                )
        return rank

    def iter_stages(self, mmap: bool = True) -> Iterator[tuple[int, list[RankFile]]]:
        """Yield each pipeline stage's TP rank files, loading one stage at a time."""
        for pp_rank in range(self.spec.pp):
            ranks = [self.load_rank(tp_rank, pp_rank, mmap=mmap) for tp_rank in range(self.spec.tp)]
            yield pp_rank, ranks
            del ranks


def resolve_iteration_dir(root: Path, iteration: str | int | None) -> tuple[Path, int | str]:
    """Find the iteration folder: the one given, or the tracker file's, or `root` itself if it holds rank dirs."""
    root = Path(root)
    if not root.is_dir():
        raise MegatronCheckpointError(f"{root}: Megatron checkpoint directory not found")
    if iteration is None and any(_RANK_DIR.match(p.name) for p in root.iterdir() if p.is_dir()):
        name = root.name
        found = "release" if name == "release" else parse_iteration(name[5:], root) if name.startswith("iter_") else 0
        return root, found
    if iteration is None:
        tracker = root / TRACKER_FILE
        if not tracker.is_file():
            raise MegatronCheckpointError(
                f"{root}: no {TRACKER_FILE}; pass --iteration N or --iteration release to pick a folder"
            )
        iteration = parse_iteration(tracker.read_text(), tracker)
    else:
        iteration = parse_iteration(str(iteration), "--iteration")
    folder = root / iteration_dir_name(iteration)
    if not folder.is_dir():
        raise MegatronCheckpointError(f"{folder}: iteration folder not found (iteration {iteration})")
    return folder, iteration


def open_checkpoint(root: str | Path, iteration: str | int | None = None) -> MegatronCheckpoint:
    """Locate the rank files, read `args` from rank (0, 0) and check the folders on disk match its TP and PP."""
    root = Path(root)
    folder, found_iteration = resolve_iteration_dir(root, iteration)
    ranks_on_disk: dict[tuple[int, int], str] = {}
    pp_style = set()
    for entry in sorted(folder.iterdir()):
        match = _RANK_DIR.match(entry.name)
        if not match or not entry.is_dir():
            continue
        files = [name for name in (MODEL_FILE, MODEL_FILE_DISTRIBUTED_OPTIMIZER) if (entry / name).is_file()]
        if not files:
            if (entry / "optim.pt").is_file():
                continue  # a distributed-optimizer shard folder (mp_rank_XX_YYY with PP=1): not weights
            raise MegatronCheckpointError(
                f"{entry}: no {MODEL_FILE} or {MODEL_FILE_DISTRIBUTED_OPTIMIZER} in this rank folder"
            )
        ranks_on_disk[(int(match.group(1)), int(match.group(2) or 0))] = files[0]
        pp_style.add(match.group(2) is not None)
    if not ranks_on_disk:
        raise MegatronCheckpointError(f"{folder}: no mp_rank_* folders with rank files")
    file_names = set(ranks_on_disk.values())
    if len(file_names) > 1:
        raise MegatronCheckpointError(f"{folder}: rank folders mix {sorted(file_names)}; expected one layout")
    file_name = file_names.pop()
    if len(pp_style) > 1:
        raise MegatronCheckpointError(f"{folder}: rank folders mix mp_rank_XX and mp_rank_XX_YYY names")

    uses_pp_names = pp_style.pop()
    first_dir = folder / rank_dir_name(0, 0, 2 if uses_pp_names else 1)
    first = load_rank_file(first_dir / file_name, mmap=True)
    args = first.content["args"]
    spec = spec_from_args(args, first.path)
    version = first.content.get("checkpoint_version")
    del first

    if uses_pp_names != (spec.pp > 1):
        style = "mp_rank_XX_YYY (with a pipeline rank)" if uses_pp_names else "mp_rank_XX (no pipeline rank)"
        raise MegatronCheckpointError(
            f"{folder}: rank folders are named {style}, but {first_dir / file_name} args say PP={spec.pp}"
        )
    expected = {(t, p) for t in range(spec.tp) for p in range(spec.pp)}
    missing = sorted(expected - set(ranks_on_disk))
    if missing:
        paths = ", ".join(str(folder / rank_dir_name(t, p, spec.pp) / file_name) for t, p in missing)
        raise MegatronCheckpointError(f"args say TP={spec.tp}, PP={spec.pp}, but these rank files are missing: {paths}")
    extra = sorted(set(ranks_on_disk) - expected)
    if extra:
        names = ", ".join(rank_dir_name(t, p, spec.pp) for t, p in extra)
        raise MegatronCheckpointError(
            f"{folder}: rank folders {names} lie outside TP={spec.tp}, PP={spec.pp} from "
            f"{first_dir / file_name} args; the folders and the args disagree"
        )
    if version is not None and float(version) < 2.0:
        raise MegatronCheckpointError(
            f"{first_dir / file_name}: checkpoint_version {version} < 2.0 stores QKV in an older order; not supported"
        )
    return MegatronCheckpoint(
        root=root,
        iteration_dir=folder,
        iteration=found_iteration,
        file_name=file_name,
        spec=spec,
        args=args,
        checkpoint_version=version,
    )


def describe_structure(checkpoint: MegatronCheckpoint) -> str:
    """A readable tree of rank files, their tensors (shape, dtype) and the args, for --print_structure."""
    lines = [
        f"checkpoint: {checkpoint.root}",
        f"iteration:  {checkpoint.iteration} ({checkpoint.iteration_dir.name}/, {checkpoint.file_name})",
        f"checkpoint_version: {checkpoint.checkpoint_version}",
        f"TP={checkpoint.spec.tp} PP={checkpoint.spec.pp}",
        "args:",
    ]
    for key, value in sorted(vars(checkpoint.args).items()):
        lines.append(f"  {key} = {value!r}")
    for pp_rank, ranks in checkpoint.iter_stages():
        for tp_rank, rank in enumerate(ranks):
            lines.append(f"{rank.path.relative_to(checkpoint.iteration_dir)} (tp={tp_rank}, pp={pp_rank}):")
            others = sorted(key for key in rank.content if key not in ("model", "args"))
            lines.append(f"  other entries: {', '.join(others) or '(none)'}")
            for key, value in flatten_model_state(rank.content["model"]).items():
                if isinstance(value, torch.Tensor):
                    lines.append(f"  {key}  {list(value.shape)}  {str(value.dtype).removeprefix('torch.')}")
                else:
                    lines.append(f"  {key}  ({type(value).__name__})")
    return "\n".join(lines)
