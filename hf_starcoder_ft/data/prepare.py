"""`hf-starcoder-ft prepare`: jsonl sources -> tokenized, target-masked, packed `datasets` splits on disk.

    hf-starcoder-ft prepare --train_data data/train_paths.txt --valid_data data/valid_paths.txt \\
        --tokenizer tokenizer.json --max_length 8192 --output_dir prepared/

Training runs the very same steps (`load_datasets`) when given `train_data` instead of `prepared_data`, and
caches the result, so preparing ahead of time is optional.

The steps, per source file then per split:
1. read and validate every line (`jsonl.iter_records`); bad lines stop the run, or are skipped and counted;
2. drop exact duplicate (inputs, targets) records and shuffle the rest with a generator seeded by
   (seed, source path): `sort -u | shuf` of the original preprocessing, reproducibly;
3. take the split's range `[round(start*N), round(end*N))` of that order (ranges of one source never overlap);
4. tokenize inputs and targets separately and mask the inputs (`tokenize.build_example`); empty and too long
   examples are counted and dropped (or, with `truncation: truncate_input`, inputs cut from the left);
5. mix the split's sources by weight (`mixture.mix_by_weight`), pack (`packing.pack_examples`), shuffle rows;
6. save each split with `save_to_disk`, plus `stats.json` and `summary.txt`. Nothing is dropped unreported:
   for every source, lines = blank + bad + duplicates + unassigned + sum over splits of (examples + dropped).

Output columns: `input_ids`, `labels` and, when packed, `position_ids` (int32 lists).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from hf_starcoder_ft.data.config import DataConfig
from hf_starcoder_ft.data.errors import DataError
from hf_starcoder_ft.data.jsonl import ReadReport, iter_records
from hf_starcoder_ft.data.mixture import SourceSpec, check_disjoint, mix_by_weight, parse_data_spec
from hf_starcoder_ft.data.packing import gather_rows, pack_examples
from hf_starcoder_ft.data.tokenize import DROP_REASONS, tokenize_batch
from hf_starcoder_ft.io_utils import OutputExistsError, atomic_output_dir
from hf_starcoder_ft.tokenizer import tokenizer_fingerprint

FORMAT_VERSION = 1
STATS_FILE = "stats.json"
SUMMARY_FILE = "summary.txt"
DEFAULT_CACHE = Path(os.environ.get("HF_STARCODER_FT_CACHE", Path.home() / ".cache" / "hf_starcoder_ft")) / "prepared"


@dataclass
class PreparedData:
    """Prepared splits (`train`, `valid` or `valid_<name>`, `test`...) with their statistics and location."""

    splits: dict[str, Any]
    stats: dict[str, Any]
    directory: Path
    reused: bool = False


@dataclass
class _Source:
    """One source file read once, deduplicated and shuffled; shared by every split that uses it."""

    path: Path
    table: pa.Table | None  # inputs, targets (large_string); dropped once tokenized
    report: dict[str, Any]
    used_ranges: dict[str, tuple[int, int]] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- splits and keys


def resolve_splits(config: DataConfig) -> dict[str, list[SourceSpec]]:
    """Map split names to their sources: `train`, then `valid` (or `valid_<group>` for several groups), `test`."""
    if config.train_data is None:
        raise DataError("no training data: set train_data (a jsonl, a data-path file or a YAML mixture)")
    splits: dict[str, list[SourceSpec]] = {}
    for prefix, spec in (("train", config.train_data), ("valid", config.valid_data), ("test", config.test_data)):
        if spec is None:
            continue
        groups = parse_data_spec(spec, default_group=prefix)
        if prefix == "train" and len(groups) != 1:
            raise DataError(
                f"{spec}: train_data must hold exactly one group, found {sorted(groups)}; put validation groups "
                "in the file given as valid_data"
            )
        for name, sources in groups.items():
            split = prefix if len(groups) == 1 else f"{prefix}_{name}"
            splits[split] = sources
    check_disjoint(splits)
    return splits


def file_digest(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _digest_of(path: Path, digests: dict[Path, str]) -> str:
    key = path.resolve()
    if key not in digests:
        digests[key] = file_digest(path) if path.exists() else "missing"
    return digests[key]


def data_fingerprint(
    config: DataConfig, splits: dict[str, list[SourceSpec]], tokenizer, seed: int, digests: dict | None = None
) -> str:
    """A key that changes with the data files' bytes, the tokenizer, or any option that changes the output.
    `digests` (resolved path -> content digest) is filled in for the caller, which seeds each shuffle with it."""
    digests = {} if digests is None else digests
    payload = {
        "format_version": FORMAT_VERSION,
        "shuffle": "content-seeded",  # since 2026-11-29; before, the seed came from the file's absolute path
        "splits": {
            split: [
                [
                    str(s.path.resolve()),
                    _digest_of(s.path, digests),
                    s.weight,
                    s.start,
                    s.end,
                ]
                for s in sources
            ]
            for split, sources in splits.items()
        },
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "seed": seed,
        **{
            key: getattr(config, key)
            for key in ("max_length", "packing", "packing_strategy", "truncation", "skip_bad_records", "deduplicate")
        },
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def _source_seed(seed: int, content_digest: str) -> list[int]:
    """The shuffle seed of one source: the run's seed and the file's content, not its location, so the same file
    gives the same order (and the same train/valid split) wherever it is stored."""
    return [seed, int(content_digest[:16], 16)]


# ------------------------------------------------------------------------------------------------------ reading


READ_CHUNK_RECORDS = 8192  # records moved from Python strings into Arrow at a time while reading


def _read_source(path: Path, config: DataConfig, seed: int, progress: bool, content_digest: str) -> _Source:
    """Read one source into an Arrow table of `inputs`/`targets` (a chunk of Python strings at a time, so the
    text is held once, in Arrow), deduplicated (first occurrence kept, by a 128-bit digest of the exact pair)
    and shuffled with the source's own seed."""
    read_report = ReadReport(path=str(path))
    chunks: dict[str, list[pa.Array]] = {"inputs": [], "targets": []}
    pending: tuple[list[str], list[str]] = ([], [])
    seen: set[bytes] = set()
    duplicates = 0

    def flush() -> None:
        for name, values in zip(("inputs", "targets"), pending, strict=True):
            chunks[name].append(pa.array(values, type=pa.large_string()))
            values.clear()

    for inputs, targets in iter_records(path, read_report, config.skip_bad_records, progress):
        if config.deduplicate:
            digest = hashlib.blake2b(digest_size=16)
            digest.update(len(inputs).to_bytes(8, "little"))
            digest.update(inputs.encode())
            digest.update(targets.encode())
            key = digest.digest()
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
        pending[0].append(inputs)
        pending[1].append(targets)
        if len(pending[0]) >= READ_CHUNK_RECORDS:
            flush()
    flush()
    del seen
    table = pa.table({name: pa.chunked_array(arrays, type=pa.large_string()) for name, arrays in chunks.items()})
    order = np.random.default_rng(_source_seed(seed, content_digest)).permutation(table.num_rows)
    table = table.take(order)
    report = read_report.as_dict()
    report["duplicates"] = duplicates
    report["unique"] = table.num_rows
    return _Source(path=path, table=table, report=report)


