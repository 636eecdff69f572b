"""Evaluation harness on the checked-in scenes fixture: metrics, cache, shards, pools and the CLI."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from eval.cache import EmbeddingCache
from eval.harness import evaluate_checkpoint, load_retrieval_tasks
from eval.metrics import compute_ranking_metrics
from unica.apps.cli import main as cli
from unica.checkpoint import load_checkpoint, save_checkpoint
from unica.encoding import encode_items

FIXTURE = Path(__file__).parent / "fixtures" / "scenes"


@pytest.fixture(scope="module")
def eval_set(tmp_path_factory):
    from dataset_builders.evaluation import build_evaluation_sets

    out = tmp_path_factory.mktemp("eval") / "scenes-eval"
    build_evaluation_sets(FIXTURE, out, dataset="scenes", tasks=(2, 7))
    return out


@pytest.fixture
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint


def test_metrics_match_brute_force_ranking(checkpoint, eval_set, tmp_path):
    results = evaluate_checkpoint(checkpoint, eval_set, out_dir=tmp_path / "out", cache_dir=None,
                                  k_values=[1, 5, 10], show_progress=False)
    model, processor = load_checkpoint(checkpoint)
    for task in load_retrieval_tasks(eval_set):
        queries = encode_items(model, processor, task.query_items, show_progress=False)
        corpus = encode_items(model, processor, task.corpus_items, show_progress=False)
        order = np.argsort(-(queries @ corpus.T), axis=1, kind="stable")[:, :10]
        rankings = [[task.corpus_ids[i] for i in row] for row in order]
        expected = compute_ranking_metrics(rankings, task.relevant, k_values=[1, 5, 10])
        got = results["tasks"][task.name]
        for metric in ("hit@1", "hit@5", "hit@10", "mrr@10", "recall@10", "ndcg@10"):
            assert got[metric] == pytest.approx(expected[metric], abs=1e-9), (task.name, metric)
        assert got["num_candidates"] == len(task.corpus_ids) and got["num_queries"] == len(task.query_ids)
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(written["tasks"]) == {"task2", "task7"}
    assert len(written["per_query"]["task2"]["hit@5"]) == results["tasks"]["task2"]["num_queries"]
    assert (tmp_path / "out" / "recall_curves.png").stat().st_size > 1000
    assert "task2" in (tmp_path / "out" / "results.md").read_text()


def test_cache_reused_never_across_models_and_corrupt_files_recomputed(checkpoint, eval_set, tmp_path, caplog):
    cache = tmp_path / "cache"
    first = evaluate_checkpoint(checkpoint, eval_set, cache_dir=cache, tasks=["task2"], show_progress=False)
    assert first["settings"]["cache"] == {"hits": 0, "misses": 1}
    second = evaluate_checkpoint(checkpoint, eval_set, cache_dir=cache, tasks=["scenes_task2"], show_progress=False)
    assert second["settings"]["cache"] == {"hits": 1, "misses": 0}
    assert second["tasks"]["task2"]["hit@5"] == first["tasks"]["task2"]["hit@5"]

    other = tmp_path / "other-model"
    shutil.copytree(checkpoint, other)
    model, processor = load_checkpoint(other)
    with torch.no_grad():
        model.visual_projection.proj.bias.add_(0.5)
    save_checkpoint(model, processor, other, overwrite=True)
    changed = evaluate_checkpoint(other, eval_set, cache_dir=cache, tasks=["task2"], show_progress=False)
    assert changed["settings"]["cache"] == {"hits": 0, "misses": 1}

    for path in cache.rglob("*.npy"):
        path.write_bytes(b"corrupt")
    with caplog.at_level(logging.WARNING):
        again = evaluate_checkpoint(checkpoint, eval_set, cache_dir=cache, tasks=["task2"], show_progress=False)
    assert again["settings"]["cache"]["misses"] == 1
    assert "corrupt" in caplog.text.lower() or "re-encod" in caplog.text.lower()
    assert again["tasks"]["task2"]["hit@5"] == first["tasks"]["task2"]["hit@5"]
    assert isinstance(EmbeddingCache(cache), EmbeddingCache)


def test_shards_merge_to_the_same_results_and_global_pool(checkpoint, eval_set, tmp_path):
    whole = evaluate_checkpoint(checkpoint, eval_set, tasks=["task2"], show_progress=False)
    shard_dir = tmp_path / "shards"
    for index in range(2):
        assert cli(["evaluate", str(checkpoint), "--dataset", str(eval_set), "--tasks", "task2", "--out",
                    str(tmp_path / "o"), "--shard", f"{index}/2", "--shard-dir", str(shard_dir)]) == 0
    merged = evaluate_checkpoint(checkpoint, eval_set, tasks=["task2"], shard_dir=shard_dir, show_progress=False)
    for metric in ("hit@1", "hit@5", "mrr@10"):
        assert merged["tasks"]["task2"][metric] == pytest.approx(whole["tasks"]["task2"][metric], abs=1e-6)
    global_pool = evaluate_checkpoint(checkpoint, eval_set, pool="global", show_progress=False)
    tasks = load_retrieval_tasks(eval_set)
    union = len({d for t in tasks for d in t.corpus_ids})
    assert all(v["num_candidates"] == union for v in global_pool["tasks"].values())
    assert union > max(len(t.corpus_ids) for t in tasks)


def test_evaluate_cli_outputs_and_errors(checkpoint, eval_set, tmp_path, caplog):
    out = tmp_path / "cli-out"
    assert cli(["evaluate", str(checkpoint), "--dataset", str(eval_set), "--out", str(out), "--index",
                "hnsw,ef_search=64", "--k", "1,5,10", "--dtype", "bf16"]) == 0
    assert {"results.json", "results.md", "recall_curves.png"} <= {p.name for p in out.iterdir()}
    assert cli(["evaluate", str(checkpoint), "--dataset", str(eval_set), "--out", str(out), "--overwrite", "--tasks", "task9"]) == 1
    assert "unknown task 'task9'" in caplog.text
    assert cli(["evaluate", str(checkpoint), "--dataset", str(tmp_path / "missing"), "--out", str(out)]) == 1
