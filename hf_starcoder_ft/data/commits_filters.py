"""Filters for commit records, with OctoPack's values as defaults, and the reasons a record is dropped.

    hf-starcoder-ft commits --repo . --output commits.jsonl --imperative_subject \\
        --decontaminate humaneval_prompts.jsonl --tokenizer tokenizer.json --max_tokens 8192

Every record is either written or dropped under exactly one reason: the first check it fails, in the order of
`DROP_REASONS`. OctoPack filtered its data this way before `commits_to_jsonl.py` (SPEC.md section 2): old contents
under 100k characters, non-empty new contents, old != new, a subject of at least 3 characters and more than one
word, no version-like or hash-like subjects, at most 8192 tokens, imperative subjects, decontamination.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from hf_starcoder_ft.data.commits_sources import CommitsError

# Every reason a source item can be dropped, in the order the checks run (git-level reasons first).
DROP_REASONS: dict[str, str] = {
    "merge_commit": "a merge commit (use --merges first-parent to diff it against its first parent)",
    "empty_commit": "a commit that changes no file",
    "deleted_file": "a file deleted by the commit (use --include_deleted with --keep_empty_new to keep it)",
    "submodule": "a submodule (gitlink) entry",
    "symlink": "a symbolic link",
    "file_too_large": "a blob larger than --max_file_bytes (skipped unread)",
    "binary": "binary contents (a NUL byte in the first 8000 bytes, as git decides)",
    "not_utf8": "contents that are not valid UTF-8",
    "missing_blob": "a blob missing from the repository (partial or damaged clone)",
    "language_excluded": "a language not listed in --languages",
    "old_too_long": "old contents longer than --max_old_chars characters",
    "empty_new": "empty new contents",
    "unchanged": "new contents equal to old contents",
    "subject_too_short": "a subject shorter than --min_subject_chars characters",
    "subject_version": "a subject that is a version number (e.g. 'v1.2.3', 'Release 2.0')",
    "subject_hash": "a subject that is a commit hash",
    "subject_single_word": "a subject of a single word",
    "subject_not_imperative": "a subject that does not start with an imperative verb (--imperative_subject)",
    "contaminated": "new contents that contain a string of a --decontaminate file",
    "empty_formatted": "a template that gives empty inputs or targets",
    "too_many_tokens": "inputs + targets longer than --max_tokens tokens",
    "duplicate": "the same inputs and targets as an earlier record (--dedup)",
}

DEFAULT_MAX_TOKENS = 8192
_VERSION_SUBJECT = re.compile(
    r"^(?:(?:version|release|bump(?:ed)?(?: version)?(?: to)?|tag(?:ged)?)\s*:?\s*)?v?\d+(?:\.\d+)+[\w.+-]*"
    r"(?:\s+(?:release|released))?\.?$",
    re.IGNORECASE,
)
_HASH_SUBJECT = re.compile(r"^[0-9a-f]{7,64}$", re.IGNORECASE)

# Verbs that open an imperative commit subject ("Add ...", "Fix ..."). Our own list, by frequency in practice.
IMPERATIVE_VERBS: frozenset[str] = frozenset(
    """
    accept add adapt adjust align allow apply avoid bump call cache catch change check clarify clean cleanup clear
    close collapse combine comment compute configure convert copy correct create deal debug declare decouple
    default define delete deprecate describe detect disable display document drop duplicate edit emit enable
    encode enforce ensure exclude expand expose extend extract factor fetch fill filter finish fix flatten force
    format generalize generate handle hide ignore implement import improve include increase initialize inline
    insert install integrate introduce invert isolate keep limit load lock log lower make mark merge migrate
    mock modify move normalize optimize override parse pass patch pin polish port prefer prepare prevent print
    process provide prune raise read rebuild record reduce refactor refine reformat register reimplement reject
    release reload remove rename reorder reorganize replace report require rescue reset resolve restore
    restrict restructure retry return reuse revert rework rewrite run save scale separate serialize set
    share show silence simplify skip sort speed split start stop store strip support swap switch sync throw
    tidy toggle track translate trim tweak unify update upgrade use validate verify wait warn wrap write
    """.split()
)


@dataclass(frozen=True)
class CommitFilters:
    """Which records to drop. Defaults are OctoPack's filters; `None`/False turns one off."""

    max_old_chars: int | None = 100_000
    drop_empty_new: bool = True
    drop_unchanged: bool = True
    min_subject_chars: int = 3
    drop_single_word_subject: bool = True
    drop_version_subject: bool = True
    drop_hash_subject: bool = True
    imperative_subject: bool = False
    imperative_verbs_file: str | None = None  # one verb a line; replaces the built-in list
    languages: tuple[str, ...] = ()  # keep only these `lang` values (case-insensitive); empty keeps all
    decontaminate: tuple[str, ...] = ()  # files of strings; drop records whose new contents contain one
    decontaminate_field: str = "prompt"  # the key read from JSON objects in those files
    tokenizer: str | None = None  # needed for max_tokens
    max_tokens: int | None = None  # total inputs + targets tokens; 8192 when a tokenizer is given
    dedup: bool = False  # drop exact repeats of (inputs, targets)

    def __post_init__(self) -> None:
        if self.max_old_chars is not None and self.max_old_chars < 1:
            raise CommitsError(f"--max_old_chars {self.max_old_chars}: must be at least 1 (omit it to keep 100000)")
        if self.min_subject_chars < 0:
            raise CommitsError(f"--min_subject_chars {self.min_subject_chars}: must be 0 or more")
        if self.max_tokens is not None:
            if self.tokenizer is None:
                raise CommitsError("--max_tokens needs --tokenizer (a tokenizer.json file or a model directory)")
            if self.max_tokens < 1:
                raise CommitsError(f"--max_tokens {self.max_tokens}: must be at least 1")
        if self.imperative_verbs_file is not None and not self.imperative_subject:
            raise CommitsError("--imperative_verbs takes effect only with --imperative_subject")

    def token_limit(self) -> int | None:
        if self.tokenizer is None:
            return None
        return self.max_tokens if self.max_tokens is not None else DEFAULT_MAX_TOKENS

    def compile(self) -> RecordFilter:
        """Read the filter files (verbs, decontamination strings); errors name the file and line."""
        verbs = load_verbs(Path(self.imperative_verbs_file)) if self.imperative_verbs_file else IMPERATIVE_VERBS
        strings: list[str] = []
        for path in self.decontaminate:
            strings.extend(load_decontamination_strings(Path(path), self.decontaminate_field))
        # Longest first: a long benchmark prompt is the likelier hit and fails the `in` test fastest otherwise.
        unique = tuple(sorted(set(strings), key=lambda s: (-len(s), s)))
        return RecordFilter(self, verbs if self.imperative_subject else frozenset(), unique)


