"""Tests for dataset_builders: M-BEIR reader, UMR-S10 sampler, export, evaluation sets, bad input, CLI, push.

Everything runs on the checked-in fixtures (tests/fixtures/scenes, tests/fixtures/openclipart) and small
M-BEIR files written here; no network.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest

from dataset_builders.evaluation import build_evaluation_sets
from dataset_builders.export import read_card_metadata, staging_folder, validate_export
from dataset_builders.mbeir import MBEIR_TASKS, QUERY_SCHEMA, read_jsonl_table, read_queries
from dataset_builders.openclipart import build_openclipart
from dataset_builders.rows import CANDIDATE_FEATURES, TRAINING_FEATURES
from dataset_builders.umr import UMRS10, build_umr_s10, stratified_sample, stratum_sizes
from unica.apps.cli import main as unica_main
from unica.apps.hub import push_dataset

FIXTURES = Path(__file__).parent / "fixtures"
SCENES = FIXTURES / "scenes"
OPENCLIPART = FIXTURES / "openclipart"


def _load(folder: Path, config: str | None, split: str, cache: Path) -> datasets.Dataset:
    return datasets.load_dataset(str(folder), config, split=split, cache_dir=str(cache))


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture(scope="module")
def two_source_root(tmp_path_factory) -> Path:
    """An M-BEIR root with two sources: the scenes fixture plus OpenClipart built from its fixture."""
    root = tmp_path_factory.mktemp("mbeir") / "root"
    shutil.copytree(SCENES, root)
    clipart = root.parent / "clipart"
    build_openclipart(clipart, root=OPENCLIPART, image_size=32, progress=False)
    shutil.copytree(clipart / "mbeir_images", root / "mbeir_images", dirs_exist_ok=True)
    shutil.copy(clipart / "query/train/mbeir_openclipart_train.jsonl", root / "query/train/")
    with open(root / "cand_pool/global/mbeir_union_train_cand_pool.jsonl", "a") as pool:
        pool.write((clipart / "cand_pool/global/mbeir_union_train_cand_pool.jsonl").read_text())
    return root


@pytest.fixture(scope="module")
def umr_export(two_source_root, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("umr") / "UMR-S10"
    # A minimum of 3 binds nowhere here (10% of OpenClipart's 31-query strata is 3.1), so shares are preserved.
    sample = build_umr_s10(two_source_root, out, fraction=0.10, seed=0, min_per_stratum=3)
    return out, sample


# ------------------------------------------------------------------------------------------ sampler


def test_stratum_sizes_largest_remainder_and_minimum():
    assert stratum_sizes(np.array([100, 50, 3]), 0.1, 2).tolist() == [10, 5, 2]
    # 0.1 * [15, 15, 15] = 1.5 each, total round(4.5) = 4: one stratum gets the extra one.
    assert stratum_sizes(np.array([15, 15, 15]), 0.1, 0).tolist() == [2, 1, 1]
    assert stratum_sizes(np.array([5, 1000]), 0.1, 10).tolist() == [5, 100]  # minimum capped by the stratum
    assert stratum_sizes(np.array([7, 9]), 1.0, 0).tolist() == [7, 9]


def test_umr_task_shares_match_full_set_within_half_a_point(umr_export, two_source_root, tmp_path):
    out, sample = umr_export
    full = read_queries(sorted((two_source_root / "query/train").glob("*.jsonl")))
    full_tasks = Counter(full.column("task_id").to_pylist())
    ds = _load(out, None, "train", tmp_path / "cache")
    kept_tasks = Counter(ds["task_id"])
    assert len(full) == sample.total_queries == 1309 + 93
    for task in full_tasks:
        share_full = 100 * full_tasks[task] / len(full)
        share_kept = 100 * kept_tasks[task] / len(ds)
        assert abs(share_full - share_kept) <= 0.5, (task, share_full, share_kept)
    # 10% of each (source, task) stratum, largest remainders rounded up: 16.9 -> 17 and 27.6 -> 28.
    after = {(row["source"], row["task_id"]): row["after"] for row in sample.report}
    assert after == {
        ("OpenClipart", 0): 3, ("OpenClipart", 2): 3, ("OpenClipart", 3): 3,
        ("Scenes", 0): 48, ("Scenes", 2): 28, ("Scenes", 3): 38, ("Scenes", 7): 17,
    }
    assert Counter(zip(ds["source"], ds["task_id"])) == Counter(after)


def test_minimum_per_stratum(two_source_root):
    full = read_queries(sorted((two_source_root / "query/train").glob("*.jsonl")))
    sample = stratified_sample(full.column("source"), full.column("task_id"), 0.10, seed=0, min_per_stratum=10)
    after = {(row["source"], row["task_id"]): row["after"] for row in sample.report}
    assert after[("OpenClipart", 0)] == after[("OpenClipart", 2)] == after[("OpenClipart", 3)] == 10
    assert after[("Scenes", 0)] == 48 and len(sample.indices) == sum(after.values()) == 48 + 28 + 38 + 17 + 30


def test_umr_same_seed_same_rows_other_seed_other_rows(two_source_root, umr_export, tmp_path):
    out, _ = umr_export
    again = build_umr_s10(two_source_root, tmp_path / "again", fraction=0.10, seed=0, min_per_stratum=3)
    other = build_umr_s10(two_source_root, tmp_path / "other", fraction=0.10, seed=1, min_per_stratum=3)
    first = _load(out, None, "train", tmp_path / "cache")
    second = _load(tmp_path / "again", None, "train", tmp_path / "cache")
    assert first["qid"] == second["qid"] and first["pos_text"] == second["pos_text"]
    assert first.data.table.equals(second.data.table)  # identical rows, image bytes included
    assert [q["qid"] for q in again.queries] == first["qid"]
    other_qids = [q["qid"] for q in other.queries]
    assert len(other_qids) == len(first) and other_qids != first["qid"]
    assert len(set(other_qids) & set(first["qid"])) < 0.5 * len(first)
    # Identical bytes on disk as well.
    for name in ("data/default/train-00000-of-00001.parquet", "README.md"):
        assert (out / name).read_bytes() == (tmp_path / "again" / name).read_bytes()


def test_umr_export_loads_with_declared_features_and_images(umr_export, tmp_path):
    out, sample = umr_export
    ds = _load(out, None, "train", tmp_path / "cache")
    assert ds.features == TRAINING_FEATURES
    assert len(ds) == len(sample.queries) == 48 + 28 + 38 + 17 + 9
    pool = _load(out, "candidates", "train", tmp_path / "cache")
    assert pool.features == CANDIDATE_FEATURES
    dids = set(pool["did"])
    referenced = {d for row in ds.select_columns(["pos_dids", "neg_dids"]) for d in row["pos_dids"] + row["neg_dids"]}
    assert referenced == dids  # every positive and hard negative kept, nothing else
    by_task = {row["task_id"]: row for row in ds}
    hybrid = by_task[2]  # text -> image,text: positive has both, query has no image
    assert hybrid["query_image"] is None and hybrid["pos_image"].size in {(64, 64), (32, 32)} and hybrid["pos_text"]
    image_to_text = by_task[3]
    assert image_to_text["query_text"] == "" and image_to_text["query_image"].mode == "RGB"
    assert image_to_text["pos_image"] is None and image_to_text["pos_text"].endswith(".")
    composed = [row for row in ds if row["task_id"] == 7][0]
    assert composed["query_text"] and composed["query_image"] is not None and composed["pos_image"] is not None
    # The card: YAML configs + the sampling report.
    metadata = read_card_metadata(out)
    assert [c["config_name"] for c in metadata["configs"]] == ["default", "candidates"]
    card = (out / "README.md").read_text()
    assert "| OpenClipart | 2 | text -> image,text | 31 | 3 |" in card and "## Citation" in card


def test_umr_generator_based_builder_matches_export(two_source_root, umr_export, tmp_path):
    _, sample = umr_export
    builder = UMRS10(
        cache_dir=str(tmp_path / "cache"), mbeir_root=str(two_source_root), fraction=0.1, seed=0, min_per_stratum=3
    )
    builder.download_and_prepare()
    ds = builder.as_dataset(split="train")
    assert ds.features == TRAINING_FEATURES
    assert ds["qid"] == [q["qid"] for q in sample.queries]
    assert ds[0]["pos_image"] is not None or ds[0]["pos_text"]


def test_stratified_sample_does_not_depend_on_source_order():
    sources = ["a"] * 50 + ["b"] * 30
    tasks = [0] * 25 + [1] * 25 + [0] * 30
    first = stratified_sample(sources, tasks, 0.2, seed=3, min_per_stratum=0)
    assert [(r["source"], r["task_id"], r["after"]) for r in first.report] == [("a", 0, 5), ("a", 1, 5), ("b", 0, 6)]
    assert len(first.indices) == 16 and len(set(first.indices.tolist())) == 16


# ------------------------------------------------------------------------------------------ evaluation sets


def _webqa_root(tmp_path: Path) -> Path:
    """A tiny WebQA in M-BEIR's layout: task 1 (text -> text) and task 2 (text -> image,text)."""
    root = tmp_path / "M-BEIR"
    images = sorted((SCENES / "mbeir_images/scenes_images").glob("00000?.png"))[:3]
    (root / "mbeir_images/webqa_images").mkdir(parents=True)
    for index, image in enumerate(images):
        shutil.copy(image, root / f"mbeir_images/webqa_images/{index}.jpg")
    _write_jsonl(root / "cand_pool/local/mbeir_webqa_task1_cand_pool.jsonl", [
        {"did": f"2:{i}", "txt": f"Fact number {i}.", "img_path": None, "modality": "text", "src_content": "{}"}
        for i in range(1, 6)
    ])
    _write_jsonl(root / "cand_pool/local/mbeir_webqa_task2_cand_pool.jsonl", [
        {"did": f"2:{10 + i}", "txt": f"Caption {i}.", "img_path": f"mbeir_images/webqa_images/{i}.jpg", "modality": "image,text"}
        for i in range(3)
    ])
    _write_jsonl(root / "query/test/mbeir_webqa_task1_test.jsonl", [
        {"qid": "2:1", "query_txt": "Which fact is first?", "query_img_path": None, "query_modality": "text",
         "query_src_content": "{}", "pos_cand_list": ["2:1", "2:2"], "neg_cand_list": [], "task_id": 1},
        {"qid": "2:2", "query_txt": "Which fact is last?", "query_img_path": None, "query_modality": "text",
         "pos_cand_list": ["2:5"], "neg_cand_list": [], "task_id": 1},
    ])
    _write_jsonl(root / "query/test/mbeir_webqa_task2_test.jsonl", [
        {"qid": "2:3", "query_txt": "Which picture has a caption?", "query_img_path": None, "query_modality": "text",
         "pos_cand_list": ["2:11"], "neg_cand_list": [], "task_id": 2},
    ])
    (root / "qrels/test").mkdir(parents=True)
    (root / "qrels/test/mbeir_webqa_task1_test_qrels.txt").write_text("2:1 0 2:1 1 1\n2:1 0 2:2 1 1\n2:2 0 2:5 1 1\n")
    (root / "qrels/test/mbeir_webqa_task2_test_qrels.txt").write_text("2:3 0 2:11 1 2\n")
    return root


