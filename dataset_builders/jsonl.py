"""Reading JSON-lines files with errors that name the file and the line (one reader for the project)."""

from __future__ import annotations

import itertools
import json
import mmap
import os
import re
from collections.abc import Iterator
from pathlib import Path


def iter_json_objects(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, record)`` for each non-blank line of a JSONL file.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError("file:line: ...")`` for a line that
    is not valid JSON or not a JSON object.

    Example:

    ```python
    >>> for line_number, record in iter_json_objects("queries.jsonl"):
    ...     print(line_number, record["qid"])
    ```
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"JSONL file {str(path)!r} does not exist")
    with path.open("rb") as handle:  # bytes, decoded per line, so a UTF-8 error names its line
        for line_number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(f"{path}:{line_number}: not UTF-8 text ({error.reason} at byte {error.start}); "
                                 "JSON lines must be UTF-8") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{line_number}: malformed JSON ({error.msg}); fix or remove that line") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{line_number}: expected a JSON object, got {type(record).__name__}")
            yield line_number, record


# A line that does not start right away with "{" (or is empty): checked further by check_object_lines.
# Searching for this two-byte pattern runs at memory speed; a pattern with "^" or "\A|" does not.
_SUSPECT_LINE_START = re.compile(rb"\n[^{\n]")


def check_object_lines(path: str | os.PathLike) -> None:
    """Raise ``ValueError("file:line: ...")`` if a non-blank line of a JSONL file does not start with ``{``.

    A byte scan (no parsing, about 4 GB/s) run before Arrow's JSON reader, which crashes the process (a
    segfault in pyarrow 26) on a ``null`` line at the start of a block and turns one later in a file into
    a row of nulls. Leading blanks are allowed; lines that start with ``{`` but are malformed are left to
    the reader's own errors.
    """
    path = Path(path)
    if path.stat().st_size == 0:
        return
    problem = None
    with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        matches = _SUSPECT_LINE_START.finditer(data)
        for start in itertools.chain([0], (match.start() + 1 for match in matches)):
            end = data.find(b"\n", start)
            line = data[start : end if end != -1 else len(data)].strip()
            if line and not line.startswith(b"{"):
                problem = (data[:start].count(b"\n") + 1, line[:60].decode("utf-8", "replace"))
                break
        del matches  # the iterator holds a view of the map, which must be released before it closes
    if problem is not None:
        raise ValueError(f"{path}:{problem[0]}: expected a JSON object per line, got {problem[1]!r}; "
                         "fix or remove that line")
