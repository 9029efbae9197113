"""Test-only Megatron checkpoint writer, built from SPEC.md section 6 and nothing in hf_starcoder_ft.convert.

The conversion tests need Megatron checkpoints that do not come from our own exporter, or a bug shared by
the exporter and the importer would cancel out in a round trip. This writer follows the format description
directly: tracker file, `release/` or `iter_NNNNNNN/`, `mp_rank_XX[_YYY]/model_optim_rng.pt` (or
`model_rng.pt` + `..._000/optim.pt`), a pickled dict with an `args` Namespace that holds real
`megatron.model.enums` members (a stand-in module is put in `sys.modules` while saving, so the pickle records
Megatron's qualified names exactly as a real checkpoint does), NumPy RNG state, and the bigcode state tree.
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch


class PositionEmbeddingType(enum.Enum):
    rotary = 1
    absolute = 2
    alibi = 3


class ModelType(enum.Enum):
    encoder_or_decoder = 1
    encoder_and_decoder = 2


class AttnMaskType(enum.Enum):
    padding = 1
    causal = 2


_ENUMS_MODULE = types.ModuleType("megatron.model.enums")
for _cls in (PositionEmbeddingType, ModelType, AttnMaskType):
    # Pickle records a class as `__module__.__qualname__`: make it the name a real checkpoint carries.
    _cls.__module__ = "megatron.model.enums"
    _cls.__qualname__ = _cls.__name__
    setattr(_ENUMS_MODULE, _cls.__name__, _cls)


@contextlib.contextmanager
def fake_megatron_modules():
    """Make `megatron.model.enums` importable for the duration of a `torch.save` / `torch.load`."""
    names = ("megatron", "megatron.model", "megatron.model.enums")
    saved = {name: sys.modules.get(name) for name in names}
    sys.modules["megatron"] = types.ModuleType("megatron")
    sys.modules["megatron.model"] = types.ModuleType("megatron.model")
    sys.modules["megatron.model.enums"] = _ENUMS_MODULE
    try:
        yield _ENUMS_MODULE
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous


def _chunks(tensor: torch.Tensor, parts: int, dim: int) -> list[torch.Tensor]:
    return [piece.clone() for piece in torch.tensor_split(tensor, parts, dim=dim)]


def reference_args(config: dict, tp: int, pp: int, padded_vocab: int, dtype: torch.dtype, enums, **overrides):
    """`args` with the fields SPEC.md section 6 lists, as Megatron's argument parser would leave them."""
    activation = config.get("activation_function", "gelu_pytorch_tanh")
    values = dict(
        num_layers=config["n_layer"],
        hidden_size=config["n_embd"],
        ffn_hidden_size=config["n_inner"],
        num_attention_heads=config["n_head"],
        kv_channels=config["n_embd"] // config["n_head"],
        max_position_embeddings=config["n_positions"],
        seq_length=config["n_positions"],
        padded_vocab_size=padded_vocab,
        attention_head_type="multiquery" if config["multi_query"] else "multihead",
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        params_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp16=False,
        bias_gelu_fusion=activation == "gelu_pytorch_tanh",
        openai_gelu=activation == "gelu_new",
        apply_query_key_layer_scaling=True,
        attention_softmax_in_fp32=True,
        make_vocab_size_divisible_by=128,
        layernorm_epsilon=config.get("layer_norm_epsilon", 1e-5),
        position_embedding_type=enums.PositionEmbeddingType.absolute,
        model_type=enums.ModelType.encoder_or_decoder,
        hidden_dropout=0.1,
        attention_dropout=0.1,
        tokenizer_type="TokenizerFromFile",
        micro_batch_size=1,
        lr=5e-5,
    )
    values.update(overrides)
    return argparse.Namespace(**values)


