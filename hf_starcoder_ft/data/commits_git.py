"""Read file-level commit records out of local git repositories with the git CLI, streaming.

    hf-starcoder-ft commits --repo path/to/repo --rev main --since 2024-01-01 --output commits.jsonl

One `git log -z --raw -M` process streams the history: commit ids, parents, messages, and for each changed path
its modes, blob ids and status (renames detected by git). One `git cat-file --batch` process per repository
(per worker) streams the blobs. No patch text is produced or parsed, and no more than one commit's metadata is
held at a time, so memory stays flat however long the history is.

A non-merge commit gives one record per changed file. What cannot become a record is counted under a reason:
`merge_commit`, `empty_commit`, `deleted_file`, `submodule`, `symlink`, `file_too_large`, `binary`, `not_utf8`,
`missing_blob` (see `commit_items`).
"""

from __future__ import annotations

import datetime
import os
import posixpath
import re
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from hf_starcoder_ft.data.commits_sources import CommitsError, subject_of

MERGE_MODES = ("skip", "first-parent")
GITLINK_MODE = "160000"
SYMLINK_MODE = "120000"
# git's own test for binary content: a NUL byte in the first 8000 bytes.
BINARY_SNIFF_BYTES = 8000
_REQUEST_BATCH = 256
_COMMIT_MARK = b"COMMIT "
# %x00 opens each commit so that a header can never be mistaken for a path; the body follows as its own token.
_LOG_FORMAT = "--format=%x00COMMIT %H %P%x00%B"


class GitError(CommitsError):
    """A git command failed or a path is not a usable repository; the message holds git's own words."""


@dataclass(frozen=True)
class GitOptions:
    """Which commits of each repository to read, and how to treat the file changes that are not plain edits."""

    rev: str = "HEAD"  # a revision or range, as `git log` takes it ("main", "v1.0..main")
    since: str | None = None  # passed to git as --since (any date git understands)
    until: str | None = None
    max_commits: int | None = None  # per repository, newest first, merges included
    merges: str = "skip"  # or "first-parent": diff a merge against its first parent
    include_deleted: bool = False  # a deleted file becomes a record with empty new contents
    max_file_bytes: int = 1_000_000  # larger blobs are skipped unread (file_too_large)

    def __post_init__(self) -> None:
        if not self.rev or self.rev.startswith("-"):
            raise CommitsError(f"--rev {self.rev!r}: give a revision or range such as HEAD or v1.0..main")
        if self.merges not in MERGE_MODES:
            raise CommitsError(f"--merges {self.merges!r}: expected one of {', '.join(MERGE_MODES)}")
        if self.max_commits is not None and self.max_commits < 1:
            raise CommitsError(f"--max_commits {self.max_commits}: must be at least 1")
        if self.max_file_bytes < 1:
            raise CommitsError(f"--max_file_bytes {self.max_file_bytes}: must be at least 1")
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and (not value.strip() or value.startswith("-")):
                raise CommitsError(f"--{name} {value!r}: give a date such as 2024-01-31 or '2 weeks ago'")

    def range_args(self) -> list[str]:
        args = []
        if self.since:
            args.append(f"--since={self.since}")
        if self.until:
            args.append(f"--until={self.until}")
        if self.max_commits:
            args.append(f"--max-count={self.max_commits}")
        return [*args, self.rev, "--"]


@dataclass(frozen=True)
class GitRepo:
    """A repository opened with `open_repository`: where git runs, and the name written to `repos`."""

    path: str
    name: str


@dataclass(frozen=True)
class FileChange:
    """One line of `git log --raw`: modes, blob ids, status letter (A, M, D, R, T) and the paths."""

    old_mode: str
    new_mode: str
    old_sha: str
    new_sha: str
    status: str
    old_path: str
    new_path: str


@dataclass(frozen=True)
class GitCommit:
    sha: str
    parents: tuple[str, ...]
    message: str
    changes: tuple[FileChange, ...]


