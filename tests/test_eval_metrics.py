"""Retrieval metrics: hand-computed values for every metric, conventions, bad input, the evaluate module."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eval.metrics import METRIC_NAMES, compute_ranking_metrics, query_metrics

REPO = Path(__file__).resolve().parents[1]
METRIC_DIR = REPO / "eval" / "retrieval_metrics"
LOG2_3 = math.log2(3)
LOG2_5 = math.log2(5)

# One query: ranking d1..d5, relevant d2, d4 and d9 (d9 never retrieved).
RANKING = ["d1", "d2", "d3", "d4", "d5"]
RELEVANT = ["d2", "d4", "d9"]
EXPECTED = {
    # k = 1: nothing relevant in the top 1.
    "recall@1": 0.0,
    "hit@1": 0.0,
    "mrr@1": 0.0,
    "ndcg@1": 0.0,
    "map@1": 0.0,
    "precision@1": 0.0,
    # k = 2: d2 at rank 2.
    "recall@2": 1 / 3,
    "hit@2": 1.0,
    "mrr@2": 1 / 2,
    "ndcg@2": (1 / LOG2_3) / (1 + 1 / LOG2_3),
    "map@2": (1 / 2) / 3,  # trec_eval map_cut: divided by all 3 relevant documents
    "precision@2": 1 / 2,
    # k = 5: d2 at rank 2, d4 at rank 4.
    "recall@5": 2 / 3,
    "hit@5": 1.0,
    "mrr@5": 1 / 2,
    "ndcg@5": (1 / LOG2_3 + 1 / LOG2_5) / (1 + 1 / LOG2_3 + 1 / 2),
    "map@5": (1 / 2 + 2 / 4) / 3,
    "precision@5": 2 / 5,
}


def test_every_metric_matches_hand_computed_values():
    got = query_metrics(RANKING, RELEVANT, [1, 2, 5])
    assert set(got) == set(EXPECTED)
    for name, value in EXPECTED.items():
        assert got[name] == pytest.approx(value, abs=1e-12), name
    assert got["ndcg@2"] == pytest.approx(0.386853, abs=1e-6)
    assert got["ndcg@5"] == pytest.approx(0.498189, abs=1e-6)


def test_means_over_queries_and_per_query_values():
    out = compute_ranking_metrics([RANKING, ["d7", "d8"]], [RELEVANT, ["d7"]], k_values=[1, 2], return_per_query=True)
    assert out["num_queries"] == 2 and out["num_queries_without_relevant"] == 0
    assert out["recall@2"] == pytest.approx((1 / 3 + 1) / 2)
    assert out["hit@1"] == pytest.approx(0.5)
    assert out["mrr@2"] == pytest.approx((0.5 + 1) / 2)
    assert out["precision@2"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert out["map@2"] == pytest.approx((1 / 6 + 1) / 2)
    assert out["per_query"]["mrr@2"] == pytest.approx([0.5, 1.0])
    assert out["per_query"]["hit@1"] == [0.0, 1.0]


def test_graded_ndcg_and_zero_grade_is_not_relevant():
    got = query_metrics(["a", "b", "c"], ["b", "c"], [3], grades=[2, 1])
    assert got["ndcg@3"] == pytest.approx((2 / LOG2_3 + 1 / 2) / (2 + 1 / LOG2_3))
    assert got["recall@3"] == 1.0 and got["mrr@3"] == 0.5  # grades only change nDCG
    # A reference judged with grade 0 counts as not relevant.
    zero = query_metrics(["a", "b"], ["a", "b"], [1, 2], grades=[0, 1])
    assert zero["hit@1"] == 0.0 and zero["mrr@2"] == 0.5 and zero["recall@2"] == 1.0


def test_numpy_cutoffs_are_accepted():
    np = pytest.importorskip("numpy")
    assert compute_ranking_metrics([["a", "b"]], [["b"]], k_values=np.array([2]))["mrr@2"] == 0.5


def test_k_larger_than_ranking_pads_with_non_relevant():
    got = query_metrics(["x", "r"], ["r"], [10])
    assert got["recall@10"] == 1.0 and got["hit@10"] == 1.0 and got["mrr@10"] == 0.5
    assert got["precision@10"] == pytest.approx(0.1)  # still divided by k
    assert got["ndcg@10"] == pytest.approx(1 / LOG2_3)
    assert got["map@10"] == pytest.approx(0.5)


def test_queries_without_relevant_documents():
    preds, refs = [["a", "b"], ["c"]], [["b"], []]
    skipped = compute_ranking_metrics(preds, refs, k_values=[2], return_per_query=True)
    assert skipped["mrr@2"] == 0.5 and skipped["num_queries_without_relevant"] == 1
    assert math.isnan(skipped["per_query"]["mrr@2"][1])
    zero = compute_ranking_metrics(preds, refs, k_values=[2], no_relevant="zero")
    assert zero["mrr@2"] == 0.25 and zero["hit@2"] == 0.5
    with pytest.raises(ValueError, match=r"references\[1\] has no relevant id"):
        compute_ranking_metrics(preds, refs, k_values=[2], no_relevant="error")
    assert math.isnan(compute_ranking_metrics([["a"]], [[]], k_values=[1])["hit@1"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"predictions": [["a"], ["b"]], "references": [["a"]]}, "predictions has 2 rankings but references has 1"),
        ({"predictions": [["a"], []], "references": [["a"], ["b"]]}, r"predictions\[1\] is an empty ranking"),
        ({"predictions": [], "references": []}, "predictions is empty"),
        ({"predictions": [["a"]], "references": [["a"]], "k_values": [0]}, "positive integer"),
        ({"predictions": [["a"]], "references": [["a"]], "k_values": [-3]}, "positive integer"),
        ({"predictions": [["a", "a"]], "references": [["a"]]}, "lists id 'a' more than once"),
        ({"predictions": [["a"]], "references": [["a"]], "metrics": ["f1"]}, "unknown names"),
        (
            {"predictions": [["a"]], "references": [["a", "b"]], "reference_grades": [[1]]},
            "grades has 1 entries but the reference has 2",
        ),
    ],
)
def test_bad_input_raises_clear_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        compute_ranking_metrics(**kwargs)


@pytest.fixture(scope="module")
def evaluate_metric():
    evaluate = pytest.importorskip("evaluate")
    return evaluate.load(str(METRIC_DIR))


def test_evaluate_module_matches_math(evaluate_metric):
    out = evaluate_metric.compute(predictions=[RANKING], references=[RELEVANT], k_values=[1, 2, 5])
    for name, value in EXPECTED.items():
        assert out[name] == pytest.approx(value, abs=1e-12), name
    issue_example = evaluate_metric.compute(predictions=[["d3", "d1"]], references=[["d1"]], k_values=[1, 5, 10])
    assert issue_example["recall@1"] == 0.0 and issue_example["hit@5"] == 1.0
    assert issue_example["mrr@10"] == 0.5 and issue_example["map@10"] == 0.5
    assert issue_example["ndcg@10"] == pytest.approx(1 / LOG2_3)
    assert {f"{name}@10" for name in METRIC_NAMES} <= set(issue_example)


def test_evaluate_module_add_batch_per_query_and_grades(evaluate_metric):
    evaluate_metric.add_batch(predictions=[["a", "b"]], references=[["b"]])
    evaluate_metric.add_batch(predictions=[["c", "d"]], references=[["c"]])
    out = evaluate_metric.compute(k_values=[1], return_per_query=True)
    assert out["per_query"]["hit@1"] == [0.0, 1.0] and out["hit@1"] == 0.5
    graded = evaluate_metric.compute(
        predictions=[["a", "b", "c"]], references=[["b", "c"]], reference_grades=[[2.0, 1.0]], k_values=[3]
    )
    assert graded["ndcg@3"] == pytest.approx((2 / LOG2_3 + 1 / 2) / (2 + 1 / LOG2_3))


def test_evaluate_module_bad_input(evaluate_metric):
    with pytest.raises(ValueError, match="Mismatch in the number of predictions"):
        evaluate_metric.compute(predictions=[["a"], ["b"]], references=[["a"]])
    with pytest.raises(ValueError, match="positive integer"):
        evaluate_metric.compute(predictions=[["a"]], references=[["a"]], k_values=[0])
    with pytest.raises(ValueError, match="empty ranking"):
        evaluate_metric.compute(predictions=[[]], references=[["a"]])


def test_evaluate_load_offline_without_the_eval_package(tmp_path):
    """The module folder loads offline by path in a process where ``eval`` cannot be imported."""
    script = (
        "import sys, json\n"
        "sys.modules['eval'] = None  # make `import eval` fail: the metric must be self-contained\n"
        "import evaluate\n"
        f"metric = evaluate.load({str(METRIC_DIR)!r}, 'graded')\n"
        "metric.add_batch(predictions=[['a', 'b', 'c']], references=[['b', 'c']], reference_grades=[[2.0, 1.0]])\n"
        "print(json.dumps(metric.compute(k_values=[3], metrics=['ndcg', 'recall'])))\n"
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_EVALUATE_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
        "HF_HOME": str(tmp_path / "hf"),
    }
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["ndcg@3"] == pytest.approx((2 / LOG2_3 + 1 / 2) / (2 + 1 / LOG2_3))
    assert out["recall@3"] == 1.0 and "hit@3" not in out
    # evaluate copied the math file next to the script in its module cache
    assert list((tmp_path / "modules").rglob("ranking.py"))
