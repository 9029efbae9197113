"""Generate the bundled CommitPack-style sample: synthetic small Python edits with imperative commit subjects.

    python benchmarks/make_sample_commits.py            # rewrites hf_starcoder_ft/resources/sample_commits.jsonl.gz
    python benchmarks/make_sample_commits.py --check    # fails if the committed file differs from a fresh build

Deterministic (fixed seed, gzip header without time or name), so running it twice gives the same bytes. The
records look like CommitPack's: a small module before and after one focused change (a docstring, type hints, a
bug fix, a rename, a new helper...). About 5% carry subjects that the default filters drop (single words, version
numbers, hashes, unchanged files), so `hf-starcoder-ft commits --sample` shows its report doing something.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import random
import sys
from pathlib import Path

OUTPUT = Path(__file__).resolve().parent.parent / "hf_starcoder_ft" / "resources" / "sample_commits.jsonl.gz"
NUM_RECORDS = 420
SEED = 20240611

NOUNS = ["order", "invoice", "user", "score", "price", "reading", "sample", "event", "token", "record", "ticket",
         "payment", "metric", "item", "line", "entry", "visit", "task", "message", "batch"]  # fmt: skip
PACKAGES = ["billing", "analytics", "inventory", "auth", "reports", "ingest", "scheduler", "notify", "search", "cart"]
OWNERS = ["acme-labs", "jdoe", "opendata-org", "tinytools", "mlinfra", "webcraft", "pyhelpers", "nightly-dev"]
LICENSES = ["mit", "apache-2.0", "bsd-3-clause", "mit", "apache-2.0"]

# Each kind of function: its source (with {name}), a one-line docstring, a typed signature, and its own edits.
KINDS = {
    "total": dict(
        source="def {name}(items):\n    total = 0\n    for item in items:\n        total += item\n    return total\n",
        doc="Return the sum of the {noun} values.",
        sig=("def {name}(items):", "def {name}(items: list[float]) -> float:"),
    ),
    "read": dict(
        source="def {name}(path):\n    with open(path) as handle:\n        return handle.read()\n",
        doc="Read the {noun} file at `path` and return its text.",
        sig=("def {name}(path):", "def {name}(path: str) -> str:"),
    ),
    "head": dict(
        source="def {name}(values, n):\n    return values[:n]\n",
        doc="Return the first `n` {noun} values.",
        sig=("def {name}(values, n):", "def {name}(values: list, n: int) -> list:"),
    ),
    "count_words": dict(
        source='def {name}(text):\n    words = text.split(" ")\n    return len(words)\n',
        doc="Count the words of a {noun} description.",
        sig=("def {name}(text):", "def {name}(text: str) -> int:"),
    ),
    "lookup": dict(
        source="def {name}(config, key):\n    return config[key]\n",
        doc="Look up a {noun} setting by key.",
        sig=("def {name}(config, key):", "def {name}(config: dict, key: str):"),
    ),
    "ratio": dict(
        source="def {name}(part, whole):\n    return part / whole\n",
        doc="Return the share of {noun}s in `part` relative to `whole`.",
        sig=("def {name}(part, whole):", "def {name}(part: float, whole: float) -> float:"),
    ),
    "fetch": dict(
        source="def {name}(url):\n    response = requests.get(url)\n    return response.json()\n",
        doc="Fetch a {noun} from the API and decode the JSON body.",
        sig=("def {name}(url):", "def {name}(url: str) -> dict:"),
    ),
    "doubled": dict(
        source="def {name}(numbers):\n    result = []\n    for i in range(len(numbers) - 1):\n"
        "        result.append(numbers[i] * 2)\n    return result\n",
        doc="Double every {noun} value.",
        sig=("def {name}(numbers):", "def {name}(numbers: list[int]) -> list[int]:"),
    ),
}
NAMES = {
    "total": ["total_{noun}s", "sum_{noun}s", "{noun}_total"],
    "read": ["read_{noun}_file", "load_{noun}s", "{noun}_text"],
    "head": ["first_{noun}s", "take_{noun}s", "head_{noun}s"],
    "count_words": ["count_{noun}_words", "{noun}_word_count"],
    "lookup": ["get_{noun}_setting", "{noun}_option"],
    "ratio": ["{noun}_ratio", "{noun}_share"],
    "fetch": ["fetch_{noun}", "download_{noun}"],
    "doubled": ["double_{noun}s", "scaled_{noun}s"],
}
RENAMES = {"total": "compute_{noun}_total", "read": "read_{noun}s", "head": "limit_{noun}s",
           "count_words": "{noun}_words", "lookup": "{noun}_setting", "ratio": "{noun}_fraction",
           "fetch": "get_{noun}", "doubled": "double_each_{noun}"}  # fmt: skip


def kind_edit(kind: str, name: str, text: str, rng: random.Random) -> tuple[str, str, str] | None:
    """A change specific to one kind of function: (new text, subject, body)."""
    if kind == "total":
        new = text.replace("    total = 0\n    for item in items:\n        total += item\n    return total\n",
                           "    return sum(items)\n")  # fmt: skip
        return new, f"Simplify {name} with the sum builtin", ""
    if kind == "read":
        new = text.replace("open(path)", 'open(path, encoding="utf-8")')
        return new, f"Read files as UTF-8 in {name}", "The platform default encoding broke on Windows."
    if kind == "head":
        guard = '    if n < 0:\n        raise ValueError("n must be non-negative")\n'
        return (
            text.replace("    return values[:n]\n", guard + "    return values[:n]\n"),
            (f"Reject negative sizes in {name}"),
            "",
        )
    if kind == "count_words":
        return (
            text.replace('text.split(" ")', "text.split()"),
            f"Split on any whitespace in {name}",
            ("Repeated spaces used to count as empty words."),
        )
    if kind == "lookup":
        new = text.replace("(config, key):", "(config, key, default=None):").replace(
            "config[key]", "config.get(key, default)"
        )
        return new, f"Return a default for missing keys in {name}", ""
    if kind == "ratio":
        guard = '    if whole == 0:\n        raise ValueError("whole must not be zero")\n'
        new = text.replace("    return part / whole\n", guard + "    return part / whole\n")
        return new, f"Raise a clear error on division by zero in {name}", ""
    if kind == "fetch":
        if rng.random() < 0.5:
            new = text.replace("requests.get(url)", "requests.get(url, timeout=10)")
            return new, f"Add a timeout to the HTTP request in {name}", "Requests without a timeout can hang forever."
        raising = "    response.raise_for_status()\n    return response.json()\n"
        new = text.replace("    return response.json()\n", raising)
        return new, f"Raise on HTTP errors in {name}", ""
    if kind == "doubled":
        return (
            text.replace("range(len(numbers) - 1)", "range(len(numbers))"),
            f"Fix off-by-one error in {name}",
            ("The last value was never doubled."),
        )
    return None


def make_function(kind: str, noun: str, rng: random.Random) -> dict:
    name = rng.choice(NAMES[kind]).format(noun=noun)
    return {"kind": kind, "name": name, "noun": noun, "text": KINDS[kind]["source"].format(name=name)}


def module_text(imports: list[str], functions: list[dict], main_guard: bool = False) -> str:
    header = "".join(f"import {module}\n" for module in imports)
    body = "\n\n".join(function["text"] for function in functions)
    text = (header + "\n\n" if header else "") + body
    if main_guard:
        text += '\n\nif __name__ == "__main__":\n    print(' + functions[0]["name"] + "([1, 2, 3]))\n"
    return text


def make_record(index: int, rng: random.Random) -> dict:
    package = rng.choice(PACKAGES)
    owner = rng.choice(OWNERS)
    nouns = rng.sample(NOUNS, 3)
    kinds = rng.sample(sorted(KINDS), rng.randint(1, 3))
    functions = [make_function(kind, noun, rng) for kind, noun in zip(kinds, nouns, strict=False)]
    imports = sorted({"requests"} if any(f["kind"] == "fetch" for f in functions) else set())
    if rng.random() < 0.2:
        imports = sorted({*imports, "os"})  # unused: something to remove
    module = rng.choice(["utils", "helpers", "core", "models", "io", "stats", "client", "tools"])
    old_file = f"src/{package}/{module}.py"
    new_file = old_file
    old = module_text(imports, functions)
    target = rng.choice(functions)
    body = ""
    roll = rng.random()
    edited = [dict(f) for f in functions]
    chosen = edited[functions.index(target)]
    new_imports = imports
    main_guard = False
    if roll < 0.45:
        new_text, subject, body = kind_edit(target["kind"], target["name"], target["text"], rng)
        chosen["text"] = new_text
    elif roll < 0.6:
        doc = KINDS[target["kind"]]["doc"].format(noun=target["noun"])
        lines = target["text"].split("\n", 1)
        chosen["text"] = f'{lines[0]}\n    """{doc}"""\n{lines[1]}'
        subject = rng.choice([f"Add docstring to {target['name']}", f"Document {target['name']}"])
    elif roll < 0.72:
        before, after = KINDS[target["kind"]]["sig"]
        chosen["text"] = target["text"].replace(before.format(name=target["name"]), after.format(name=target["name"]))
        subject = f"Add type hints to {target['name']}"
    elif roll < 0.8:
        new_name = RENAMES[target["kind"]].format(noun=target["noun"])
        chosen["text"] = target["text"].replace(f"def {target['name']}(", f"def {new_name}(")
        subject = f"Rename {target['name']} to {new_name}"
        body = "The new name says what the function returns."
    elif roll < 0.88:
        kind = rng.choice(sorted(set(KINDS) - set(kinds)))
        added = make_function(kind, rng.choice(NOUNS), rng)
        edited.append(added)
        if kind == "fetch":
            new_imports = sorted({*imports, "requests"})
        subject = f"Add {added['name']} helper"
    elif roll < 0.93 and "os" in imports:
        new_imports = [name for name in imports if name != "os"]
        subject = "Remove unused os import"
    elif roll < 0.96:
        main_guard = True
        subject = f"Add a command-line entry point to {module}.py"
    else:
        old = ""
        subject = f"Add {module} module to {package}"
    new = module_text(new_imports, edited, main_guard)
    if index % 20 == 7:
        # Subjects the default filters drop (single word, version, hash), as real histories have them.
        subject = rng.choice(["wip", "Cleanup", "update", "v0.3.1", "Release 1.2.0", "fixes", "3f9a2c1"])
        body = ""
    if index % 97 == 50:
        new, subject = old, f"Touch {module}.py"  # unchanged contents: dropped by the default filters
    message = subject + (f"\n\n{body}" if body else "") + "\n"
    commit = hashlib.sha1(f"{index}\0{old_file}\0{subject}\0{new}".encode()).hexdigest()
    return {
        "commit": commit,
        "old_file": old_file,
        "new_file": new_file,
        "old_contents": old,
        "new_contents": new,
        "subject": subject,
        "message": message,
        "lang": "Python",
        "license": rng.choice(LICENSES),
        "repos": f"{owner}/{package}",
    }


def build(num_records: int = NUM_RECORDS, seed: int = SEED) -> bytes:
    rng = random.Random(seed)
    lines = [json.dumps(make_record(i, rng), ensure_ascii=False) + "\n" for i in range(num_records)]
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=9) as handle:
        handle.write("".join(lines).encode("utf-8"))
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=OUTPUT, help="where to write the gzipped jsonl")
    parser.add_argument("--check", action="store_true", help="compare with the existing file instead of writing")
    args = parser.parse_args(argv)
    data = build()
    if args.check:
        same = args.output.is_file() and args.output.read_bytes() == data
        print(f"{args.output}: {'up to date' if same else 'DIFFERS from a fresh build'}")
        return 0 if same else 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_name(args.output.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(args.output)
    print(f"wrote {NUM_RECORDS} records, {len(data)} bytes, to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
