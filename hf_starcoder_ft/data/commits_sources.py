"""CommitPack-style record files: the record schema, its validation, and streaming readers.

    hf-starcoder-ft commits --commitpack data/python.jsonl.gz --output commits.jsonl

A CommitPack record describes one file changed by one commit, with the fields of `RECORD_FIELDS`. Files may be
jsonl, jsonl.gz, parquet, or a directory saved with `datasets.Dataset.save_to_disk`; a plain directory of such
files is read file by file in name order. Readers yield raw rows in chunks (the jsonl reader hands out undecoded
lines so that JSON parsing happens in the worker processes); `validate_record` turns a raw row into a record or
raises an error naming the file, the line (or row) and the key.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

RECORD_FIELDS: tuple[str, ...] = (
    "commit",
    "old_file",
    "new_file",
    "old_contents",
    "new_contents",
    "subject",
    "message",
    "lang",
    "license",
    "repos",
)
# Without these a record cannot be formatted. `subject` may come from the first line of `message`, and one file
# name stands for both when only one is given (`old_file` wins for the filename shown in the prompt).
REQUIRED_FIELDS: tuple[str, ...] = ("old_contents", "new_contents")
REQUIRED_ONE_OF: tuple[tuple[str, str], ...] = (("subject", "message"), ("old_file", "new_file"))

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
PARQUET_SUFFIXES = (".parquet",)


class CommitsError(ValueError):
    """Bad input to the commits builder; the message names the file, line, key, repository or option at fault."""


def subject_of(message: str) -> str:
    """The first line of a commit message, without surrounding whitespace."""
    return message.strip().split("\n", 1)[0].strip()


def validate_record(row: object, where: str) -> dict[str, str]:
    """Check one raw CommitPack row and return a record with every field of `RECORD_FIELDS` as a string.

    Optional fields that are missing or null become "". A missing required field, or a value that is not a
    string, raises `CommitsError` naming `where` (file:line) and the key.

    >>> validate_record({"old_contents": "a", "new_contents": "b", "message": "Fix b\\n\\nbody", "new_file": "x.py"},
    ...                 "f.jsonl:1")["subject"]
    'Fix b'
    """
    if not isinstance(row, dict):
        raise CommitsError(f"{where}: expected a JSON object, got {type(row).__name__}")
    record: dict[str, str] = {}
    for key in RECORD_FIELDS:
        value = row.get(key)
        if value is None:
            value = ""
        elif not isinstance(value, str):
            raise CommitsError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
        record[key] = value
    for key in REQUIRED_FIELDS:
        if row.get(key) is None:
            raise CommitsError(f"{where}: missing required field {key!r}")
    for first, second in REQUIRED_ONE_OF:
        if row.get(first) is None and row.get(second) is None:
            raise CommitsError(f"{where}: missing required field {first!r} (or {second!r})")
    if row.get("subject") is None:
        record["subject"] = subject_of(record["message"])
    if row.get("old_file") is None:
        record["old_file"] = record["new_file"]
    if row.get("new_file") is None:
        record["new_file"] = record["old_file"]
    return record


def parse_jsonl_line(raw: bytes, where: str) -> dict[str, str]:
    """Decode and validate one jsonl line (see `validate_record`)."""
    try:
        row = json.loads(raw)
    except UnicodeDecodeError as error:
        raise CommitsError(f"{where}: not valid UTF-8 ({error.reason} at byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise CommitsError(f"{where}: malformed JSON ({error.msg} at column {error.colno})") from None
    return validate_record(row, where)


@dataclass(frozen=True)
class CommitPackFile:
    """One CommitPack-style source: a jsonl(.gz) or parquet file, or a `datasets` directory."""

    path: Path
    kind: str  # "jsonl" | "parquet" | "datasets"

    @property
    def name(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class RawRowChunk:
    """A run of consecutive rows of one file: undecoded jsonl lines, or row dicts from parquet/datasets."""

    source: str
    first_index: int  # 1-based line number (jsonl) or 0-based row index (parquet, datasets)
    rows: list
    kind: str

    def where(self, offset: int) -> str:
        if self.kind == "jsonl":
            return f"{self.source}:{self.first_index + offset}"
        return f"{self.source}: row {self.first_index + offset}"


def _is_datasets_dir(path: Path) -> bool:
    return (
        (path / "dataset_info.json").is_file()
        or (path / "dataset_dict.json").is_file()
        or (path / "state.json").is_file()
    )


def _kind_of_file(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    return None


def resolve_commitpack_paths(paths: list[str | Path]) -> list[CommitPackFile]:
    """Expand the user's paths into readable sources, in order; a plain directory gives its files by name."""
    files: list[CommitPackFile] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise CommitsError(f"{path}: no such file or directory")
        if path.is_dir():
            if _is_datasets_dir(path):
                files.append(CommitPackFile(path, "datasets"))
                continue
            found = sorted(p for p in path.rglob("*") if p.is_file() and _kind_of_file(p))
            if not found:
                raise CommitsError(
                    f"{path}: a directory with no .jsonl, .jsonl.gz or .parquet files and not a `datasets` "
                    "directory (saved with save_to_disk)"
                )
            files.extend(CommitPackFile(p, _kind_of_file(p)) for p in found)
            continue
        kind = _kind_of_file(path)
        if kind is None:
            raise CommitsError(
                f"{path}: unknown record file type (expected .jsonl, .jsonl.gz, .parquet or a directory)"
            )
        files.append(CommitPackFile(path, kind))
    return files


