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

The whole config (keys, grid values, baseline, metric names, tasks) is checked by
:func:`validate_ablation_config` before anything is built or trained, so a typo fails in a second,
not after the last training run.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import numbers
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
BASELINE_KEYS = ("fusion", "psl_weight")
DEFAULT_METRICS = ("hit@5", "hit@10", "mrr@1")
DEFAULT_SCENES_TASKS = (0, 2, 3, 7)


def cell_name(fusion: str, psl_weight: float, learning_rate: float) -> str:
    """``"bica psl=0.1 lr=0.0001"``: a cell's name in tables and JSON (no "|": names go into markdown tables)."""
    return f"{fusion} psl={float(psl_weight):g} lr={float(learning_rate):g}"


def cell_run_dir(out: str | os.PathLike, cell: str, seed: int) -> Path:
    """Where a cell's seed trains and keeps ``final/`` (the model) and ``evaluation.json`` under the ablation's out."""
    return Path(out) / "runs" / cell.replace(" ", "_").replace("=", "") / f"seed{seed}"


def _config_digest(config: Mapping[str, Any]) -> str:
    """A digest of a cell's training config, minus where it is written: a finished cell is reused only if equal."""
    import hashlib

    settings = copy.deepcopy(dict(config))
    settings.get("training", {}).pop("output_dir", None)
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def load_ablation_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read an ablation YAML and check it whole (:func:`validate_ablation_config`); errors name the key."""
    import yaml

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"ablation config {str(file)!r} does not exist")
    config = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    if not isinstance(config, dict):
        raise ValueError(f"ablation config {str(file)!r} holds a YAML {type(config).__name__}; expected a mapping with "
                         f"keys {list(CONFIG_KEYS)} (see examples/ablation_scenes.yaml)")
    unknown = set(config) - set(CONFIG_KEYS)
    if unknown:
        raise ValueError(f"ablation config {str(file)!r} has unknown keys {sorted(unknown)}; valid: {list(CONFIG_KEYS)}")
    _check_sections(config)
    train = config.get("train")
    if isinstance(train, str):
        from unica.apps.train_cli import load_config

        train_path = Path(train) if Path(train).is_absolute() or Path(train).exists() else file.parent / train
        config["train"] = load_config(train_path)
    validate_ablation_config(config)
    return config


def _check_sections(config: Mapping[str, Any]) -> None:
    """Known keys in grid / evaluation, and every grid axis a non-empty list."""
    grid = config.get("grid") or {}
    if not isinstance(grid, Mapping):
        raise ValueError(f"grid must be a mapping of axes {list(GRID_KEYS)} to lists, got {grid!r}")
    unknown = set(grid) - set(GRID_KEYS)
    if unknown:
        raise ValueError(f"grid has unknown axes {sorted(unknown)}; valid: {list(GRID_KEYS)}")
    evaluation = config.get("evaluation") or {}
    if not isinstance(evaluation, Mapping):
        raise ValueError(f"evaluation must be a mapping (keys {list(EVALUATION_KEYS)}), got {evaluation!r}")
    unknown = set(evaluation) - set(EVALUATION_KEYS)
    if unknown:
        raise ValueError(f"evaluation has unknown keys {sorted(unknown)}; valid: {list(EVALUATION_KEYS)}")
    for axis in GRID_KEYS:
        values = grid.get(axis)
        if values is not None and (not isinstance(values, list) or not values):
            raise ValueError(f"grid.{axis} must be a non-empty list, got {values!r}")


def _grid_axes(config: Mapping[str, Any]) -> tuple[list, list, list, list]:
    """The grid's (fusions, psl_weights, learning_rates, seeds), with defaults for absent axes."""
    grid = config.get("grid") or {}
    training = (config.get("train") or {}).get("training") or {}
    return (list(grid.get("fusion", ["concat", "bica"])), list(grid.get("psl_weight", [0.0, 0.1])),
            list(grid.get("learning_rate", [training.get("learning_rate", 5e-5)])), list(grid.get("seed", [0])))


