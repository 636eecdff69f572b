"""``unica evaluate`` and ``unica ablate``."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

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
    evaluate.add_argument("checkpoint")
    evaluate.add_argument("--dataset", required=True, help="folder written by `unica build-dataset webqa|mbeir-eval`")
    evaluate.add_argument("--tasks", help="comma-separated, e.g. webqa_task1,webqa_task2 or task2 (default: all)")
    evaluate.add_argument("--out", required=True, help="folder for results.json, results.md, recall_curves.png "
                          "(must be new or empty unless --overwrite)")
    evaluate.add_argument("--overwrite", action="store_true",
                          help="replace the results in an existing --out folder (its embedding cache is reused)")
    evaluate.add_argument("--batch-size", type=int, default=32)
    evaluate.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    evaluate.add_argument("--index", default="flat",
                          help="flat (exact) | ivf | hnsw | ivfpq, with parameters: 'ivf,nlist=1024,nprobe=32'")
    evaluate.add_argument("--pool", choices=["local", "global"], default="local")
    evaluate.add_argument("--k", type=_ints, default=[1, 5, 10, 20, 50],
                          help="cut-offs, e.g. 1,5,10 (at least one of 1, 5, 10: the reported metrics' cut-offs)")
    evaluate.add_argument("--cache-dir", help="candidate-embedding cache (default: OUT/embedding-cache)")
    evaluate.add_argument("--no-cache", action="store_true")
    evaluate.add_argument("--shard", type=_shard, help="encode only candidate shard i/n into --shard-dir (each shard "
                          "with a manifest: model and data fingerprints, shard i/n, its ids' digest)")
    evaluate.add_argument("--shard-dir", help="per-shard embeddings; without --shard, merge them into the index "
                          "(refused for shards of another model or data, a missing shard, missing or repeated ids)")
    evaluate.add_argument("--split", default="test")
    evaluate.set_defaults(func=run_evaluate)

    ablate = subparsers.add_parser("ablate", help="train and evaluate an ablation grid; tables with CIs")
    ablate.add_argument("--config", required=True, help="YAML grid (see examples/ablation_scenes.yaml)")
    ablate.add_argument("--out", required=True)
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
    from eval.harness import check_k_values
    from eval.index import IndexSpec
    from unica.apps.evaluate import evaluate_checkpoint

    shard = args.shard
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if shard is None and world > 1:
        if not args.shard_dir:
            raise ValueError("under torchrun, pass --shard-dir: each rank encodes one shard of the candidates")
        shard = (int(os.environ.get("RANK", "0")), world)
    # Every check on the arguments comes before the model or the data is loaded.
    check_k_values(args.k, option="--k", report=shard is None)
    index_spec = IndexSpec.parse(args.index)
    if shard is None:  # a shard run writes only into --shard-dir
        _check_out(args.out, args.overwrite)
    cache_dir = None if args.no_cache else (args.cache_dir or os.path.join(args.out, "embedding-cache"))
    results = evaluate_checkpoint(
        args.checkpoint, args.dataset, out_dir=args.out,
        tasks=[t for t in (args.tasks or "").split(",") if t] or None, batch_size=args.batch_size, dtype=args.dtype,
        index_spec=index_spec, cache_dir=cache_dir, k_values=args.k, pool=args.pool,
        split=args.split, shard=shard, shard_dir=args.shard_dir,
    )
    if shard is not None:
        for path in results["shards"]:
            logger.info("wrote candidate shard %d/%d: %s", shard[0], shard[1], path)
        return 0
    for task, values in results["tasks"].items():
        logger.info("%s: hit@5 %.4f  hit@10 %.4f  mrr@1 %.4f  (%d queries, %d candidates)", task,
                    values.get("hit@5", float("nan")), values.get("hit@10", float("nan")),
                    values.get("mrr@1", float("nan")), values["num_queries"], values["num_candidates"])
    return 0


def run_ablate(args: argparse.Namespace) -> int:
    from unica.apps.ablation import run_ablation_from_config

    run_ablation_from_config(args.config, args.out)
    return 0