def _release_freed_memory() -> None:
    """Hand memory freed by Python back to the OS (glibc keeps freed heap pages otherwise); best effort."""
    pa.default_memory_pool().release_unused()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


TOKENIZE_BATCH = 2048


def _tokenize(table: pa.Table, tokenizer, config: DataConfig, progress: bool = True) -> pa.Table:
    """`tokenize_batch` over every row of `table`, in order; one process walks the table a batch at a time (the
    text and the tokens are each held once), several go through `datasets.map`."""
    fn_kwargs = {"tokenizer": tokenizer, "max_length": config.max_length, "truncation": config.truncation}
    if config.num_proc > 1 and table.num_rows > 1000:
        import uuid

        import datasets

        # An explicit fingerprint: without one, `datasets` hashes the whole table (a pickled copy of all the text).
        # Nothing to reuse from datasets' own cache either: ours is keyed by data_fingerprint.
        dataset = datasets.Dataset(table, fingerprint=uuid.uuid4().hex)
        mapped = dataset.map(
            tokenize_batch,
            batched=True,
            batch_size=TOKENIZE_BATCH,
            num_proc=config.num_proc,
            remove_columns=["inputs", "targets"],
            fn_kwargs=fn_kwargs,
            desc="tokenize",
            new_fingerprint=uuid.uuid4().hex,
        )
        return mapped.data.table
    from tqdm.auto import tqdm

    pieces = []
    with tqdm(total=table.num_rows, desc="tokenize", unit=" examples", disable=not progress) as bar:
        for start in range(0, table.num_rows, TOKENIZE_BATCH):
            batch = table.slice(start, TOKENIZE_BATCH).to_pydict()
            pieces.append(tokenize_batch(batch, **fn_kwargs))
            bar.update(len(batch["inputs"]))
    if not pieces:
        return tokenize_batch({"inputs": [], "targets": []}, **fn_kwargs)
    return pa.concat_tables(pieces)