def _git(path: str | Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", "-C", str(path), *args], capture_output=True, check=False, env=env)
    except FileNotFoundError:
        raise GitError("git is not installed or not on PATH (the --repo source needs the git command)") from None


def _stderr_text(stderr: bytes) -> str:
    return stderr.decode("utf-8", "replace").strip().replace("\n", " | ")


def open_repository(path: str | Path) -> GitRepo:
    """Check that `path` is a git repository (working tree or bare) and find its name."""
    path = Path(path).absolute()
    if not path.exists():
        raise GitError(f"{path}: no such directory")
    if not path.is_dir():
        raise GitError(f"{path}: not a directory (--repo takes a git repository)")
    result = _git(path, "rev-parse", "--is-bare-repository", "--absolute-git-dir")
    if result.returncode != 0:
        raise GitError(f"{path}: not a git repository (git says: {_stderr_text(result.stderr)})")
    is_bare, git_dir = result.stdout.decode().split("\n")[:2]
    if is_bare == "true":
        name = Path(git_dir).name.removesuffix(".git") or Path(git_dir).name
    else:
        top = _git(path, "rev-parse", "--show-toplevel")
        if top.returncode != 0:
            raise GitError(f"{path}: cannot find the top of the working tree ({_stderr_text(top.stderr)})")
        name = Path(top.stdout.decode().strip()).name
    return GitRepo(path=str(path), name=name)


_NOW_WORDS = {"now", "today"}
_ISO_DATE = re.compile(r"\s*(\d{4})-(\d{1,2})-(\d{1,2})(?!\d)")
_FAKE_NOW = 1_000_000_000  # git's GIT_TEST_DATE_NOW: lets "read as now" be told apart exactly


def _git_timestamp(repo: GitRepo, flag: str, value: str, now: int | None) -> int | None:
    env = None if now is None else {**os.environ, "GIT_TEST_DATE_NOW": str(now)}
    result = _git(repo.path, "rev-parse", f"--{flag}={value}", env=env)
    text = result.stdout.decode().strip()
    if result.returncode != 0 or "=" not in text:
        return None
    return int(text.split("=", 1)[1])


def check_git_dates(repo: GitRepo, options: GitOptions) -> dict[str, int]:
    """The Unix times git will use for --since/--until, refusing what git would silently misread.

    git's date parser never fails: text it does not understand becomes "now" (so `--until garbage` reads the
    whole history and `--since garbage` nothing), and an impossible calendar date such as 2024-02-30 rolls
    over. Both are errors here. git also takes the time of day of a bare date from the current clock, so
    `--since 2024-01-31` would depend on when the build runs: a bare date means its midnight (local time) here.
    Callers pass the returned times to git as `@SECONDS`, so what is reported is exactly what is read.
    """
    stamps: dict[str, int] = {}
    for name, flag in (("since", "since"), ("until", "until")):
        value = getattr(options, name)
        if value is None:
            continue
        match = _ISO_DATE.match(value)
        if match:
            try:
                datetime.date(int(match[1]), int(match[2]), int(match[3]))
            except ValueError:
                raise CommitsError(f"--{name} {value!r}: {match[0].strip()} is not a calendar date") from None
        if match and not value[match.end() :].strip():
            value = f"{match[0].strip()} 00:00:00"
        fake = _git_timestamp(repo, flag, value, _FAKE_NOW)
        hook_works = _git_timestamp(repo, flag, "now", _FAKE_NOW) == _FAKE_NOW
        if hook_works and fake == _FAKE_NOW and value.strip().lower() not in _NOW_WORDS:
            raise CommitsError(
                f"--{name} {value!r}: git does not understand this date and would read it as now; "
                "give e.g. 2024-01-31, '2024-01-31 12:00', '2 weeks ago' or @UNIX_SECONDS"
            )
        stamp = _git_timestamp(repo, flag, value, None)
        if stamp is None:
            raise GitError(f"{repo.path}: git cannot read --{name} {value!r}")
        stamps[name] = stamp
    if "since" in stamps and "until" in stamps and stamps["since"] > stamps["until"]:
        raise CommitsError(f"--since {options.since!r} is later than --until {options.until!r}: no commit can match")
    return stamps


def count_commits(repo: GitRepo, options: GitOptions) -> int:
    """How many commits `iter_commits` will read; fails with git's message on an unknown revision."""
    result = _git(repo.path, "rev-list", "--count", *options.range_args())
    if result.returncode != 0:
        raise GitError(f"{repo.path}: cannot read revision {options.rev!r} (git says: {_stderr_text(result.stderr)})")
    return int(result.stdout.decode().strip())


def _log_command(repo: GitRepo, options: GitOptions) -> list[str]:
    command = [
        "git", "-C", repo.path,
        # Pin what user configuration could change in this output (colors, signatures, encodings).
        "-c", "log.showSignature=false", "-c", "color.ui=never", "-c", "core.quotePath=false",
        "log", "-z", "--raw", "-M", "--no-abbrev", "--root", "--no-color", "--encoding=UTF-8",
        _LOG_FORMAT,
    ]  # fmt: skip
    if options.merges == "first-parent":
        command.append("--diff-merges=first-parent")
    return command + options.range_args()


def _nul_tokens(stream: IO[bytes], block_size: int = 1 << 16) -> Iterator[bytes]:
    rest = b""
    while True:
        block = stream.read1(block_size) if hasattr(stream, "read1") else stream.read(block_size)
        if not block:
            break
        parts = (rest + block).split(b"\0")
        rest = parts.pop()
        yield from parts
    if rest:
        yield rest


def _decode_path(raw: bytes) -> str:
    # Paths are bytes in git; a name that is not UTF-8 still gets a readable (replaced) name in the record.
    return raw.decode("utf-8", "replace")


def parse_log_stream(stream: IO[bytes]) -> Iterator[GitCommit]:
    """Parse the output of `_log_command` into commits, one at a time."""
    tokens = _nul_tokens(stream)
    header: bytes | None = None
    message = b""
    changes: list[FileChange] = []
    for token in tokens:
        if token.startswith(_COMMIT_MARK):
            if header is not None:
                yield _make_commit(header, message, changes)
            header, message, changes = token, next(tokens, b""), []
        elif not token:
            continue
        else:
            meta = token.lstrip(b"\n")
            if not meta.startswith(b":") or header is None:
                raise GitError(f"unexpected `git log --raw` output near {token[:80]!r}")
            old_mode, new_mode, old_sha, new_sha, status = meta[1:].decode("ascii").split(" ")
            old_path = _decode_path(next(tokens, b""))
            new_path = _decode_path(next(tokens, b"")) if status[:1] in ("R", "C") else old_path
            changes.append(FileChange(old_mode, new_mode, old_sha, new_sha, status[:1], old_path, new_path))
    if header is not None:
        yield _make_commit(header, message, changes)


def _make_commit(header: bytes, message: bytes, changes: list[FileChange]) -> GitCommit:
    ids = header[len(_COMMIT_MARK) :].decode("ascii").split()
    return GitCommit(ids[0], tuple(ids[1:]), message.decode("utf-8", "replace"), tuple(changes))


def iter_commits(repo: GitRepo, options: GitOptions) -> Iterator[GitCommit]:
    """Stream the commits of `repo` selected by `options`, newest first (git log order), with their changes."""
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(_log_command(repo, options), stdout=subprocess.PIPE, stderr=stderr)
        try:
            yield from parse_log_stream(process.stdout)
        finally:
            process.stdout.close()
            if process.poll() is None:
                process.terminate()
            returncode = process.wait()
        if returncode != 0:
            stderr.seek(0)
            raise GitError(f"{repo.path}: git log failed (git says: {_stderr_text(stderr.read())})")


class _Unreadable:
    """A blob that was not read, with the reason."""

    def __init__(self, reason: str):
        self.reason = reason


MISSING = _Unreadable("missing_blob")
TOO_LARGE = _Unreadable("file_too_large")


class BlobReader:
    """A long-lived `git cat-file --batch` process for one repository.

    `read(shas)` writes the requests in batches and yields each blob's bytes in request order; blobs larger than
    `max_bytes` are drained from the pipe in pieces and reported as `TOO_LARGE`, so they never sit in memory.
    """

    def __init__(self, repo_path: str, max_bytes: int):
        self.repo_path = repo_path
        self.max_bytes = max_bytes
        self._stderr = tempfile.TemporaryFile()
        self._process = subprocess.Popen(
            ["git", "-C", repo_path, "cat-file", "--batch"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )

    def _fail(self, what: str) -> GitError:
        self._stderr.seek(0)
        return GitError(f"{self.repo_path}: git cat-file {what} (git says: {_stderr_text(self._stderr.read())})")

    def read(self, shas: list[str]) -> Iterator[bytes | _Unreadable]:
        stdin, stdout = self._process.stdin, self._process.stdout
        finished = False
        try:
            for start in range(0, len(shas), _REQUEST_BATCH):
                batch = shas[start : start + _REQUEST_BATCH]
                try:
                    stdin.write("".join(f"{sha}\n" for sha in batch).encode("ascii"))
                    stdin.flush()
                except BrokenPipeError:
                    raise self._fail("stopped") from None
                for _ in batch:
                    header = stdout.readline()
                    if not header:
                        raise self._fail("stopped")
                    fields = header.split()
                    if len(fields) == 2 and fields[1] == b"missing":
                        yield MISSING
                        continue
                    size = int(fields[2])
                    if size > self.max_bytes:
                        self._drain(size + 1)
                        yield TOO_LARGE
                    else:
                        yield stdout.read(size + 1)[:-1]
            finished = True
        finally:
            if not finished:
                # Responses left in the pipe would be read as the answer to the next request.
                self.close()

    def _drain(self, size: int) -> None:
        while size > 0:
            piece = self._process.stdout.read(min(size, 1 << 20))
            if not piece:
                raise self._fail("stopped")
            size -= len(piece)

    @property
    def closed(self) -> bool:
        return self._process.poll() is not None or self._process.stdin.closed

    def close(self) -> None:
        if self._process.stdin and not self._process.stdin.closed:
            try:
                self._process.stdin.close()
            except BrokenPipeError:
                pass
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        if self._process.stdout:
            self._process.stdout.close()
        self._stderr.close()


def _is_null(sha: str) -> bool:
    return not sha.strip("0")


def _decode_blob(data: bytes | _Unreadable) -> str | _Unreadable:
    if isinstance(data, _Unreadable):
        return data
    if b"\0" in data[:BINARY_SNIFF_BYTES]:
        return _Unreadable("binary")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return _Unreadable("not_utf8")


def _plan_commit(commit: GitCommit, options: GitOptions) -> list[str | FileChange]:
    """What each change of a commit becomes: a skip reason, or a change whose blobs must be read."""
    if len(commit.parents) > 1 and options.merges == "skip":
        return ["merge_commit"]
    if not commit.changes:
        return ["empty_commit"]
    plan: list[str | FileChange] = []
    for change in commit.changes:
        if change.status == "D" and not options.include_deleted:
            plan.append("deleted_file")
        elif GITLINK_MODE in (change.old_mode, change.new_mode):
            plan.append("submodule")
        elif SYMLINK_MODE in (change.old_mode, change.new_mode):
            plan.append("symlink")
        else:
            plan.append(change)
    return plan


def commit_items(
    commits: list[GitCommit], repo_name: str, reader: BlobReader, options: GitOptions
) -> Iterator[tuple[dict[str, str] | None, str | None]]:
    """Turn commits into `(record, None)` per usable changed file and `(None, reason)` per skipped one, in order.

    A merge commit (unless `merges="first-parent"`) and a commit without file changes count as one skipped item
    each, so that every commit read is accounted for. The blobs of all the commits are requested in one stream
    (a round trip per commit to `git cat-file` would cost more than the rest of the work).
    """
    plans = [_plan_commit(commit, options) for commit in commits]
    wanted = [
        sha
        for plan in plans
        for item in plan
        if not isinstance(item, str)
        for sha in (item.old_sha, item.new_sha)
        if not _is_null(sha)
    ]
    blobs = reader.read(wanted)
    for commit, plan in zip(commits, plans, strict=True):
        message = commit.message.rstrip("\n")
        subject = subject_of(message)
        for item in plan:
            if isinstance(item, str):
                yield None, item
                continue
            contents = [_decode_blob(next(blobs)) if not _is_null(sha) else "" for sha in (item.old_sha, item.new_sha)]
            unreadable = next((c for c in contents if isinstance(c, _Unreadable)), None)
            if unreadable is not None:
                yield None, unreadable.reason
                continue
            old_contents, new_contents = contents
            record = {
                "commit": commit.sha,
                "old_file": item.new_path if item.status == "A" else item.old_path,
                "new_file": item.new_path,
                "old_contents": old_contents,
                "new_contents": new_contents,
                "subject": subject,
                "message": message,
                "lang": language_for_path(item.new_path),
                "license": "",
                "repos": repo_name,
            }
            yield record, None
    # Leave the reader ready for the next chunk even when every blob was consumed above.
    for _ in blobs:
        pass


# File extension -> language name, spelled as in CommitPack's `lang` field (GitHub linguist names).
_EXTENSION_LANGUAGES: dict[str, str] = {
    ".py": "Python", ".pyi": "Python", ".pyx": "Cython", ".ipynb": "Jupyter Notebook",
    ".js": "JavaScript", ".mjs": "JavaScript", ".cjs": "JavaScript", ".jsx": "JavaScript",
    ".ts": "TypeScript", ".tsx": "TypeScript", ".java": "Java", ".kt": "Kotlin", ".kts": "Kotlin",
    ".scala": "Scala", ".groovy": "Groovy", ".gradle": "Groovy", ".clj": "Clojure",
    ".c": "C", ".h": "C", ".cc": "C++", ".cpp": "C++", ".cxx": "C++", ".hpp": "C++", ".hh": "C++",
    ".cs": "C#", ".fs": "F#", ".go": "Go", ".rs": "Rust", ".swift": "Swift", ".m": "Objective-C",
    ".mm": "Objective-C++", ".rb": "Ruby", ".php": "PHP", ".pl": "Perl", ".pm": "Perl", ".lua": "Lua",
    ".r": "R", ".jl": "Julia", ".dart": "Dart", ".hs": "Haskell", ".ml": "OCaml", ".mli": "OCaml",
    ".ex": "Elixir", ".exs": "Elixir", ".erl": "Erlang", ".elm": "Elm", ".f90": "Fortran", ".f": "Fortran",
    ".sh": "Shell", ".bash": "Shell", ".zsh": "Shell", ".ps1": "PowerShell", ".bat": "Batchfile",
    ".cmd": "Batchfile", ".sql": "SQL", ".html": "HTML", ".htm": "HTML", ".css": "CSS", ".scss": "SCSS",
    ".less": "Less", ".vue": "Vue", ".svelte": "Svelte", ".md": "Markdown", ".markdown": "Markdown",
    ".rst": "reStructuredText", ".tex": "TeX", ".txt": "Text", ".json": "JSON", ".yml": "YAML",
    ".yaml": "YAML", ".toml": "TOML", ".xml": "XML", ".ini": "INI", ".cfg": "INI", ".cmake": "CMake",
    ".proto": "Protocol Buffer", ".s": "Assembly", ".asm": "Assembly", ".v": "Verilog", ".vhd": "VHDL",
    ".zig": "Zig", ".nim": "Nim", ".cu": "Cuda", ".sol": "Solidity", ".tf": "HCL",
}  # fmt: skip
_FILENAME_LANGUAGES: dict[str, str] = {
    "makefile": "Makefile", "gnumakefile": "Makefile", "dockerfile": "Dockerfile",
    "cmakelists.txt": "CMake", "gemfile": "Ruby", "rakefile": "Ruby", "meson.build": "Meson",
}  # fmt: skip
_DOCKERFILE = re.compile(r"^dockerfile[.-]", re.IGNORECASE)


def language_for_path(path: str) -> str:
    """The language of a file from its name ("" when unknown).

    >>> language_for_path("src/app/main.py"), language_for_path("Makefile"), language_for_path("data.bin")
    ('Python', 'Makefile', '')
    """
    name = posixpath.basename(path).lower()
    if name in _FILENAME_LANGUAGES:
        return _FILENAME_LANGUAGES[name]
    if _DOCKERFILE.match(name):
        return "Dockerfile"
    return _EXTENSION_LANGUAGES.get(os.path.splitext(name)[1], "")
