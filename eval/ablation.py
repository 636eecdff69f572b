"""Ablation runner: the experiments the UniCA paper lacks (Bi-CA on/off, PSL on/off, learning rate).

Every cell of a grid over ``fusion`` x ``psl_weight`` x ``learning_rate`` is trained from the same
base training config (same data, optimiser, steps and batch) for every seed, then evaluated on the
same evaluation set. Reported per cell: mean ± std over seeds, and for each cell a paired-bootstrap
95% CI of its delta against the baseline cell at the same learning rate (per-query metric values,
averaged over seeds). Outputs: ``ablation.json``, ``ablation.md``, ``lr_sensitivity_<task>.png``.

A fresh Bi-CA model equals the concat model with the same seed (zero-initialised gates, and the
Bi-CA layers are built after every shared part, so the shared parts get the same random draws): the
fusion ablation changes one thing only.

Config (YAML)::

    train: examples/train_scenes.yaml     # base training config: a path or an inline mapping
    grid:
      fusion: [concat, bica]
      psl_weight: [0.0, 0.1]
      learning_rate: [5.0e-5]
      seed: [0, 1]
    baseline: {fusion: concat, psl_weight: 0.0}
    evaluation:
      dataset: null        # an exported evaluation folder; null = build it from the scenes data's test split
      tasks: [task2, task7]
      metrics: [hit@5, hit@10, mrr@1]
      batch_size: 64
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from eval.report import ablation_table, plot_lr_sensitivity, write_markdown, write_results_json
from eval.stats import paired_bootstrap, summarize_seeds

logger = logging.getLogger(__name__)

GRID_KEYS = ("fusion", "psl_weight", "learning_rate", "seed")
CONFIG_KEYS = ("train", "grid", "baseline", "evaluation")
EVALUATION_KEYS = ("dataset", "tasks", "metrics", "batch_size", "num_resamples", "scenes_tasks")


def _cell_name(fusion: str, psl_weight: float, learning_rate: float) -> str:
    # No "|" in cell names: they go into markdown tables.
    return f"{fusion} psl={psl_weight:g} lr={learning_rate:g}"


def load_ablation_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read an ablation YAML; errors name unknown keys and empty grid axes."""
    import yaml

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"ablation config {str(file)!r} does not exist")
    config = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    unknown = set(config) - set(CONFIG_KEYS)
    if unknown:
        raise ValueError(f"ablation config {str(file)!r} has unknown keys {sorted(unknown)}; valid: {list(CONFIG_KEYS)}")
    grid = config.get("grid") or {}
    unknown = set(grid) - set(GRID_KEYS)
    if unknown:
        raise ValueError(f"grid has unknown axes {sorted(unknown)}; valid: {list(GRID_KEYS)}")
    evaluation = config.get("evaluation") or {}
    unknown = set(evaluation) - set(EVALUATION_KEYS)
    if unknown:
        raise ValueError(f"evaluation has unknown keys {sorted(unknown)}; valid: {list(EVALUATION_KEYS)}")
    train = config.get("train")
    if isinstance(train, str):
        from unica.train_cli import load_config

        train_path = Path(train) if Path(train).is_absolute() or Path(train).exists() else file.parent / train
        config["train"] = load_config(train_path)
    elif not isinstance(train, Mapping):
        raise ValueError("ablation config needs 'train': a training config path or an inline mapping")
    for axis in GRID_KEYS:
        values = grid.get(axis)
        if values is not None and (not isinstance(values, list) or not values):
            raise ValueError(f"grid.{axis} must be a non-empty list, got {values!r}")
    return config


def _cell_config(base: Mapping[str, Any], fusion: str, psl_weight: float, learning_rate: float, seed: int,
                 output_dir: Path, data_root: Path | None) -> dict[str, Any]:
    config = copy.deepcopy(dict(base))
    if "init" not in config:
        raise ValueError("the ablation's training config must build the model from components ('init:'), so every "
                     "cell starts from the same weights with its own fusion")
    config["init"] = {**(config["init"] or {}), "fusion": fusion, "seed": seed}
    training = dict(config.get("training") or {})
    training.update(output_dir=str(output_dir), psl_weight=psl_weight, learning_rate=learning_rate, seed=seed,
                    eval_strategy="no", save_strategy="no", report_to="none")
    training.pop("eval_steps", None)
    training.pop("save_steps", None)
    config["training"] = training
    if data_root is not None:
        config["data"] = {**config["data"], "root": str(data_root)}
        config["data"].pop("eval_split", None)
        config["data"].pop("max_eval_rows", None)
    return config