# ------------------------------------------------------------------------------------------------------- stats


def length_histogram(lengths: np.ndarray, max_length: int) -> dict[str, int]:
    """Counts of example lengths in power-of-two bins up to max_length, e.g. {"1-64": 10, "65-128": 3}."""
    edges = [0, 64]
    while edges[-1] < max_length:
        edges.append(min(edges[-1] * 2, max_length))
    counts = np.histogram(lengths, bins=np.array(edges) + 0.5)[0] if len(lengths) else np.zeros(len(edges) - 1)
    return {f"{lo + 1}-{hi}": int(n) for lo, hi, n in zip(edges[:-1], edges[1:], counts, strict=True)}


def format_summary(stats: dict[str, Any]) -> str:
    """The human-readable report printed at the end of `prepare` and saved as summary.txt."""
    lines = [
        f"prepared data {stats['fingerprint']} (max_length {stats['config']['max_length']}, "
        f"packing {stats['config']['packing']}, seed {stats['seed']})",
        "",
        "sources:",
    ]
    for source in stats["sources"]:
        bad = ", ".join(f"{k} {v}" for k, v in sorted(source["bad"].items())) or "none"
        lines.append(
            f"  {source['path']}: {source['lines']} lines, {source['records']} records, bad: {bad}, "
            f"blank {source['blank_lines']}, duplicates {source['duplicates']}, unassigned {source['unassigned']}"
        )
    for split, info in stats["splits"].items():
        lines += ["", f"split {split}:"]
        for source in info["sources"]:
            dropped = ", ".join(f"{k} {v}" for k, v in sorted(source["dropped"].items()) if v) or "none"
            lines.append(
                f"  {source['path']} [{source['range'][0]}, {source['range'][1]}) weight {source['weight']}: "
                f"{source['records_in_range']} records -> {source['examples']} examples (dropped: {dropped}; "
                f"truncated {source['truncated']}) -> {source['sampled']} in the mixed stream"
            )
        lines.append(
            f"  {info['examples']} examples, {info['rows']} rows, {info['tokens']} tokens, "
            f"{info['target_tokens']} target tokens ({info['target_fraction']:.1%}), "
            f"packing efficiency {info['packing_efficiency']:.1%} non-pad, "
            f"{info['mean_examples_per_row']:.2f} examples/row"
        )
        hist = "  ".join(f"{k}:{v}" for k, v in info["length_histogram"].items() if v)
        lines.append(f"  example lengths: {hist or 'none'}")
    totals = stats["totals"]
    dropped = ", ".join(f"{k} {v}" for k, v in sorted(totals["dropped"].items()) if v) or "none"
    lines += ["", f"records read {totals['records_read']} = used {totals['records_used']} + dropped ({dropped})"]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- the pipeline


