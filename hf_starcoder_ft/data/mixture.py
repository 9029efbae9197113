"""Data specs, split ranges and weighted mixing (Megatron's weighted split paths, without its range bug).

    specs = parse_data_spec("data/train_paths.txt", default_group="train")
    # {"train": [SourceSpec(path=PosixPath("data/a.jsonl"), weight=0.7, start=0.0, end=0.95), ...]}

A SPEC is one of:
- a jsonl file: one source, weight 1, the whole file (`0:1`);
- a Megatron data-path file: whitespace-separated quoted groups `"NAME: W1 S1:E1 P1, W2 S2:E2 P2"`, e.g.
  `"train: 1.0 0:0.95 data.jsonl"` and `"valid: 1.0 0.95:1.0 data.jsonl"`. Relative paths are relative to the
  file's directory. Several groups (e.g. two validation sets) become several splits;
- a YAML mixture: a list of `{path, weight, start, end}` mappings (start/end default to 0/1, weight to 1), or a
  mapping `{NAME: [ ...sources... ], ...}` for several groups.

Ranges: a source of N records (after deduplication and the seeded shuffle) contributes the records
`[round(start*N), round(end*N))` to the split. Megatron's `mtf` loader ignored the start offset, so
`valid: 1.0 0.95:1.0 P` read the *first* 5%, which train also read; here the offset is honoured and
`check_disjoint` refuses any two splits whose ranges of one source overlap.

Weights (`mix_by_weight`): within one split, weights are normalized to proportions p_i. The split keeps its
natural size M = sum of the sources' example counts n_i, and source i contributes exactly k_i = round(p_i * M)
examples: when k_i <= n_i, a seeded random subset of k_i examples (down-sampling); when k_i > n_i, every example
floor(k_i / n_i) times plus a seeded random subset for the remainder (up-sampling, like Megatron's blending
over epochs). The result is shuffled with the seed. The same seed and inputs give the same stream.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hf_starcoder_ft.data.errors import DataError

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson")
YAML_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class SourceSpec:
    """One jsonl source in one split: its path, weight and the fraction range of its records."""

    path: Path
    weight: float = 1.0
    start: float = 0.0
    end: float = 1.0

    def __post_init__(self) -> None:
        if not (0.0 <= self.start < self.end <= 1.0):
            raise DataError(f"{self.path}: range {self.start}:{self.end} must satisfy 0 <= start < end <= 1")
        if not self.weight > 0:
            raise DataError(f"{self.path}: weight must be > 0, got {self.weight}")

    def record_range(self, num_records: int) -> tuple[int, int]:
        """Indices `[round(start*N), round(end*N))` of this source's records used by the split."""
        return round(self.start * num_records), round(self.end * num_records)


def is_jsonl_path(path: Path) -> bool:
    return any(path.name.endswith(suffix) for suffix in JSONL_SUFFIXES)


def parse_data_spec(spec: str | Path, default_group: str) -> dict[str, list[SourceSpec]]:
    """Read a SPEC (jsonl path, Megatron data-path file or YAML mixture) into `{group name: sources}`."""
    path = Path(spec)
    if not path.exists():
        raise DataError(f"{path}: data file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a directory; give a jsonl file, a data-path file or a YAML mixture")
    if is_jsonl_path(path):
        return {default_group: [SourceSpec(path=path)]}
    if path.name.endswith(YAML_SUFFIXES):
        return _parse_yaml_mixture(path, default_group)
    return _parse_megatron_data_path_file(path)


def _parse_megatron_data_path_file(path: Path) -> dict[str, list[SourceSpec]]:
    text = path.read_text(encoding="utf-8")
    try:
        groups = shlex.split(text, comments=True)
    except ValueError as error:
        raise DataError(f"{path}: cannot split into quoted groups ({error})") from error
    if not groups:
        raise DataError(f'{path}: no data-path group found (expected a line like "train: 1.0 0:0.95 data.jsonl")')
    result: dict[str, list[SourceSpec]] = {}
    for group in groups:
        line = _line_of(text, group)
        name, sep, body = group.partition(":")
        name = name.strip()
        if not sep or not name or " " in name:
            raise DataError(
                f'{path}:{line}: bad data-path group {group!r}; expected "NAME: WEIGHT START:END PATH, ..."'
            )
        if name in result:
            raise DataError(f"{path}:{line}: group {name!r} appears twice")
        sources = []
        for entry in body.split(","):
            fields = entry.split()
            if len(fields) != 3:
                raise DataError(
                    f'{path}:{line}: bad source {entry.strip()!r} in group {name!r}; expected "WEIGHT START:END PATH"'
                )
            weight_text, range_text, source_path = fields
            try:
                weight = float(weight_text)
                start_text, end_text = range_text.split(":")
                start, end = float(start_text), float(end_text)
            except ValueError as error:
                raise DataError(
                    f'{path}:{line}: bad weight or range in {entry.strip()!r} (expected e.g. "1.0 0:0.95 data.jsonl")'
                ) from error
            resolved = Path(source_path)
            if not resolved.is_absolute():
                resolved = path.parent / resolved
            try:
                sources.append(SourceSpec(path=resolved, weight=weight, start=start, end=end))
            except DataError as error:
                raise DataError(f"{path}:{line}: {error}") from error
        result[name] = sources
    return result


