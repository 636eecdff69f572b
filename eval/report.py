"""Evaluation outputs: ``results.json``, markdown tables and PNG plots.

Plots use matplotlib's object API on an Agg canvas (``matplotlib.figure.Figure``), so nothing
here touches pyplot's global state or needs a display. Every file is written to a uniquely named
temporary file and renamed into place (``dataset_builders.atomic``), so a reader never sees half a
file and two processes writing the same report never collide.

Example:
    >>> import tempfile
    >>> from eval.report import results_table, plot_recall_curves
    >>> results = {"webqa_task1": {"hit@1": 0.5, "hit@5": 0.75, "hit@10": 0.9}}
    >>> print(results_table(results, ["hit@1", "hit@10"]).splitlines()[2])
    | webqa_task1 | 0.5000 | 0.9000 |
    >>> plot_recall_curves(results, tempfile.mkdtemp() + "/curves.png").suffix
    '.png'
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dataset_builders.atomic import atomic_path, atomic_write, file_lock

logger = logging.getLogger(__name__)

HIT_NOTE = (
    "hit@k = 1 if any relevant document is in the top k (what M-BEIR / UniIR and the UniCA paper call "
    '"Recall@k"); recall@k = share of the relevant documents in the top k.'
)
_METRIC_KEY = re.compile(r"^(?P<name>[a-z_]+)@(?P<k>\d+)$")


def to_jsonable(value: Any) -> Any:
    """Convert numpy values, dataclasses with ``to_dict`` and paths to JSON types; NaN and inf become None."""
    if hasattr(value, "to_dict") and callable(value.to_dict):
        return to_jsonable(value.to_dict())
    if isinstance(value, Mapping):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(item) for item in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def write_results_json(results: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write ``results`` as indented JSON (strict: NaN becomes null) atomically; returns the path.

    Example:
        >>> import tempfile, json
        >>> p = write_results_json({"hit@1": float("nan")}, tempfile.mkdtemp() + "/results.json")
        >>> json.loads(p.read_text())
        {'hit@1': None}
    """
    try:
        text = json.dumps(to_jsonable(results), indent=2, allow_nan=False)
    except TypeError as error:
        raise ValueError(
            f"results hold a value JSON cannot store ({error}); convert it to numbers or strings"
        ) from None
    return atomic_write(path, text + "\n")


def _format_cell(value: Any, digits: int) -> str:
    if value is None:
        return "–"
    if hasattr(value, "format") and not isinstance(value, str):
        return value.format(digits)
    if isinstance(value, (float, np.floating)):
        return "–" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value).replace("|", "\\|")


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, digits: int = 4) -> str:
    """A GitHub markdown table; floats with ``digits`` decimals, objects with ``.format(digits)``
    (``SeedSummary``, ``BootstrapResult``) formatted by themselves, missing cells as "–".

    Example:
        >>> print(markdown_table([{"cell": "bica", "hit@5": 0.61234}]))
        | cell | hit@5 |
        |---|---|
        | bica | 0.6123 |
    """
    if not rows:
        raise ValueError("rows is empty; a table needs at least one row")
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_format_cell(row.get(column), digits) for column in columns) + " |")
    return "\n".join(lines)


def results_table(
    results: Mapping[str, Mapping[str, Any]],
    metrics: Sequence[str],
    digits: int = 4,
    row_label: str = "task",
) -> str:
    """Rows = tasks (keys of ``results``), columns = ``metrics`` (e.g. ``["hit@5", "hit@10", "mrr@1"]``)."""
    if not metrics:
        raise ValueError("metrics is empty; name the columns to show, e.g. ['hit@5', 'hit@10']")
    rows = [{row_label: task, **{metric: values.get(metric) for metric in metrics}} for task, values in results.items()]
    return markdown_table(rows, [row_label, *metrics], digits)


def write_markdown(text: str, path: str | os.PathLike, title: str | None = None, note: str | None = HIT_NOTE) -> Path:
    """Write a markdown file: optional ``# title``, the text, and a note (by default which metric is which)."""
    parts = []
    if title:
        parts.append(f"# {title}\n")
    parts.append(text.rstrip() + "\n")
    if note:
        parts.append(f"\n{note}\n")
    return atomic_write(path, "\n".join(parts))


def _new_figure(width: float = 6.4, height: float = 4.4):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110)
    return figure, figure.subplots()


