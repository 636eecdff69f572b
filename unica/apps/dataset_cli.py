"""``unica build-dataset`` and ``unica push-dataset`` (registered by ``unica/apps/cli.py``).

Examples::

    unica build-dataset umr-s10 --mbeir-root /data/M-BEIR --fraction 0.10 --seed 0 --out ./UMR-S10
    unica build-dataset webqa --mbeir-root /data/M-BEIR --out ./webqa-eval
    unica build-dataset mbeir-eval --mbeir-root ./scenes --dataset scenes --tasks 0,2,3,7 --out ./scenes-eval
    unica build-dataset scenes --out ./scenes --num-scenes 3000 --seed 0
    unica build-dataset openclipart --out ./openclipart
    unica push-dataset ./UMR-S10 --repo-id my-org/UMR-S10 [--dry-run]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from unica.apps.options import add_tasks_option, check_folder, check_new_output

logger = logging.getLogger("dataset_builders")


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--fraction must be a number in (0, 1], got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"--fraction must be in (0, 1], got {value}")
    return value


def _check_inputs(args: argparse.Namespace) -> None:
    """The output folder and the input folder, before anything is read or generated."""
    check_new_output(args.out, args.overwrite, what="output folder (--out)")
    if getattr(args, "mbeir_root", None) is not None:
        check_folder(args.mbeir_root, "M-BEIR root (--mbeir-root)")


def _add_common(parser: argparse.ArgumentParser, mbeir: bool = True) -> None:
    parser.add_argument("--out", required=True, type=Path, help="output folder (must not exist unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    if mbeir:
        parser.add_argument("--mbeir-root", required=True, type=Path, help="folder of M-BEIR-format data")
        parser.add_argument(
            "--skip-missing", action="store_true",
            help="drop records whose image file is missing or unreadable (and report them); a path outside "
            "--mbeir-root is always an error"
        )


def _umr(args: argparse.Namespace) -> int:
    _check_inputs(args)
    from dataset_builders.umr import build_umr_s10, sampling_report_markdown

    sample = build_umr_s10(
        args.mbeir_root, args.out, fraction=args.fraction, seed=args.seed, min_per_stratum=args.min_per_stratum,
        skip_missing=args.skip_missing, overwrite=args.overwrite, query_files=args.query_files,
        pool_files=args.pool_files,
    )
    logger.info("sampling report:\n%s", sampling_report_markdown(sample.report))
    return 0


def _evaluation(args: argparse.Namespace) -> int:
    _check_inputs(args)
    from dataset_builders.evaluation import build_evaluation_sets

    report = build_evaluation_sets(
        args.mbeir_root, args.out, dataset=args.dataset, tasks=args.tasks, split=args.split,
        skip_missing=args.skip_missing, overwrite=args.overwrite,
    )
    for row in report:
        logger.info("task %(task_id)s (%(task)s): %(queries)s queries, %(candidates)s candidates", row)
    return 0


def _scenes(args: argparse.Namespace) -> int:
    _check_inputs(args)
    from dataset_builders.scenes import generate_scenes

    metadata = generate_scenes(
        args.out, num_scenes=args.num_scenes, seed=args.seed, image_size=args.image_size,
        test_fraction=args.test_fraction, overwrite=args.overwrite,
    )
    logger.info("queries per split and task: %s", json.dumps(metadata["queries"]))
    return 0


def _openclipart(args: argparse.Namespace) -> int:
    _check_inputs(args)
    from dataset_builders.openclipart import build_openclipart

    counts = build_openclipart(
        args.out, root=args.root, image_size=args.image_size, test_fraction=args.test_fraction, seed=args.seed,
        limit=args.limit, overwrite=args.overwrite,
    )
    logger.info("queries per split and task: %s", json.dumps(counts["queries"]))
    return 0


def _push(args: argparse.Namespace) -> int:
    check_folder(args.folder, "dataset folder")
    from unica.apps.hub import push_dataset

    files = push_dataset(
        args.folder, args.repo_id, private=args.private, revision=args.revision, dry_run=args.dry_run,
        commit_message=args.commit_message,
    )
    if args.dry_run:
        for name in files:
            logger.info("would upload %s", name)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``build-dataset`` (umr-s10, webqa, mbeir-eval, scenes, openclipart) and ``push-dataset``."""
    build = subparsers.add_parser("build-dataset", help="build a dataset (Parquet + card, or an M-BEIR root)")
    kinds = build.add_subparsers(dest="kind", metavar="KIND", required=True)

    umr = kinds.add_parser("umr-s10", help="stratified sample of M-BEIR training data, exported to Parquet")
    _add_common(umr)
    umr.add_argument("--fraction", type=_fraction, default=0.10, help="share of each (source, task) stratum")
    umr.add_argument("--seed", type=int, default=0, help="sampling seed")
    umr.add_argument("--min-per-stratum", type=int, default=10, help="keep at least this many queries per stratum")
    umr.add_argument("--query-files", nargs="+", type=Path, help="query JSONL files (default: query/train/*.jsonl)")
    umr.add_argument("--pool-files", nargs="+", type=Path, help="candidate pools (default: the union train pool)")
    umr.set_defaults(func=_umr)

    webqa = kinds.add_parser("webqa", help="WebQA evaluation sets: task 1 (text->text), task 2 (text->image,text)")
    _add_common(webqa)
    add_tasks_option(webqa, default="1,2")
    webqa.add_argument("--split", default="test", help="the M-BEIR split to export")
    webqa.set_defaults(func=_evaluation, dataset="webqa")

    evaluation = kinds.add_parser("mbeir-eval", help="evaluation sets of any M-BEIR-format source")
    _add_common(evaluation)
    evaluation.add_argument("--dataset", required=True, help="source name in the file names, e.g. scenes")
    add_tasks_option(evaluation, required=True)
    evaluation.add_argument("--split", default="test", help="the M-BEIR split to export")
    evaluation.set_defaults(func=_evaluation)

    scenes = kinds.add_parser("scenes", help="generate synthetic scenes (offline) as an M-BEIR root")
    _add_common(scenes, mbeir=False)
    scenes.add_argument("--num-scenes", type=int, default=3000, help="scenes to draw")
    scenes.add_argument("--seed", type=int, default=0, help="seed of the scenes")
    scenes.add_argument("--image-size", type=int, default=64, help="image side in pixels")
    scenes.add_argument("--test-fraction", type=float, default=0.2, help="share of scenes in the test split")
    scenes.set_defaults(func=_scenes)

    clipart = kinds.add_parser("openclipart", help="OpenClipart (Debian packages) as an M-BEIR root")
    _add_common(clipart, mbeir=False)
    clipart.add_argument("--root", type=Path, default=Path("/usr/share/openclipart"), help="the packages' folder")
    clipart.add_argument("--image-size", type=int, default=128, help="image side in pixels")
    clipart.add_argument("--test-fraction", type=float, default=0.2, help="share of images in the test split")
    clipart.add_argument("--seed", type=int, default=0, help="seed of the splits and query choices")
    clipart.add_argument("--limit", type=int, default=None, help="use only the first N images")
    clipart.set_defaults(func=_openclipart)

    push = subparsers.add_parser("push-dataset", help="upload an exported dataset folder to the Hugging Face Hub")
    push.add_argument("folder", type=Path, help="dataset folder written by `unica build-dataset`")
    push.add_argument("--repo-id", required=True, help="e.g. my-org/UMR-S10")
    push.add_argument("--private", action="store_true", help="create the repo as private")
    push.add_argument("--revision", default=None, help="branch to upload to (default: main)")
    push.add_argument("--commit-message", default=None, help="commit message (default: the Hub client's)")
    push.add_argument("--dry-run", action="store_true", help="validate and list the files, upload nothing")
    push.set_defaults(func=_push)
