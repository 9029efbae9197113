"""Benchmark `hf-starcoder-ft commits` on a generated repository, side by side with `git log -p`.

    python benchmarks/bench_commits.py                  # 5000 commits, repository under /tmp
    python benchmarks/bench_commits.py --commits 20000  # a longer history

Prints, measured in one run on the same history:
- records per second of the builder reading a local repository (num_proc 1, and 2);
- the builder's time as a ratio to `git log -p --no-renames` over the same history (goal: <= 2x);
- peak memory (max RSS of the builder process, and of its git children) at 1k commits vs the full history
  (goal: flat), each measured in a fresh process.

The repository is written with `git fast-import` (seconds, not minutes): a few dozen Python files, each commit
editing 1-4 of them, with occasional added, renamed and deleted files. It lives under /tmp, never in the checkout,
and is removed at the end unless --keep is given.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SUBJECTS = ["Fix", "Add", "Update", "Refactor", "Remove", "Rename", "Handle", "Simplify", "Document", "Support"]
OBJECTS = ["parser", "config loader", "retry logic", "cache", "CLI flags", "logging", "tests", "error messages"]


def _module(rng: random.Random, lines: int) -> list[str]:
    out = []
    for i in range(lines // 4):
        name = f"func_{i}_{rng.randrange(10**6)}"
        out += [f"def {name}(x, y):\n", f"    value = x * {i} + y\n", "    return value\n", "\n"]
    return out


def generate_repository(path: Path, commits: int, files: int = 40, seed: int = 0) -> None:
    """A linear history of `commits` commits made with `git fast-import` (deterministic for a seed)."""
    rng = random.Random(seed)
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    subprocess.run(["git", "init", "-q", str(path)], check=True, env=env)
    importer = subprocess.Popen(["git", "-C", str(path), "fast-import", "--quiet"], stdin=subprocess.PIPE, env=env)
    tree: dict[str, list[str]] = {f"pkg/mod_{i:03d}.py": _module(rng, rng.randint(80, 200)) for i in range(files)}
    clock = 1_600_000_000

    def blob(text: str) -> bytes:
        data = text.encode()
        return b"data %d\n%s\n" % (len(data), data)

    for number in range(1, commits + 1):
        clock += 600
        message = f"{rng.choice(SUBJECTS)} {rng.choice(OBJECTS)} ({number})\n"
        ops: list[bytes] = []
        if number == 1:
            ops += [b"M 100644 inline %s\n" % name.encode() + blob("".join(body)) for name, body in tree.items()]
        else:
            roll = rng.random()
            if roll < 0.02:
                name = f"pkg/new_{number}.py"
                tree[name] = _module(rng, 40)
                ops.append(b"M 100644 inline %s\n" % name.encode() + blob("".join(tree[name])))
            elif roll < 0.03 and len(tree) > 10:
                old = rng.choice(sorted(tree))
                new = old.replace(".py", f"_r{number}.py")
                tree[new] = tree.pop(old)
                ops.append(b"R %s %s\n" % (old.encode(), new.encode()))
            elif roll < 0.035 and len(tree) > 10:
                old = rng.choice(sorted(tree))
                del tree[old]
                ops.append(b"D %s\n" % old.encode())
            for name in rng.sample(sorted(tree), rng.randint(1, 4)):
                body = tree[name]
                for _ in range(rng.randint(1, 3)):
                    at = rng.randrange(len(body))
                    body[at] = f"    value = x + {rng.randrange(1000)}  # edit {number}\n"
                ops.append(b"M 100644 inline %s\n" % name.encode() + blob("".join(body)))
        header = b"commit refs/heads/main\nmark :%d\ncommitter Bench <bench@example.com> %d +0000\n" % (number, clock)
        parent = b"from :%d\n" % (number - 1) if number > 1 else b""
        importer.stdin.write(header + blob(message) + parent + b"".join(ops) + b"\n")
    importer.stdin.close()
    if importer.wait() != 0:
        raise RuntimeError("git fast-import failed")
    subprocess.run(["git", "-C", str(path), "checkout", "-q", "main"], check=True, env=env)


def time_git_log_patch(repo: Path) -> float:
    """Wall time of `git log -p --no-renames` over the whole history, its output read and discarded."""
    started = time.perf_counter()
    process = subprocess.Popen(["git", "-C", str(repo), "log", "-p", "--no-renames", "--no-color"],
                               stdout=subprocess.PIPE)  # fmt: skip
    while process.stdout.read(1 << 20):
        pass
    if process.wait() != 0:
        raise RuntimeError("git log -p failed")
    return time.perf_counter() - started


def time_builder(repo: Path, out_dir: Path, num_proc: int) -> tuple[float, dict]:
    from hf_starcoder_ft.data.commits import build_commit_dataset

    output = out_dir / f"bench_{num_proc}.jsonl"
    started = time.perf_counter()
    report = build_commit_dataset([repo], output, num_proc=num_proc, overwrite=True, progress=False)
    return time.perf_counter() - started, report.to_dict()


def peak_memory(repo: Path, out_dir: Path, max_commits: int) -> dict:
    """Run the builder in a fresh process over the newest `max_commits` commits and return its peak RSS."""
    output = out_dir / f"mem_{max_commits}.jsonl"
    command = [sys.executable, __file__, "--child", str(repo), str(output), str(max_commits)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def _peak_rss_mib() -> float:
    # VmHWM is this process's own peak; ru_maxrss can carry the peak of the parent it was forked from.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(repo: str, output: str, max_commits: str) -> None:
    from hf_starcoder_ft.data.commits import GitOptions, build_commit_dataset

    report = build_commit_dataset([repo], output, git=GitOptions(max_commits=int(max_commits)), overwrite=True,
                                  progress=False)  # fmt: skip
    print(json.dumps({
        "commits": report.commits,
        "records": report.written,
        "python_max_rss_mib": _peak_rss_mib(),
        "git_max_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark the commits builder against git log -p.")
    parser.add_argument("--commits", type=int, default=5000, help="length of the generated history")
    parser.add_argument("--small", type=int, default=1000, help="the shorter history for the memory comparison")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (the best is reported)")
    parser.add_argument("--keep", action="store_true", help="keep the generated repository")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(*args.child)
        return 0

    work = Path(tempfile.mkdtemp(prefix="bench_commits_", dir="/tmp"))
    try:
        repo = work / "repo"
        started = time.perf_counter()
        generate_repository(repo, args.commits)
        print(f"generated {args.commits} commits in {time.perf_counter() - started:.1f}s at {repo}")

        small = peak_memory(repo, work, args.small)
        full = peak_memory(repo, work, args.commits)
        # Interleave the timings so that load from elsewhere on the machine hits both sides alike.
        git_times, runs = [], {1: [], 2: []}
        for _ in range(args.repeats):
            git_times.append(time_git_log_patch(repo))
            for num_proc in runs:
                runs[num_proc].append(time_builder(repo, work, num_proc))
        git_seconds = min(git_times)
        runs = {num_proc: min(timings, key=lambda item: item[0]) for num_proc, timings in runs.items()}
        same = (work / "bench_1.jsonl").read_bytes() == (work / "bench_2.jsonl").read_bytes()

        seconds_1, report = runs[1]
        print(f"\nrecords: seen {report['seen']}, written {report['written']}, dropped {report['dropped']}")
        print(f"git log -p --no-renames:        {git_seconds:7.2f}s")
        for num_proc, (seconds, report) in runs.items():
            print(f"commits builder, num_proc={num_proc}:   {seconds:7.2f}s  {report['seen'] / seconds:9.0f} records/s"
                  f"  ratio to git log -p: {seconds / git_seconds:.2f}x (goal <= 2x)")  # fmt: skip
        print(f"output identical for num_proc 1 and 2: {same}")
        print(f"peak RSS, builder process: {small['python_max_rss_mib']:.0f} MiB at {small['commits']} commits, "
              f"{full['python_max_rss_mib']:.0f} MiB at {full['commits']} commits "
              f"(ratio {full['python_max_rss_mib'] / small['python_max_rss_mib']:.2f}, goal ~1)")  # fmt: skip
        print(f"peak RSS, git children:    {small['git_max_rss_mib']:.0f} MiB at {small['commits']} commits, "
              f"{full['git_max_rss_mib']:.0f} MiB at {full['commits']} commits")  # fmt: skip
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
