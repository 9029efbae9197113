"""Every kind of bad jsonl input: a clear error naming file and line, or skipped and counted."""

from __future__ import annotations

import pytest
from _data_fixtures import write_jsonl

from hf_starcoder_ft.data.errors import DataError
from hf_starcoder_ft.data.jsonl import read_records

GOOD = {"inputs": "a", "targets": "b"}


@pytest.mark.parametrize(
    ("line", "reason", "message"),
    [
        ('{"inputs": "a", "targets": ', "malformed_json", "malformed JSON"),
        ('["a", "b"]', "not_an_object", "expected a JSON object, got list"),
        ('{"targets": "b"}', "missing_key", "missing key 'inputs'"),
        ('{"inputs": "a"}', "missing_key", "missing key 'targets'"),
        ('{"inputs": "a", "targets": 3}', "not_a_string", "'targets' must be a string, got int"),
        ('{"inputs": null, "targets": "b"}', "not_a_string", "'inputs' must be a string"),
        ('{"inputs": "a", "targets": "b", "outputs": "c"}', "conflicting_targets", "both 'targets' and 'outputs'"),
        (b'{"inputs": "\xff", "targets": "b"}', "invalid_utf8", "invalid UTF-8"),
        ('{"inputs": "ok \\u00e9 x\\ud800y", "targets": "b"}', "invalid_utf8", r"unpaired surrogate \\ud800 at char"),
    ],
)
def test_bad_line_names_file_and_line_or_is_counted(tmp_path, line, reason, message):
    path = write_jsonl(tmp_path / "data.jsonl", [GOOD, line, GOOD])
    with pytest.raises(DataError, match=rf"data\.jsonl:2: .*{message}"):
        read_records(path, progress=False)
    records, report = read_records(path, skip_bad_records=True, progress=False)
    assert records == [("a", "b"), ("a", "b")]
    assert dict(report.bad) == {reason: 1}
    assert report.lines == 3 == report.records + sum(report.bad.values())


def test_outputs_is_an_alias_and_equal_duplicates_are_fine(tmp_path):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [{"inputs": "a", "outputs": "b"}, {"inputs": "c", "targets": "d", "outputs": "d", "extra": 1}],
    )
    assert read_records(path, progress=False)[0] == [("a", "b"), ("c", "d")]


def test_gzip_and_blank_lines(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl.gz", [GOOD, "", GOOD], gz=True)
    records, report = read_records(path, progress=False)
    assert len(records) == 2 and report.blank_lines == 1 and report.lines == 3


def test_missing_empty_and_corrupt_files(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: data file not found"):
        read_records(tmp_path / "nope.jsonl", progress=False)
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="empty.jsonl: file is empty"):
        read_records(empty, progress=False)
    corrupt = tmp_path / "bad.jsonl.gz"
    corrupt.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="bad.jsonl.gz: cannot read"):
        read_records(corrupt, progress=False)