def _line_of(text: str, group: str) -> int:
    first_word = group.split(":")[0].strip()
    for number, line in enumerate(text.splitlines(), start=1):
        if first_word and first_word in line:
            return number
    return 1


def _parse_yaml_mixture(path: Path, default_group: str) -> dict[str, list[SourceSpec]]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise DataError(f"{path}: invalid YAML ({error})") from error
    if isinstance(data, dict) and set(data) == {"sources"}:
        data = data["sources"]
    groups = {default_group: data} if isinstance(data, list) else data
    if not isinstance(groups, dict) or not groups:
        raise DataError(f"{path}: expected a list of sources or a mapping of group name -> list of sources")
    result: dict[str, list[SourceSpec]] = {}
    for name, entries in groups.items():
        if not isinstance(entries, list) or not entries:
            raise DataError(f"{path}: group {name!r} must be a non-empty list of sources")
        sources = []
        for index, entry in enumerate(entries):
            where = f"{path}: {name}[{index}]"
            if not isinstance(entry, dict):
                raise DataError(f"{where}: expected a mapping with key 'path', got {entry!r}")
            unknown = set(entry) - {"path", "weight", "start", "end"}
            if unknown:
                raise DataError(f"{where}: unknown key(s) {sorted(unknown)} (allowed: path, weight, start, end)")
            if "path" not in entry:
                raise DataError(f"{where}: missing key 'path'")
            resolved = Path(str(entry["path"]))
            if not resolved.is_absolute():
                resolved = path.parent / resolved
            try:
                sources.append(
                    SourceSpec(
                        path=resolved,
                        weight=float(entry.get("weight", 1.0)),
                        start=float(entry.get("start", 0.0)),
                        end=float(entry.get("end", 1.0)),
                    )
                )
            except (TypeError, ValueError) as error:
                raise DataError(f"{where}: {error}") from error
        result[str(name)] = sources
    return result


def check_disjoint(splits: dict[str, list[SourceSpec]]) -> None:
    """Refuse two splits that would read the same records of one source (overlapping fraction ranges)."""
    by_source: dict[Path, list[tuple[str, SourceSpec]]] = {}
    for split, sources in splits.items():
        seen_in_split: set[Path] = set()
        for source in sources:
            key = source.path.resolve()
            if key in seen_in_split:
                raise DataError(f"split {split!r} lists {source.path} twice")
            seen_in_split.add(key)
            by_source.setdefault(key, []).append((split, source))
    for key, uses in by_source.items():
        for i, (split_a, a) in enumerate(uses):
            for split_b, b in uses[i + 1 :]:
                if a.start < b.end and b.start < a.end:
                    raise DataError(
                        f"splits {split_a!r} ({a.start}:{a.end}) and {split_b!r} ({b.start}:{b.end}) overlap on {key}; "
                        "ranges of one source must be disjoint so no record is in two splits"
                    )


def mix_by_weight(counts: list[int], weights: list[float], seed: int) -> list[tuple[int, int]]:
    """The mixed stream as `(source index, example index)` pairs, in a seeded shuffled order.

    >>> mix_by_weight([4, 4], [3.0, 1.0], seed=0).__len__()   # M = 8: 6 from source 0 (up), 2 from source 1
    8
    """
    if len(counts) != len(weights):
        raise ValueError("counts and weights differ in length")
    rng = np.random.default_rng(seed)
    available = [(i, n, w) for i, (n, w) in enumerate(zip(counts, weights, strict=True)) if n > 0]
    if not available:
        return []
    if len(available) == 1:
        source, n, _ = available[0]
        picks = [(source, j) for j in range(n)]
    else:
        total = sum(n for _, n, _ in available)
        weight_sum = sum(w for _, _, w in available)
        picks = []
        for source, n, w in available:
            k = round(w / weight_sum * total)
            full_copies, remainder = divmod(k, n)
            chosen = np.tile(np.arange(n), full_copies)
            if remainder:
                chosen = np.concatenate([chosen, np.sort(rng.choice(n, size=remainder, replace=False))])
            picks.extend((source, int(j)) for j in chosen)
    order = rng.permutation(len(picks))
    return [picks[i] for i in order]