def _prepare_evaluation(base: Mapping[str, Any], evaluation: Mapping[str, Any], out: Path) -> tuple[Path, Path | None]:
    """(evaluation folder, shared scenes root or None): builds the scenes data and its test tasks once."""
    if evaluation.get("dataset"):
        return Path(evaluation["dataset"]), None
    data = base.get("data") or {}
    if data.get("builder") != "scenes":
        raise ValueError("evaluation.dataset is required unless the training data is the scenes builder")
    from dataset_builders.evaluation import build_evaluation_sets
    from unica.train_cli import _scenes_root

    root = _scenes_root({**data, "root": data.get("root") or str(out / "data" / "scenes")}, str(out))
    eval_dir = out / "data" / "scenes-eval"
    if not (eval_dir / "README.md").is_file():
        tasks = evaluation.get("scenes_tasks") or (0, 2, 3, 7)
        build_evaluation_sets(root, eval_dir, dataset="scenes", tasks=tuple(tasks), overwrite=True)
    return eval_dir, root


def run_ablation(config: Mapping[str, Any], out: str | os.PathLike) -> dict[str, Any]:
    """Train and evaluate every cell x seed; write ablation.json / ablation.md / LR plots; return the summary."""
    from eval.harness import evaluate_checkpoint
    from unica.train_cli import build_trainer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    grid = config.get("grid") or {}
    fusions = grid.get("fusion", ["concat", "bica"])
    psl_weights = [float(w) for w in grid.get("psl_weight", [0.0, 0.1])]
    rates = [float(r) for r in grid.get("learning_rate", [config["train"]["training"].get("learning_rate", 5e-5)])]
    seeds = [int(s) for s in grid.get("seed", [0])]
    baseline = {"fusion": "concat", "psl_weight": 0.0, **(config.get("baseline") or {})}
    if baseline["fusion"] not in fusions or float(baseline["psl_weight"]) not in psl_weights:
        raise ValueError(f"baseline {baseline} is not a cell of the grid (fusion {fusions}, psl_weight {psl_weights})")
    evaluation = dict(config.get("evaluation") or {})
    metrics = list(evaluation.get("metrics") or ["hit@5", "hit@10", "mrr@1"])
    eval_dir, data_root = _prepare_evaluation(config["train"], evaluation, out)

    runs: dict[str, dict[int, dict[str, Any]]] = {}
    started = time.time()
    for fusion, psl_weight, rate in itertools.product(fusions, psl_weights, rates):
        cell = _cell_name(fusion, psl_weight, rate)
        for seed in seeds:
            run_dir = out / "runs" / cell.replace(" ", "_").replace("=", "") / f"seed{seed}"
            final = run_dir / "final"
            result_file = run_dir / "evaluation.json"
            if result_file.is_file():  # a finished run (the ablation can be resumed)
                runs.setdefault(cell, {})[seed] = json.loads(result_file.read_text())
                continue
            logger.info("ablation: training %s seed %d", cell, seed)
            trainer = build_trainer(_cell_config(config["train"], fusion, psl_weight, rate, seed, run_dir, data_root))
            train_output = trainer.train()
            trainer.save_model(str(final))
            results = evaluate_checkpoint(final, eval_dir, tasks=evaluation.get("tasks"),
                                          batch_size=int(evaluation.get("batch_size", 64)), show_progress=False)
            record = {"tasks": results["tasks"], "per_query": results["per_query"],
                      "train_loss": float(train_output.training_loss), "steps": int(train_output.global_step)}
            write_results_json(record, result_file)
            runs.setdefault(cell, {})[seed] = record
    summary = summarize_ablation(runs, fusions, psl_weights, rates, seeds, baseline, metrics,
                                 num_resamples=int(evaluation.get("num_resamples", 10_000)))
    summary["settings"] = {"grid": {"fusion": fusions, "psl_weight": psl_weights, "learning_rate": rates,
                                    "seed": seeds}, "baseline": baseline, "evaluation": str(eval_dir),
                           "base_training": config["train"].get("training"), "wall_seconds": time.time() - started}
    write_ablation_outputs(summary, out, metrics)
    return summary


