"""What the ``unica`` parsers need, importing nothing heavy: ``unica --help`` loads no torch, transformers,
datasets or faiss (a test checks it).

* :data:`FUSIONS`, :data:`POOLINGS`, :data:`VISION_PRESET_NAMES`: the choices of ``configuration_unica`` /
  ``modeling_unica``, copied here (``tests/test_cli.py`` checks that they agree).
* :class:`HelpFormatter`: every option's help ends with its default (flags excepted: off by default).
* Argument types: :func:`positive_int`, :func:`task_ids` + :class:`TaskList` (the one ``--tasks`` format),
  :func:`key_value` (``--vision-config KEY=VALUE``).
* Checks that run before any model or data is loaded: :func:`check_new_output`, :func:`check_folder`,
  :func:`check_file`, :func:`check_checkpoint_folder`. Each raises a one-line ``FileNotFoundError`` /
  ``FileExistsError`` naming the input, which the CLI prints as one error line.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

FUSIONS = ("bica", "concat")
POOLINGS = ("cls", "mean")
VISION_PRESET_NAMES = ("vit-micro", "vit-tiny", "vit-small", "vit-base")

class HelpFormatter(argparse.HelpFormatter):
    """Adds ``(default: ...)`` to every option with a default (not None) that its help does not state already."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        flag = action.nargs == 0  # store_true / store_const / help: off unless given
        if action.default is None or action.default is argparse.SUPPRESS or flag or "%(default)" in text:
            return text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return f"{text} (default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` with :class:`HelpFormatter`; its sub-parsers are ``Parser`` s too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def _int_at_least(text: str, least: int, expected: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse names the option in its one-line error)."""
    return _int_at_least(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0, "an integer >= 0")


# 2, task2, webqa_task2 (the names of the evaluation folders' configs and of M-BEIR's task ids).
_TASK = re.compile(r"^(?:(?:\w+_)?task)?(\d+)$", re.IGNORECASE)
TASKS_HELP = "M-BEIR task ids, comma- or space-separated, each as 2, task2 or webqa_task2 (e.g. --tasks 1,2)"


def task_ids(text: str) -> list[int]:
    """argparse type of ``--tasks``: ``"1,2"``, ``"task1 task2"``, ``"webqa_task2"`` -> ``[1, 2]``, ``[1, 2]``, ``[2]``.

    Example:
        >>> task_ids("task1, 2,webqa_task7")
        [1, 2, 7]
    """
    ids = []
    for part in re.split(r"[,\s]+", text.strip()):
        if not part:
            continue
        match = _TASK.match(part)
        if not match:
            raise argparse.ArgumentTypeError(
                f"expected task ids such as 2, task2 or webqa_task2 (comma- or space-separated), got {part!r}"
            )
        ids.append(int(match.group(1)))
    if not ids:
        raise argparse.ArgumentTypeError(f"expected at least one task id (e.g. 1,2), got {text!r}")
    return ids


class TaskList(argparse.Action):
    """``--tasks`` with ``nargs="+"`` and ``type=task_ids``: one flat list of task ids, each once, in order."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        flat = [task for value in values for task in (value if isinstance(value, list) else [value])]
        setattr(namespace, self.dest, list(dict.fromkeys(flat)))


def add_tasks_option(parser: argparse.ArgumentParser, default: str | None = None, required: bool = False,
                     help: str = TASKS_HELP) -> None:
    """The one ``--tasks`` option (a string default is parsed by :func:`task_ids`, as argparse does)."""
    parser.add_argument("--tasks", nargs="+", type=task_ids, action=TaskList, default=default, required=required,
                        metavar="TASK", help=help)


def scalar(text: str) -> bool | int | float | str:
    """``"2"`` -> 2, ``"0.1"`` -> 0.1, ``"true"`` / ``"false"`` -> bool, anything else stays a string."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def key_value(text: str) -> tuple[str, bool | int | float | str]:
    """argparse type of ``KEY=VALUE`` options: ``"num_hidden_layers=2"`` -> ``("num_hidden_layers", 2)``."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not re.fullmatch(r"[A-Za-z_]\w*", key) or not value.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. num_hidden_layers=2), got {text!r}")
    return key, scalar(value)


# ---------------------------------------------------------------------- checks before anything is loaded
def check_new_output(path: str | Path, overwrite: bool, what: str = "--out") -> None:
    """An existing output without ``--overwrite`` is a ``FileExistsError`` naming it."""
    if Path(path).exists() and not overwrite:
        raise FileExistsError(f"{what} {str(path)!r} already exists; pass --overwrite to replace it")


def check_folder(path: str | Path, what: str) -> Path:
    """``path`` must be an existing folder (``FileNotFoundError`` naming it and ``what`` it should be)."""
    folder = Path(path)
    if not folder.is_dir():
        state = "is not a folder" if folder.exists() else "does not exist"
        raise FileNotFoundError(f"{what} {str(path)!r} {state}")
    return folder


def check_file(path: str | Path, what: str) -> Path:
    """``path`` must be an existing file (``FileNotFoundError`` naming it and ``what`` it should be)."""
    file = Path(path)
    if not file.is_file():
        state = "is not a file" if file.exists() else "does not exist"
        raise FileNotFoundError(f"{what} {str(path)!r} {state}")
    return file


def check_checkpoint_folder(path: str | Path) -> Path:
    """A UniCA checkpoint folder: it exists and holds ``config.json`` (the full check runs when it is loaded)."""
    folder = check_folder(path, "checkpoint folder")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"checkpoint folder {str(path)!r} has no config.json: it is not a UniCA checkpoint "
                                "(write one with `unica init` or `unica train`)")
    return folder
