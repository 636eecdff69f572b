"""What a ``unica`` run prints: :func:`configure_logging`, called once by ``unica/apps/cli.py``.

A normal run prints what a user can act on:

* this project's INFO lines (``unica``, ``eval``, ``dataset_builders``, ``modeling_unica``,
  ``configuration_unica``), warnings and errors of every library, one line each, as
  ``LEVEL logger: message``;
* under ``torchrun`` (``RANK`` / ``LOCAL_RANK`` set), each line once: rank 0 logs at INFO, the other
  ranks only warnings and errors;
* the Trainer's training bar and this project's own bars over long loops (encoding a corpus).

Left out: other libraries' INFO lines (e.g. faiss' loader trying its AVX builds), transformers'
"Loading weights" / "Writing model shards" bars and datasets' "Generating ... split" bars.
``-v`` (``verbose=True``) shows everything: every logger at DEBUG, transformers at INFO, and the bars.

:func:`configure_logging` returns a function that restores what it changed, so calling the CLI's
``main`` from Python (tests, notebooks) leaves the process's logging as it found it.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable

# This project's packages: their INFO lines are the run's report.
PROJECT_LOGGERS = ("unica", "eval", "dataset_builders", "modeling_unica", "configuration_unica")
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


def process_rank() -> int:
    """This process's rank under ``torchrun`` / ``accelerate`` (``RANK``, else ``LOCAL_RANK``), 0 otherwise."""
    for name in ("RANK", "LOCAL_RANK"):
        value = os.environ.get(name, "").strip()
        if value.lstrip("-").isdigit():
            return int(value)
    return 0


def _library_progress_bars(enabled: bool) -> Callable[[], None]:
    """Switch transformers' and datasets' own progress bars; returns the undo."""
    undo: list[Callable[[], None]] = []
    try:
        from transformers.utils import logging as transformers_logging
    except ImportError:  # pragma: no cover - transformers is a dependency
        transformers_logging = None
    if transformers_logging is not None:
        was = transformers_logging.is_progress_bar_enabled()
        (transformers_logging.enable_progress_bar if enabled else transformers_logging.disable_progress_bar)()
        undo.append(transformers_logging.enable_progress_bar if was else transformers_logging.disable_progress_bar)
    try:  # the module (``datasets.utils.tqdm`` the attribute is its tqdm class)
        datasets_tqdm = importlib.import_module("datasets.utils.tqdm")
    except ImportError:  # pragma: no cover - datasets is a dependency
        datasets_tqdm = None
    if datasets_tqdm is not None:
        was = not datasets_tqdm.are_progress_bars_disabled()
        (datasets_tqdm.enable_progress_bars if enabled else datasets_tqdm.disable_progress_bars)()
        undo.append(datasets_tqdm.enable_progress_bars if was else datasets_tqdm.disable_progress_bars)

    def restore() -> None:
        for step in undo:
            step()

    return restore


def configure_logging(verbose: bool = False, rank: int | None = None) -> Callable[[], None]:
    """Set up what a ``unica`` run prints (see the module docstring); returns a function that undoes it.

    ``rank`` defaults to :func:`process_rank`. A stderr handler is added to the root logger only if it
    has none (as ``logging.basicConfig`` does).
    """
    rank = process_rank() if rank is None else rank
    root = logging.getLogger()
    project_level = logging.DEBUG if verbose else logging.INFO if rank == 0 else logging.WARNING
    saved = {name: logging.getLogger(name).level for name in ("", *PROJECT_LOGGERS)}
    added = None
    if not root.handlers:
        added = logging.StreamHandler()
        added.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(added)
    # Other libraries: warnings and errors only (records below a logger's level are never created).
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    for name in PROJECT_LOGGERS:
        logging.getLogger(name).setLevel(project_level)

    undo_transformers = None
    if verbose:
        try:
            from transformers.utils import logging as transformers_logging
        except ImportError:  # pragma: no cover
            transformers_logging = None
        if transformers_logging is not None:
            was = transformers_logging.get_verbosity()
            transformers_logging.set_verbosity_info()

            def undo_transformers() -> None:
                transformers_logging.set_verbosity(was)

    restore_bars = _library_progress_bars(enabled=verbose)

    def restore() -> None:
        restore_bars()
        if undo_transformers is not None:
            undo_transformers()
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
        if added is not None:
            root.removeHandler(added)

    return restore