def _number(value: Any) -> float | None:
    """A real number (or a numeric YAML string such as ``1e-4``), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def allowed_metrics() -> list[str]:
    """Metric names an ablation can report: every ranking metric at the harness's default cut-offs."""
    from eval.harness import DEFAULT_K_VALUES
    from eval.metrics import METRIC_NAMES

    return [f"{name}@{k}" for name in METRIC_NAMES for k in DEFAULT_K_VALUES]


def validate_ablation_config(config: Mapping[str, Any]) -> None:
    """Check the whole ablation config before any training; a ValueError names the key and the allowed values.

    Checked: grid values (fusion in the model's fusions, psl_weight >= 0, learning_rate > 0, integer
    seeds), the baseline (known keys, a cell of the grid), evaluation metric names (``<metric>@<k>``
    the harness reports), tasks (present in the evaluation folder, or among ``scenes_tasks``), batch
    size and bootstrap resamples, and that the training config builds its model from ``init:``.
    """
    from configuration_unica import FUSIONS
    from dataset_builders.mbeir import MBEIR_TASKS

    unknown = set(config) - set(CONFIG_KEYS)
    if unknown:
        raise ValueError(f"ablation config has unknown keys {sorted(unknown)}; valid: {list(CONFIG_KEYS)}")
    _check_sections(config)
    train = config.get("train")
    if not isinstance(train, Mapping):
        raise ValueError("ablation config needs 'train': a training config path or an inline mapping")
    if "init" not in train:
        raise ValueError("the ablation's training config must build the model from components ('init:'), so every "
                         "cell starts from the same weights with its own fusion")
    fusions, psl_weights, rates, seeds = _grid_axes(config)
    unknown = [f for f in fusions if f not in FUSIONS]
    if unknown:
        raise ValueError(f"grid.fusion has {', '.join(map(repr, unknown))}; allowed values: {list(FUSIONS)}")
    bad = [w for w in psl_weights if _number(w) is None or _number(w) < 0]
    if bad:
        raise ValueError(f"grid.psl_weight has {', '.join(map(repr, bad))}; every value must be a number >= 0, "
                         "e.g. [0.0, 0.1]")
    bad = [r for r in rates if _number(r) is None or not _number(r) > 0]
    if bad:
        raise ValueError(f"grid.learning_rate has {', '.join(map(repr, bad))}; every value must be a number > 0, "
                         "e.g. [1.0e-4]")
    bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, numbers.Integral)]
    if bad:
        raise ValueError(f"grid.seed has {', '.join(map(repr, bad))}; every seed must be an integer, e.g. [0, 1]")

    baseline = config.get("baseline") or {}
    if not isinstance(baseline, Mapping):
        raise ValueError(f"baseline must be a mapping such as {{fusion: concat, psl_weight: 0.0}}, got {baseline!r}")
    unknown = sorted(set(baseline) - set(BASELINE_KEYS))
    if unknown:
        raise ValueError(f"baseline has unknown keys {unknown}; valid: {list(BASELINE_KEYS)}")
    baseline = {"fusion": "concat", "psl_weight": 0.0, **baseline}
    weights = [_number(w) for w in psl_weights]
    if baseline["fusion"] not in fusions or _number(baseline["psl_weight"]) not in weights:
        raise ValueError(f"baseline {baseline} is not a cell of the grid (grid.fusion {fusions}, grid.psl_weight "
                         f"{psl_weights}); pick a fusion and a psl_weight from the grid")

    evaluation = config.get("evaluation") or {}
    metrics = evaluation.get("metrics")
    if metrics is None:
        metrics = list(DEFAULT_METRICS)
    allowed = allowed_metrics()
    if not isinstance(metrics, list) or not metrics:
        raise ValueError(f"evaluation.metrics must be a non-empty list of metric names, got {metrics!r}; "
                         f"allowed: {', '.join(allowed)}")
    unknown = [m for m in metrics if m not in allowed]
    if unknown:
        raise ValueError(f"evaluation.metrics has unknown metrics {', '.join(map(repr, unknown))}; allowed: "
                         f"{', '.join(allowed)}")
    for key in ("batch_size", "num_resamples"):
        value = evaluation.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0):
            raise ValueError(f"evaluation.{key} must be a positive integer, got {value!r}")
    scenes_tasks = evaluation.get("scenes_tasks") or DEFAULT_SCENES_TASKS
    unknown = [t for t in scenes_tasks if isinstance(t, bool) or t not in MBEIR_TASKS]
    if unknown:
        raise ValueError(f"evaluation.scenes_tasks has {', '.join(map(repr, unknown))}; allowed task ids: "
                         f"{sorted(MBEIR_TASKS)}")
    _check_tasks(train, evaluation, scenes_tasks)


