"""Filters of `hf-starcoder-ft commits`: OctoPack's defaults, each drop counted under its reason."""

from __future__ import annotations

import json

import pytest
from _commits_fixtures import commitpack_record, read_jsonl, write_jsonl

from hf_starcoder_ft.data.commits import CommitFilters, CommitsError, build_commit_dataset
from hf_starcoder_ft.data.commits_filters import first_word, is_hash_subject, is_version_subject
from hf_starcoder_ft.data.commits_formats import InstructFormat


def rows_by_reason() -> dict[str, list[dict]]:
    """Records that the default filters drop, by the reason they must be counted under, plus keepers."""
    return {
        "old_too_long": [commitpack_record(1, old_contents="x" * 100_001)],
        "empty_new": [commitpack_record(2, new_contents="")],
        "unchanged": [commitpack_record(3, new_contents=commitpack_record(3)["old_contents"])],
        "subject_too_short": [commitpack_record(4, subject="ok"), commitpack_record(5, subject="  ")],
        "subject_version": [commitpack_record(6, subject="v1.2.3"), commitpack_record(7, subject="Release 2.0.1")],
        "subject_hash": [commitpack_record(8, subject="3f9a2c1d")],
        "subject_single_word": [commitpack_record(9, subject="Refactor"), commitpack_record(10, subject="defaced")],
        "kept": [
            commitpack_record(11, old_contents="x" * 100_000),
            commitpack_record(12, old_contents=""),
            commitpack_record(13, subject="Fix 1.2.3 regression"),
            commitpack_record(14, subject="Added tests for the parser"),
        ],
    }


def build(tmp_path, rows, name="out.jsonl", **kwargs):
    source = write_jsonl(tmp_path / f"{name}.in.jsonl", rows)
    report = build_commit_dataset([source], tmp_path / name, progress=False, keep_metadata=True, **kwargs)
    return read_jsonl(tmp_path / name), report


def test_default_filters_drop_each_case_under_its_reason(tmp_path):
    groups = rows_by_reason()
    rows = [row for group in groups.values() for row in group]
    records, report = build(tmp_path, rows)
    assert report.dropped == {reason: len(group) for reason, group in groups.items() if reason != "kept"}
    assert [r["commit"] for r in records] == [row["commit"] for row in groups["kept"]]
    assert report.seen == len(rows) == report.written + sum(report.dropped.values())


def test_each_default_filter_can_be_turned_off(tmp_path):
    groups = rows_by_reason()
    rows = [row for group in groups.values() for row in group]
    everything_off = CommitFilters(max_old_chars=None, drop_empty_new=False, drop_unchanged=False,
                                   min_subject_chars=0, drop_single_word_subject=False, drop_version_subject=False,
                                   drop_hash_subject=False)  # fmt: skip
    records, report = build(tmp_path, rows, filters=everything_off)
    assert report.dropped == {} and len(records) == len(rows)
    # Turning off only the version check: version subjects are single words or pass, counted accordingly.
    _, report = build(tmp_path, rows, name="versions.jsonl", filters=CommitFilters(drop_version_subject=False))
    assert report.dropped["subject_single_word"] == 3  # "Refactor", "defaced", "v1.2.3"
    assert "subject_version" not in report.dropped


def test_imperative_subject_rule_with_builtin_and_custom_verbs(tmp_path):
    rows = [
        commitpack_record(1, subject="Fix crash on empty input"),
        commitpack_record(2, subject="Added tests for the parser"),
        commitpack_record(3, subject="fix: handle None"),
        commitpack_record(4, subject="Tweaked logging"),
        commitpack_record(5, subject="Polish the docs"),
    ]
    records, report = build(tmp_path, rows, filters=CommitFilters(imperative_subject=True))
    assert [r["commit"] for r in records] == [rows[0]["commit"], rows[2]["commit"], rows[4]["commit"]]
    assert report.dropped == {"subject_not_imperative": 2}
    verbs = tmp_path / "verbs.txt"
    verbs.write_text("# only these\nadded\n\npolish\n")
    filters = CommitFilters(imperative_subject=True, imperative_verbs_file=str(verbs))
    records, report = build(tmp_path, rows, name="custom.jsonl", filters=filters)
    assert [r["commit"] for r in records] == [rows[1]["commit"], rows[4]["commit"]]
    assert report.dropped == {"subject_not_imperative": 3}


def test_languages_filter_keeps_only_listed_languages(tmp_path):
    rows = [commitpack_record(1), commitpack_record(2, lang="Go"), commitpack_record(3, lang="")]
    records, report = build(tmp_path, rows, filters=CommitFilters(languages=("python",)))
    assert [r["commit"] for r in records] == [rows[0]["commit"]]
    assert report.dropped == {"language_excluded": 2}


