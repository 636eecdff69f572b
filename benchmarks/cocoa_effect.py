"""Does CoCoA pre-training help retrieval after contrastive training, at the same compute?

Three conditions, each trained from the same random initialisation per seed and evaluated with the eval harness
(``unica.apps.evaluate.evaluate_checkpoint``) on the held-out test split:

* ``stages_1_2``: CoCoA stage 1 (``P/2`` steps) + stage 2 (``P/2`` steps), then ``N`` contrastive steps;
* ``stage_1``:    CoCoA stage 1 only (``P`` steps), then ``N`` contrastive steps;
* ``none``:       ``N + P`` contrastive steps (no pre-training).

Compute is equalised as optimiser steps x batch: every condition takes ``P + N`` optimiser steps of the same
batch of rows (``--batch`` rows per step), and every step encodes the same two items per row (pre-training
reconstructs each row's query and positive; contrastive training embeds the query and the positive, in-batch
negatives only: ``hard_negatives: 0``). What differs per step is small next to the encoder: the masked-token and
patch heads (stage 1) and a one-layer decoder (stage 2) vs. the InfoNCE + PSL loss. The pre-training data is the
contrastive training data (no extra data: CoCoA's "maximise the value of existing data").

Data: the synthetic scenes (tasks 0, 2, 3, 7) and OpenClipart (Debian's openclipart-svg + openclipart-png: titles,
descriptions and keywords as text; tasks 0, 2, 3; a few images per category, held-out images in the test split,
32 px). Model: micro shapes from scratch, so the run fits a busy 2-core CPU: a random 2-layer BERT (hidden 64,
the MiniLM tokenizer) and a 2-layer ViT (32 px images in 8 px patches), Bi-CA fusion, CLS pooling ([CLS] is the
summary token that stage 2 reconstructs through and contrastive training compares).

Reported per dataset and condition: mean +- std over seeds of each metric (queries of all tasks pooled), and
paired-bootstrap 95% CIs (``eval.stats.paired_bootstrap``; per-query values averaged over seeds) of each
pre-training condition minus ``none``, and of ``stages_1_2`` minus ``stage_1``. Per-task means are in the JSON.

Usage::

    python benchmarks/cocoa_effect.py                    # -> benchmarks/results/cocoa_effect.json + a table
    python benchmarks/cocoa_effect.py --quick            # tiny settings, checks the whole path in minutes

Finished runs are kept in ``--work`` (``run.json`` per run) and reused by a second invocation with the same
settings. Runtime: about 6 minutes on an idle 2-core CPU (a step takes ~40 ms), about 33 minutes on one shared with
other jobs (load 5-6).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

logger = logging.getLogger("benchmarks.cocoa_effect")

CONDITIONS = ("stages_1_2", "stage_1", "none")
COMPARISONS = (("stages_1_2", "none"), ("stage_1", "none"), ("stages_1_2", "stage_1"))
METRICS = ("mrr@10", "hit@1", "hit@5")
TASKS = {"scenes": (0, 2, 3, 7), "openclipart": (0, 2, 3)}
MICRO_VIT = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
             "image_size": 32, "patch_size": 8}
# A from-scratch model's [CLS] starts out nearly the same for every input: contrastive training needs a high learning
# rate and a mild temperature to leave that plateau within the budget (the same for every condition).
FULL = {"pretrain_steps": 60, "contrastive_steps": 240, "batch": 16, "num_scenes": 300, "clipart_per_category": 20,
        "learning_rate": 3e-3, "temperature": 0.1, "seeds": (0, 1, 2)}
QUICK = {"pretrain_steps": 4, "contrastive_steps": 4, "batch": 8, "num_scenes": 60, "clipart_per_category": 3,
         "learning_rate": 3e-3, "temperature": 0.1, "seeds": (0,)}


# ---------------------------------------------------------------------- data and model
def text_encoder(work: Path) -> str:
    """A random 2-layer BERT (hidden 64) with the embedded MiniLM's tokenizer, saved once under ``work``."""
    folder = work / "text-encoder"
    if (folder / "config.json").is_file():
        return str(folder)
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from unica.checkpoint import default_text_encoder

    torch.manual_seed(0)
    config = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                        max_position_embeddings=128)
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    AutoTokenizer.from_pretrained(default_text_encoder()).save_pretrained(folder)
    return str(folder)