def reference_rank_states(hf_state: dict, config: dict, tp: int, pp: int, padded_vocab: int, padding_seed=None):
    """{(tp_rank, pp_rank): flat dict of `model.*` keys} straight from the SPEC mapping table."""
    hidden = config["n_embd"]
    layers = config["n_layer"]
    per_stage = layers // pp
    wte = hf_state["transformer.wte.weight"]
    padding_rows = padded_vocab - wte.shape[0]
    if padding_seed is None:
        pad = torch.zeros(padding_rows, hidden, dtype=wte.dtype)
    else:
        generator = torch.Generator().manual_seed(padding_seed)
        pad = torch.randn(padding_rows, hidden, generator=generator).to(wte.dtype)
    wte = torch.cat([wte, pad])
    states = {}
    for p in range(pp):
        for t in range(tp):
            state: dict[str, torch.Tensor] = {}
            if p == 0:
                state["model.language_model.embedding.word_embeddings.weight"] = _chunks(wte, tp, 0)[t]
                state["model.language_model.embedding.position_embeddings.weight"] = hf_state[
                    "transformer.wpe.weight"
                ].clone()
            for local in range(per_stage):
                g = p * per_stage + local
                h = f"transformer.h.{g}."
                m = f"model.language_model.encoder.layers.{local}."
                state[m + "input_layernorm.weight"] = hf_state[h + "ln_1.weight"].clone()
                state[m + "input_layernorm.bias"] = hf_state[h + "ln_1.bias"].clone()
                if config["multi_query"]:
                    w, b = hf_state[h + "attn.c_attn.weight"], hf_state[h + "attn.c_attn.bias"]
                    state[m + "self_attention.query.weight"] = _chunks(w[:hidden], tp, 0)[t]
                    state[m + "self_attention.query.bias"] = _chunks(b[:hidden], tp, 0)[t]
                    state[m + "self_attention.key_value.weight"] = w[hidden:].clone()
                    state[m + "self_attention.key_value.bias"] = b[hidden:].clone()
                else:
                    state[m + "self_attention.query_key_value.weight"] = _chunks(
                        hf_state[h + "attn.c_attn.weight"], tp, 0
                    )[t]
                    state[m + "self_attention.query_key_value.bias"] = _chunks(hf_state[h + "attn.c_attn.bias"], tp, 0)[
                        t
                    ]
                state[m + "self_attention.dense.weight"] = _chunks(hf_state[h + "attn.c_proj.weight"], tp, 1)[t]
                state[m + "self_attention.dense.bias"] = hf_state[h + "attn.c_proj.bias"].clone()
                state[m + "post_attention_layernorm.weight"] = hf_state[h + "ln_2.weight"].clone()
                state[m + "post_attention_layernorm.bias"] = hf_state[h + "ln_2.bias"].clone()
                state[m + "mlp.dense_h_to_4h.weight"] = _chunks(hf_state[h + "mlp.c_fc.weight"], tp, 0)[t]
                state[m + "mlp.dense_h_to_4h.bias"] = _chunks(hf_state[h + "mlp.c_fc.bias"], tp, 0)[t]
                state[m + "mlp.dense_4h_to_h.weight"] = _chunks(hf_state[h + "mlp.c_proj.weight"], tp, 1)[t]
                state[m + "mlp.dense_4h_to_h.bias"] = hf_state[h + "mlp.c_proj.bias"].clone()
            if p == pp - 1:
                state["model.language_model.encoder.final_layernorm.weight"] = hf_state[
                    "transformer.ln_f.weight"
                ].clone()
                state["model.language_model.encoder.final_layernorm.bias"] = hf_state["transformer.ln_f.bias"].clone()
                if pp > 1:
                    state["model.word_embeddings_for_head.weight"] = _chunks(wte, tp, 0)[t]
            states[(t, p)] = state
    return states


def nest(flat: dict[str, torch.Tensor]) -> dict:
    """Flat `model.*` keys -> Megatron's tree: nested dicts down to the encoder, whose keys stay dotted."""
    tree: dict = {}
    for key, tensor in flat.items():
        rest = key.removeprefix("model.")
        if rest.startswith("language_model.encoder."):
            tree.setdefault("language_model", {}).setdefault("encoder", {})[
                rest.removeprefix("language_model.encoder.")
            ] = tensor
        elif rest.startswith("language_model.embedding."):
            kind, leaf = rest.removeprefix("language_model.embedding.").split(".")
            tree.setdefault("language_model", {}).setdefault("embedding", {}).setdefault(kind, {})[leaf] = tensor
        else:
            kind, leaf = rest.split(".")
            tree.setdefault(kind, {})[leaf] = tensor
    return tree


def rank_dir(tp_rank: int, pp_rank: int, pp: int) -> str:
    return f"mp_rank_{tp_rank:02d}" if pp == 1 else f"mp_rank_{tp_rank:02d}_{pp_rank:03d}"


