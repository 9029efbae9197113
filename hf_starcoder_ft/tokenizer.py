"""StarCoder tokenizer facts and the one place tokenizers are loaded.

    from hf_starcoder_ft.tokenizer import load_tokenizer
    tok = load_tokenizer("path/to/tokenizer.json")   # or a model directory

StarCoder's byte-level BPE has 49152 entries; its special tokens take ids 0..18 in the order of
`STARCODER_SPECIAL_TOKENS`. bos = eos = unk = `<|endoftext|>`; there is no pad token (packing pads with
`<fim_pad>`, id 4, as Megatron's fine-tuning did).
"""

from __future__ import annotations

from pathlib import Path

STARCODER_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<fim_prefix>",
    "<fim_middle>",
    "<fim_suffix>",
    "<fim_pad>",
    "<filename>",
    "<gh_stars>",
    "<issue_start>",
    "<issue_comment>",
    "<issue_closed>",
    "<jupyter_start>",
    "<jupyter_text>",
    "<jupyter_code>",
    "<jupyter_output>",
    "<empty_output>",
    "<commit_before>",
    "<commit_msg>",
    "<commit_after>",
    "<reponame>",
)
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<fim_pad>"
STARCODER_VOCAB_SIZE = 49152


class TokenizerError(ValueError):
    """A tokenizer path that cannot be used, with the reason."""


def load_tokenizer(path: str | Path):
    """Load a fast tokenizer from a `tokenizer.json` file or a directory holding one (a model directory).

    Never runs remote code. bos/eos/unk default to `<|endoftext|>` when the file does not set them, and the
    pad token to `<fim_pad>` when the vocabulary has it (else EOS), so a bare StarCoder `tokenizer.json`
    behaves like the released tokenizer.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = Path(path)
    if path.is_file():
        if path.suffix != ".json":
            raise TokenizerError(f"{path}: expected a tokenizer.json file or a directory holding one")
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(path))
    elif path.is_dir():
        if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
            raise TokenizerError(f"{path}: no tokenizer.json or tokenizer_config.json in this directory")
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False, use_fast=True)
    else:
        raise TokenizerError(f"{path}: tokenizer not found (give a tokenizer.json file or a model directory)")

    vocab = tokenizer.get_vocab()
    if EOS_TOKEN in vocab:
        for attr in ("eos_token", "bos_token", "unk_token"):
            if getattr(tokenizer, attr) is None:
                setattr(tokenizer, attr, EOS_TOKEN)
    if tokenizer.eos_token is None:
        raise TokenizerError(f"{path}: the tokenizer has no EOS token and no {EOS_TOKEN!r} entry")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = PAD_TOKEN if PAD_TOKEN in vocab else tokenizer.eos_token
    return tokenizer


def tokenizer_fingerprint(tokenizer) -> str:
    """A stable hash of everything that changes token ids (vocabulary, merges, normalizer, special tokens)."""
    import hashlib

    backend = getattr(tokenizer, "backend_tokenizer", None)
    payload = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    payload += repr((tokenizer.eos_token, tokenizer.pad_token))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def train_tiny_tokenizer(texts, path: str | Path, vocab_size: int = 384) -> Path:
    """Train a small byte-level BPE shaped like StarCoder's and save it as `tokenizer.json`.

    Special tokens take StarCoder's ids 0..18 and digits are split one by one, so ids of special tokens, EOS
    and padding match the real tokenizer. For tests and smoke runs only: nothing can be downloaded there.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(STARCODER_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    for index, token in enumerate(STARCODER_SPECIAL_TOKENS):
        if tokenizer.token_to_id(token) != index:
            raise TokenizerError(f"special token {token!r} got id {tokenizer.token_to_id(token)}, expected {index}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path))
    return path