def prepare_data(
    config: DataConfig, tokenizer, seed: int, output_dir: str | Path, overwrite: bool = False, progress: bool = True
) -> PreparedData:
    """Run every step and write the splits under `output_dir`; reuse it when it already holds this exact work."""
    import datasets

    if progress:
        return _prepare_data(config, tokenizer, seed, Path(output_dir), overwrite, progress)
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        return _prepare_data(config, tokenizer, seed, Path(output_dir), overwrite, progress)
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def _prepare_data(
    config: DataConfig, tokenizer, seed: int, output_dir: Path, overwrite: bool, progress: bool
) -> PreparedData:
    import datasets

    splits = resolve_splits(config)
    digests: dict[Path, str] = {}
    fingerprint = data_fingerprint(config, splits, tokenizer, seed, digests)
    existing = _read_stats(output_dir)
    if existing is not None and existing.get("fingerprint") == fingerprint:
        return load_prepared(output_dir, reused=True)
    if output_dir.exists() and not overwrite and any(output_dir.iterdir()):
        raise OutputExistsError(f"{output_dir} already exists and holds other data (pass --overwrite to replace it)")

    resolved = {spec: spec.path.resolve() for split_sources in splits.values() for spec in split_sources}
    sources: dict[Path, _Source] = {}
    for spec, key in resolved.items():
        if key not in sources:
            sources[key] = _read_source(spec.path, config, seed, progress, _digest_of(spec.path, digests))

    # Tokenize each needed record once, even when two splits (or groups) read different ranges of one source.
    needed: list[tuple[Path, int]] = []
    for split, split_sources in splits.items():
        for spec in split_sources:
            source = sources[resolved[spec]]
            start, end = spec.record_range(source.table.num_rows)
            source.used_ranges[split] = (start, end)
            needed.append((split, resolved[spec], start, end))
    # first_row[(split, source)]: where that range's records begin in the tokenized table
    first_row, pieces, rows_so_far = {}, [], 0
    for split, key, start, end in needed:
        first_row[(split, key)] = rows_so_far
        pieces.append(sources[key].table.slice(start, end - start))
        rows_so_far += end - start
    text_table = pa.concat_tables(pieces)  # slices of the source tables: no text is copied
    del pieces
    for source in sources.values():
        source.table = None  # the slices keep what is used alive; the rest can go
    _release_freed_memory()
    flat = _tokenize(text_table, tokenizer, config, progress)
    del text_table
    lengths = flat.column("length").to_numpy().astype(np.int64)
    target_counts = flat.column("num_target_tokens").to_numpy().astype(np.int64)
    reasons = np.asarray(flat.column("drop_reason").to_pylist(), dtype=object)
    truncated = flat.column("truncated").to_numpy(zero_copy_only=False).astype(bool)
    offsets = flat.column("input_ids").combine_chunks().offsets.to_numpy()
    offsets = offsets - offsets[0]  # a sliced array's offsets start where its values do; flatten() starts there too
    token_values = {
        name: flat.column(name).combine_chunks().flatten().to_numpy(zero_copy_only=False)
        for name in ("input_ids", "labels")
    }
    del flat  # the chunked table: every column needed is a numpy array now
    _release_freed_memory()

    stats: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "fingerprint": fingerprint,
        "seed": seed,
        "config": {k: v for k, v in asdict(config).items() if k not in ("prepared_data", "data_cache_dir", "num_proc")},
        "tokenizer": {
            "fingerprint": tokenizer_fingerprint(tokenizer),
            "vocab_size": len(tokenizer),
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        "sources": [],
        "splits": {},
    }
    totals_dropped: Counter = Counter()
    records_used = 0
    with atomic_output_dir(output_dir, overwrite=True) as tmp:
        for split_index, (split, split_sources) in enumerate(splits.items()):
            per_source_examples: list[np.ndarray] = []
            split_info: dict[str, Any] = {"sources": []}
            for spec in split_sources:
                source = sources[resolved[spec]]
                start, end = source.used_ranges[split]
                ids = np.arange(end - start, dtype=np.int64) + first_row[(split, resolved[spec])]
                kept = ids[reasons[ids] == ""] if len(ids) else ids
                dropped = Counter(reasons[ids].tolist()) if len(ids) else Counter()
                dropped.pop("", None)
                per_source_examples.append(kept)
                totals_dropped.update(dropped)
                records_used += len(kept)
                split_info["sources"].append(
                    {
                        "path": str(spec.path),
                        "weight": spec.weight,
                        "range": [start, end],
                        "records_in_range": end - start,
                        "examples": int(len(kept)),
                        "dropped": {reason: int(dropped.get(reason, 0)) for reason in DROP_REASONS},
                        "truncated": int(truncated[kept].sum()) if len(kept) else 0,
                    }
                )
            stream = mix_by_weight(
                [len(e) for e in per_source_examples], [s.weight for s in split_sources], seed + split_index
            )
            sampled = Counter(source_index for source_index, _ in stream)
            for source_index, info in enumerate(split_info["sources"]):
                info["sampled"] = int(sampled.get(source_index, 0))
            example_ids = np.array([per_source_examples[s][j] for s, j in stream], dtype=np.int64)
            if len(example_ids) == 0:
                raise DataError(
                    f"split {split!r} has no usable examples after filtering; see the dropped counts "
                    f"({dict(totals_dropped) or 'none'}) and max_length {config.max_length}"
                )
            if config.packing:
                rows = pack_examples(lengths[example_ids], config.max_length, config.packing_strategy)
                if config.packing_strategy == "best_fit":
                    rng = np.random.default_rng([seed, split_index, 1])
                    rows = [rows[i] for i in rng.permutation(len(rows))]
                rows = [[int(example_ids[i]) for i in row] for row in rows]
            else:
                rows = [[int(i)] for i in example_ids]
            table = gather_rows(token_values, offsets, rows, packed=config.packing)
            # fingerprint given: else `datasets` would hash (pickle) the whole table just to name it
            datasets.Dataset(table, fingerprint=f"{fingerprint[:32]}-{split}").save_to_disk(str(tmp / split))
            del table
            _release_freed_memory()
            tokens = int(lengths[example_ids].sum())
            targets = int(target_counts[example_ids].sum())
            split_info.update(
                {
                    "examples": int(len(example_ids)),
                    "rows": len(rows),
                    "tokens": tokens,
                    "target_tokens": targets,
                    "target_fraction": targets / tokens,
                    "packing_efficiency": tokens / (len(rows) * config.max_length) if config.packing else None,
                    "mean_examples_per_row": len(example_ids) / len(rows),
                    "length_histogram": length_histogram(lengths[example_ids], config.max_length),
                }
            )
            if not config.packing:
                split_info["packing_efficiency"] = tokens / (len(rows) * config.max_length)
            stats["splits"][split] = split_info

        for source in sources.values():
            in_ranges = sum(end - start for start, end in source.used_ranges.values())
            stats["sources"].append(
                {
                    **source.report,
                    "used_by": {split: list(r) for split, r in source.used_ranges.items()},
                    "unassigned": source.report["unique"] - in_ranges,
                }
            )
        bad_total: Counter = Counter()
        for source in stats["sources"]:
            bad_total.update(source["bad"])
        stats["totals"] = {
            "records_read": sum(s["lines"] - s["blank_lines"] for s in stats["sources"]),
            "records_used": records_used,
            "dropped": {
                **dict(bad_total),
                "duplicate": sum(s["duplicates"] for s in stats["sources"]),
                "unassigned": sum(s["unassigned"] for s in stats["sources"]),
                **{reason: int(totals_dropped.get(reason, 0)) for reason in DROP_REASONS},
            },
        }
        (tmp / STATS_FILE).write_text(json.dumps(stats, indent=2) + "\n")
        (tmp / SUMMARY_FILE).write_text(format_summary(stats) + "\n")
    return load_prepared(output_dir)


