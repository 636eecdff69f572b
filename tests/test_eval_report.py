"""Reports: results.json, markdown tables with the numbers, PNG plots."""

import json

import pytest

from eval.report import (
    HIT_NOTE,
    ablation_table,
    markdown_table,
    metric_curve,
    plot_lr_sensitivity,
    plot_recall_curves,
    results_table,
    write_evaluation_report,
    write_results_json,
)
from eval.stats import paired_bootstrap, summarize_seeds

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RESULTS = {
    "webqa_task1": {"hit@1": 0.41, "hit@5": 0.7325, "hit@10": 0.8412, "mrr@1": 0.41, "recall@5": 0.6},
    "webqa_task2": {"hit@1": 0.22, "hit@5": 0.5, "hit@10": 0.6549, "mrr@1": 0.22, "recall@5": float("nan")},
}


def test_evaluation_report_writes_three_files_with_numbers(tmp_path):
    paths = write_evaluation_report(tmp_path / "out", RESULTS, ["hit@5", "hit@10", "mrr@1"], extra={"model": "m"})
    assert {path.name for path in paths.values()} == {"results.json", "results.md", "recall_curves.png"}
    payload = json.loads(paths["json"].read_text())
    assert payload["model"] == "m"
    assert payload["tasks"]["webqa_task1"]["hit@10"] == 0.8412
    assert payload["tasks"]["webqa_task2"]["recall@5"] is None  # NaN is written as null
    markdown = paths["markdown"].read_text()
    assert "| task | hit@5 | hit@10 | mrr@1 |" in markdown
    assert "| webqa_task1 | 0.7325 | 0.8412 | 0.4100 |" in markdown
    assert "| webqa_task2 | 0.5000 | 0.6549 | 0.2200 |" in markdown
    assert HIT_NOTE in markdown
    png = paths["plot"].read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 5000
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_metric_curve_sorts_by_k():
    assert metric_curve(RESULTS["webqa_task1"], "hit") == ([1, 5, 10], [0.41, 0.7325, 0.8412])
    assert metric_curve(RESULTS["webqa_task1"], "ndcg") == ([], [])


def test_tables_format_numbers_summaries_and_intervals():
    assert markdown_table([{"a": 1.23456, "b": None, "c": "x|y"}], digits=2).splitlines()[2] == "| 1.23 | – | x\\|y |"
    table = results_table(RESULTS, ["recall@5"])
    assert "| webqa_task2 | – |" in table
    cells = {
        "concat": {"hit@5": summarize_seeds([0.60, 0.62])},
        "bica+psl": {"hit@5": summarize_seeds([0.66, 0.70])},
    }
    delta = paired_bootstrap([0, 1, 0, 1] * 25, [1, 1, 0, 1] * 25, num_resamples=1000)
    table = ablation_table(cells, {"bica+psl": {"hit@5": delta}}, ["hit@5"], baseline="concat")
    lines = table.splitlines()
    assert lines[0] == "| cell | hit@5 | Δ hit@5 [95% CI] |"
    assert lines[2] == "| concat | 0.6100 ± 0.0141 | baseline |"
    assert lines[3].startswith("| bica+psl | 0.6800 ± 0.0283 | +0.2500 [+")
    with pytest.raises(ValueError, match="baseline cell 'none'"):
        ablation_table(cells, None, ["hit@5"], baseline="none")


def test_lr_sensitivity_plot(tmp_path):
    series = {
        "concat": {1e-5: 0.61, 3e-5: 0.64, 1e-4: 0.58},
        "bica": {1e-5: (0.63, 0.01), 3e-5: summarize_seeds([0.65, 0.67]), 1e-4: (0.60, 0.02)},
    }
    path = plot_lr_sensitivity(series, tmp_path / "lr.png", "hit@5")
    assert path.read_bytes().startswith(PNG_MAGIC)
    with pytest.raises(ValueError, match="learning rate <= 0"):
        plot_lr_sensitivity({"x": {0.0: 0.5}}, tmp_path / "bad.png", "hit@5")


def test_bad_report_input(tmp_path):
    with pytest.raises(ValueError, match="no 'ndcg@k' values"):
        plot_recall_curves(RESULTS, tmp_path / "c.png", metric="ndcg")
    with pytest.raises(ValueError, match="rows is empty"):
        markdown_table([])
    with pytest.raises(ValueError):
        write_results_json({"x": object()}, tmp_path / "r.json")
