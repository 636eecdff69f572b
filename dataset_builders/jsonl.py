"""Reading JSON-lines files with errors that name the file and the line (one reader for the project)."""

from __future__ import annotations

import json
import os
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
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{line_number}: malformed JSON ({error.msg}); fix or remove that line") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{line_number}: expected a JSON object, got {type(record).__name__}")
            yield line_number, record