def _read_stats(directory: Path) -> dict[str, Any] | None:
    path = directory / STATS_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def load_prepared(directory: str | Path, reused: bool = False) -> PreparedData:
    """Open a directory written by `prepare` (each split with `load_from_disk`)."""
    import datasets

    directory = Path(directory)
    stats = _read_stats(directory)
    if stats is None:
        raise DataError(f"{directory}: not a prepared data directory (no readable {STATS_FILE}); run `prepare` first")
    if stats.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"{directory}: prepared with format version {stats.get('format_version')}, this version reads "
            f"{FORMAT_VERSION}; prepare it again"
        )
    splits = {}
    for split in stats["splits"]:
        if not (directory / split).is_dir():
            raise DataError(f"{directory}: split {split!r} listed in {STATS_FILE} is missing")
        splits[split] = datasets.load_from_disk(str(directory / split))
    return PreparedData(splits=splits, stats=stats, directory=directory, reused=reused)


def load_datasets(config: DataConfig, tokenizer, seed: int, progress: bool = True) -> PreparedData:
    """What training calls: open `prepared_data`, or prepare the sources into the cache (reused when unchanged).

    A prepared directory made with another tokenizer is refused, since its ids would mean other tokens.
    """
    if config.prepared_data is not None:
        prepared = load_prepared(config.prepared_data, reused=True)
        expected = tokenizer_fingerprint(tokenizer)
        if prepared.stats["tokenizer"]["fingerprint"] != expected:
            raise DataError(
                f"{config.prepared_data}: was prepared with another tokenizer "
                f"({prepared.stats['tokenizer']['fingerprint']} != {expected}); prepare it again with this one"
            )
        return prepared
    splits = resolve_splits(config)
    cache_root = Path(config.data_cache_dir) if config.data_cache_dir else DEFAULT_CACHE
    directory = cache_root / data_fingerprint(config, splits, tokenizer, seed)
    return prepare_data(config, tokenizer, seed, directory, overwrite=True, progress=progress)