def test_webqa_evaluation_sets(tmp_path):
    root = _webqa_root(tmp_path)
    assert unica_main(["build-dataset", "webqa", "--mbeir-root", str(root), "--out", str(tmp_path / "eval")]) == 0
    cache = tmp_path / "cache"
    queries = _load(tmp_path / "eval", "task1_queries", "test", cache)
    corpus = _load(tmp_path / "eval", "task1_corpus", "test", cache)
    qrels = _load(tmp_path / "eval", "task1_qrels", "test", cache)
    assert queries["qid"] == ["2:1", "2:2"] and queries["pos_dids"][0] == ["2:1", "2:2"]
    assert len(corpus) == 5 and set(corpus["modality"]) == {"text"} and corpus[0]["image"] is None
    assert list(zip(qrels["qid"], qrels["did"], qrels["relevance"])) == [("2:1", "2:1", 1), ("2:1", "2:2", 1), ("2:2", "2:5", 1)]
    hybrid = _load(tmp_path / "eval", "task2_corpus", "test", cache)
    assert len(hybrid) == 3 and hybrid[1]["image"].size == (64, 64) and hybrid[1]["text"] == "Caption 1."
    assert "Task 1 is text -> text" in (tmp_path / "eval/README.md").read_text()


def test_scenes_evaluation_sets(tmp_path):
    report = build_evaluation_sets(SCENES, tmp_path / "eval", dataset="scenes", tasks=(0, 2, 3, 7))
    counts = json.loads((SCENES / "metadata.json").read_text())["queries"]["test"]
    assert {r["task_id"]: r["queries"] for r in report} == {int(k): v for k, v in counts.items()}
    # Local pools hold the test candidates of the retrieved modality: 120 scenes -> 120 captions, 120 documents.
    assert {r["task_id"]: r["candidates"] for r in report}[3] == 120
    assert {r["task_id"]: r["candidates"] for r in report}[2] == 120