def prepare_scenes(work: Path, num_scenes: int) -> tuple[Path, Path]:
    """(M-BEIR root, evaluation folder) of the synthetic scenes at 32 px."""
    from dataset_builders.evaluation import build_evaluation_sets
    from unica.apps.train_cli import scenes_root

    root = scenes_root({"root": str(work / "scenes"), "num_scenes": num_scenes, "image_size": 32, "seed": 0},
                       str(work))
    eval_dir = work / "scenes-eval"
    if not (eval_dir / "README.md").is_file():
        build_evaluation_sets(root, eval_dir, dataset="scenes", tasks=TASKS["scenes"], overwrite=True)
    return root, eval_dir


def prepare_openclipart(work: Path, per_category: int) -> tuple[Path, Path]:
    """(M-BEIR root, evaluation folder) of OpenClipart: ``per_category`` images of each of the packages' categories
    (those with a description and keywords first), 32 px, a quarter of the images held out for the test split."""
    from dataset_builders.evaluation import build_evaluation_sets
    from dataset_builders.openclipart import build_openclipart, write_fixture

    packages = work / f"openclipart-packages-{per_category}"
    if not (packages / "png").is_dir():
        write_fixture(packages, per_category=per_category, image_size=64, overwrite=True)
    root = work / f"openclipart-{per_category}"
    if not (root / "query").is_dir():
        build_openclipart(root, root=packages, image_size=32, test_fraction=0.25, seed=0, overwrite=True,
                          progress=False)
    eval_dir = work / f"openclipart-{per_category}-eval"
    if not (eval_dir / "README.md").is_file():
        build_evaluation_sets(root, eval_dir, dataset="openclipart", tasks=TASKS["openclipart"], overwrite=True)
    return root, eval_dir


def openclipart_installed() -> bool:
    from dataset_builders.openclipart import DEFAULT_ROOT

    return (DEFAULT_ROOT / "svg").is_dir() and (DEFAULT_ROOT / "png").is_dir()


# ---------------------------------------------------------------------- one run
def _init(text: str, seed: int) -> dict[str, Any]:
    return {"text": text, "vision": "vit-micro", "vision_config_overrides": MICRO_VIT, "fusion": "bica",
            "pooling": "cls", "seed": seed}


def _common_training(output_dir: Path, settings: dict, seed: int) -> dict[str, Any]:
    return {"output_dir": str(output_dir), "per_device_train_batch_size": settings["batch"],
            "learning_rate": settings["learning_rate"],
            "warmup_steps": 4, "weight_decay": 0.0, "seed": seed, "save_strategy": "no", "logging_steps": 10,
            "report_to": "none", "disable_tqdm": True, "dataloader_pin_memory": False, "use_cpu": True}


def quiet(trainer: Any) -> Any:
    """The trainer without its printed log lines (the benchmark logs one line per run)."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return trainer


def pretrain(text: str, root: Path, out: Path, seed: int, settings: dict, stage1: int,
             stage2: int) -> tuple[Path, dict]:
    """CoCoA pre-training from the seed's initialisation -> (checkpoint folder, log)."""
    from unica.apps.pretrain_cli import build_pretrainer

    config = {"init": _init(text, seed), "data": {"builder": "mbeir", "root": str(root), "split": "train"},
              "pretrain": {"stage1_steps": stage1, "stage2_steps": stage2},
              "training": _common_training(out, settings, seed)}
    trainer = quiet(build_pretrainer(config))
    result = trainer.train()
    trainer.save_model(str(out))
    history = [entry for entry in trainer.state.log_history if "text_loss" in entry]
    return out, {"steps": result.global_step, "first": history[0] if history else None,
                 "last": history[-1] if history else None}


def contrastive(text: str, root: Path, out: Path, seed: int, settings: dict, steps: int,
                start: Path | None) -> tuple[Path, dict]:
    """``steps`` of InfoNCE + PSL from ``start`` (a checkpoint) or from the seed's initialisation."""
    from unica.apps.train_cli import build_trainer

    config = {"data": {"builder": "mbeir", "root": str(root), "split": "train"},
              "training": {**_common_training(out, settings, seed), "max_steps": steps, "hard_negatives": 0,
                           "temperature": settings["temperature"], "psl_weight": 0.1}}
    config.update({"model": str(start)} if start is not None else {"init": _init(text, seed)})
    trainer = quiet(build_trainer(config))
    result = trainer.train()
    trainer.save_model(str(out))
    return out, {"steps": result.global_step, "train_loss": float(result.training_loss)}