def test_decontamination_from_txt_json_and_jsonl_files(tmp_path):
    rows = [commitpack_record(i) for i in range(6)]
    rows[1]["new_contents"] = "def has_close_elements(numbers, threshold):\n    pass\n"
    rows[3]["new_contents"] = "x = 1\ndef separate_paren_groups(s):\n    return []\n"
    rows[5]["new_contents"] = "# mentions truncate_number only in a comment\n"
    (tmp_path / "a.txt").write_text("def has_close_elements(numbers, threshold):\n\n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"task_id": "HumanEval/1", "prompt": "def separate_paren_groups("})
                                      + "\n\n")  # fmt: skip
    (tmp_path / "c.json").write_text(json.dumps(["def truncate_number(", "   "]))
    files = tuple(str(tmp_path / name) for name in ("a.txt", "b.jsonl", "c.json"))
    records, report = build(tmp_path, rows, filters=CommitFilters(decontaminate=files))
    assert report.dropped == {"contaminated": 2}
    assert [r["commit"] for r in records] == [rows[i]["commit"] for i in (0, 2, 4, 5)]


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("bad.jsonl", '{"prompt": "x"}\n{"prompt": \n', r"bad.jsonl:2: malformed JSON"),
        ("nofield.jsonl", '{"question": "x"}\n', r"nofield.jsonl:1: no field 'prompt'"),
        ("notlist.json", '{"prompt": "x"}', r"notlist.json: expected a JSON list"),
        ("strings.csv", "a,b\n", r"must be .txt, .json or .jsonl"),
    ],
)
def test_bad_decontamination_files_name_the_file_and_line(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(CommitsError, match=message):
        build(tmp_path, [commitpack_record(1)], filters=CommitFilters(decontaminate=(str(tmp_path / name),)))
    assert not (tmp_path / "out.jsonl").exists()


def test_token_limit_counts_inputs_and_targets_with_the_tokenizer(tmp_path, tokenizer_json, tokenizer):
    rows = [commitpack_record(i, new_contents="print(i)\n" * (i * 5)) for i in range(1, 9)]
    totals = []
    for row in rows:
        inputs, targets = InstructFormat()(row)
        totals.append(sum(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in (inputs, targets)))
    limit = sorted(totals)[4]
    filters = CommitFilters(tokenizer=str(tokenizer_json), max_tokens=limit)
    records, report = build(tmp_path, rows, filters=filters)
    assert [r["commit"] for r in records] == [
        row["commit"] for row, total in zip(rows, totals, strict=True) if total <= limit
    ]
    assert report.dropped == {"too_many_tokens": sum(total > limit for total in totals)} == {"too_many_tokens": 3}


def test_token_limit_needs_a_tokenizer_and_a_bad_tokenizer_fails_early(tmp_path):
    with pytest.raises(CommitsError, match="--max_tokens needs --tokenizer"):
        CommitFilters(max_tokens=100)
    assert CommitFilters(tokenizer="t.json").token_limit() == 8192
    with pytest.raises(ValueError, match="tokenizer not found"):
        build(tmp_path, [commitpack_record(1)], filters=CommitFilters(tokenizer=str(tmp_path / "nope.json")))
    assert not (tmp_path / "out.jsonl").exists()


def test_dedup_drops_repeated_inputs_and_targets(tmp_path):
    rows = [commitpack_record(1), commitpack_record(2), commitpack_record(1, commit="f" * 40), commitpack_record(3)]
    records, report = build(tmp_path, rows, filters=CommitFilters(dedup=True))
    assert [r["commit"] for r in records] == [rows[0]["commit"], rows[1]["commit"], rows[3]["commit"]]
    assert report.dropped == {"duplicate": 1}


def test_subject_classifiers():
    assert [is_version_subject(s) for s in ("1.0", "v2.3.4", "Version 1.2", "1.4.0-rc1", "Bump to 1.2.3")] == [
        True, True, True, True, True,
    ]  # fmt: skip
    assert [is_version_subject(s) for s in ("Fix 1.2 crash", "Python 3.12 support", "2024")] == [False] * 3
    assert [is_hash_subject(s) for s in ("3f9a2c1", "a" * 40 + "1", "defaced", "3f9a2c", "3f9a2c1 fix")] == [
        True, True, False, False, False,
    ]  # fmt: skip
    assert [first_word(s) for s in ("Fix: x", "[docs] Add", "  ", "'Quote' it")] == ["fix", "docs", "", "quote"]


def test_filter_options_are_checked():
    with pytest.raises(CommitsError, match="--max_old_chars"):
        CommitFilters(max_old_chars=0)
    with pytest.raises(CommitsError, match="--imperative_verbs takes effect only with --imperative_subject"):
        CommitFilters(imperative_verbs_file="verbs.txt")