# ------------------------------------------------------------------------------------------ bad input


def _small_root(tmp_path: Path, queries: list[dict] | None = None, pool: list[dict] | None = None) -> Path:
    root = tmp_path / "bad"
    if pool is None:
        pool = [{"did": f"2:{i}", "txt": f"doc {i}", "img_path": None, "modality": "text"} for i in range(1, 4)]
    if queries is None:
        queries = [{"qid": "2:1", "query_txt": "q", "query_img_path": None, "query_modality": "text",
                    "pos_cand_list": ["2:1"], "neg_cand_list": ["2:2"], "task_id": 1}]
    _write_jsonl(root / "query/train/mbeir_webqa_train.jsonl", queries)
    _write_jsonl(root / "cand_pool/global/mbeir_union_train_cand_pool.jsonl", pool)
    return root


def _query(qid: str, pos: str = "2:1", task: int = 1, image: str | None = None) -> dict:
    return {"qid": qid, "query_txt": "q", "query_img_path": image, "query_modality": "image,text" if image else "text",
            "pos_cand_list": [pos], "neg_cand_list": [], "task_id": task}


def test_malformed_jsonl_names_file_and_line(tmp_path):
    root = _small_root(tmp_path)
    path = root / "query/train/mbeir_webqa_train.jsonl"
    path.write_text(json.dumps(_query("2:1")) + "\n\n" + json.dumps(_query("2:2")) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"mbeir_webqa_train\.jsonl:4: malformed JSON"):
        build_umr_s10(root, tmp_path / "out")
    path.write_text(json.dumps(_query("2:1")) + "\n" + json.dumps(_query("2:2") | {"task_id": "one"}) + "\n")
    with pytest.raises(ValueError, match=r"jsonl:2: field 'task_id' has 'one'"):
        read_jsonl_table(path, QUERY_SCHEMA)
    assert not (tmp_path / "out").exists()


