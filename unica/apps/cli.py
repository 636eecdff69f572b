"""The ``unica`` command line.

Each area of the project registers its own sub-commands through a ``register(subparsers)``
function that adds an ``argparse`` sub-parser and sets ``func`` (called with the parsed
arguments, returning an exit code). This file only collects them.

Building the parser imports no torch, transformers, datasets or faiss (``unica --help`` answers at
once): the registering modules import only the standard library and ``unica.apps.options`` at module
level, and each command imports what it needs when it runs. Every option's help shows its default
(``unica.apps.options.HelpFormatter``). What a run prints is set up by ``unica.apps.logs``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from unica.apps.options import Parser

# (module, attribute) pairs, each a ``register(subparsers)`` function. Imported lazily so that an area
# whose optional dependencies are missing does not break the others.
_REGISTRARS = [
    ("unica.apps.commands", "register"),
    ("unica.apps.train_cli", "register"),
    ("unica.apps.pretrain_cli", "register"),
    ("unica.apps.dataset_cli", "register"),
    ("unica.apps.eval_cli", "register"),
    ("unica.apps.vista_cli", "register"),
    ("unica.apps.app.cli", "register"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="unica", description="UniCA multimodal retrieval embeddings.")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show everything: DEBUG logs of every library and their progress bars")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name, attribute in _REGISTRARS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            # Only a missing area module is tolerated; a missing dependency inside it is a real error.
            if error.name != module_name:
                raise
            continue
        getattr(module, attribute)(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from unica.apps.logs import configure_logging

    restore = configure_logging(verbose=args.verbose)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError, ConnectionError) as error:
        # User errors (and an unreachable Hub): one clear line, no traceback.
        logging.getLogger("unica").error("%s", error)
        return 1
    finally:
        restore()


if __name__ == "__main__":
    sys.exit(main())
