"""Turn a commit record into one `{"inputs", "targets"}` training example.

    hf-starcoder-ft commits --sample --format octopack --seed 1 --output octopack.jsonl

Three layouts (`--format`):

- `instruct` (default; the OctoPack README's advice: the instruction belongs in the prompt)::

      inputs  = <filename>{basename(old_file)}<commit_before>{old_contents}<commit_msg>{subject}<commit_after>
      targets = {new_contents}<|endoftext|>

- `octopack`: exactly what OctoPack trained on (`commits_to_jsonl.py`), with its coin flip made reproducible::

      inputs  = [<filename>{basename(old_file)}]<commit_before>{old_contents}<commit_msg>
      targets = {subject}<commit_after>{new_contents}<|endoftext|>

  The `<filename>` part is present with probability 0.5, decided by a generator seeded with the seed and the
  record's identity (commit, old_file, new_file), so the choice never depends on worker scheduling.

- `template`: the user's own format strings over the record's fields, e.g.
  `--inputs_template "<commit_before>{old_contents}<commit_msg>{message}<commit_after>"`
  `--targets_template "{new_contents}<|endoftext|>"`. Unknown field names fail before any work starts.
"""

from __future__ import annotations

import hashlib
import posixpath
import random
import string
from dataclasses import dataclass

from hf_starcoder_ft.data.commits_sources import RECORD_FIELDS, CommitsError
from hf_starcoder_ft.tokenizer import EOS_TOKEN

FORMAT_NAMES = ("instruct", "octopack", "template")
INSTRUCTION_FIELDS = ("subject", "message")
# Fields a template may use besides the record's own.
DERIVED_FIELDS = ("old_basename", "new_basename")
TEMPLATE_FIELDS = RECORD_FIELDS + DERIVED_FIELDS


def octopack_includes_filename(seed: int, record: dict[str, str]) -> bool:
    """The seeded coin flip of the octopack format: True puts `<filename>{basename}` in front of the inputs."""
    identity = "\0".join((str(seed), record["commit"], record["old_file"], record["new_file"]))
    digest = hashlib.blake2b(identity.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big")).random() < 0.5


@dataclass(frozen=True)
class OctopackFormat:
    """OctoPack's layout: the commit subject is part of the target.

    >>> record = {"commit": "c1", "old_file": "src/a.py", "new_file": "src/a.py", "old_contents": "x = 1\\n",
    ...           "new_contents": "x = 2\\n", "subject": "Bump x"}
    >>> OctopackFormat(seed=0)(record)[1]
    'Bump x<commit_after>x = 2\\n<|endoftext|>'
    """

    seed: int = 0
    name: str = "octopack"

    def __call__(self, record: dict[str, str]) -> tuple[str, str]:
        before = f"<commit_before>{record['old_contents']}<commit_msg>"
        if octopack_includes_filename(self.seed, record):
            before = f"<filename>{posixpath.basename(record['old_file'])}{before}"
        return before, f"{record['subject']}<commit_after>{record['new_contents']}{EOS_TOKEN}"


@dataclass(frozen=True)
class InstructFormat:
    """The instruction (commit subject, or the whole message) in the inputs; the target is the new file only.

    >>> record = {"old_file": "src/a.py", "old_contents": "x = 1\\n", "new_contents": "x = 2\\n", "subject": "Bump x"}
    >>> InstructFormat()(record)
    ('<filename>a.py<commit_before>x = 1\\n<commit_msg>Bump x<commit_after>', 'x = 2\\n<|endoftext|>')
    """

    instruction: str = "subject"
    name: str = "instruct"

    def __post_init__(self) -> None:
        if self.instruction not in INSTRUCTION_FIELDS:
            raise CommitsError(f"--instruction {self.instruction!r}: expected one of {', '.join(INSTRUCTION_FIELDS)}")

    def __call__(self, record: dict[str, str]) -> tuple[str, str]:
        inputs = (
            f"<filename>{posixpath.basename(record['old_file'])}<commit_before>{record['old_contents']}"
            f"<commit_msg>{record[self.instruction]}<commit_after>"
        )
        return inputs, f"{record['new_contents']}{EOS_TOKEN}"


def template_fields(template: str, option: str) -> set[str]:
    """The field names a template uses; anything but plain `{field}` placeholders is an error naming `option`."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as error:
        raise CommitsError(f"{option}: {error} (write a literal brace as {{{{ or }}}})") from None
    names = set()
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if spec or conversion or not name.isidentifier():
            raise CommitsError(f"{option}: only plain {{field}} placeholders are allowed, got {{{name}...}}")
        if name not in TEMPLATE_FIELDS:
            raise CommitsError(f"{option}: unknown field {{{name}}}; known fields: {', '.join(TEMPLATE_FIELDS)}")
        names.add(name)
    return names


@dataclass(frozen=True)
class TemplateFormat:
    """User format strings over the record's fields (plus `old_basename`, `new_basename`), checked up front.

    >>> TemplateFormat("{subject}: {old_basename}", "{new_contents}{{done}}")(
    ...     {"subject": "Fix", "old_file": "a/b.py", "new_file": "a/b.py", "new_contents": "ok"})
    ('Fix: b.py', 'ok{done}')
    """

    inputs_template: str
    targets_template: str
    name: str = "template"

    def __post_init__(self) -> None:
        template_fields(self.inputs_template, "--inputs_template")
        template_fields(self.targets_template, "--targets_template")

    def __call__(self, record: dict[str, str]) -> tuple[str, str]:
        values = dict(record)
        values["old_basename"] = posixpath.basename(record["old_file"])
        values["new_basename"] = posixpath.basename(record["new_file"])
        return self.inputs_template.format_map(values), self.targets_template.format_map(values)


RecordFormat = OctopackFormat | InstructFormat | TemplateFormat


def make_format(
    name: str,
    seed: int = 0,
    instruction: str = "subject",
    inputs_template: str | None = None,
    targets_template: str | None = None,
) -> RecordFormat:
    """Build the formatter for `--format NAME`, checking its options before any work starts."""
    if name not in FORMAT_NAMES:
        raise CommitsError(f"--format {name!r}: expected one of {', '.join(FORMAT_NAMES)}")
    if name == "template":
        missing = [opt for opt, value in (("--inputs_template", inputs_template), ("--targets_template",
                   targets_template)) if value is None]  # fmt: skip
        if missing:
            raise CommitsError(f"--format template needs {' and '.join(missing)}")
        return TemplateFormat(inputs_template, targets_template)
    if inputs_template is not None or targets_template is not None:
        raise CommitsError(f"--inputs_template/--targets_template apply only to --format template, not {name!r}")
    if name == "octopack":
        if instruction != "subject":
            raise CommitsError("--instruction applies only to --format instruct (octopack always uses the subject)")
        return OctopackFormat(seed=seed)
    return InstructFormat(instruction=instruction)
