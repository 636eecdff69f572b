"""``unica demo --quick``: the whole demo path (data, floor, concat vs bica, table, examples, contact sheet, card)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROWS = ["untrained (floor)", "concat (VISTA) + PSL", "bica (UniCA) + PSL"]
METRICS = ("hit@1", "hit@5", "hit@10", "mrr@1")


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "unica", "demo", "--quick", "--out", str(out)], capture_output=True,
                            text=True, env=env, timeout=900, cwd=Path(__file__).parent.parent)
    assert result.returncode == 0, result.stderr[-4000:]
    return out, result


def per_query(out: Path, cell_dir: str, task: str, metric: str) -> np.ndarray:
    record = json.loads((out / "ablation" / "runs" / cell_dir / "seed0" / "evaluation.json").read_text())
    return np.array(record["per_query"][task][metric], dtype=float)


@pytest.mark.slow
def test_the_quick_demo_prints_the_comparison_with_the_floor_and_paired_deltas(quick_demo):
    out, result = quick_demo
    demo = json.loads((out / "results" / "demo.json").read_text())
    table = demo["comparison"]
    assert list(table) == ["task2", "task7"]
    floor = json.loads((out / "floor" / "seed0.json").read_text())
    for task, rows in table.items():
        assert list(rows) == ROWS
        for label in ROWS:
            assert f"| {task} | {label} |" in result.stdout
        for metric in METRICS:
            assert rows[ROWS[0]][metric]["mean"]["mean"] == pytest.approx(floor["tasks"][task][metric])
            concat = per_query(out, "concat_psl0.1_lr0.0001", task, metric)
            bica = per_query(out, "bica_psl0.1_lr0.0001", task, metric)
            assert rows[ROWS[1]][metric]["mean"]["mean"] == pytest.approx(concat.mean())
            # Deltas are the mean per-query differences, against concat and against the untrained floor.
            delta = rows[ROWS[2]][metric]["vs_baseline"]
            assert delta["delta"] == pytest.approx((bica - concat).mean())
            assert delta["ci_low"] <= delta["delta"] <= delta["ci_high"]
            above = rows[ROWS[1]][metric]["vs_floor"]
            assert above["delta"] == pytest.approx(concat.mean() - np.mean(floor["per_query"][task][metric]))
            assert "vs_baseline" not in rows[ROWS[1]][metric]
    # Each finding is printed, whatever it says.
    assert len(demo["findings"]) == 6 and all(line in result.stdout for line in demo["findings"])


@pytest.mark.slow
def test_the_quick_demo_searches_three_example_queries_and_draws_their_hits(quick_demo):
    out, result = quick_demo
    examples = json.loads((out / "results" / "demo.json").read_text())["examples"]
    assert [e["kind"] for e in examples] == ["text", "image", "image + text"]
    assert [e["task"] for e in examples] == ["task2", "task2", "task7"]
    for example in examples:
        scores = [hit["score"] for hit in example["hits"]]
        assert len(scores) == 5 and scores == sorted(scores, reverse=True)
        assert all(-1.0001 <= score <= 1.0001 for score in scores)
        for rank, hit in enumerate(example["hits"], start=1):
            assert f"  {rank}. {hit['did']}  {hit['score']:.3f}" in result.stdout
    sheet = Image.open(out / "results" / "examples.png")
    assert sheet.format == "PNG" and sheet.size == (6 * 112 + 8, 3 * (152 + 14) + 8)
    # The kept model is the bica one, with its card and the trained model's own results.
    card = (out / "unica-mini" / "README.md").read_text()
    assert "`vit-micro` (randomly initialised" in card and "4 optimiser steps" in card
    assert json.loads((out / "unica-mini" / "config.json").read_text())["fusion"] == "bica"
    assert str(out / "results" / "examples.png") in result.stdout
