"""Hermetic fixtures: a StarCoder-like tokenizer trained in-process and tiny random GPTBigCode models.

Nothing here touches the network or the Hugging Face cache. The tokenizer is a byte-level BPE whose special
tokens sit at StarCoder's real ids 0..18, with digits split one by one as StarCoder does. Models are saved with
`save_pretrained` so the tests go through the real `from_pretrained` loading path.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Belt and braces: no test may reach the Hub, or read or write a user's cache (HF_HOME is a fresh temporary
# directory for the whole session; subprocesses such as `accelerate launch` inherit it).
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="hf_starcoder_ft_tests_hf_home_")
atexit.register(shutil.rmtree, os.environ["HF_HOME"], ignore_errors=True)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")


TINY_VOCAB_SIZE = 384

_CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "def subtract(x, y):\n    return x - y\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n",
    "    def push(self, item):\n        self.items.append(item)\n",
    "import os\nimport sys\nprint(sys.argv[1:])\n",
    "for i in range(10):\n    print(i * 2)\n",
    "Fix typo in README\nAdd tests for parser\nRename variable to be clearer\n",
    "if __name__ == '__main__':\n    main()\n",
    "function greet(name) { return 'Hello ' + name; }\n",
    "SELECT id, name FROM users WHERE id = 42;\n",
    "Update version to 1.2.3 and refactor the loader.\n",
    "while True:\n    line = f.readline()\n    if not line:\n        break\n",
]


def build_tokenizer_json(path: Path, vocab_size: int = TINY_VOCAB_SIZE) -> Path:
    """Train a tiny byte-level BPE with StarCoder's special tokens at ids 0..18 and save it as tokenizer.json."""
    from hf_starcoder_ft.tokenizer import train_tiny_tokenizer

    return train_tiny_tokenizer(_CORPUS * 4, path, vocab_size=vocab_size)


@pytest.fixture(scope="session")
def tokenizer_json(tmp_path_factory) -> Path:
    """Path to a bare `tokenizer.json` (what users download from the StarCoder repo)."""
    return build_tokenizer_json(tmp_path_factory.mktemp("tokenizer") / "tokenizer.json")


@pytest.fixture(scope="session")
def tokenizer_dir(tokenizer_json, tmp_path_factory) -> Path:
    """A directory saved with `save_pretrained`, as a model repository holds its tokenizer."""
    from hf_starcoder_ft.tokenizer import load_tokenizer

    out = tmp_path_factory.mktemp("tokenizer_dir")
    load_tokenizer(tokenizer_json).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tokenizer(tokenizer_json):
    from hf_starcoder_ft.tokenizer import load_tokenizer

    return load_tokenizer(tokenizer_json)


def tiny_config(multi_query: bool = True, **overrides):
    """A tiny GPTBigCode config shaped like StarCoder's (use_cache true, as the released config ships)."""
    from transformers import GPTBigCodeConfig

    values = dict(
        vocab_size=TINY_VOCAB_SIZE,
        n_positions=256,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_inner=64,
        multi_query=multi_query,
        activation_function="gelu_pytorch_tanh",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        use_cache=True,
        bos_token_id=0,
        eos_token_id=0,
        tie_word_embeddings=True,
    )
    values.update(overrides)
    return GPTBigCodeConfig(**values)


def save_tiny_model(out: Path, tokenizer_json: Path, multi_query: bool = True, seed: int = 0, **overrides) -> Path:
    import torch
    from transformers import GPTBigCodeForCausalLM

    from hf_starcoder_ft.tokenizer import load_tokenizer

    torch.manual_seed(seed)
    model = GPTBigCodeForCausalLM(tiny_config(multi_query=multi_query, **overrides))
    model.save_pretrained(out)
    load_tokenizer(tokenizer_json).save_pretrained(out)
    return out


@pytest.fixture(scope="session", params=[True, False], ids=["mqa", "mha"])
def tiny_model_dir(request, tokenizer_json, tmp_path_factory) -> Path:
    """A tiny random GPTBigCode model directory (multi_query True and False), with the tokenizer beside it."""
    name = "tiny_mqa" if request.param else "tiny_mha"
    return save_tiny_model(tmp_path_factory.mktemp(name), tokenizer_json, multi_query=request.param)


@pytest.fixture(scope="session")
def tiny_mqa_model_dir(tokenizer_json, tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny_mqa_only"), tokenizer_json, multi_query=True)


@pytest.fixture
def copy_dir(tmp_path):
    """Copy a (session-scoped, read-only) fixture directory so a test may modify it."""

    def _copy(src: Path, name: str = "copy") -> Path:
        dst = tmp_path / name
        shutil.copytree(src, dst)
        return dst

    return _copy
