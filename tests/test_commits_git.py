"""The git source of `hf-starcoder-ft commits`: exact records from a real repository, skips counted by reason."""

from __future__ import annotations

import datetime
import subprocess
import time

import pytest
from _commits_fixtures import (
    BIG_TEXT,
    CALC_V1,
    CALC_V2,
    CALC_V3,
    FEATURE,
    HELPERS,
    README_V1,
    README_V2,
    ROOT_MESSAGE,
    UTILS,
    GitBuilder,
    git_env,
    read_jsonl,
    tmp_git_repo_fixture,  # noqa: F401
)

from hf_starcoder_ft.data.commits import CommitFilters, GitOptions, build_commit_dataset
from hf_starcoder_ft.data.commits_git import (
    GitError,
    check_git_dates,
    iter_commits,
    language_for_path,
    open_repository,
)
from hf_starcoder_ft.data.commits_sources import CommitsError


def record(sha: str, old_file: str, new_file: str, old: str, new: str, message: str) -> dict:
    subject = message.split("\n", 1)[0]
    return {
        "inputs": f"<filename>{old_file.rsplit('/', 1)[-1]}<commit_before>{old}<commit_msg>{subject}<commit_after>",
        "targets": f"{new}<|endoftext|>",
        "commit": sha,
        "old_file": old_file,
        "new_file": new_file,
        "lang": {"py": "Python", "md": "Markdown", "txt": "Text"}[new_file.rsplit(".", 1)[-1]],
        "repos": "demo",
        "license": "",
    }


def expected_records(shas: dict[str, str]) -> list[dict]:
    """What the default build must write, newest commit first, files in path order within a commit."""
    return [
        record(
            shas["readme"],
            "README.md",
            "README.md",
            README_V1,
            README_V2,
            "Describe the calculator in the README (naïve café edition)",
        ),
        record(shas["feature"], "feature.py", "feature.py", "", FEATURE, "Add feature flag module"),
        record(shas["latin1"], "big.txt", "big.txt", "", BIG_TEXT, "Add legacy notes and a big text file"),
        record(shas["binary"], "calc.py", "calc.py", CALC_V2, CALC_V3, "Add logo and rename sub to subtract"),
        record(shas["rename"], "helpers.py", "utils.py", HELPERS, UTILS, "Rename helpers module to utils"),
        record(shas["edit"], "calc.py", "calc.py", CALC_V1, CALC_V2, "Add sub function to calc"),
        record(shas["root"], "README.md", "README.md", "", README_V1, ROOT_MESSAGE),
        record(shas["root"], "calc.py", "calc.py", "", CALC_V1, ROOT_MESSAGE),
        record(shas["root"], "helpers.py", "helpers.py", "", HELPERS, ROOT_MESSAGE),
    ]


EXPECTED_DROPPED = {
    "merge_commit": 1,  # Merge branch 'feature'
    "empty_commit": 1,  # Trigger CI rebuild
    "deleted_file": 1,  # Remove the README
    "submodule": 1,  # vendor/lib gitlink
    "symlink": 1,  # calc-link.py
    "binary": 1,  # logo.png
    "not_utf8": 1,  # notes_latin1.txt
    "unchanged": 1,  # chmod +x calc.py: same blob
    "subject_single_word": 1,  # "wip"
}


def build(repo, tmp_path, name="out.jsonl", **kwargs):
    output = tmp_path / name
    report = build_commit_dataset([repo], output, keep_metadata=True, progress=False, **kwargs)
    return read_jsonl(output), report


def test_every_commit_gives_exactly_the_expected_records(tmp_git_repo, tmp_path):
    records, report = build(tmp_git_repo.path, tmp_path)
    assert records == expected_records(tmp_git_repo.shas)
    assert report.commits == 13
    assert report.dropped == EXPECTED_DROPPED
    assert (report.seen, report.written) == (18, 9)
    assert report.seen == report.written + sum(report.dropped.values())


def test_user_git_configuration_does_not_change_the_records(tmp_git_repo, tmp_path, monkeypatch):
    config = tmp_path / "gitconfig"
    config.write_text(
        "[diff]\n\trenames = false\n[color]\n\tui = always\n[log]\n\tshowRoot = false\n\tdecorate = full\n"
        "[i18n]\n\tlogOutputEncoding = ISO-8859-1\n[core]\n\tquotePath = true\n"
    )
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    records, report = build(tmp_git_repo.path, tmp_path / "out")
    assert records == expected_records(tmp_git_repo.shas)
    assert report.dropped == EXPECTED_DROPPED


