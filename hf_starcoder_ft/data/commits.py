"""Build `{"inputs", "targets"}` training jsonl from git commits: CommitPack-style records or local repositories.

    hf-starcoder-ft commits --sample --output commits.jsonl
    hf-starcoder-ft commits --repo ~/src/project --rev main --since 2023-01-01 --output commits.jsonl.gz
    hf-starcoder-ft commits --commitpack commitpackft/python/data.jsonl --format octopack --seed 1 \\
        --tokenizer tokenizer.json --max_tokens 8192 --num_proc 8 --output octopack.jsonl

Python:

    from hf_starcoder_ft.data.commits import build_commit_dataset, CommitFilters
    report = build_commit_dataset(["~/src/project"], "commits.jsonl", format="instruct", seed=0,
                                  filters=CommitFilters(imperative_subject=True))
    print(report.summary())

Each changed file of each commit is one record; each record is written or dropped under one reason, and the
report says how many of each (`seen == written + sum(dropped)`). The same inputs and seed give byte-identical
output for any `--num_proc`. The output is written atomically (`.gz` compressed when its name ends so).
Parts: `commits_sources` (record files), `commits_git` (repositories), `commits_filters`, `commits_formats`,
`commits_pipeline` (chunks and workers). See docs/commits.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gzip
import json
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hf_starcoder_ft.data.commits_filters import DROP_REASONS, CommitFilters
from hf_starcoder_ft.data.commits_formats import FORMAT_NAMES, INSTRUCTION_FIELDS, TEMPLATE_FIELDS, make_format
from hf_starcoder_ft.data.commits_git import (
    MERGE_MODES,
    GitOptions,
    GitRepo,
    check_git_dates,
    count_commits,
    iter_commits,
    open_repository,
)
from hf_starcoder_ft.data.commits_pipeline import BuildConfig, git_chunks, process_chunks
from hf_starcoder_ft.data.commits_sources import (
    CommitPackFile,
    CommitsError,
    check_columns,
    count_rows,
    iter_raw_chunks,
    resolve_commitpack_paths,
)
from hf_starcoder_ft.io_utils import OutputExistsError, atomic_write

__all__ = [
    "CommitFilters",
    "CommitReport",
    "CommitsError",
    "GitOptions",
    "build_commit_dataset",
    "main",
    "sample_commits_path",
]

SAMPLE_COMMITS = Path(__file__).resolve().parent.parent / "resources" / "sample_commits.jsonl.gz"


def sample_commits_path() -> Path:
    """The bundled CommitPack-style sample (a few hundred synthetic Python edits) used by the quickstart."""
    if not SAMPLE_COMMITS.is_file():
        raise CommitsError(f"{SAMPLE_COMMITS}: the bundled sample is missing from this installation")
    return SAMPLE_COMMITS


@dataclass
class CommitReport:
    """What a build did: records seen, written, dropped per reason (`seen == written + sum(dropped)`)."""

    output: str
    format: str
    seed: int
    num_proc: int
    sources: list[str]
    commits: int = 0  # commits read from git repositories
    seen: int = 0
    written: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    dates: dict[str, str] = field(default_factory=dict)  # --since/--until as git resolved them (UTC, ISO 8601)

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    def to_dict(self) -> dict:
        values = asdict(self)
        values["dropped_total"] = self.dropped_total
        return values

    def summary(self) -> str:
        lines = [
            f"commits: wrote {self.written} of {self.seen} records to {self.output} "
            f"(format {self.format}, seed {self.seed}) in {self.seconds:.1f}s",
        ]
        if self.commits:
            lines.append(f"  read {self.commits} commits")
        for name, when in self.dates.items():
            lines.append(f"  --{name} resolved by git to {when}")
        lines.append(f"  dropped {self.dropped_total}" + (":" if self.dropped else ""))
        width = max((len(reason) for reason in self.dropped), default=0)
        for reason, count in self.dropped.items():
            lines.append(f"    {reason:<{width}}  {count:>8}  {DROP_REASONS[reason]}")
        return "\n".join(lines)


def _is_git_repository(path: Path) -> bool:
    return path.is_dir() and ((path / ".git").exists() or ((path / "HEAD").is_file() and (path / "objects").is_dir()))


Source = str | Path | GitRepo | CommitPackFile


def resolve_sources(sources: Sequence[Source]) -> list[GitRepo | CommitPackFile]:
    """Open each source: a git repository (working tree or bare) or CommitPack-style record files."""
    if isinstance(sources, str | Path):
        sources = [sources]
    resolved: list[GitRepo | CommitPackFile] = []
    for source in sources:
        if isinstance(source, GitRepo | CommitPackFile):
            resolved.append(source)
        elif _is_git_repository(Path(source).expanduser()):
            resolved.append(open_repository(Path(source).expanduser()))
        else:
            resolved.extend(resolve_commitpack_paths([Path(source).expanduser()]))
    if not resolved:
        raise CommitsError("no sources given (a git repository, CommitPack record files, or the sample)")
    return resolved


def _chunks(sources: list[GitRepo | CommitPackFile], git: GitOptions, chunk_commits: int, chunk_rows: int) -> Iterator:
    for source in sources:
        if isinstance(source, GitRepo):
            yield from git_chunks(source.path, source.name, iter_commits(source, git), max_commits=chunk_commits)
        else:
            yield from iter_raw_chunks(source, chunk_rows)


@contextlib.contextmanager
def _open_output(path: Path, compress: bool):
    with open(path, "wb") as raw:
        if compress:
            # mtime=0 and no file name in the header: the same records give the same bytes.
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as handle:
                yield handle
        else:
            yield raw


def build_commit_dataset(
    sources: Sequence[Source] | Source,
    output: str | Path,
    *,
    format: str = "instruct",
    seed: int = 0,
    instruction: str = "subject",
    inputs_template: str | None = None,
    targets_template: str | None = None,
    filters: CommitFilters | None = None,
    git: GitOptions | None = None,
    num_proc: int = 1,
    keep_metadata: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    report_json: str | Path | None = None,
    chunk_commits: int = 64,
    chunk_rows: int = 256,
) -> CommitReport:
    """Write `{"inputs", "targets"}` jsonl built from `sources` to `output` and return the report.

    Everything that can be checked is checked before the first record is read: options, templates, the output
    path, repositories and revisions, record-file columns, filter files and the tokenizer. On any error no
    output file is left behind. `chunk_commits`/`chunk_rows` size the units of work given to a worker; the output
    does not depend on them.
    """
    started = time.perf_counter()
    filters = filters or CommitFilters()
    git = git or GitOptions()
    if num_proc < 1:
        raise CommitsError(f"--num_proc {num_proc}: must be at least 1")
    if chunk_commits < 1 or chunk_rows < 1:
        raise CommitsError("chunk_commits and chunk_rows must be at least 1")
    record_format = make_format(format, seed, instruction, inputs_template, targets_template)
    if git.include_deleted and filters.drop_empty_new:
        raise CommitsError("--include_deleted gives records with empty new contents: add --keep_empty_new")
    output = Path(output)
    if output.exists() and not overwrite:
        raise OutputExistsError(f"{output} already exists (pass --overwrite to replace it)")
    resolved = resolve_sources(sources)
    repos = [source for source in resolved if isinstance(source, GitRepo)]
    dates = check_git_dates(repos[0], git) if repos and (git.since is not None or git.until is not None) else {}
    git = dataclasses.replace(git, **{name: f"@{stamp}" for name, stamp in dates.items()})
    totals: list[int | None] = []
    for source in resolved:
        if isinstance(source, GitRepo):
            totals.append(count_commits(source, git))
        else:
            if source.path.resolve() == output.resolve():
                raise CommitsError(f"{output}: the output would replace one of the inputs")
            check_columns(source)
            totals.append(count_rows(source))
    record_filter = filters.compile()
    if filters.tokenizer is not None:
        from hf_starcoder_ft.tokenizer import load_tokenizer

        load_tokenizer(filters.tokenizer)  # fail now, not in a worker after minutes of work
    config = BuildConfig(
        record_format=record_format,
        record_filter=record_filter,
        git=git,
        keep_metadata=keep_metadata,
        tokenizer=filters.tokenizer,
        max_tokens=filters.token_limit(),
        dedup=filters.dedup,
    )
    report = CommitReport(
        output=str(output),
        format=record_format.name,
        seed=seed,
        num_proc=num_proc,
        sources=[source.path if isinstance(source, GitRepo) else source.name for source in resolved],
        dates={
            name: datetime.datetime.fromtimestamp(stamp, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            for name, stamp in dates.items()
        },
    )
    dropped: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
    seen_digests: set[bytes] = set()
    all_git = all(isinstance(source, GitRepo) for source in resolved)
    unit = "commit" if all_git else "record" if not any(isinstance(s, GitRepo) for s in resolved) else "item"
    total = None if any(count is None for count in totals) else sum(totals)

    from tqdm.auto import tqdm

    with (
        tqdm(total=total, unit=unit, desc="commits", disable=not progress, dynamic_ncols=True) as bar,
        atomic_write(output, overwrite=overwrite) as tmp,
        _open_output(tmp, output.name.endswith(".gz")) as out,
    ):
        for result in process_chunks(_chunks(resolved, git, chunk_commits, chunk_rows), config, num_proc):
            for reason, count in result.dropped.items():
                dropped[reason] += count
            report.seen += result.seen
            report.commits += result.commits
            if config.dedup:
                for line, digest in zip(result.lines, result.digests, strict=True):
                    if digest in seen_digests:
                        dropped["duplicate"] += 1
                        continue
                    seen_digests.add(digest)
                    out.write(line)
                    report.written += 1
            else:
                out.writelines(result.lines)
                report.written += len(result.lines)
            bar.update(result.commits + result.rows)
    report.dropped = {reason: count for reason, count in dropped.items() if count}
    report.seconds = round(time.perf_counter() - started, 3)
    if report.seen != report.written + report.dropped_total:
        raise RuntimeError(f"internal error: report does not add up ({report.to_dict()})")
    if report_json is not None:
        with atomic_write(report_json) as tmp:
            tmp.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-starcoder-ft commits",
        description="Build inputs/targets jsonl for fine-tuning from git commits: CommitPack-style record files "
        "or local git repositories. One record per changed file; every skipped record is counted by reason.",
    )
    source = parser.add_argument_group("sources (give one kind)")
    exclusive = source.add_mutually_exclusive_group(required=True)
    exclusive.add_argument(
        "--repo",
        action="append",
        metavar="PATH",
        help="a local git repository (working tree or bare); repeat for several",
    )
    exclusive.add_argument(
        "--commitpack",
        action="append",
        metavar="PATH",
        help="CommitPack-style records: .jsonl, .jsonl.gz, .parquet, a `datasets` directory "
        "(save_to_disk), or a directory of such files; repeat for several",
    )
    exclusive.add_argument(
        "--sample", action="store_true", help="the bundled sample of synthetic CommitPack-style records (quickstart)"
    )

    out = parser.add_argument_group("output")
    out.add_argument("--output", required=True, metavar="FILE", help="jsonl file to write (.gz compresses it)")
    out.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    out.add_argument(
        "--format",
        default="instruct",
        choices=FORMAT_NAMES,
        help="instruct: subject in the inputs, new file as target; octopack: OctoPack's original "
        "layout (subject in the target, <filename> at p=0.5); template: your own format strings (default: %(default)s)",
    )
    out.add_argument(
        "--instruction",
        default="subject",
        choices=INSTRUCTION_FIELDS,
        help="instruct format: put the commit subject or the whole message in the inputs (default: %(default)s)",
    )
    out.add_argument(
        "--inputs_template",
        metavar="STR",
        help="template format: inputs as a format string over {field} names: " + ", ".join(TEMPLATE_FIELDS),
    )
    out.add_argument(
        "--targets_template",
        metavar="STR",
        help="template format: targets format string (end it with <|endoftext|> to supervise EOS)",
    )
    out.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="N",
        help="seed of the octopack <filename> coin flip (default: %(default)s)",
    )
    out.add_argument(
        "--keep_metadata",
        action="store_true",
        help="also write commit, old_file, new_file, lang, repos, license in each record",
    )
    out.add_argument(
        "--num_proc",
        type=int,
        default=1,
        metavar="N",
        help="worker processes; the output does not depend on it (default: %(default)s)",
    )
    out.add_argument("--report_json", metavar="FILE", help="also save the report (counts per drop reason) as JSON")
    out.add_argument("--no_progress", action="store_true", help="do not show a progress bar")

    git = parser.add_argument_group("git repositories (--repo)")
    git.add_argument(
        "--rev",
        default="HEAD",
        help="revision or range to read, as git log takes it, e.g. v1.0..main (default: %(default)s)",
    )
    git.add_argument("--since", metavar="DATE", help="only commits more recent than DATE (git log --since)")
    git.add_argument("--until", metavar="DATE", help="only commits older than DATE (git log --until)")
    git.add_argument("--max_commits", type=int, metavar="N", help="at most N commits per repository, newest first")
    git.add_argument(
        "--merges",
        default="skip",
        choices=MERGE_MODES,
        help="skip merge commits, or diff each against its first parent (default: %(default)s)",
    )
    git.add_argument(
        "--include_deleted",
        action="store_true",
        help="make a record of each deleted file (empty new contents; needs --keep_empty_new)",
    )
    git.add_argument(
        "--max_file_bytes",
        type=int,
        default=1_000_000,
        metavar="N",
        help="skip blobs larger than N bytes unread (file_too_large; default: %(default)s)",
    )

    flt = parser.add_argument_group("filters (OctoPack's defaults; every drop is counted by reason)")
    flt.add_argument(
        "--max_old_chars",
        type=int,
        default=100_000,
        metavar="N",
        help="drop records whose old contents are longer than N characters (0: no limit; default: %(default)s)",
    )
    flt.add_argument("--keep_empty_new", action="store_true", help="keep records whose new contents are empty")
    flt.add_argument("--keep_unchanged", action="store_true", help="keep records whose contents did not change")
    flt.add_argument(
        "--min_subject_chars",
        type=int,
        default=3,
        metavar="N",
        help="drop subjects shorter than N characters (default: %(default)s)",
    )
    flt.add_argument("--allow_single_word_subject", action="store_true", help="keep one-word subjects")
    flt.add_argument("--allow_version_subject", action="store_true", help="keep subjects like 'v1.2.3'")
    flt.add_argument("--allow_hash_subject", action="store_true", help="keep subjects that are a commit hash")
    flt.add_argument(
        "--imperative_subject",
        action="store_true",
        help="drop subjects that do not start with an imperative verb (Add, Fix, Remove, ...)",
    )
    flt.add_argument(
        "--imperative_verbs",
        metavar="FILE",
        help="verb list for --imperative_subject, one a line (replaces the built-in list)",
    )
    flt.add_argument(
        "--languages",
        nargs="+",
        metavar="LANG",
        help="keep only these languages (the `lang` field, e.g. Python; case-insensitive)",
    )
    flt.add_argument(
        "--decontaminate",
        action="append",
        metavar="FILE",
        help="drop records whose new contents contain a string from FILE (.txt: one a line; "
        ".json list or .jsonl of strings or objects); repeatable",
    )
    flt.add_argument(
        "--decontaminate_field",
        default="prompt",
        metavar="KEY",
        help="the key to read from objects in --decontaminate files (default: %(default)s)",
    )
    flt.add_argument(
        "--tokenizer", metavar="PATH", help="tokenizer.json or model directory, to drop records over --max_tokens"
    )
    flt.add_argument(
        "--max_tokens",
        type=int,
        metavar="N",
        help="drop records whose inputs + targets exceed N tokens (default 8192 with --tokenizer)",
    )
    flt.add_argument("--dedup", action="store_true", help="drop records whose inputs and targets repeat an earlier one")
    return parser


def _options_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple:
    if args.max_old_chars < 0:
        parser.error(f"--max_old_chars {args.max_old_chars}: must be 0 (no limit) or more")
    git_only = [name for name in ("since", "until", "max_commits") if getattr(args, name) is not None]
    git_only += ["rev"] * (args.rev != "HEAD") + ["merges"] * (args.merges != "skip")
    git_only += ["include_deleted"] * args.include_deleted
    if not args.repo and git_only:
        parser.error(f"--{git_only[0]} applies only to --repo sources")
    filters = CommitFilters(
        max_old_chars=args.max_old_chars or None,
        drop_empty_new=not args.keep_empty_new,
        drop_unchanged=not args.keep_unchanged,
        min_subject_chars=args.min_subject_chars,
        drop_single_word_subject=not args.allow_single_word_subject,
        drop_version_subject=not args.allow_version_subject,
        drop_hash_subject=not args.allow_hash_subject,
        imperative_subject=args.imperative_subject,
        imperative_verbs_file=args.imperative_verbs,
        languages=tuple(args.languages or ()),
        decontaminate=tuple(args.decontaminate or ()),
        decontaminate_field=args.decontaminate_field,
        tokenizer=args.tokenizer,
        max_tokens=args.max_tokens,
        dedup=args.dedup,
    )
    git = GitOptions(
        rev=args.rev,
        since=args.since,
        until=args.until,
        max_commits=args.max_commits,
        merges=args.merges,
        include_deleted=args.include_deleted,
        max_file_bytes=args.max_file_bytes,
    )
    return filters, git


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from hf_starcoder_ft.tokenizer import TokenizerError

    if args.format == "template" and args.targets_template and not args.targets_template.endswith("<|endoftext|>"):
        print("note: --targets_template does not end with <|endoftext|>; EOS will not be supervised", file=sys.stderr)
    try:
        filters, git = _options_from_args(args, parser)
        if args.sample:
            sources: list[Source] = resolve_commitpack_paths([sample_commits_path()])
        elif args.commitpack:
            sources = resolve_commitpack_paths(args.commitpack)
        else:
            sources = [open_repository(Path(path).expanduser()) for path in args.repo]
        report = build_commit_dataset(
            sources,
            args.output,
            format=args.format,
            seed=args.seed,
            instruction=args.instruction,
            inputs_template=args.inputs_template,
            targets_template=args.targets_template,
            filters=filters,
            git=git,
            num_proc=args.num_proc,
            keep_metadata=args.keep_metadata,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            report_json=args.report_json,
        )
    except (CommitsError, OutputExistsError, TokenizerError) as error:
        print(f"hf-starcoder-ft commits: error: {error}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
