"""The commit builder's engine: work chunks, the per-chunk processing, and an ordered, bounded process pool.

    hf-starcoder-ft commits --repo big/repo --num_proc 8 --output commits.jsonl

The main process reads the sources (the `git log` stream, or raw record-file rows) and cuts them into chunks in
source order. Each chunk is processed on its own (blobs read, records filtered, formatted, serialised, token
counts taken) by `ChunkProcessor.process`, which depends on nothing but the chunk and the `BuildConfig`. Results
come back in submission order, with at most a few chunks in flight, so the output is byte-identical for any
`num_proc` and memory stays flat however large the input is.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from multiprocessing import util as multiprocessing_util

from hf_starcoder_ft.data.commits_filters import RecordFilter
from hf_starcoder_ft.data.commits_formats import RecordFormat
from hf_starcoder_ft.data.commits_git import BlobReader, GitCommit, GitOptions, commit_items
from hf_starcoder_ft.data.commits_sources import RawRowChunk, records_of_chunk

# Source fields copied next to inputs/targets with --keep_metadata.
METADATA_FIELDS = ("commit", "old_file", "new_file", "lang", "repos", "license")


@dataclass(frozen=True)
class BuildConfig:
    """Everything a worker needs to turn any chunk into output lines (picklable, shipped once per worker)."""

    record_format: RecordFormat
    record_filter: RecordFilter
    git: GitOptions
    keep_metadata: bool = False
    tokenizer: str | None = None
    max_tokens: int | None = None
    dedup: bool = False


@dataclass(frozen=True)
class GitChunk:
    """Consecutive commits of one repository, in `git log` order."""

    repo_path: str
    repo_name: str
    commits: list[GitCommit]


@dataclass
class ChunkResult:
    """Output lines of one chunk, in order (with a digest of inputs+targets when deduplicating), and its counts."""

    lines: list[bytes] = field(default_factory=list)
    digests: list[bytes] = field(default_factory=list)
    seen: int = 0
    commits: int = 0
    rows: int = 0
    dropped: Counter = field(default_factory=Counter)


class ChunkProcessor:
    """Processes chunks; keeps one `git cat-file` process per repository and the tokenizer between chunks."""

    def __init__(self, config: BuildConfig):
        self.config = config
        self._readers: dict[str, BlobReader] = {}
        self._tokenizer = None

    def _reader(self, repo_path: str) -> BlobReader:
        reader = self._readers.get(repo_path)
        if reader is None or reader.closed:
            reader = BlobReader(repo_path, self.config.git.max_file_bytes)
            self._readers[repo_path] = reader
        return reader

    def _items(self, chunk: GitChunk | RawRowChunk, result: ChunkResult) -> Iterator[tuple[dict | None, str | None]]:
        if isinstance(chunk, GitChunk):
            result.commits += len(chunk.commits)
            yield from commit_items(chunk.commits, chunk.repo_name, self._reader(chunk.repo_path), self.config.git)
        else:
            for record in records_of_chunk(chunk):
                result.rows += 1
                if record is not None:
                    yield record, None

    def process(self, chunk: GitChunk | RawRowChunk) -> ChunkResult:
        config = self.config
        result = ChunkResult()
        kept: list[tuple[bytes, str, str]] = []
        for record, reason in self._items(chunk, result):
            result.seen += 1
            if reason is None:
                reason = config.record_filter.reject_reason(record)
            if reason is not None:
                result.dropped[reason] += 1
                continue
            inputs, targets = config.record_format(record)
            if not inputs or not targets:
                result.dropped["empty_formatted"] += 1
                continue
            example = {"inputs": inputs, "targets": targets}
            if config.keep_metadata:
                example.update((key, record[key]) for key in METADATA_FIELDS)
            try:
                line = json.dumps(example, ensure_ascii=False).encode("utf-8") + b"\n"
            except UnicodeEncodeError:
                # Lone surrogates (possible in JSON input as \ud800 escapes) cannot be written as UTF-8.
                result.dropped["not_utf8"] += 1
                continue
            kept.append((line, inputs, targets))
        if config.max_tokens is not None and kept:
            kept = self._within_token_limit(kept, result)
        for line, inputs, targets in kept:
            result.lines.append(line)
            if config.dedup:
                result.digests.append(_pair_digest(inputs, targets))
        return result

    def _within_token_limit(self, kept: list[tuple[bytes, str, str]], result: ChunkResult) -> list:
        if self._tokenizer is None:
            from hf_starcoder_ft.tokenizer import load_tokenizer

            self._tokenizer = load_tokenizer(self.config.tokenizer).backend_tokenizer
        # Inputs and targets are tokenized separately, as `prepare` (and Megatron) do; no special tokens added.
        inputs = self._tokenizer.encode_batch([item[1] for item in kept], add_special_tokens=False)
        targets = self._tokenizer.encode_batch([item[2] for item in kept], add_special_tokens=False)
        within = []
        for item, encoded_inputs, encoded_targets in zip(kept, inputs, targets, strict=True):
            if len(encoded_inputs.ids) + len(encoded_targets.ids) > self.config.max_tokens:
                result.dropped["too_many_tokens"] += 1
            else:
                within.append(item)
        return within

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()


def _pair_digest(inputs: str, targets: str) -> bytes:
    hasher = hashlib.blake2b(digest_size=16)
    hasher.update(inputs.encode("utf-8"))
    hasher.update(b"\0")
    hasher.update(targets.encode("utf-8"))
    return hasher.digest()


def git_chunks(repo_path: str, repo_name: str, commits: Iterable[GitCommit], max_commits: int = 64,
               max_files: int = 128) -> Iterator[GitChunk]:  # fmt: skip
    """Cut a commit stream into chunks of at most `max_commits` commits or about `max_files` changed files."""
    batch: list[GitCommit] = []
    files = 0
    for commit in commits:
        batch.append(commit)
        files += len(commit.changes)
        if len(batch) >= max_commits or files >= max_files:
            yield GitChunk(repo_path, repo_name, batch)
            batch, files = [], 0
    if batch:
        yield GitChunk(repo_path, repo_name, batch)


_WORKER: ChunkProcessor | None = None


def _init_worker(config: BuildConfig) -> None:
    global _WORKER
    _WORKER = ChunkProcessor(config)
    # Runs at a clean worker exit (pool.close + join), closing the git processes.
    multiprocessing_util.Finalize(None, _WORKER.close, exitpriority=10)


def _process_in_worker(chunk: GitChunk | RawRowChunk) -> ChunkResult:
    return _WORKER.process(chunk)


def process_chunks(
    chunks: Iterable[GitChunk | RawRowChunk],
    config: BuildConfig,
    num_proc: int = 1,
) -> Iterator[ChunkResult]:
    """Process chunks in order, in this process (`num_proc=1`) or in `num_proc` spawned workers.

    At most `2 * num_proc + 2` chunks are in flight: reading the sources never runs far ahead of the workers.
    """
    if num_proc <= 1:
        processor = ChunkProcessor(config)
        try:
            for chunk in chunks:
                yield processor.process(chunk)
        finally:
            processor.close()
        return
    window = 2 * num_proc + 2
    context = multiprocessing.get_context("spawn")  # no fork of a process that may hold threads or pipes
    pool = context.Pool(num_proc, initializer=_init_worker, initargs=(config,))
    try:
        pending: deque = deque()
        for chunk in chunks:
            pending.append(pool.apply_async(_process_in_worker, (chunk,)))
            if len(pending) >= window:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
        pool.close()
        pool.join()
    finally:
        pool.terminate()
        pool.join()