def _check_tasks(train: Mapping[str, Any], evaluation: Mapping[str, Any], scenes_tasks: Sequence[int]) -> None:
    """evaluation.tasks must name tasks of the evaluation folder (or of the scenes tasks that will be built)."""
    from eval.harness import available_tasks, resolve_task

    dataset = evaluation.get("dataset")
    if dataset:
        if not Path(dataset).is_dir():
            raise FileNotFoundError(f"evaluation.dataset {str(dataset)!r} does not exist; build it with "
                                    "`unica build-dataset webqa|mbeir-eval` or leave it null for the scenes data")
        available = available_tasks(dataset)
    elif ((train.get("data") or {}).get("builder")) != "scenes":
        raise ValueError("evaluation.dataset is required unless the training data is the scenes builder")
    else:
        available = [f"task{t}" for t in scenes_tasks]
    tasks = evaluation.get("tasks")
    if tasks is None:
        return
    if not isinstance(tasks, list) or not tasks:
        raise ValueError(f"evaluation.tasks must be a non-empty list such as [{available[0]}], got {tasks!r}")
    for task in tasks:
        try:
            resolve_task(str(task), available)
        except ValueError:
            source = f"evaluation.dataset {str(dataset)!r}" if dataset else f"evaluation.scenes_tasks {list(scenes_tasks)}"
            raise ValueError(f"evaluation.tasks has unknown task {task!r}; {source} gives {', '.join(available)}") from None


def _cell_config(base: Mapping[str, Any], fusion: str, psl_weight: float, learning_rate: float, seed: int,
                 output_dir: Path, data_root: Path | None) -> dict[str, Any]:
    config = copy.deepcopy(dict(base))
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
    from dataset_builders.evaluation import build_evaluation_sets
    from unica.apps.train_cli import scenes_root

    root = scenes_root({**data, "root": data.get("root") or str(out / "data" / "scenes")}, str(out))
    eval_dir = out / "data" / "scenes-eval"
    if not (eval_dir / "README.md").is_file():
        tasks = evaluation.get("scenes_tasks") or DEFAULT_SCENES_TASKS
        build_evaluation_sets(root, eval_dir, dataset="scenes", tasks=tuple(tasks), overwrite=True)
    return eval_dir, root


