"""Record layouts of `hf-starcoder-ft commits --format`: octopack byte for byte, instruct, template."""

from __future__ import annotations

import json
import random

import pytest
from _commits_fixtures import commitpack_record, read_jsonl, write_jsonl

from hf_starcoder_ft.data.commits import CommitsError, build_commit_dataset
from hf_starcoder_ft.data.commits_formats import (
    InstructFormat,
    OctopackFormat,
    TemplateFormat,
    make_format,
    octopack_includes_filename,
)

ACCENTED = commitpack_record(
    7,
    old_file="src/pkg/café.py",
    new_file="src/pkg/café.py",
    old_contents='print("naïve")\n',
    new_contents='print("naïve", end="")\n\ttab\n',
    subject="Print without a newline",
)


def octopack_line(record: dict, with_filename: bool) -> bytes:
    """OctoPack's `commits_to_jsonl.py` layout, written out independently of the implementation."""
    prefix = "<filename>" + record["old_file"].split("/")[-1] if with_filename else ""
    inputs = prefix + "<commit_before>" + record["old_contents"] + "<commit_msg>"
    targets = record["subject"] + "<commit_after>" + record["new_contents"] + "<|endoftext|>"
    return (json.dumps({"inputs": inputs, "targets": targets}, ensure_ascii=False) + "\n").encode("utf-8")


def seed_giving(record: dict, wanted: bool) -> int:
    return next(seed for seed in range(100) if octopack_includes_filename(seed, record) is wanted)


@pytest.mark.parametrize("with_filename", [True, False])
def test_octopack_output_is_byte_for_byte_the_original_layout(tmp_path, with_filename):
    source = write_jsonl(tmp_path / "in.jsonl", [ACCENTED])
    seed = seed_giving(ACCENTED, with_filename)
    build_commit_dataset([source], tmp_path / "out.jsonl", format="octopack", seed=seed, progress=False)
    data = (tmp_path / "out.jsonl").read_bytes()
    prefix = "<filename>café.py" if with_filename else ""
    literal = (
        '{"inputs": "' + prefix + '<commit_before>print(\\"naïve\\")\\n<commit_msg>", '
        '"targets": "Print without a newline<commit_after>print(\\"naïve\\", end=\\"\\")\\n\\ttab\\n<|endoftext|>"}\n'
    ).encode()
    assert data == literal == octopack_line(ACCENTED, with_filename)


def test_octopack_coin_flip_is_seeded_per_record_and_balanced(tmp_path):
    records = [commitpack_record(i) for i in range(400)]
    source = write_jsonl(tmp_path / "in.jsonl", records)
    build_commit_dataset([source], tmp_path / "out.jsonl", format="octopack", seed=3, progress=False)
    lines = (tmp_path / "out.jsonl").read_bytes().splitlines(keepends=True)
    flips = [octopack_includes_filename(3, record) for record in records]
    assert lines == [octopack_line(record, flip) for record, flip in zip(records, flips, strict=True)]
    # A fair coin: 400 draws land within 3 standard deviations of 200 (a biased coin, p=0.6, would not).
    assert 170 <= sum(flips) <= 230
    # The flip belongs to the record, not to its position: shuffling the input moves lines but changes none.
    shuffled = records[:]
    random.Random(0).shuffle(shuffled)
    build_commit_dataset([write_jsonl(tmp_path / "shuffled.jsonl", shuffled)], tmp_path / "shuffled_out.jsonl",
                         format="octopack", seed=3, progress=False)  # fmt: skip
    assert sorted((tmp_path / "shuffled_out.jsonl").read_bytes().splitlines(keepends=True)) == sorted(lines)
    # Another seed gives other flips.
    assert [octopack_includes_filename(4, record) for record in records] != flips


def test_instruct_layout_puts_the_subject_in_the_inputs():
    inputs, targets = InstructFormat()(ACCENTED)
    assert inputs == '<filename>café.py<commit_before>print("naïve")\n<commit_msg>Print without a newline<commit_after>'
    assert targets == 'print("naïve", end="")\n\ttab\n<|endoftext|>'
    inputs, _ = InstructFormat(instruction="message")(ACCENTED)
    assert inputs.endswith("<commit_msg>Return 8 from f_7\n\nOff by one.\n<commit_after>")


def test_octopack_format_object_matches_the_documented_layout():
    for seed in range(20):
        inputs, targets = OctopackFormat(seed=seed)(ACCENTED)
        expected = json.loads(octopack_line(ACCENTED, octopack_includes_filename(seed, ACCENTED)))
        assert (inputs, targets) == (expected["inputs"], expected["targets"])


def test_template_fills_fields_and_keeps_literal_braces(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", [ACCENTED])
    build_commit_dataset(
        [source],
        tmp_path / "out.jsonl",
        format="template",
        inputs_template="<reponame>{repos}<filename>{new_basename}<commit_msg>{subject}{{x}}",
        targets_template="{new_contents}<|endoftext|>",
        progress=False,
    )
    assert read_jsonl(tmp_path / "out.jsonl") == [
        {
            "inputs": "<reponame>owner/repo_1<filename>café.py<commit_msg>Print without a newline{x}",
            "targets": 'print("naïve", end="")\n\ttab\n<|endoftext|>',
        }
    ]


def test_template_that_gives_an_empty_string_is_dropped_and_counted(tmp_path):
    rows = [commitpack_record(1), commitpack_record(2, license="")]
    report = build_commit_dataset([write_jsonl(tmp_path / "in.jsonl", rows)], tmp_path / "out.jsonl",
                                  format="template", inputs_template="{license}", targets_template="{new_contents}",
                                  progress=False)  # fmt: skip
    assert report.dropped == {"empty_formatted": 1} and report.written == 1


@pytest.mark.parametrize(
    "template, message",
    [
        ("{old_contents}{author}", "unknown field {author}"),
        ("{subject!r}", "only plain {field} placeholders"),
        ("{subject:>10}", "only plain {field} placeholders"),
        ("{0}", "only plain {field} placeholders"),
        ("{subject", "write a literal brace"),
    ],
)
def test_bad_template_fails_before_any_work(tmp_path, template, message):
    # The source does not even exist: the template is checked first, and no output appears.
    with pytest.raises(CommitsError, match="--inputs_template: .*" + message.replace("{", r"\{").replace("}", r"\}")):
        build_commit_dataset([tmp_path / "missing.jsonl"], tmp_path / "out.jsonl", format="template",
                             inputs_template=template, targets_template="{new_contents}")  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_format_options_are_checked():
    with pytest.raises(CommitsError, match="--format 'alpaca'"):
        make_format("alpaca")
    with pytest.raises(CommitsError, match="needs --inputs_template and --targets_template"):
        make_format("template")
    with pytest.raises(CommitsError, match="apply only to --format template"):
        make_format("instruct", inputs_template="{subject}")
    with pytest.raises(CommitsError, match="--instruction applies only to --format instruct"):
        make_format("octopack", instruction="message")
    assert isinstance(make_format("template", inputs_template="a", targets_template="b"), TemplateFormat)