def check_columns(source: CommitPackFile) -> None:
    """For columnar sources, name a missing required column before any work starts."""
    if source.kind == "jsonl":
        return
    columns = set(_columns(source))
    for key in REQUIRED_FIELDS:
        if key not in columns:
            raise CommitsError(f"{source.name}: missing required column {key!r} (columns: {sorted(columns)})")
    for first, second in REQUIRED_ONE_OF:
        if first not in columns and second not in columns:
            raise CommitsError(f"{source.name}: missing required column {first!r} (or {second!r})")


def _columns(source: CommitPackFile) -> list[str]:
    if source.kind == "parquet":
        import pyarrow.parquet as pq

        try:
            return list(pq.ParquetFile(source.path).schema_arrow.names)
        except Exception as error:  # pyarrow raises several types for unreadable files
            raise CommitsError(f"{source.name}: cannot read parquet file ({error})") from None
    return list(_load_dataset(source).column_names)


def _load_dataset(source: CommitPackFile):
    from datasets import Dataset, load_from_disk

    try:
        dataset = load_from_disk(str(source.path))
    except Exception as error:  # datasets raises several types for unreadable directories
        raise CommitsError(f"{source.name}: cannot load the `datasets` directory ({error})") from None
    if not isinstance(dataset, Dataset):
        splits = ", ".join(dataset.keys())
        raise CommitsError(f"{source.name}: holds several splits ({splits}); give the directory of one split")
    return dataset


def count_rows(source: CommitPackFile) -> int | None:
    """Number of rows when the format stores it (parquet, datasets); None for jsonl."""
    if source.kind == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(source.path).metadata.num_rows
    if source.kind == "datasets":
        return len(_load_dataset(source))
    return None


def iter_raw_chunks(source: CommitPackFile, chunk_rows: int, chunk_bytes: int = 16 << 20) -> Iterator[RawRowChunk]:
    """Stream a source as chunks of at most `chunk_rows` rows (jsonl chunks also stop near `chunk_bytes`)."""
    if source.kind == "jsonl":
        yield from _iter_jsonl_chunks(source, chunk_rows, chunk_bytes)
    elif source.kind == "parquet":
        yield from _iter_parquet_chunks(source, chunk_rows)
    else:
        yield from _iter_dataset_chunks(source, chunk_rows)


def _iter_jsonl_chunks(source: CommitPackFile, chunk_rows: int, chunk_bytes: int) -> Iterator[RawRowChunk]:
    opener = gzip.open if source.path.name.lower().endswith(".gz") else open
    rows: list[bytes] = []
    size = 0
    first_line = 1
    line_no = 0
    try:
        with opener(source.path, "rb") as handle:
            for line_no, line in enumerate(handle, start=1):
                if not line.strip():
                    # Blank lines are not records; keep the line numbers of later rows right.
                    if not rows:
                        first_line = line_no + 1
                        continue
                    line = b""
                rows.append(line)
                size += len(line)
                if len(rows) >= chunk_rows or size >= chunk_bytes:
                    yield RawRowChunk(source.name, first_line, rows, "jsonl")
                    rows, size, first_line = [], 0, line_no + 1
    except (OSError, EOFError, zlib.error) as error:
        raise CommitsError(f"{source.name}: cannot read the file after line {line_no} ({error})") from None
    if rows:
        yield RawRowChunk(source.name, first_line, rows, "jsonl")


def _iter_parquet_chunks(source: CommitPackFile, chunk_rows: int) -> Iterator[RawRowChunk]:
    import pyarrow.parquet as pq

    wanted = [name for name in RECORD_FIELDS if name in set(_columns(source))]
    index = 0
    try:
        for batch in pq.ParquetFile(source.path).iter_batches(batch_size=chunk_rows, columns=wanted):
            rows = batch.to_pylist()
            yield RawRowChunk(source.name, index, rows, "parquet")
            index += len(rows)
    except Exception as error:  # pyarrow raises several types (ArrowInvalid, OSError) for damaged files
        raise CommitsError(f"{source.name}: cannot read parquet file after row {index} ({error})") from None


def _iter_dataset_chunks(source: CommitPackFile, chunk_rows: int) -> Iterator[RawRowChunk]:
    dataset = _load_dataset(source)
    wanted = [name for name in RECORD_FIELDS if name in set(dataset.column_names)]
    dataset = dataset.select_columns(wanted)
    index = 0
    for batch in dataset.iter(batch_size=chunk_rows):
        count = len(batch[wanted[0]])
        rows = [{key: batch[key][i] for key in wanted} for i in range(count)]
        yield RawRowChunk(source.name, index, rows, "datasets")
        index += count


def records_of_chunk(chunk: RawRowChunk) -> Iterator[dict[str, str] | None]:
    """Validate each row of a chunk; a blank jsonl line (kept only for numbering) gives None."""
    for offset, row in enumerate(chunk.rows):
        if chunk.kind == "jsonl":
            if not row:
                yield None
                continue
            yield parse_jsonl_line(row, chunk.where(offset))
        else:
            yield validate_record(row, chunk.where(offset))
