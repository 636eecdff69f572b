"""``unica app``: interactive multimodal search over an evaluation folder in the browser.

```bash
unica app ./unica-mini --corpus ./scenes-eval --port 7860
unica app ./unica-mini --corpus ./scenes-eval --compare ./other-model
unica app ./unica-mini --corpus ./scenes-eval --export ./my-space      # app.py + requirements.txt for a Space
```

Building the parser imports neither gradio nor torch (``unica --help`` stays fast). Every input is checked
before a model is loaded: the checkpoint files, the evaluation folder and task, k, the limits, the index
spec, the port (free?) and the ``--export`` folder; a problem is a one-line error.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import re
import socket

from .defaults import (
    DEFAULT_HOST,
    DEFAULT_K,
    DEFAULT_MAX_FILE_SIZE,
    DEFAULT_MAX_QUERY_PIXELS,
    DEFAULT_PORT,
    DEFAULT_TITLE,
    MAX_PAGE_K,
)

logger = logging.getLogger("unica.app")
_FILE_SIZE = re.compile(r"^\s*\d+(\.\d+)?\s*(b|kb|mb|gb)\s*$", re.IGNORECASE)


def register(subparsers: argparse._SubParsersAction) -> None:
    app = subparsers.add_parser(
        "app", help="interactive multimodal search over an evaluation folder, in the browser (Gradio)",
        description="Search an evaluation folder's corpus with a text, an image or both, in the browser; "
                    "--compare shows a second checkpoint side by side; --export writes a Space-ready folder.")
    app.add_argument("checkpoint", help="a UniCA checkpoint folder")
    app.add_argument("--corpus", required=True,
                     help="an evaluation folder (written by `unica build-dataset webqa|mbeir-eval`)")
    app.add_argument("--compare", metavar="CHECKPOINT", help="a second checkpoint, searched side by side")
    app.add_argument("--task", help="the task shown first, e.g. task2 (default: the folder's first)")
    app.add_argument("--cache-dir",
                     help="the evaluation harness's embedding cache: `unica evaluate --out OUT` used OUT/embedding-cache; "
                          "with it nothing is encoded (default: $UNICA_CACHE_DIR or ~/.cache/unica/embedding-cache)")
    app.add_argument("--no-cache", action="store_true", help="encode the corpus at start and store nothing")
    app.add_argument("--index", default="flat", help="flat (exact) | ivf | hnsw | ivfpq, e.g. 'hnsw,ef_search=64'")
    app.add_argument("--k", type=int, default=DEFAULT_K, help=f"results per model (1 to {MAX_PAGE_K})")
    app.add_argument("--host", default=DEFAULT_HOST,
                     help="address to serve on: 127.0.0.1 serves this machine only; 0.0.0.0 lets anyone who "
                          "can reach the port query the corpus (a warning is logged)")
    app.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to serve on (checked free before loading)")
    app.add_argument("--open", action="store_true", help="open the page in the default browser")
    app.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_QUERY_PIXELS,
                     help="largest query image, in pixels (checked before decoding)")
    app.add_argument("--max-file-size", default=DEFAULT_MAX_FILE_SIZE, help="largest upload, e.g. 20mb")
    app.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="encoding precision (bf16: autocast)")
    app.add_argument("--batch-size", type=int, default=32, help="batch size when the corpus is encoded")
    app.add_argument("--threads", type=int, help="torch CPU threads for everything (default: torch's choice to "
                     "encode a corpus, 1 per query: faster on busy cores, see benchmarks/app_latency.json)")
    app.add_argument("--split", default="test", help="the evaluation folder's split")
    app.add_argument("--title", default=DEFAULT_TITLE, help="the page's title")
    app.add_argument("--export", metavar="DIR", help="write a Space-ready folder (app.py, requirements.txt, "
                     "README.md, the checkpoint(s), the corpus and its embeddings) instead of serving")
    app.add_argument("--overwrite", action="store_true", help="replace an existing --export folder")
    app.set_defaults(func=run_app)


def _check_port_free(host: str, port: int) -> None:
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as error:
        raise ValueError(f"cannot serve on {host}:{port} ({error.strerror or error}); pass another --port "
                         "or --host") from None


def check_arguments(args: argparse.Namespace) -> list[str]:
    """Every check that needs no model; returns the evaluation folder's tasks."""
    from unica.checkpoint import check_checkpoint_files

    from .search import check_eval_folder

    if not 1 <= args.k <= MAX_PAGE_K:
        raise ValueError(f"--k {args.k} must be from 1 to {MAX_PAGE_K}")
    if args.max_pixels < 1:
        raise ValueError(f"--max-pixels {args.max_pixels} must be a positive number of pixels")
    if not _FILE_SIZE.match(str(args.max_file_size)):
        raise ValueError(f"--max-file-size {args.max_file_size!r} must be a size such as 20mb, 500kb or 1gb")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size {args.batch_size} must be >= 1")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads {args.threads} must be >= 1")
    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port {args.port} must be from 1 to 65535")
    if args.export and os.path.exists(args.export) and not args.overwrite:
        raise FileExistsError(f"--export folder {args.export!r} already exists; choose another folder or pass "
                              "--overwrite")
    for checkpoint in [args.checkpoint] + ([args.compare] if args.compare else []):
        check_checkpoint_files(checkpoint)
    tasks = check_eval_folder(args.corpus, args.task)
    from eval.index import IndexSpec

    args.index_spec = IndexSpec.parse(args.index)
    if not args.export:  # an export only writes files; the page needs gradio and the port
        if importlib.util.find_spec("gradio") is None:
            raise ValueError("gradio is not installed; install the app extra: pip install 'unica[app]' "
                             "(or pip install gradio)")
        _check_port_free(args.host, args.port)
    return tasks


def run_app(args: argparse.Namespace) -> int:
    check_arguments(args)  # before any model is loaded
    from .search import SearchSession, default_cache_dir

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    cache_dir = None if args.no_cache else (args.cache_dir or default_cache_dir())
    checkpoints = [args.checkpoint] + ([args.compare] if args.compare else [])
    if args.export:
        from .space import export_space

        export_space(args.export, checkpoints, args.corpus, cache_dir=cache_dir, task=args.task, k=args.k,
                     title=args.title, max_pixels=args.max_pixels, max_file_size=args.max_file_size,
                     index_spec=args.index_spec, dtype=args.dtype, batch_size=args.batch_size, split=args.split,
                     overwrite=args.overwrite)
        return 0
    from .ui import build_app, launch

    session = SearchSession(checkpoints, args.corpus, cache_dir=cache_dir, index_spec=args.index_spec,
                            dtype=args.dtype, batch_size=args.batch_size, split=args.split,
                            max_pixels=args.max_pixels, query_threads=args.threads or 1)
    page = build_app(session, task=args.task, k=args.k, title=args.title)
    logger.info("serving on http://%s:%d (Ctrl+C stops)", args.host, args.port)
    launch(page, host=args.host, port=args.port, block=True, open_browser=args.open, max_file_size=args.max_file_size)
    return 0
