"""The ``unica`` command line.

Each area of the project registers its own sub-commands through a ``register(subparsers)``
function that adds an ``argparse`` sub-parser and sets ``func`` (called with the parsed
arguments, returning an exit code). This file only collects them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# (module, attribute) pairs, each a ``register(subparsers)`` function. Imported lazily so that
# ``unica --help`` stays fast and an area whose optional dependencies are missing does not break
# the others.
_REGISTRARS = [
    ("unica.apps.commands", "register"),
    ("unica.apps.train_cli", "register"),
    ("unica.apps.dataset_cli", "register"),
    ("unica.apps.eval_cli", "register"),
    ("unica.apps.vista_cli", "register"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unica", description="UniCA multimodal retrieval embeddings.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
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
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError, ConnectionError) as error:
        # User errors (and an unreachable Hub): one clear line, no traceback.
        logging.getLogger("unica").error("%s", error)
        return 1


if __name__ == "__main__":
    sys.exit(main())
