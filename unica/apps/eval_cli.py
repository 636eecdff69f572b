"""``unica evaluate`` and ``unica ablate``."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from unica.apps.options import (
    add_tasks_option,
    check_checkpoint_folder,
    check_file,
    check_folder,
    non_negative_int,
    positive_int,
)

logger = logging.getLogger("unica")


def _shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard takes i/n (e.g. 0/4), got {text!r}") from None
    if not (count >= 1 and 0 <= index < count):
        raise argparse.ArgumentTypeError(f"--shard {text!r}: need 0 <= i < n")
    return index, count


def _ints(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    evaluate = subparsers.add_parser("evaluate", help="retrieval metrics of a checkpoint on an evaluation folder")
    evaluate.add_argument("checkpoint", help="UniCA checkpoint folder")
    evaluate.add_argument("--dataset", required=True, help="folder written by `unica build-dataset webqa|mbeir-eval`")
    add_tasks_option(evaluate, help="the tasks to evaluate: comma- or space-separated, each as 2, task2 or "
                     "webqa_task2 (default: every task of --dataset)")
    evaluate.add_argument("--out", required=True, help="folder for results.json, results.md, recall_curves.png "
                          "(must be new or empty unless --overwrite)")
    evaluate.add_argument("--overwrite", action="store_true",
                          help="replace the results in an existing --out folder (its embedding cache is reused)")
    evaluate.add_argument("--batch-size", type=positive_int, default=32, help="items per forward pass")
    evaluate.add_argument("--num-workers", type=non_negative_int, default=0,
                          help="DataLoader workers that decode and preprocess the next batches while the model runs "
                               "(the same embeddings; pays where the cores outnumber the model's threads, e.g. with "
                               "a GPU)")
    evaluate.add_argument("--dtype", choices=["auto", "fp32", "bf16"], default="auto",
                          help="compute dtype; auto: bf16 on a CPU with native bf16 (AVX-512 BF16 / AMX), fp32 "
                               "elsewhere (the embedding cache keeps each dtype apart)")
    evaluate.add_argument("--index", default="flat",
                          help="flat (exact) | ivf | hnsw | ivfpq, with parameters: 'ivf,nlist=1024,nprobe=32'")
    evaluate.add_argument("--pool", choices=["local", "global"], default="local",
                          help="search each task's own candidate pool (local) or the union of the tasks' pools")
    evaluate.add_argument("--k", type=_ints, default="1,5,10,20,50",
                          help="cut-offs, comma-separated; hit@k is reported for each (at least one of 1, 5, 10: "
                               "the cut-offs of mrr, recall and ndcg in the report)")
    evaluate.add_argument("--cache-dir", help="candidate-embedding cache (default: OUT/embedding-cache)")
    evaluate.add_argument("--no-cache", action="store_true", help="encode the candidates without the cache")
    evaluate.add_argument("--shard", type=_shard, help="encode only candidate shard i/n into --shard-dir (each shard "
                          "with a manifest: model and data fingerprints, shard i/n, its ids' digest)")
    evaluate.add_argument("--shard-dir", help="per-shard embeddings; without --shard, merge them into the index "
                          "(refused for shards of another model or data, a missing shard, missing or repeated ids)")
    evaluate.add_argument("--split", default="test", help="the split of the evaluation folder's tables")
    evaluate.set_defaults(func=run_evaluate)

    ablate = subparsers.add_parser("ablate", help="train and evaluate an ablation grid; tables with CIs")
    ablate.add_argument("--config", required=True, help="YAML grid (see examples/ablation_scenes.yaml)")
    ablate.add_argument("--out", required=True, help="folder for the runs, ablation.json and the tables")
    ablate.set_defaults(func=run_ablate)


def _check_out(out: str, overwrite: bool) -> None:
    """Refuse an existing non-empty results folder unless ``--overwrite`` (before anything is loaded)."""
    folder = Path(out)
    if not folder.exists() or overwrite:
        return
    if not folder.is_dir():
        raise FileExistsError(f"--out {out!r} exists and is not a folder; choose another --out")
    if any(folder.iterdir()):
        raise FileExistsError(f"results folder {out!r} already exists and is not empty; choose another --out or "
                              "pass --overwrite to replace its results")


def run_evaluate(args: argparse.Namespace) -> int:
    shard = args.shard
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if shard is None and world > 1:
        if not args.shard_dir:
            raise ValueError("under torchrun, pass --shard-dir: each rank encodes one shard of the candidates")
        shard = (int(os.environ.get("RANK", "0")), world)
    # Every check on the arguments comes before the model or the data is loaded.
    if shard is None:  # a shard run writes only into --shard-dir
        _check_out(args.out, args.overwrite)
    check_checkpoint_folder(args.checkpoint)
    check_folder(args.dataset, "evaluation folder (--dataset)")

    from eval.harness import check_k_values, report_metrics
    from eval.index import IndexSpec
    from unica.apps.evaluate import evaluate_checkpoint

    check_k_values(args.k, option="--k", report=shard is None)
    index_spec = IndexSpec.parse(args.index)
    cache_dir = None if args.no_cache else (args.cache_dir or os.path.join(args.out, "embedding-cache"))
    from unica.encoding import dtype_reason

    logger.info("encoding in %s", dtype_reason(args.dtype))
    results = evaluate_checkpoint(
        args.checkpoint, args.dataset, out_dir=args.out,
        tasks=[f"task{task}" for task in args.tasks] if args.tasks else None, batch_size=args.batch_size,
        dtype=args.dtype, index_spec=index_spec, cache_dir=cache_dir, k_values=args.k, pool=args.pool,
        split=args.split, shard=shard, shard_dir=args.shard_dir, num_workers=args.num_workers,
    )
    if shard is not None:
        for path in results["shards"]:
            logger.info("wrote candidate shard %d/%d: %s", shard[0], shard[1], path)
        return 0
    metrics = report_metrics(args.k)  # the columns of results.md: hit@k for every --k, then mrr, recall, ndcg
    for task, values in results["tasks"].items():
        shown = "  ".join(f"{metric} {values[metric]:.4f}" for metric in metrics if values.get(metric) is not None)
        logger.info("%s: %s  (%d queries, %d candidates)", task, shown, values["num_queries"],
                    values["num_candidates"])
    return 0


def run_ablate(args: argparse.Namespace) -> int:
    check_file(args.config, "--config")
    from unica.apps.ablation import run_ablation_from_config

    run_ablation_from_config(args.config, args.out)
    return 0