def write_reference_checkpoint(
    out: Path,
    hf_dir: Path,
    tp: int,
    pp: int,
    *,
    distributed_optimizer: bool = False,
    dtype: torch.dtype | None = None,
    iteration: str | int = "release",
    padding_seed: int | None = None,
    args_overrides: dict | None = None,
) -> Path:
    """Write a Megatron checkpoint of the HF model in `hf_dir` (a tiny `save_pretrained` folder)."""
    from safetensors.torch import load_file

    config = json.loads((hf_dir / "config.json").read_text())
    hf_state = load_file(str(hf_dir / "model.safetensors"))
    if dtype is not None:
        hf_state = {key: value.to(dtype) for key, value in hf_state.items()}
    stored_dtype = hf_state["transformer.wte.weight"].dtype
    vocab = hf_state["transformer.wte.weight"].shape[0]
    multiple = 128 * tp
    padded_vocab = (vocab + multiple - 1) // multiple * multiple
    folder = out / ("release" if iteration == "release" else f"iter_{int(iteration):07d}")
    with fake_megatron_modules() as enums:
        args = reference_args(config, tp, pp, padded_vocab, stored_dtype, enums, **(args_overrides or {}))
        args.use_distributed_optimizer = distributed_optimizer
        states = reference_rank_states(hf_state, config, tp, pp, padded_vocab, padding_seed)
        for (t, p), flat in states.items():
            content = {
                "args": args,
                "checkpoint_version": 3.0,
                "iteration": 0 if iteration == "release" else int(iteration),
                "model": nest(flat),
                "rng_state": [
                    {
                        "random_rng_state": (3, tuple(range(5)), None),
                        "np_rng_state": np.random.RandomState(t).get_state(),
                        "torch_rng_state": torch.get_rng_state(),
                        "rng_tracker_states": {"model-parallel-rng": torch.get_rng_state()},
                    }
                ],
            }
            rank_path = folder / rank_dir(t, p, pp)
            rank_path.mkdir(parents=True, exist_ok=True)
            if distributed_optimizer:
                torch.save(content, rank_path / "model_rng.pt")
                optim_dir = folder / f"{rank_dir(t, p, pp)}_{0:03d}"
                optim_dir.mkdir(parents=True, exist_ok=True)
                torch.save({"optimizer": {"param_groups": [{"lr": 5e-5}]}, "num_floats": 0}, optim_dir / "optim.pt")
            else:
                content["optimizer"] = {"optimizer": {"state": {}, "param_groups": [{"lr": 5e-5, "params": [0]}]}}
                content["opt_param_scheduler"] = {"max_lr": 5e-5, "num_steps": 0}
                torch.save(content, rank_path / "model_optim_rng.pt")
    (out / "latest_checkpointed_iteration.txt").write_text(f"{iteration}\n")
    return out


def load_flat_rank(path: Path) -> dict:
    """Load a rank file in the test with a plain allow-list (not the package's loader) and flatten `model`."""
    with fake_megatron_modules() as enums:
        allowed = [argparse.Namespace, enums.PositionEmbeddingType, enums.ModelType, enums.AttnMaskType]
        # NumPy's RNG state (an ndarray) lives in `rng_state`.
        allowed += [np.ndarray, np.dtype, np.dtypes.UInt32DType]
        allowed += [(np._core.multiarray._reconstruct, "numpy._core.multiarray._reconstruct")]
        with torch.serialization.safe_globals(allowed):
            content = torch.load(path, weights_only=True)

    def flatten(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from flatten(value, f"{prefix}.{key}")
            else:
                yield f"{prefix}.{key}", value

    return {"content": content, "flat": dict(flatten(content["model"], "model"))}


def load_safetensors_dir(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of an HF folder's safetensors files (index or single file)."""
    from safetensors.torch import load_file

    index = path / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    )
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(str(path / name)))
    return state


def assert_states_bitwise_equal(actual: dict, expected: dict) -> None:
    assert sorted(actual) == sorted(expected)
    for key in expected:
        assert actual[key].dtype == expected[key].dtype, key
        assert actual[key].shape == expected[key].shape, key
        assert torch.equal(actual[key], expected[key]), key


@pytest.fixture(scope="session", name="tiny_bf16_model_dir")
def tiny_bf16_model_dir_fixture(tokenizer_json, tmp_path_factory) -> Path:
    """A tiny multi-query model saved in bf16 (StarCoder's training dtype)."""
    from conftest import save_tiny_model

    out = tmp_path_factory.mktemp("tiny_bf16")
    save_tiny_model(out, tokenizer_json, multi_query=True, seed=1)
    from safetensors.torch import load_file, save_file

    state = {key: value.to(torch.bfloat16) for key, value in load_file(str(out / "model.safetensors")).items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((out / "config.json").read_text())
    config["dtype"] = "bfloat16"
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


def rewrite_rank_file(path: Path, mutate) -> None:
    """Load a rank file, let `mutate(content)` change it in place, and save it back (Megatron names kept)."""
    content = load_flat_rank(path)["content"]
    mutate(content)
    with fake_megatron_modules():
        torch.save(content, path)


def encoder(content: dict) -> dict:
    """The flat encoder dict of a rank file's `model` tree."""
    return content["model"]["language_model"]["encoder"]
