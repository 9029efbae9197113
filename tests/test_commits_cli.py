"""`hf-starcoder-ft commits` end to end: the bundled sample, reports, errors, and determinism across --num_proc."""

from __future__ import annotations

import gzip
import json

import pytest
from _commits_fixtures import (
    read_jsonl,
    tmp_git_repo_fixture,  # noqa: F401
)

from hf_starcoder_ft.cli import main as cli_main
from hf_starcoder_ft.data.commits import CommitFilters, build_commit_dataset, main, sample_commits_path


def test_sample_goes_through_with_the_default_filters(tmp_path, capsys):
    output, report_path = tmp_path / "sample.jsonl", tmp_path / "report.json"
    assert cli_main(["commits", "--sample", "--output", str(output), "--report_json", str(report_path),
                     "--no_progress"]) == 0  # fmt: skip
    report = json.loads(report_path.read_text())
    with gzip.open(sample_commits_path(), "rt", encoding="utf-8") as handle:
        sample_rows = [json.loads(line) for line in handle]
    records = read_jsonl(output)
    assert report["seen"] == len(sample_rows) and 300 <= len(sample_rows) <= 500
    assert report["written"] == len(records) == report["seen"] - report["dropped_total"]
    assert report["dropped_total"] == sum(report["dropped"].values())
    assert len(records) >= 0.9 * len(sample_rows)  # "most records survive the default filters"
    assert set(report["dropped"]) <= {"subject_single_word", "subject_version", "subject_hash", "unchanged"}
    assert all(set(r) == {"inputs", "targets"} and r["targets"].endswith("<|endoftext|>") for r in records)
    assert all(r["inputs"].startswith("<filename>") and r["inputs"].endswith("<commit_after>") for r in records)
    printed = capsys.readouterr().out
    assert f"wrote {len(records)} of {len(sample_rows)} records" in printed


def test_sample_file_is_small_and_rebuilds_identically():
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "make_sample_commits.py"
    spec = importlib.util.spec_from_file_location("make_sample_commits", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data = sample_commits_path().read_bytes()
    assert len(data) < 200_000
    assert module.build() == data


def test_existing_output_needs_overwrite(tmp_path, capsys):
    output = tmp_path / "out.jsonl"
    output.write_text("keep me\n")
    assert main(["--sample", "--output", str(output), "--no_progress"]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert output.read_text() == "keep me\n"
    assert main(["--sample", "--output", str(output), "--no_progress", "--overwrite"]) == 0
    assert output.read_text() != "keep me\n"


def test_bad_sources_exit_with_a_clear_message_and_no_output(tmp_path, capsys):
    output = tmp_path / "out.jsonl"
    assert main(["--repo", str(tmp_path), "--output", str(output), "--no_progress"]) == 1
    assert f"{tmp_path}: not a git repository" in capsys.readouterr().err
    (tmp_path / "bad.jsonl").write_text('{"old_contents": "a"}\n')
    assert main(["--commitpack", str(tmp_path / "bad.jsonl"), "--output", str(output), "--no_progress"]) == 1
    assert "bad.jsonl:1: missing required field 'new_contents'" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]


def test_argument_errors(tmp_path, capsys):
    out = str(tmp_path / "o.jsonl")
    with pytest.raises(SystemExit) as exit_info:
        main(["--sample", "--since", "2024-01-01", "--output", out])
    assert exit_info.value.code == 2 and "--since applies only to --repo" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--sample", "--commitpack", "x.jsonl", "--output", out])
    assert "not allowed with argument" in capsys.readouterr().err
    assert main(["--sample", "--output", out, "--max_tokens", "10", "--no_progress"]) == 1
    assert "--max_tokens needs --tokenizer" in capsys.readouterr().err
    assert main(["--sample", "--output", out, "--num_proc", "0", "--no_progress"]) == 1
    assert not (tmp_path / "o.jsonl").exists()


def test_git_output_is_identical_for_any_num_proc(tmp_git_repo, tmp_path):
    outputs = []
    for num_proc in (1, 2):
        output = tmp_path / f"git_{num_proc}.jsonl"
        report = build_commit_dataset([tmp_git_repo.path], output, format="octopack", seed=5, num_proc=num_proc,
                                      keep_metadata=True, progress=False, chunk_commits=2)  # fmt: skip
        outputs.append((output.read_bytes(), report.dropped, report.seen))
    assert outputs[0] == outputs[1]
    assert outputs[0][2] == 18 and len(outputs[0][0].splitlines()) == 9


def test_records_output_is_identical_for_any_num_proc_and_chunking(tmp_path):
    reference = tmp_path / "cli.jsonl.gz"
    command = ["--sample", "--output", str(reference), "--format", "octopack", "--seed", "9", "--dedup"]
    assert main([*command, "--no_progress"]) == 0
    for num_proc, chunk_rows in ((3, 16), (2, 7)):
        output = tmp_path / f"api_{num_proc}_{chunk_rows}.jsonl.gz"
        build_commit_dataset([sample_commits_path()], output, format="octopack", seed=9, num_proc=num_proc,
                             chunk_rows=chunk_rows, filters=CommitFilters(dedup=True), progress=False)  # fmt: skip
        assert output.read_bytes() == reference.read_bytes()