def summarize_ablation(
    runs: Mapping[str, Mapping[int, Mapping[str, Any]]],
    fusions: Sequence[str],
    psl_weights: Sequence[float],
    rates: Sequence[float],
    seeds: Sequence[int],
    baseline: Mapping[str, Any],
    metrics: Sequence[str],
    num_resamples: int = 10_000,
) -> dict[str, Any]:
    """Per task: per-cell mean ± std over seeds and paired-bootstrap deltas vs the baseline cell (same lr)."""
    tasks = sorted(next(iter(next(iter(runs.values())).values()))["tasks"])
    summary: dict[str, Any] = {"tasks": {}}
    for task in tasks:
        cells, deltas = {}, {}
        for fusion, psl_weight, rate in itertools.product(fusions, psl_weights, rates):
            cell = _cell_name(fusion, psl_weight, rate)
            cells[cell] = {m: summarize_seeds([runs[cell][s]["tasks"][task][m] for s in seeds]) for m in metrics}
            base_cell = _cell_name(baseline["fusion"], float(baseline["psl_weight"]), rate)
            if cell != base_cell:
                deltas[cell] = {
                    m: paired_bootstrap(_per_query(runs[base_cell], seeds, task, m),
                                        _per_query(runs[cell], seeds, task, m), num_resamples=num_resamples)
                    for m in metrics
                }
        summary["tasks"][task] = {"cells": cells, "deltas": deltas}
    return summary


def _per_query(cell_runs: Mapping[int, Mapping[str, Any]], seeds: Sequence[int], task: str, metric: str) -> np.ndarray:
    return np.array([cell_runs[s]["per_query"][task][metric] for s in seeds], dtype=np.float64)


def write_ablation_outputs(summary: Mapping[str, Any], out: Path, metrics: Sequence[str]) -> None:
    """ablation.md (one table per task), ablation.json (numbers + the markdown, for the model card), LR plots."""
    baseline = summary["settings"]["baseline"]
    sections = []
    for task, data in summary["tasks"].items():
        rates = summary["settings"]["grid"]["learning_rate"]
        tables = []
        for rate in rates:
            cells = {c: v for c, v in data["cells"].items() if c.endswith(f" lr={rate:g}")}
            deltas = {c: v for c, v in data["deltas"].items() if c in cells}
            base_cell = _cell_name(baseline["fusion"], float(baseline["psl_weight"]), rate)
            tables.append(ablation_table(cells, deltas, metrics, base_cell))
        sections.append(f"### {task}\n\n" + "\n\n".join(tables))
        series: dict[str, dict[float, Any]] = {}
        for cell, values in data["cells"].items():
            setting, rate = cell.rsplit(" lr=", 1)
            series.setdefault(setting, {})[float(rate)] = values[metrics[0]]
        if len(rates) > 1:
            plot_lr_sensitivity(series, out / f"lr_sensitivity_{task}.png", metrics[0],
                                title=f"{task}: {metrics[0]} vs learning rate")
    seeds = summary["settings"]["grid"]["seed"]
    note = (f"Mean ± std over {len(seeds)} seed(s) {seeds}; Δ = cell − baseline ({baseline['fusion']}, "
            f"psl_weight={baseline['psl_weight']}) at the same learning rate, with a paired-bootstrap 95% CI over "
            "queries (per-query values averaged over seeds). hit@k is what the paper calls Recall@k.")
    markdown = note + "\n\n" + "\n\n".join(sections)
    write_markdown(markdown, out / "ablation.md", title="UniCA ablation")
    payload = {
        "markdown": markdown,
        "settings": summary["settings"],
        "tasks": {
            task: {
                "cells": {c: {m: s.to_dict() for m, s in v.items()} for c, v in data["cells"].items()},
                "deltas": {c: {m: b.to_dict() for m, b in v.items()} for c, v in data["deltas"].items()},
            }
            for task, data in summary["tasks"].items()
        },
    }
    write_results_json(payload, out / "ablation.json")


def run_ablation_from_config(path: str | os.PathLike, out: str | os.PathLike) -> dict[str, Any]:
    """``unica ablate --config PATH --out OUT``."""
    return run_ablation(load_ablation_config(path), out)
