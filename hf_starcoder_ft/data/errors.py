"""The error raised for bad data input; its message names the file and line (or key) at fault."""

from __future__ import annotations


class DataError(ValueError):
    """Bad data input: a malformed record, a bad data-path line, a missing file, overlapping splits."""
