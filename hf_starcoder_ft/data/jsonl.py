"""Read `{"inputs", "targets"}` jsonl records, validating every line (plain or gzip-compressed files).

    records, report = read_records(Path("data.jsonl"), skip_bad_records=False)
    for inputs, targets in iter_records(Path("data.jsonl"), report): ...   # streaming, same checks

The target field is `targets` (what OctoPack's scripts write); `outputs` (what its README says) is accepted as
the same field. A record with neither is an error, and so is one with both unless they are equal. Extra keys are
ignored. Every problem names the file and line; with `skip_bad_records` the line is skipped and counted under
its reason instead, so that `lines read = records returned + sum(bad reasons)`.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from hf_starcoder_ft.data.errors import DataError

TARGET_KEYS = ("targets", "outputs")
BAD_REASONS = ("invalid_utf8", "malformed_json", "not_an_object", "missing_key", "conflicting_targets", "not_a_string")


@dataclass
class ReadReport:
    """What reading one file found: lines read, records kept, bad lines per reason (with the first example)."""

    path: str
    lines: int = 0
    blank_lines: int = 0
    records: int = 0
    bad: Counter = field(default_factory=Counter)
    first_bad: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "path": self.path,
            "lines": self.lines,
            "blank_lines": self.blank_lines,
            "records": self.records,
            "bad": dict(self.bad),
            "first_bad": self.first_bad,
        }


def _open_binary(path: Path):
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")


def parse_record(raw: bytes, where: str) -> tuple[str, str]:
    """Validate one jsonl line and return `(inputs, targets)`; raise `DataError(reason, message)` otherwise."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _bad("invalid_utf8", f"{where}: invalid UTF-8 at byte {error.start}") from error
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        raise _bad("malformed_json", f"{where}: malformed JSON ({error.msg} at column {error.colno})") from error
    if not isinstance(record, dict):
        raise _bad("not_an_object", f"{where}: expected a JSON object, got {type(record).__name__}")
    if "inputs" not in record:
        raise _bad("missing_key", f"{where}: missing key 'inputs' (keys: {sorted(record)})")
    present = [key for key in TARGET_KEYS if key in record]
    if not present:
        raise _bad("missing_key", f"{where}: missing key 'targets' (or 'outputs') (keys: {sorted(record)})")
    if len(present) == 2 and record["targets"] != record["outputs"]:
        raise _bad("conflicting_targets", f"{where}: has both 'targets' and 'outputs' and they differ")
    inputs, targets = record["inputs"], record[present[0]]
    for key, value in (("inputs", inputs), (present[0], targets)):
        if not isinstance(value, str):
            raise _bad("not_a_string", f"{where}: key {key!r} must be a string, got {type(value).__name__}")
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as error:  # an escaped lone surrogate such as "\ud800": JSON allows it
                raise _bad(
                    "invalid_utf8",
                    f"{where}: key {key!r} holds an unpaired surrogate \\u{ord(value[error.start]):04x} "
                    f"at character {error.start}, which is not text",
                ) from None
    return inputs, targets


def _bad(reason: str, message: str) -> DataError:
    error = DataError(message)
    error.reason = reason  # type: ignore[attr-defined]
    return error


def iter_records(path: Path, report: ReadReport, skip_bad_records: bool = False, progress: bool = True):
    """Yield every valid `(inputs, targets)` record of one file in file order, filling `report` as it goes (its
    totals are final once the generator is exhausted)."""
    if not path.exists():
        raise DataError(f"{path}: data file not found")
    try:
        with _open_binary(path) as handle:
            bar = tqdm(desc=f"read {path.name}", unit=" lines", disable=not progress, leave=False)
            for number, raw in enumerate(handle, start=1):
                report.lines += 1
                bar.update()
                if not raw.strip():
                    report.blank_lines += 1
                    continue
                try:
                    record = parse_record(raw.rstrip(b"\r\n"), f"{path}:{number}")
                except DataError as error:
                    if not skip_bad_records:
                        raise DataError(f"{error} (use --skip_bad_records to skip and count such lines)") from None
                    reason = error.reason  # type: ignore[attr-defined]
                    report.bad[reason] += 1
                    report.first_bad.setdefault(reason, str(error))
                    continue
                report.records += 1
                yield record
            bar.close()
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise DataError(f"{path}: cannot read ({error})") from error
    if report.lines == 0:
        raise DataError(f"{path}: file is empty")
    if not report.records and not skip_bad_records:
        raise DataError(f"{path}: no records (only blank lines)")


def read_records(path: Path, skip_bad_records: bool = False, progress: bool = True) -> tuple[list, ReadReport]:
    """All valid `(inputs, targets)` records of one file, in file order, and the report of what was read."""
    report = ReadReport(path=str(path))
    records = list(iter_records(path, report, skip_bad_records, progress))
    return records, report