def run_one(dataset: str, condition: str, seed: int, settings: dict, text: str, root: Path, eval_dir: Path,
            work: Path) -> dict[str, Any]:
    """Train and evaluate one (dataset, condition, seed); the record is cached in ``run.json``."""
    from unica.apps.evaluate import evaluate_checkpoint

    folder = work / "runs" / dataset / condition / f"seed{seed}"
    record_file = folder / "run.json"
    digest = hashlib.sha1(json.dumps({**settings, "seeds": None, "dataset": dataset, "condition": condition,
                                      "seed": seed}, sort_keys=True).encode()).hexdigest()[:12]
    if record_file.is_file():
        record = json.loads(record_file.read_text())
        if record.get("digest") == digest:
            logger.info("%s / %s / seed %d: reusing %s", dataset, condition, seed, record_file)
            return record
    folder.mkdir(parents=True, exist_ok=True)
    started = time.time()
    p, n = settings["pretrain_steps"], settings["contrastive_steps"]
    logs: dict[str, Any] = {}
    start = None
    if condition == "stages_1_2":
        start, logs["pretrain"] = pretrain(text, root, folder / "pretrained", seed, settings, p // 2, p - p // 2)
    elif condition == "stage_1":
        start, logs["pretrain"] = pretrain(text, root, folder / "pretrained", seed, settings, p, 0)
    steps = n if start is not None else n + p
    final, logs["contrastive"] = contrastive(text, root, folder / "trained", seed, settings, steps, start)
    trained = time.time() - started
    results = evaluate_checkpoint(final, eval_dir, batch_size=64, k_values=(1, 5, 10), show_progress=False)
    record = {"digest": digest, "dataset": dataset, "condition": condition, "seed": seed,
              "optimizer_steps": (logs.get("pretrain", {}).get("steps", 0) + logs["contrastive"]["steps"]),
              "train_seconds": round(trained, 1), "seconds": round(time.time() - started, 1), "logs": logs,
              "tasks": results["tasks"], "per_query": results["per_query"]}
    record_file.write_text(json.dumps(record) + "\n", encoding="utf-8")
    logger.info("%s / %s / seed %d: %d steps in %.0f s; %s", dataset, condition, seed, record["optimizer_steps"],
                record["seconds"], ", ".join(f"{task} mrr@10 {values['mrr@10']:.3f}"
                                             for task, values in results["tasks"].items()))
    return record


# ---------------------------------------------------------------------- summary
def pooled(record: dict, metric: str) -> list[float]:
    """Per-query values of ``metric`` over every task of a run, tasks in sorted order."""
    return [value for task in sorted(record["per_query"]) for value in record["per_query"][task][metric]]


def summarize(runs: dict[str, dict[int, dict]], seeds: list[int], num_resamples: int) -> dict[str, Any]:
    import numpy as np

    from eval.stats import paired_bootstrap, summarize_seeds

    summary: dict[str, Any] = {"conditions": {}, "comparisons": {}}
    for condition in CONDITIONS:
        by_seed = runs[condition]
        entry: dict[str, Any] = {"all_tasks": {}, "tasks": {}}
        for metric in METRICS:
            entry["all_tasks"][metric] = summarize_seeds([float(np.nanmean(pooled(by_seed[s], metric)))
                                                          for s in seeds]).to_dict()
            for task in sorted(by_seed[seeds[0]]["tasks"]):
                values = [by_seed[s]["tasks"][task][metric] for s in seeds]
                entry["tasks"].setdefault(task, {})[metric] = summarize_seeds(values).to_dict()
        entry["train_seconds_mean"] = round(float(np.mean([by_seed[s]["train_seconds"] for s in seeds])), 1)
        entry["optimizer_steps"] = sorted({by_seed[s]["optimizer_steps"] for s in seeds})
        summary["conditions"][condition] = entry
    for candidate, baseline in COMPARISONS:
        name = f"{candidate} - {baseline}"
        summary["comparisons"][name] = {}
        for metric in METRICS:
            base = np.array([pooled(runs[baseline][s], metric) for s in seeds])
            cand = np.array([pooled(runs[candidate][s], metric) for s in seeds])
            summary["comparisons"][name][metric] = paired_bootstrap(base, cand, num_resamples=num_resamples).to_dict()
    return summary


def table(results: dict[str, Any]) -> str:
    """A plain-text table: per dataset, each condition's metrics (mean +- std over seeds) and the CIs."""
    lines = []
    for dataset, summary in results["datasets"].items():
        if "skipped" in summary:
            lines.append(f"{dataset}: skipped ({summary['skipped']})")
            continue
        queries = summary["num_queries"]
        lines.append(f"{dataset} ({queries} test queries, {len(results['settings']['seeds'])} seeds; mean ± std)")
        lines.append(f"  {'condition':<12}" + "".join(f"{m:>17}" for m in METRICS) + f"{'train s':>9}")
        for condition, entry in summary["conditions"].items():
            cells = "".join(f"{entry['all_tasks'][m]['mean']:>9.3f} ± {entry['all_tasks'][m]['std'] or 0:<5.3f}"
                            for m in METRICS)
            lines.append(f"  {condition:<12}{cells}{entry['train_seconds_mean']:>9.0f}")
        lines.append("  paired bootstrap, delta [95% CI]:")
        for name, values in summary["comparisons"].items():
            cells = "".join(f"  {m} {v['delta']:+.3f} [{v['ci_low']:+.3f}, {v['ci_high']:+.3f}]"
                            for m, v in values.items())
            lines.append(f"    {name:<22}{cells}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/unica-cocoa-effect"),
                        help="folder for data, checkpoints and per-run records (reused by a second run)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "cocoa_effect.json",
                        help="the JSON results file")
    parser.add_argument("--datasets", nargs="+", default=["scenes", "openclipart"], choices=sorted(TASKS),
                        help="which data sets to run")
    parser.add_argument("--quick", action="store_true", help="tiny settings: checks the whole path in minutes")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds (default: 0 1 2; --quick: 0)")
    parser.add_argument("--num-resamples", type=int, default=10_000, help="bootstrap resamples")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("transformers", "unica", "dataset_builders", "eval", "httpx", "faiss"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    import datasets
    import torch
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    settings = dict(QUICK if args.quick else FULL)
    seeds = list(args.seeds or settings["seeds"])
    work = args.work / ("quick" if args.quick else "full")
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    text = text_encoder(work)
    results: dict[str, Any] = {
        "benchmark": "cocoa_effect",
        "question": "retrieval after contrastive training with CoCoA stages 1 + 2, stage 1 only, or none, at the same "
                    "optimiser steps x batch",
        "settings": {**settings, "seeds": seeds, "conditions": {
            "stages_1_2": f"{settings['pretrain_steps'] // 2} stage-1 + "
                          f"{settings['pretrain_steps'] - settings['pretrain_steps'] // 2} stage-2 steps, then "
                          f"{settings['contrastive_steps']} contrastive",
            "stage_1": f"{settings['pretrain_steps']} stage-1 steps, then {settings['contrastive_steps']} contrastive",
            "none": f"{settings['pretrain_steps'] + settings['contrastive_steps']} contrastive steps"},
            "equalised": "optimiser steps x batch rows (every step: the same batch of rows, two items per row)",
            "model": {"text": "random BERT, 2 layers, hidden 64, MiniLM tokenizer", "vision": {"vit-micro": MICRO_VIT},
                      "fusion": "bica", "pooling": "cls"},
            "pretrain": "unica.cocoa defaults: text_mask_ratio 0.3, image_mask_ratio 0.5, decoder_text_mask_ratio "
                        "0.6, decoder_image_mask_ratio 0.75, 1 decoder layer; AdamW, 4 warm-up steps, linear decay",
            "contrastive": "InfoNCE + 0.1 PSL, in-batch negatives (hard_negatives 0); AdamW, 4 warm-up steps, "
                           "linear decay; the same learning rate as pre-training",
            "metrics": list(METRICS), "num_resamples": args.num_resamples},
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "transformers": transformers.__version__, "cpu_count": os.cpu_count(),
                        "torch_threads": torch.get_num_threads()},
        "datasets": {},
    }
    for dataset in args.datasets:
        if dataset == "openclipart" and not openclipart_installed():
            results["datasets"][dataset] = {"skipped": "openclipart-svg / openclipart-png are not installed "
                                                       "(apt-get install openclipart-svg openclipart-png)"}
            continue
        if dataset == "scenes":
            root, eval_dir = prepare_scenes(work, settings["num_scenes"])
        else:
            root, eval_dir = prepare_openclipart(work, settings["clipart_per_category"])
        runs = {condition: {seed: run_one(dataset, condition, seed, settings, text, root, eval_dir, work)
                            for seed in seeds} for condition in CONDITIONS}
        summary = summarize(runs, seeds, args.num_resamples)
        summary["num_queries"] = len(pooled(runs["none"][seeds[0]], METRICS[0]))
        summary["tasks"] = sorted(runs["none"][seeds[0]]["tasks"])
        results["datasets"][dataset] = summary
    results["total_seconds"] = round(time.time() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(table(results))
    print(f"\nwritten to {args.out} in {results['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