# ---------------------------------------------------------------------------------------------------------- CLI


@dataclass
class PrepareArguments:
    """Options of `hf-starcoder-ft prepare` that training takes from elsewhere (its output dir and seed)."""

    output_dir: str | None = field(default=None, metadata={"help": "Where the prepared splits are written."})
    seed: int = field(default=1234, metadata={"help": "Seed of the shuffles and the mixture (Megatron used 1234)."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an output_dir that holds other data."})
    quiet: bool = field(default=False, metadata={"help": "No progress bars."})


def main(argv: list[str] | None = None) -> int:
    from trl import TrlParser

    from hf_starcoder_ft.tokenizer import load_tokenizer

    parser = TrlParser((DataConfig, PrepareArguments), prog="hf-starcoder-ft prepare")
    data_config, args = parser.parse_args_and_config(args=argv)
    if args.output_dir is None:
        parser.error("--output_dir is required")
    if data_config.tokenizer is None:
        parser.error("--tokenizer is required (a tokenizer.json file or a model directory)")
    if data_config.prepared_data is not None:
        parser.error("--prepared_data is a training option; prepare reads train_data/valid_data/test_data")
    try:
        tokenizer = load_tokenizer(data_config.tokenizer)
        prepared = prepare_data(
            data_config, tokenizer, args.seed, args.output_dir, overwrite=args.overwrite, progress=not args.quiet
        )
    except (DataError, OutputExistsError, ValueError) as error:
        print(f"hf-starcoder-ft prepare: error: {error}", file=sys.stderr)
        return 1
    if prepared.reused:
        print(f"{args.output_dir}: already prepared with these inputs and settings; reusing it.")
    print(format_summary(prepared.stats))
    print(f"\nwrote {', '.join(prepared.splits)} under {prepared.directory}")
    return 0