def run_ablation(config: Mapping[str, Any], out: str | os.PathLike) -> dict[str, Any]:
    """Train and evaluate every cell x seed; write ablation.json / ablation.md / LR plots; return the summary."""
    from unica.apps.evaluate import evaluate_checkpoint
    from unica.apps.train_cli import build_trainer

    validate_ablation_config(config)  # before anything is written, built or trained
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fusions, psl_weights, rates, seeds = _grid_axes(config)
    psl_weights, rates, seeds = [float(w) for w in psl_weights], [float(r) for r in rates], [int(s) for s in seeds]
    baseline = {"fusion": "concat", "psl_weight": 0.0, **(config.get("baseline") or {})}
    evaluation = dict(config.get("evaluation") or {})
    metrics = list(evaluation.get("metrics") or DEFAULT_METRICS)
    eval_dir, data_root = _prepare_evaluation(config["train"], evaluation, out)

    runs: dict[str, dict[int, dict[str, Any]]] = {}
    started = time.time()
    plan = [(cell_name(f, w, r), f, w, r, seed) for f, w, r in itertools.product(fusions, psl_weights, rates)
            for seed in seeds]
    for number, (cell, fusion, psl_weight, rate, seed) in enumerate(plan, start=1):
        run_dir = cell_run_dir(out, cell, seed)
        final = run_dir / "final"
        result_file = run_dir / "evaluation.json"
        cell_config = _cell_config(config["train"], fusion, psl_weight, rate, seed, run_dir, data_root)
        digest = _config_digest(cell_config)
        if result_file.is_file():  # a finished run (the ablation can be resumed)
            record = json.loads(result_file.read_text())
            if record.get("config_digest") != digest:
                raise ValueError(f"{str(result_file)!r} was trained with other settings than this ablation's "
                                 f"{cell} seed {seed}; use another output folder or delete {str(run_dir)!r}")
            logger.info("cell %d/%d: %s seed %d: reusing the finished run in %s", number, len(plan), cell, seed,
                        run_dir)
            runs.setdefault(cell, {})[seed] = record
            continue
        cell_started = time.time()
        logger.info("cell %d/%d: training %s seed %d (%s steps)", number, len(plan), cell, seed,
                    cell_config["training"].get("max_steps", "all"))
        trainer = build_trainer(cell_config)
        train_output = trainer.train()
        trainer.save_model(str(final))
        results = evaluate_checkpoint(final, eval_dir, tasks=evaluation.get("tasks"),
                                      batch_size=int(evaluation.get("batch_size", 64)), show_progress=False)
        record = {"tasks": results["tasks"], "per_query": results["per_query"], "config_digest": digest,
                  "train_loss": float(train_output.training_loss), "steps": int(train_output.global_step)}
        write_results_json(record, result_file)
        runs.setdefault(cell, {})[seed] = record
        logger.info("cell %d/%d: %s seed %d done in %.0f s: %s", number, len(plan), cell, seed,
                    time.time() - cell_started, ", ".join(f"{task} {metrics[0]} {values[metrics[0]]:.3f}"
                                                          for task, values in results["tasks"].items()))
    summary = summarize_ablation(runs, fusions, psl_weights, rates, seeds, baseline, metrics,
                                 num_resamples=int(evaluation.get("num_resamples", 10_000)))
    summary["settings"] = {"grid": {"fusion": fusions, "psl_weight": psl_weights, "learning_rate": rates,
                                    "seed": seeds}, "baseline": baseline, "evaluation": str(eval_dir),
                           "base_training": config["train"].get("training"), "wall_seconds": time.time() - started}
    summary["markdown"] = write_ablation_outputs(summary, out, metrics)
    logger.info("ablation: %d run(s) in %.0f s; wrote %s and %s", len(plan), time.time() - started,
                out / "ablation.json", out / "ablation.md")
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
            cell = cell_name(fusion, psl_weight, rate)
            cells[cell] = {m: summarize_seeds([runs[cell][s]["tasks"][task][m] for s in seeds]) for m in metrics}
            base_cell = cell_name(baseline["fusion"], float(baseline["psl_weight"]), rate)
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


def write_ablation_outputs(summary: Mapping[str, Any], out: Path, metrics: Sequence[str]) -> str:
    """ablation.md (one table per task), ablation.json (numbers + the markdown, for the model card), LR plots;
    returns the markdown."""
    baseline = summary["settings"]["baseline"]
    sections = []
    for task, data in summary["tasks"].items():
        rates = summary["settings"]["grid"]["learning_rate"]
        tables = []
        for rate in rates:
            cells = {c: v for c, v in data["cells"].items() if c.endswith(f" lr={rate:g}")}
            deltas = {c: v for c, v in data["deltas"].items() if c in cells}
            base_cell = cell_name(baseline["fusion"], float(baseline["psl_weight"]), rate)
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
    return markdown


def run_ablation_from_config(path: str | os.PathLike, out: str | os.PathLike) -> dict[str, Any]:
    """``unica ablate --config PATH --out OUT``: runs the grid, then prints the summary tables and where they are."""
    summary = run_ablation(load_ablation_config(path), out)
    print(f"\n{summary['markdown']}\n\nwrote {Path(out) / 'ablation.json'} and {Path(out) / 'ablation.md'}")
    return summary