def _save_png(figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", bbox_inches="tight")
    return path


def metric_curve(values: Mapping[str, Any], metric: str) -> tuple[list[int], list[float]]:
    """The ``(ks, values)`` of ``metric@k`` keys in a task's results, sorted by k."""
    points = []
    for key, value in values.items():
        match = _METRIC_KEY.match(str(key))
        if match and match["name"] == metric and value is not None:
            points.append((int(match["k"]), float(value)))
    points.sort()
    return [k for k, _ in points], [value for _, value in points]


def plot_recall_curves(
    results: Mapping[str, Mapping[str, Any]],
    path: str | os.PathLike,
    metric: str = "hit",
    title: str | None = None,
) -> Path:
    """PNG of ``metric@k`` against k, one line per task (``results[task]["hit@5"]`` etc.)."""
    figure, axes = _new_figure()
    plotted = 0
    for task, values in results.items():
        ks, ys = metric_curve(values, metric)
        if ks:
            axes.plot(ks, ys, marker="o", label=str(task))
            plotted += 1
    if not plotted:
        raise ValueError(
            f"no '{metric}@k' values in results for any task; keys look like {list(next(iter(results.values()), {}))[:5]}"
        )
    axes.set_xscale("log")
    all_ks = sorted({k for values in results.values() for k in metric_curve(values, metric)[0]})
    axes.set_xticks(all_ks)
    axes.set_xticklabels([str(k) for k in all_ks])
    axes.set_xlabel("k")
    axes.set_ylabel(f"{metric}@k")
    axes.set_ylim(0, 1.02)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")
    axes.set_title(title or f"{metric}@k per task")
    return _save_png(figure, path)


def _mean_std(value: Any) -> tuple[float, float]:
    if hasattr(value, "mean") and hasattr(value, "std") and not isinstance(value, np.ndarray):
        return float(value.mean), float(value.std)
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"a point must be a number, (mean, std) or a SeedSummary, got {value!r}")
        return float(value[0]), float(value[1])
    return float(value), math.nan


def plot_lr_sensitivity(
    series: Mapping[str, Mapping[float, Any]],
    path: str | os.PathLike,
    metric: str,
    title: str | None = None,
) -> Path:
    """Metric against learning rate (log axis), one line per setting, like the UniCA paper's Figure 2.

    ``series[setting][learning_rate]`` is a number, a ``(mean, std)`` pair or a ``SeedSummary``;
    a std draws an error bar.

    Example:
        >>> import tempfile
        >>> series = {"concat": {1e-5: 0.61, 3e-5: 0.64}, "bica": {1e-5: (0.63, 0.01), 3e-5: (0.66, 0.02)}}
        >>> plot_lr_sensitivity(series, tempfile.mkdtemp() + "/lr.png", "hit@5").exists()
        True
    """
    if not series or not any(series.values()):
        raise ValueError("series is empty; pass {setting: {learning_rate: value}}")
    figure, axes = _new_figure()
    for setting, points in series.items():
        rates = sorted(points)
        if any(rate <= 0 for rate in rates):
            raise ValueError(f"setting {setting!r} has a learning rate <= 0; rates are plotted on a log axis")
        means, stds = zip(*(_mean_std(points[rate]) for rate in rates))
        errors = [0.0 if math.isnan(std) else std for std in stds]
        axes.errorbar(rates, means, yerr=errors if any(errors) else None, marker="o", capsize=3, label=str(setting))
    axes.set_xscale("log")
    axes.set_xlabel("learning rate")
    axes.set_ylabel(metric)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")
    axes.set_title(title or f"{metric} vs learning rate")
    return _save_png(figure, path)


def ablation_table(
    cells: Mapping[str, Mapping[str, Any]],
    deltas: Mapping[str, Mapping[str, Any]] | None,
    metrics: Sequence[str],
    baseline: str,
    digits: int = 4,
) -> str:
    """Rows = ablation cells; per metric a "mean ± std" column and a "Δ vs baseline [95% CI]" column.

    ``cells[cell][metric]`` is a ``SeedSummary`` (or a number); ``deltas[cell][metric]`` a
    ``BootstrapResult`` (the baseline row shows "baseline").
    """
    if baseline not in cells:
        raise ValueError(f"baseline cell {baseline!r} is not among the cells {list(cells)}")
    columns = ["cell"]
    for metric in metrics:
        columns += [metric, f"Δ {metric} [95% CI]"]
    rows = []
    for cell, values in cells.items():
        row: dict[str, Any] = {"cell": cell}
        for metric in metrics:
            row[metric] = values.get(metric)
            if cell == baseline:
                row[f"Δ {metric} [95% CI]"] = "baseline"
            else:
                row[f"Δ {metric} [95% CI]"] = (deltas or {}).get(cell, {}).get(metric)
        rows.append(row)
    return markdown_table(rows, columns, digits)


def write_evaluation_report(
    out_dir: str | os.PathLike,
    results: Mapping[str, Mapping[str, Any]],
    metrics: Sequence[str],
    curve_metric: str = "hit",
    extra: Mapping[str, Any] | None = None,
    title: str = "Retrieval evaluation",
) -> dict[str, Path]:
    """Write ``results.json`` (per-task metrics + ``extra``), ``results.md`` and ``recall_curves.png``.

    The three files are written under one lock (``OUT/.report.lock``), so two runs writing the same
    folder leave the three files of one run, not a mix.
    """
    out_dir = Path(out_dir)
    payload = {**(extra or {}), "tasks": results}
    table = results_table(results, metrics)  # checked before anything is written
    with file_lock(out_dir / ".report"):
        paths = {
            "json": write_results_json(payload, out_dir / "results.json"),
            "markdown": write_markdown(table, out_dir / "results.md", title=title),
            "plot": plot_recall_curves(results, out_dir / "recall_curves.png", metric=curve_metric),
        }
    logger.info("wrote %s", ", ".join(str(path) for path in paths.values()))
    return paths
