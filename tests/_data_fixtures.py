"""Helpers for the data-pipeline tests: write jsonl files and prepare them with the real code path."""

from __future__ import annotations

import gzip
import json
from pathlib import Path


def write_jsonl(path: Path, records: list, gz: bool = False) -> Path:
    """Write records (dicts are JSON-encoded, str/bytes written as raw lines) one per line."""
    lines = []
    for record in records:
        if isinstance(record, bytes):
            lines.append(record)
        elif isinstance(record, str):
            lines.append(record.encode("utf-8"))
        else:
            lines.append(json.dumps(record, ensure_ascii=False).encode("utf-8"))
    payload = b"\n".join(lines) + (b"\n" if lines else b"")
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(path, "wb") as handle:
            handle.write(payload)
    else:
        path.write_bytes(payload)
    return path


def commit_like_records(count: int, prefix: str = "r", seed: int = 0) -> list[dict]:
    """Distinct commit-shaped records of varied length."""
    import random

    rng = random.Random(seed)
    records = []
    for i in range(count):
        body = "\n".join(f"    value_{j} = {rng.randint(0, 99)}" for j in range(rng.randint(1, 3)))
        records.append(
            {
                "inputs": f"<commit_before>def {prefix}{i}():\n{body}\n<commit_msg>Change {prefix}{i}<commit_after>",
                "targets": f"def {prefix}{i}():\n{body}\n    return {i}\n",
            }
        )
    return records
