"""Evaluation harness on the checked-in scenes fixture: metrics, cache, shards, pools, the CLI, any encoder."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_image

from dataset_builders.rows import multimodal_item
from eval.cache import EmbeddingCache, fingerprint_model_dir
from eval.encoders import SentenceTransformerEncoder
from eval.harness import evaluate, load_retrieval_tasks, row_item
from eval.metrics import compute_ranking_metrics
from unica.apps.cli import main as cli
from unica.apps.evaluate import evaluate_checkpoint
from unica.checkpoint import load_checkpoint, save_checkpoint
from unica.cocoa import ItemCollator
from unica.collator import RetrievalCollator
from unica.encoding import UniCAEncoder, encode_items
from unica.mteb_encoder import UniCAMTEBEncoder

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
                    str(tmp_path / "o"), "--shard", f"{index}/2", "--shard-dir", str(shard_dir),
                    "--dtype", "fp32"]) == 0  # evaluate_checkpoint's default (the CLI's is auto)
    merged = evaluate_checkpoint(checkpoint, eval_set, tasks=["task2"], shard_dir=shard_dir, show_progress=False)
    for metric in ("hit@1", "hit@5", "mrr@10"):
        assert merged["tasks"]["task2"][metric] == pytest.approx(whole["tasks"]["task2"][metric], abs=1e-6)
    global_pool = evaluate_checkpoint(checkpoint, eval_set, pool="global", show_progress=False)
    tasks = load_retrieval_tasks(eval_set)
    union = len({d for t in tasks for d in t.corpus_ids})
    assert all(v["num_candidates"] == union for v in global_pool["tasks"].values())
    assert union > max(len(t.corpus_ids) for t in tasks)


def test_sentence_transformers_and_unica_encoders_score_a_checkpoint_alike(checkpoint, eval_set, tmp_path):
    """The harness knows no model: a UniCA checkpoint scores the same through the public sentence-transformers
    API as through UniCA's own encoder (one L2-normalised float32 row per item either way)."""
    fingerprint = fingerprint_model_dir(checkpoint)
    unica = UniCAEncoder.from_checkpoint(checkpoint, fingerprint=fingerprint, batch_size=8)
    st = SentenceTransformerEncoder(checkpoint, batch_size=8, trust_remote_code=True, device="cpu")
    assert st.fingerprint == fingerprint and unica.model_fingerprint == fingerprint
    assert unica.fingerprint != st.fingerprint  # one cache, no entry shared between the two encoders
    tasks = load_retrieval_tasks(eval_set)
    items = tasks[0].corpus_items[:5] + tasks[0].query_items[:3]
    by_st, by_unica = st.encode(items), unica.encode(items)
    assert by_st.dtype == by_unica.dtype == np.float32 and by_st.shape == by_unica.shape == (8, 384)
    np.testing.assert_allclose(np.linalg.norm(by_st, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(by_st, by_unica, atol=1e-5)

    cache = tmp_path / "cache"
    scores = {name: evaluate(encoder, eval_set, cache_dir=cache, k_values=[1, 5, 10], show_progress=False)
              for name, encoder in (("unica", unica), ("sentence-transformers", st))}
    reference = evaluate_checkpoint(checkpoint, eval_set, k_values=[1, 5, 10], show_progress=False)
    for name, results in scores.items():
        assert results["settings"]["cache"] == {"hits": 0, "misses": 2}, name  # task2 and task7, never shared
        assert results["settings"]["fingerprint"] in (unica.fingerprint, st.fingerprint)
        assert set(results["tasks"]) == {"task2", "task7"}
        for task, expected in reference["tasks"].items():
            for metric in ("hit@1", "hit@5", "hit@10", "mrr@1", "mrr@10", "recall@10", "ndcg@10"):
                assert results["tasks"][task][metric] == pytest.approx(expected[metric], abs=1e-9), (name, task, metric)
    with pytest.raises(TypeError, match="SentenceTransformerEncoder"):
        evaluate(st.model, eval_set, show_progress=False)  # a bare SentenceTransformer has no fingerprint


def test_evaluate_cli_outputs_and_errors(checkpoint, eval_set, tmp_path, caplog):
    out = tmp_path / "cli-out"
    assert cli(["evaluate", str(checkpoint), "--dataset", str(eval_set), "--out", str(out), "--index",
                "hnsw,ef_search=64", "--k", "1,5,10", "--dtype", "bf16"]) == 0
    assert {"results.json", "results.md", "recall_curves.png"} <= {p.name for p in out.iterdir()}
    assert cli(["evaluate", str(checkpoint), "--dataset", str(eval_set), "--out", str(out), "--overwrite", "--tasks", "task9"]) == 1
    assert "unknown task 'task9'" in caplog.text
    assert cli(["evaluate", str(checkpoint), "--dataset", str(tmp_path / "missing"), "--out", str(out)]) == 1


def test_one_item_rule_for_rows_mteb_batches_and_collators(tiny_pair):
    """dataset_builders.rows.multimodal_item is the one rule: whitespace-only text is no text; neither is an error."""
    model, processor = tiny_pair
    image = make_image(50)
    assert multimodal_item(" \t", image) is image and multimodal_item("a", image) == {"text": "a", "image": image}
    assert row_item(" a ", None) == " a "
    with pytest.raises(ValueError, match="^query '2:1' has neither text nor image$"):
        multimodal_item("  ", None, label="query '2:1'")
    with pytest.raises(TypeError, match="must be a string"):
        multimodal_item(3, None)

    def embed(items):
        with torch.no_grad():
            return model(**processor.process_items(items)).embeddings.numpy()

    mteb = UniCAMTEBEncoder(model, processor, prompts={"query": "query: "})
    got = mteb.encode([{"text": ["  ", "a red circle"], "image": [image, image]}, {"text": ["a blue square"]}],
                      prompt_type="query")
    np.testing.assert_allclose(got, embed([image, {"text": "query: a red circle", "image": image},
                                           "query: a blue square"]), atol=1e-5)
    with pytest.raises(ValueError, match="MTEB batch row 1 has neither text nor image"):
        mteb.encode([{"text": ["a", " "]}])
    cocoa = ItemCollator(processor)([{"text": " ", "image": image}, {"text": "  ", "image": None}, {"text": "a"}])
    assert cocoa["input_ids"].shape[0] == 2 and cocoa["image_mask"].tolist() == [True, False]
    batch = RetrievalCollator(processor)([{"query_text": " ", "query_image": image, "pos_text": "a", "pos_image": None}])
    assert batch["query"]["image_mask"].tolist() == [True] and batch["positive"]["image_mask"].tolist() == [False]
