"""CommitPack-style record files: jsonl, jsonl.gz, parquet, `datasets` directories; bad input named precisely."""

from __future__ import annotations

import gzip

import pytest
from _commits_fixtures import commitpack_record, read_jsonl, write_jsonl

from hf_starcoder_ft.data.commits import CommitsError, build_commit_dataset

ROWS = [commitpack_record(i) for i in range(12)]


def build(tmp_path, source, name="out.jsonl", **kwargs):
    output = tmp_path / name
    report = build_commit_dataset([source], output, progress=False, keep_metadata=True, **kwargs)
    return output, report


def test_every_file_kind_gives_the_same_bytes(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    plain = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    packed = write_jsonl(tmp_path / "rows.jsonl.gz", ROWS, compress=True)
    parquet = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), parquet, row_group_size=5)
    saved = tmp_path / "saved"
    Dataset.from_list(ROWS).save_to_disk(str(saved))

    outputs = {}
    for name, source in [("jsonl", plain), ("gz", packed), ("parquet", parquet), ("datasets", saved)]:
        output, report = build(tmp_path, source, name=f"{name}.jsonl", chunk_rows=5)
        assert (report.seen, report.written) == (12, 12)
        outputs[name] = output.read_bytes()
    assert len(set(outputs.values())) == 1
    first = read_jsonl(tmp_path / "jsonl.jsonl")[0]
    assert first == {
        "inputs": "<filename>module_0.py<commit_before>def f_0():\n    return 0\n<commit_msg>Return 1 from f_0"
        "<commit_after>",
        "targets": "def f_0():\n    return 1\n<|endoftext|>",
        "commit": "0" * 40,
        "old_file": "pkg/module_0.py",
        "new_file": "pkg/module_0.py",
        "lang": "Python",
        "repos": "owner/repo_0",
        "license": "mit",
    }


def test_a_directory_of_record_files_is_read_in_name_order(tmp_path):
    write_jsonl(tmp_path / "dir" / "b.jsonl", ROWS[6:])
    write_jsonl(tmp_path / "dir" / "a.jsonl.gz", ROWS[:6], compress=True)
    (tmp_path / "dir" / "README.txt").write_text("not a record file")
    output, _ = build(tmp_path, tmp_path / "dir")
    assert [r["commit"] for r in read_jsonl(output)] == [row["commit"] for row in ROWS]


def test_optional_fields_may_be_missing(tmp_path):
    row = {"old_contents": "a\n", "new_contents": "b\n", "message": "Change a to b\n\nBecause.", "new_file": "x/y.txt"}
    output, report = build(tmp_path, write_jsonl(tmp_path / "in.jsonl", [row, {**row, "lang": None}]))
    expected = {
        "inputs": "<filename>y.txt<commit_before>a\n<commit_msg>Change a to b<commit_after>",
        "targets": "b\n<|endoftext|>",
        "commit": "",
        "old_file": "x/y.txt",
        "new_file": "x/y.txt",
        "lang": "",
        "repos": "",
        "license": "",
    }
    assert read_jsonl(output) == [expected, expected]


GOOD = {"old_contents": "a", "new_contents": "b", "subject": "Fix it", "new_file": "a.py"}


def without(key: str) -> dict:
    return {k: v for k, v in GOOD.items() if k != key}


@pytest.mark.parametrize(
    "lines, message",
    [
        ([without("old_contents")], r"in\.jsonl:1: missing required field 'old_contents'"),
        ([without("subject")], r"in\.jsonl:1: missing required field 'subject' \(or 'message'\)"),
        ([without("new_file")], r"in\.jsonl:1: missing required field 'old_file' \(or 'new_file'\)"),
        (["", "{}", ""], r"in\.jsonl:2: missing required field 'old_contents'"),
        ([{**GOOD, "old_contents": 1}], r"in\.jsonl:1: field 'old_contents' must be a string, got int"),
        (["", "", '{"old_contents": "a",'], r"in\.jsonl:3: malformed JSON"),
        (["[1, 2]"], r"in\.jsonl:1: expected a JSON object, got list"),
    ],
)
def test_bad_records_name_the_file_line_and_key_and_leave_no_output(tmp_path, lines, message):
    rows = [commitpack_record(i) for i in range(3)]
    source = write_jsonl(tmp_path / "in.jsonl", rows + lines + rows)
    with pytest.raises(CommitsError, match=_shift_line(message, len(rows))):
        build(tmp_path, source)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def _shift_line(pattern: str, offset: int) -> str:
    """The patterns above number lines within the bad block; the file has `offset` good rows before it."""
    head, _, rest = pattern.partition(r"in\.jsonl:")
    number, _, tail = rest.partition(":")
    return rf"{head}in\.jsonl:{int(number) + offset}:{tail}"