def load_verbs(path: Path) -> frozenset[str]:
    """One verb a line; blank lines and `#` comments are ignored."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise CommitsError(f"{path}: cannot read the verb list ({error})") from None
    verbs = frozenset(line.split("#", 1)[0].strip().lower() for line in lines) - {""}
    if not verbs:
        raise CommitsError(f"{path}: the verb list is empty")
    bad = sorted(verb for verb in verbs if " " in verb)
    if bad:
        raise CommitsError(f"{path}: one verb per line expected, got {bad[0]!r}")
    return verbs


def load_decontamination_strings(path: Path, field_name: str = "prompt") -> list[str]:
    """Strings to keep out of the training data.

    `.txt`: every non-blank line (stripped). `.json`: a list of strings or objects. `.jsonl`: one string or object
    a line. From an object the value of `field_name` is taken. Blank strings are ignored (they would match all).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise CommitsError(f"{path}: cannot read the decontamination file ({error})") from None
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            items = json.loads(text)
        except json.JSONDecodeError as error:
            raise CommitsError(f"{path}: malformed JSON ({error.msg} at line {error.lineno})") from None
        if not isinstance(items, list):
            raise CommitsError(f"{path}: expected a JSON list of strings or objects")
        values = [_decontamination_value(item, f"{path}: item {i}", field_name) for i, item in enumerate(items)]
    elif suffix == ".jsonl":
        values = []
        for line_no, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as error:
                raise CommitsError(f"{path}:{line_no}: malformed JSON ({error.msg})") from None
            values.append(_decontamination_value(item, f"{path}:{line_no}", field_name))
    elif suffix == ".txt":
        values = [line.strip() for line in text.splitlines()]
    else:
        raise CommitsError(f"{path}: decontamination files must be .txt, .json or .jsonl")
    return [value for value in values if value.strip()]


def _decontamination_value(item: object, where: str, field_name: str) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, dict):
        if field_name not in item:
            raise CommitsError(f"{where}: no field {field_name!r} (choose one with --decontaminate_field)")
        value = item[field_name]
        if isinstance(value, str):
            return value
        raise CommitsError(f"{where}: field {field_name!r} must be a string, got {type(value).__name__}")
    raise CommitsError(f"{where}: expected a string or an object, got {type(item).__name__}")


def is_version_subject(subject: str) -> bool:
    """
    >>> [is_version_subject(s) for s in ("v1.2.3", "Release 2.0.1", "1.4.0-rc1", "Bump version to 1.2", "Fix 1.2")]
    [True, True, True, True, False]
    """
    return bool(_VERSION_SUBJECT.match(subject.strip()))


def is_hash_subject(subject: str) -> bool:
    """A bare hex string of 7 to 64 characters with at least one digit ('defaced' is a word, not a hash)."""
    subject = subject.strip()
    return bool(_HASH_SUBJECT.match(subject)) and any(ch.isdigit() for ch in subject)


def first_word(subject: str) -> str:
    """The subject's first word, lowercased, without surrounding punctuation ('Fix:' -> 'fix')."""
    words = subject.split()
    return words[0].strip("\"'`.,:;!?()[]{}").lower() if words else ""


@dataclass(frozen=True)
class RecordFilter:
    """Compiled filters, cheap to ship to worker processes. `reject_reason` gives None or a `DROP_REASONS` key."""

    config: CommitFilters
    verbs: frozenset[str] = frozenset()
    contamination: tuple[str, ...] = ()
    languages: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "languages", frozenset(lang.lower() for lang in self.config.languages))

    def reject_reason(self, record: dict[str, str]) -> str | None:
        config = self.config
        if self.languages and record["lang"].lower() not in self.languages:
            return "language_excluded"
        if config.max_old_chars is not None and len(record["old_contents"]) > config.max_old_chars:
            return "old_too_long"
        if config.drop_empty_new and not record["new_contents"]:
            return "empty_new"
        if config.drop_unchanged and record["old_contents"] == record["new_contents"]:
            return "unchanged"
        subject = record["subject"].strip()
        if len(subject) < config.min_subject_chars:
            return "subject_too_short"
        if config.drop_version_subject and is_version_subject(subject):
            return "subject_version"
        if config.drop_hash_subject and is_hash_subject(subject):
            return "subject_hash"
        if config.drop_single_word_subject and len(subject.split()) < 2:
            return "subject_single_word"
        if config.imperative_subject and first_word(subject) not in self.verbs:
            return "subject_not_imperative"
        if self.contamination:
            new_contents = record["new_contents"]
            if any(text in new_contents for text in self.contamination):
                return "contaminated"
        return None