def test_unknown_candidate_duplicate_ids_unknown_task(tmp_path):
    with pytest.raises(ValueError, match=r"1 candidate ids referenced by queries are not in the pool .*'2:99'"):
        build_umr_s10(_small_root(tmp_path / "a", [_query("2:1", pos="2:99")]), tmp_path / "out")
    with pytest.raises(ValueError, match=r"1 duplicate query ids \(qid\).*'2:1'"):
        build_umr_s10(_small_root(tmp_path / "b", [_query("2:1"), _query("2:1")]), tmp_path / "out")
    pool = [{"did": "2:1", "txt": "a", "modality": "text"}, {"did": "2:1", "txt": "b", "modality": "text"}]
    with pytest.raises(ValueError, match=r"1 duplicate candidate ids \(did\)"):
        build_umr_s10(_small_root(tmp_path / "c", pool=pool), tmp_path / "out")
    with pytest.raises(ValueError, match=r"jsonl:2: unknown task_id \[5\]"):
        build_umr_s10(_small_root(tmp_path / "d", [_query("2:1"), _query("2:2", task=5)]), tmp_path / "out")
    assert 5 not in MBEIR_TASKS
    assert not (tmp_path / "out").exists()


def test_fraction_outside_range(tmp_path):
    root = _small_root(tmp_path)
    for fraction in (0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
            build_umr_s10(root, tmp_path / "out", fraction=fraction)
    with pytest.raises(SystemExit):  # argparse rejects it before anything runs
        unica_main(["build-dataset", "umr-s10", "--mbeir-root", str(root), "--out", str(tmp_path / "o"), "--fraction", "2"])


def test_missing_images_error_or_skip(tmp_path):
    pool = [{"did": f"2:{i}", "txt": None, "img_path": f"mbeir_images/{i}.png", "modality": "image"} for i in range(1, 5)]
    queries = [_query(f"2:{i}", pos=f"2:{i}", task=0) for i in range(1, 5)]
    root = _small_root(tmp_path, queries, pool)
    (root / "mbeir_images").mkdir()
    for i in (1, 2):
        shutil.copy(SCENES / "mbeir_images/scenes_images/000000.png", root / f"mbeir_images/{i}.png")
    with pytest.raises(FileNotFoundError, match=r"2 image files .* missing, e\.g\. \['mbeir_images/3\.png', 'mbeir_images/4\.png'\]"):
        build_umr_s10(root, tmp_path / "out", fraction=1.0)
    assert not (tmp_path / "out").exists()
    sample = build_umr_s10(root, tmp_path / "out", fraction=1.0, skip_missing=True)
    assert [q["qid"] for q in sample.queries] == ["2:1", "2:2"]
    assert sample.missing.dropped_queries == 2 and sample.missing.dropped_candidates == 2
    assert "2 missing image files: 2 queries and 2 candidates dropped" in (tmp_path / "out/README.md").read_text()


def test_existing_output_refused_unless_overwrite_and_nothing_half_written(tmp_path):
    root = _small_root(tmp_path)
    out = tmp_path / "out"
    build_umr_s10(root, out, fraction=1.0)
    with pytest.raises(FileExistsError, match="--overwrite"):
        build_umr_s10(root, out, fraction=1.0)
    assert unica_main(["build-dataset", "umr-s10", "--mbeir-root", str(root), "--out", str(out), "--fraction", "1"]) == 1
    build_umr_s10(root, out, fraction=1.0, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "out"]
    # A failure inside the staging folder removes it and leaves the old output untouched.
    before = (out / "README.md").read_bytes()
    with pytest.raises(RuntimeError), staging_folder(out, overwrite=True) as staging:
        (staging / "README.md").write_text("half")
        raise RuntimeError("interrupted")
    assert (out / "README.md").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "out"]


