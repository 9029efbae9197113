"""Fixtures for the commits builder: a small git repository made with real `git`, and CommitPack-style records.

Import explicitly in a test module:

    from _commits_fixtures import tmp_git_repo_fixture  # noqa: F401  (provides the `tmp_git_repo` fixture)

The repository's history (oldest first) covers every case the builder handles; `EXPECTED_RECORDS` in
test_commits_git.py lists what each commit must give. Dates, names and configuration are pinned (global and
system git config are ignored), so the commit ids are the same on every run.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

CALC_V1 = "def add(a, b):\n    return a + b\n"
CALC_V2 = CALC_V1 + "\n\ndef sub(a, b):\n    return a - b\n"
CALC_V3 = CALC_V2.replace("def sub(a, b):", "def subtract(a, b):")
CALC_V4 = CALC_V3 + "\n\n# TODO: multiply\n"
HELPERS = "".join(f"def helper_{i}(value):\n    return value + {i}\n\n\n" for i in range(6))
UTILS = HELPERS.replace("return value + 5", "return value * 5")
README_V1 = "# Demo\n"
README_V2 = "# Calculator demo\n\nAdds and subtracts.\n"
FEATURE = "ENABLED = True\n"
BIG_TEXT = "".join(f"line {i:04d} of a big text file\n" for i in range(80))  # 2480 bytes
LOGO_PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(64))
LATIN1 = "café crème\n".encode("latin-1")

ROOT_MESSAGE = "Add calculator module\n\nFirst version: add() and a few helpers."


@dataclass(frozen=True)
class GitFixture:
    """The repository and the id of each named commit."""

    path: Path
    shas: dict[str, str]


def git_env(timestamp: int | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_CONFIG_NOSYSTEM="1",
        GIT_AUTHOR_NAME="Test Author",
        GIT_AUTHOR_EMAIL="author@example.com",
        GIT_COMMITTER_NAME="Test Committer",
        GIT_COMMITTER_EMAIL="committer@example.com",
        LC_ALL="C",
    )
    if timestamp is not None:
        env["GIT_AUTHOR_DATE"] = env["GIT_COMMITTER_DATE"] = f"@{timestamp} +0000"
    return env


class GitBuilder:
    """Runs git in one repository with pinned configuration and a clock that advances one hour per commit."""

    def __init__(self, path: Path, start: int = 1_700_000_000):
        self.path = path
        self.clock = start
        path.mkdir(parents=True, exist_ok=True)
        self.git("init", "-q")
        self.git("symbolic-ref", "HEAD", "refs/heads/main")

    def git(self, *args: str, stdin: bytes | None = None) -> str:
        result = subprocess.run(
            ["git", *args], cwd=self.path, env=git_env(self.clock), input=stdin, capture_output=True, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"git {' '.join(args)} failed: {result.stderr.decode()}")
        return result.stdout.decode().strip()

    def write(self, name: str, data: str | bytes) -> None:
        target = self.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        self.git("add", "--", name)

    def commit(self, message: str, *extra: str) -> str:
        self.clock += 3600
        self.git("commit", "-q", "--no-verify", "-m", message, *extra)
        return self.git("rev-parse", "HEAD")


def build_git_fixture(path: Path) -> GitFixture:
    repo = GitBuilder(path)
    shas: dict[str, str] = {}
    repo.write("calc.py", CALC_V1)
    repo.write("helpers.py", HELPERS)
    repo.write("README.md", README_V1)
    shas["root"] = repo.commit(ROOT_MESSAGE)
    repo.write("calc.py", CALC_V2)
    shas["edit"] = repo.commit("Add sub function to calc")
    repo.git("mv", "helpers.py", "utils.py")
    repo.write("utils.py", UTILS)
    shas["rename"] = repo.commit("Rename helpers module to utils")
    repo.write("logo.png", LOGO_PNG)
    repo.write("calc.py", CALC_V3)
    shas["binary"] = repo.commit("Add logo and rename sub to subtract")
    repo.write("notes_latin1.txt", LATIN1)
    repo.write("big.txt", BIG_TEXT)
    shas["latin1"] = repo.commit("Add legacy notes and a big text file")
    shas["empty"] = repo.commit("Trigger CI rebuild", "--allow-empty")
    repo.git("checkout", "-q", "-b", "feature")
    repo.write("feature.py", FEATURE)
    shas["feature"] = repo.commit("Add feature flag module")
    repo.git("checkout", "-q", "main")
    repo.write("README.md", README_V2)
    shas["readme"] = repo.commit("Describe the calculator in the README (naïve café edition)")
    repo.clock += 3600
    repo.git("merge", "-q", "--no-ff", "--no-edit", "-m", "Merge branch 'feature'", "feature")
    shas["merge"] = repo.git("rev-parse", "HEAD")
    repo.git("rm", "-q", "README.md")
    shas["delete"] = repo.commit("Remove the README")
    # A submodule's gitlink (mode 160000) and a symbolic link (mode 120000), written straight into the index.
    link_blob = repo.git("hash-object", "-w", "--stdin", stdin=b"calc.py")
    repo.git("update-index", "--add", "--cacheinfo", f"160000,{shas['root']},vendor/lib")
    repo.git("update-index", "--add", "--cacheinfo", f"120000,{link_blob},calc-link.py")
    shas["submodule"] = repo.commit("Add vendored lib and a link to calc")
    repo.write("calc.py", CALC_V4)
    shas["wip"] = repo.commit("wip")
    repo.git("update-index", "--chmod=+x", "calc.py")
    shas["chmod"] = repo.commit("Make calc executable")
    return GitFixture(path=path, shas=shas)


@pytest.fixture(scope="session", name="tmp_git_repo")
def tmp_git_repo_fixture(tmp_path_factory) -> GitFixture:
    """A read-only repository; copy it (or clone it) before changing anything."""
    return build_git_fixture(tmp_path_factory.mktemp("git_repo") / "demo")


def commitpack_record(index: int, **overrides: str) -> dict[str, str]:
    """A valid CommitPack-style record whose contents depend on `index`."""
    record = {
        "commit": f"{index:040x}",
        "old_file": f"pkg/module_{index}.py",
        "new_file": f"pkg/module_{index}.py",
        "old_contents": f"def f_{index}():\n    return {index}\n",
        "new_contents": f"def f_{index}():\n    return {index + 1}\n",
        "subject": f"Return {index + 1} from f_{index}",
        "message": f"Return {index + 1} from f_{index}\n\nOff by one.\n",
        "lang": "Python",
        "license": "mit",
        "repos": f"owner/repo_{index % 3}",
    }
    record.update(overrides)
    return record


def write_jsonl(path: Path, rows: list, compress: bool = False) -> Path:
    text = "".join((row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)) + "\n" for row in rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        with gzip.open(path, "wb") as handle:
            handle.write(text.encode("utf-8"))
    else:
        path.write_text(text, encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]
