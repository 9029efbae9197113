"""Fixtures and helpers for the training tests: a learnable toy task, in-process and launched runs, a fake Hub.

Import the fixtures by their function names (`addition_data_fixture`, `train_model_dir_fixture`,
`fake_hub_fixture`); tests request them as `addition_data`, `train_model_dir`, `fake_hub`.

The toy task is addition (`add 12 34<commit_msg>` -> `46<|endoftext|>`): short examples, so rows of 64 tokens
pack several documents each, and a tiny model's loss falls within a few steps.
"""

from __future__ import annotations

import base64
import json
import os
import random
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def write_addition_jsonl(path: Path, count: int, seed: int) -> Path:
    rng = random.Random(seed)
    seen = set()
    with open(path, "w") as out:
        while len(seen) < count:
            a, b = rng.randint(0, 999), rng.randint(0, 999)
            if (a, b) in seen:
                continue
            seen.add((a, b))
            out.write(json.dumps({"inputs": f"add {a} {b}<commit_msg>", "targets": f"{a + b}<|endoftext|>"}) + "\n")
    return path


@pytest.fixture(scope="session", name="addition_data")
def addition_data_fixture(tmp_path_factory) -> dict[str, Path]:
    """Disjoint train (240 records) and valid (40 records) jsonl files, plus a shared data cache directory."""
    root = tmp_path_factory.mktemp("addition")
    return {
        "train": write_addition_jsonl(root / "train.jsonl", 240, seed=1),
        "valid": write_addition_jsonl(root / "valid.jsonl", 40, seed=2),
        "cache": root / "cache",
    }


@pytest.fixture(scope="session", name="train_model_dir")
def train_model_dir_fixture(tokenizer_json, tmp_path_factory) -> Path:
    """A tiny MQA model (dropout 0, use_cache true) with its tokenizer, as `from_pretrained` reads it."""
    from conftest import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("train_model"), tokenizer_json, multi_query=True, seed=3)


def base_args(model_dir: Path, data: dict[str, Path], output_dir: Path, **overrides) -> list[str]:
    """tiny_cpu.yaml with the toy data, 64-token rows and small batches; keyword overrides become --key value."""
    values = {
        "config": str(REPO_ROOT / "configs" / "tiny_cpu.yaml"),
        "model_name_or_path": str(model_dir),
        "train_data": str(data["train"]),
        "valid_data": str(data["valid"]),
        "data_cache_dir": str(data["cache"]),
        "output_dir": str(output_dir),
        "max_length": "64",
        "global_batch_size": "4",
        "per_device_train_batch_size": "1",
        "max_steps": "6",
        "eval_steps": "3",
        "save_steps": "3",
        "logging_steps": "1",
        "warmup_steps": "1",
        "report_to": "none",
        "disable_tqdm": "true",
    }
    values.update({k: str(v) for k, v in overrides.items()})
    argv = []
    for key, value in values.items():
        argv += [f"--{key}", value]
    return argv


def step_losses(output_dir: Path) -> dict[int, float]:
    """Training loss of every logged optimizer step (logging_steps 1), from trainer_state.json."""
    state = json.loads((Path(output_dir) / "trainer_state.json").read_text())
    return {entry["step"]: entry["loss"] for entry in state["log_history"] if "loss" in entry}


def eval_entries(output_dir: Path) -> dict[int, dict]:
    state = json.loads((Path(output_dir) / "trainer_state.json").read_text())
    return {entry["step"]: entry for entry in state["log_history"] if "eval_loss" in entry}


def load_weights(directory: Path, name: str = "model.safetensors") -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(directory) / name))


def fingerprints(output_dir: Path) -> list[dict]:
    records = []
    for path in sorted((Path(output_dir) / "batch_fingerprints").glob("rank*.jsonl")):
        records += [json.loads(line) for line in path.read_text().splitlines()]
    return records


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_command(argv: list[str], num_processes: int = 2) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of `accelerate launch --config_file launch/zero3_cpu_2proc.yaml train.py
    ARGV`, run from the repository root."""
    accelerate = Path(sys.executable).parent / "accelerate"
    command = [
        str(accelerate),
        "launch",
        "--config_file",
        "launch/zero3_cpu_2proc.yaml",
        "--num_processes",
        str(num_processes),
        "--main_process_port",
        str(free_port()),
        "train.py",
        *argv,
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    return command, env


def launch(argv: list[str], num_processes: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `launch_command` to the end; a non-zero exit fails with the tails of both streams."""
    command, env = launch_command(argv, num_processes)
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(
            f"launch failed ({result.returncode}):\nSTDOUT:\n{result.stdout[-4000:]}\nSTDERR:\n{result.stderr[-8000:]}"
        )
    return result


class FakeHub:
    """Just enough of the Hub's HTTP API for `HfApi.create_repo` + `upload_folder` (huggingface_hub 2.x):
    every file is declared a regular (inline, base64) upload, so no LFS or Xet transfer is involved."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.authorizations: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def _reply(self, payload: dict, status: int = 200) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hub.requests.append(("POST", self.path))
                hub.authorizations.append(self.headers.get("Authorization", ""))
                path = self.path.split("?")[0]
                if path == "/api/repos/create":
                    payload = json.loads(body)
                    return self._reply({"url": f"{hub.url}/{payload['organization']}/{payload['name']}"})
                if path == "/api/validate-yaml":
                    return self._reply({"errors": [], "warnings": []})
                if "/preupload/" in path:
                    files = json.loads(body)["files"]
                    return self._reply(
                        {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
                    )
                if "/commit/" in path:
                    for line in body.splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            hub.files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    repo_id = path.removeprefix("/api/models/").split("/commit/")[0]
                    return self._reply({"commitUrl": f"{hub.url}/{repo_id}/commit/{'a' * 40}", "commitOid": "a" * 40})
                return self._reply({"error": f"unexpected {path}"}, status=404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(name="fake_hub")
def fake_hub_fixture(monkeypatch):
    import huggingface_hub.constants

    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        yield hub