def test_missing_root_and_task_id_derived_from_pool(tmp_path):
    with pytest.raises(FileNotFoundError, match="--mbeir-root"):
        build_umr_s10(tmp_path / "nowhere", tmp_path / "out")
    query = _query("2:1")
    del query["task_id"]
    sample = build_umr_s10(_small_root(tmp_path, [query]), tmp_path / "out", fraction=1.0)
    assert sample.queries[0]["task_id"] == 1  # text query, text positive -> task 1


# ------------------------------------------------------------------------------------------ push


def test_push_dataset_dry_run_lists_the_export(umr_export, tmp_path):
    out, _ = umr_export
    files = push_dataset(out, "my-org/UMR-S10", dry_run=True)
    assert files == ["README.md", "data/candidates/train-00000-of-00001.parquet", "data/default/train-00000-of-00001.parquet"]
    assert unica_main(["push-dataset", str(out), "--repo-id", "my-org/UMR-S10", "--dry-run"]) == 0
    with pytest.raises(ValueError, match="org-or-user/name"):
        push_dataset(out, "UMR-S10", dry_run=True)
    # An M-BEIR root (not an export) and an export with stray files are refused.
    with pytest.raises(ValueError, match="no YAML 'configs'"):
        validate_export(SCENES)
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="notes.txt"):
        validate_export(copy)