def test_message_and_subject_come_from_the_commit(tmp_git_repo):
    repo = open_repository(tmp_git_repo.path)
    commits = {commit.sha: commit for commit in iter_commits(repo, GitOptions())}
    root = commits[tmp_git_repo.shas["root"]]
    assert root.message.rstrip("\n") == ROOT_MESSAGE
    assert root.parents == ()
    assert commits[tmp_git_repo.shas["merge"]].parents == (tmp_git_repo.shas["readme"], tmp_git_repo.shas["feature"])
    rename = commits[tmp_git_repo.shas["rename"]].changes
    assert [(c.status, c.old_path, c.new_path) for c in rename] == [("R", "helpers.py", "utils.py")]


def test_instruct_message_option_puts_the_whole_message_in_the_inputs(tmp_git_repo, tmp_path):
    git = GitOptions(rev=tmp_git_repo.shas["root"])
    records, _ = build(tmp_git_repo.path, tmp_path, instruction="message", git=git)
    assert [r["inputs"] for r in records] == [
        f"<filename>{name}<commit_before><commit_msg>{ROOT_MESSAGE}<commit_after>"
        for name in ("README.md", "calc.py", "helpers.py")
    ]


def test_merge_first_parent_diffs_the_merge_against_its_first_parent(tmp_git_repo, tmp_path):
    records, report = build(tmp_git_repo.path, tmp_path, git=GitOptions(merges="first-parent"))
    merged = [r for r in records if r["commit"] == tmp_git_repo.shas["merge"]]
    assert merged == [record(tmp_git_repo.shas["merge"], "feature.py", "feature.py", "", FEATURE,
                             "Merge branch 'feature'")]  # fmt: skip
    assert "merge_commit" not in report.dropped
    assert report.seen == 18 and report.written == 10


def test_deleted_files_become_records_only_when_asked(tmp_git_repo, tmp_path):
    git = GitOptions(include_deleted=True)
    records, report = build(tmp_git_repo.path, tmp_path, git=git, filters=CommitFilters(drop_empty_new=False))
    deleted = [r for r in records if r["commit"] == tmp_git_repo.shas["delete"]]
    sha = tmp_git_repo.shas["delete"]
    assert deleted == [record(sha, "README.md", "README.md", README_V2, "", "Remove the README")]
    assert "deleted_file" not in report.dropped
    with pytest.raises(ValueError, match="--keep_empty_new"):
        build(tmp_git_repo.path, tmp_path, name="other.jsonl", git=git)


def test_large_blobs_are_skipped_unread(tmp_git_repo, tmp_path):
    records, report = build(tmp_git_repo.path, tmp_path, git=GitOptions(max_file_bytes=len(BIG_TEXT) - 1))
    assert [r for r in records if r["new_file"] == "big.txt"] == []
    assert report.dropped["file_too_large"] == 1
    assert report.written == 8
    # The reader must stay in step after draining the big blob: the next file of that commit is still classified.
    assert report.dropped["not_utf8"] == 1