def test_bad_record_in_a_worker_process_is_reported_the_same_way(tmp_path):
    rows = [commitpack_record(i) for i in range(40)]
    source = write_jsonl(tmp_path / "in.jsonl", rows[:30] + ['{"oops"'] + rows[30:])
    with pytest.raises(CommitsError, match=r"in\.jsonl:31: malformed JSON"):
        build(tmp_path, source, num_proc=2, chunk_rows=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_damaged_and_unknown_files_are_clear_errors(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl.gz", ROWS * 50, compress=True)
    damaged = tmp_path / "damaged.jsonl.gz"
    damaged.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(CommitsError, match=r"damaged\.jsonl\.gz: cannot read the file after line \d+"):
        build(tmp_path, damaged)
    (tmp_path / "notgz.jsonl.gz").write_bytes(b"plain text, not gzip\n")
    with pytest.raises(CommitsError, match=r"notgz\.jsonl\.gz: cannot read the file"):
        build(tmp_path, tmp_path / "notgz.jsonl.gz")
    (tmp_path / "rows.csv").write_text("a,b\n")
    with pytest.raises(CommitsError, match=r"rows\.csv: unknown record file type"):
        build(tmp_path, tmp_path / "rows.csv")
    with pytest.raises(CommitsError, match=r"missing\.jsonl: no such file"):
        build(tmp_path, tmp_path / "missing.jsonl")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(CommitsError, match=r"bad\.parquet: cannot read parquet file"):
        build(tmp_path, tmp_path / "bad.parquet")
    assert not (tmp_path / "out.jsonl").exists()


def test_columnar_sources_name_a_missing_column_before_any_work(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset, DatasetDict

    rows = [{key: value for key, value in row.items() if key != "new_contents"} for row in ROWS]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rows.parquet")
    with pytest.raises(CommitsError, match=r"rows\.parquet: missing required column 'new_contents'"):
        build(tmp_path, tmp_path / "rows.parquet")
    DatasetDict(train=Dataset.from_list(ROWS), test=Dataset.from_list(ROWS)).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(CommitsError, match=r"dd: holds several splits \(train, test\)"):
        build(tmp_path, tmp_path / "dd")
    assert not (tmp_path / "out.jsonl").exists()


def test_lone_surrogates_are_dropped_as_not_utf8(tmp_path):
    lines = ['{"old_contents": "a", "new_contents": "\\ud800", "subject": "Fix the thing", "new_file": "a.py"}']
    source = write_jsonl(tmp_path / "in.jsonl", [commitpack_record(1), *lines])
    output, report = build(tmp_path, source)
    assert report.dropped == {"not_utf8": 1} and len(read_jsonl(output)) == 1


def test_output_may_not_replace_an_input(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", ROWS)
    with pytest.raises(CommitsError, match="would replace one of the inputs"):
        build_commit_dataset([source], source, overwrite=True, progress=False)
    assert len(read_jsonl(source)) == len(ROWS)


def test_gzip_output_is_deterministic(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", ROWS)
    first, _ = build(tmp_path, source, name="a.jsonl.gz")
    second, _ = build(tmp_path, source, name="b.jsonl.gz")
    plain, _ = build(tmp_path, source, name="c.jsonl")
    assert first.read_bytes() == second.read_bytes()
    assert gzip.decompress(first.read_bytes()) == plain.read_bytes()