def test_a_blob_missing_from_the_object_store_is_counted(tmp_git_repo, tmp_path):
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(tmp_git_repo.path, damaged)
    blob = subprocess.run(["git", "-C", str(damaged), "rev-parse", f"{tmp_git_repo.shas['latin1']}:big.txt"],
                          env=git_env(), capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    (damaged / ".git" / "objects" / blob[:2] / blob[2:]).unlink()
    records, report = build(damaged, tmp_path)
    assert [r for r in records if r["new_file"] == "big.txt"] == []
    assert report.dropped == {**EXPECTED_DROPPED, "missing_blob": 1}
    assert report.written == 8


def test_revision_range_and_max_commits_select_commits(tmp_git_repo, tmp_path):
    shas = tmp_git_repo.shas
    records, report = build(tmp_git_repo.path, tmp_path, git=GitOptions(rev=f"{shas['edit']}..{shas['binary']}"))
    assert [r["commit"] for r in records] == [shas["binary"], shas["rename"]]
    assert report.commits == 2 and report.dropped == {"binary": 1}
    records, report = build(tmp_git_repo.path, tmp_path, name="max.jsonl", git=GitOptions(max_commits=3))
    assert report.commits == 3 and records == []
    assert report.dropped == {"unchanged": 1, "subject_single_word": 1, "submodule": 1, "symlink": 1}


def test_since_and_until_filter_by_commit_date(tmp_git_repo, tmp_path):
    # The fixture's clock starts at 1_700_000_000 and advances one hour per commit: edit is commit 2.
    start = 1_700_000_000
    git = GitOptions(since=f"@{start + 2 * 3600}", until=f"@{start + 3 * 3600}")
    records, report = build(tmp_git_repo.path, tmp_path, git=git)
    assert [r["commit"] for r in records] == [tmp_git_repo.shas["rename"], tmp_git_repo.shas["edit"]]
    assert report.commits == 2
    assert report.dates == {"since": "2023-11-15T00:13:20Z", "until": "2023-11-15T01:13:20Z"}
    assert "--since resolved by git to 2023-11-15T00:13:20Z" in report.summary()


@pytest.mark.parametrize(
    "since,until,message",
    [
        ("blursday", None, r"--since 'blursday': git does not understand this date and would read it as now"),
        (None, "garbage", r"--until 'garbage': git does not understand this date"),
        ("2024-02-30", None, r"--since '2024-02-30': 2024-02-30 is not a calendar date"),
        (None, "2023-13-01 10:00", r"--until '2023-13-01 10:00': 2023-13-01 is not a calendar date"),
        ("@1700010000", "@1700000000", r"--since '@1700010000' is later than --until '@1700000000'"),
    ],
)
def test_dates_git_would_misread_are_refused_before_any_output(tmp_git_repo, tmp_path, since, until, message):
    with pytest.raises(CommitsError, match=message):
        build(tmp_git_repo.path, tmp_path, git=GitOptions(since=since, until=until))
    assert not (tmp_path / "out.jsonl").exists()


def test_dates_git_understands_are_resolved_as_git_does(tmp_git_repo):
    repo = open_repository(tmp_git_repo.path)
    assert check_git_dates(repo, GitOptions(since="@1700003600", until="@1700007200")) == {
        "since": 1_700_003_600,
        "until": 1_700_007_200,
    }
    stamps = check_git_dates(repo, GitOptions(since="3 weeks ago", until="now"))
    assert stamps["until"] - stamps["since"] == 21 * 86400
    assert abs(stamps["until"] - time.time()) < 60
    # A bare date means its midnight, not the current time of day (git's own reading).
    midnight = datetime.datetime(2024, 1, 31).timestamp()  # local time, as git reads it
    assert check_git_dates(repo, GitOptions(since="2024-01-31"))["since"] == midnight
    assert check_git_dates(repo, GitOptions(until=" 2024-1-31 "))["until"] == midnight
    assert check_git_dates(repo, GitOptions(since="2024-01-31 12:30"))["since"] == midnight + 12.5 * 3600


def test_bare_clone_gives_the_same_records(tmp_git_repo, tmp_path):
    bare = tmp_path / "demo.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(tmp_git_repo.path), str(bare)], env=git_env(), check=True)
    assert open_repository(bare).name == "demo"
    records, _ = build(bare, tmp_path)
    assert records == expected_records(tmp_git_repo.shas)


def test_a_directory_that_is_not_a_repository_is_a_clear_error(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(GitError, match="plain: not a git repository"):
        open_repository(tmp_path / "plain")
    with pytest.raises(GitError, match="no such directory"):
        open_repository(tmp_path / "missing")


def test_unknown_revision_fails_before_writing_anything(tmp_git_repo, tmp_path):
    with pytest.raises(GitError, match="cannot read revision 'no-such-branch'.*bad revision"):
        build(tmp_git_repo.path, tmp_path, git=GitOptions(rev="no-such-branch"))
    assert list(tmp_path.iterdir()) == []


def test_repository_without_commits_is_a_clear_error(tmp_path):
    GitBuilder(tmp_path / "fresh")
    with pytest.raises(GitError, match="cannot read revision 'HEAD'"):
        build(tmp_path / "fresh", tmp_path)
    assert not (tmp_path / "out.jsonl").exists()


def test_options_are_checked():
    with pytest.raises(ValueError, match="--rev"):
        GitOptions(rev="--all")
    with pytest.raises(ValueError, match="--merges"):
        GitOptions(merges="all")
    with pytest.raises(ValueError, match="--max_commits"):
        GitOptions(max_commits=0)


def test_language_comes_from_the_file_name():
    assert language_for_path("a/b/c.py") == "Python"
    assert language_for_path("web/App.TSX") == "TypeScript"
    assert language_for_path("Dockerfile.dev") == "Dockerfile"
    assert language_for_path("tools/Makefile") == "Makefile"
    assert language_for_path("LICENSE") == ""
