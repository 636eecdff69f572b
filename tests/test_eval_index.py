"""FAISS index: exact search against numpy, approximate kinds against exact, shards, save/load, bad input."""

import faiss
import numpy as np
import pytest

from eval.index import (
    EmbeddingIndex,
    IndexSpec,
    build_index,
    build_index_from_shards,
    save_embedding_shard,
    shard_paths,
)


@pytest.fixture(autouse=True, scope="module")
def _one_faiss_thread():
    """These indexes are tiny; on a busy 2-core machine OpenMP threads only spin (7 s instead of 0.6 s)."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


def _mixture(n, dim=32, clusters=20, noise=0.6, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + noise * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    vectors = _mixture(3000)
    queries = _mixture(50, seed=1)
    ids = [f"doc{i}" for i in range(len(vectors))]
    truth = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :10]
    return vectors, queries, ids, truth


def _recall(result, truth, ids):
    return np.mean([len(set(found) & {ids[i] for i in row}) / len(row) for found, row in zip(result.ids, truth)])


def test_exact_search_equals_numpy(data):
    vectors, queries, ids, truth = data
    result = build_index(vectors, ids).search(queries, 10)
    assert result.ids == [[ids[i] for i in row] for row in truth]
    expected_scores = np.take_along_axis(queries @ vectors.T, truth, axis=1)
    np.testing.assert_allclose(result.scores, expected_scores, rtol=1e-5, atol=1e-6)
    assert np.all(np.diff(result.scores, axis=1) <= 1e-7)


def test_flat_normalizes_so_scores_are_cosines():
    index = build_index(np.array([[3.0, 0.0], [1.0, 1.0]], dtype=np.float32), ["a", "b"])
    result = index.search(np.array([[2.0, 2.0]], dtype=np.float32), 2)
    assert result.ids == [["b", "a"]]
    np.testing.assert_allclose(result.scores, [[1.0, np.sqrt(0.5)]], rtol=1e-6)


@pytest.mark.parametrize(
    ("spec", "min_recall"),
    [
        (IndexSpec("ivf", nlist=16, nprobe=16), 1.0),  # probing every list is exact
        (IndexSpec("ivf", nlist=32, nprobe=8), 0.9),
        (IndexSpec("hnsw", hnsw_m=16, ef_construction=200, ef_search=128), 0.95),
        (IndexSpec("ivfpq", nlist=16, nprobe=16, pq_m=8, pq_bits=6), 0.45),
    ],
)
def test_approximate_kinds_against_exact(data, spec, min_recall):
    vectors, queries, ids, truth = data
    index = build_index(vectors, ids, spec)
    assert index.ntotal == len(vectors)
    recall = _recall(index.search(queries, 10), truth, ids)
    assert recall >= min_recall, f"{spec.kind}: recall@10 {recall:.3f} < {min_recall}"


def test_nprobe_trades_recall(data):
    vectors, queries, ids, truth = data
    index = build_index(vectors, ids, IndexSpec("ivf", nlist=64, nprobe=1))
    low = _recall(index.search(queries, 10), truth, ids)
    index.set_search_params(nprobe=64)
    assert _recall(index.search(queries, 10), truth, ids) == 1.0 > low


def test_shards_merge_into_one_index(tmp_path, data):
    vectors, queries, ids, truth = data
    bounds = [0, 1000, 1700, 3000]
    for shard in range(3):
        rows = slice(bounds[shard], bounds[shard + 1])
        save_embedding_shard(tmp_path, vectors[rows], ids[rows], shard, 3)
    assert [path.name for path in shard_paths(tmp_path)] == [f"embeddings-0000{i}-of-00003.npy" for i in range(3)]
    merged = build_index_from_shards(tmp_path)
    assert merged.ntotal == 3000 and merged.ids == ids
    assert merged.search(queries, 10).ids == build_index(vectors, ids).search(queries, 10).ids
    ivf = build_index_from_shards(tmp_path, IndexSpec("ivf", nlist=16, nprobe=16))
    assert _recall(ivf.search(queries, 10), truth, ids) == 1.0


def test_missing_shard_is_an_error(tmp_path, data):
    vectors, _, ids, _ = data
    save_embedding_shard(tmp_path, vectors[:10], ids[:10], 0, 2)
    with pytest.raises(FileNotFoundError, match=r"lacks shards \[1\] of 2"):
        build_index_from_shards(tmp_path)


def test_save_and_load_round_trip(tmp_path, data):
    vectors, queries, ids, _ = data
    index = build_index(vectors, ids, IndexSpec("ivf", nlist=16, nprobe=4))
    before = index.search(queries, 5)
    index.save(tmp_path / "idx")
    loaded = EmbeddingIndex.load(tmp_path / "idx")
    after = loaded.search(queries, 5)
    assert after.ids == before.ids and loaded.spec == index.spec
    np.testing.assert_allclose(after.scores, before.scores)


def test_ties_and_k_larger_than_index():
    vectors = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    index = build_index(vectors, ["first", "second", "other"])
    result = index.search(np.array([[1.0, 0.0]], dtype=np.float32), 5)
    assert result.ids == [["first", "second", "other"]]  # tie broken by insertion order
    assert result.indices.tolist() == [[0, 1, 2, -1, -1]] and np.isnan(result.scores[0, 3:]).all()


def test_bad_input(data):
    vectors, queries, ids, _ = data
    index = build_index(vectors[:20], ids[:20])
    with pytest.raises(ValueError, match="k=0 must be a positive integer"):
        index.search(queries, 0)
    with pytest.raises(ValueError, match="queries has dimension 8 but the index has 32"):
        index.search(np.ones((1, 8), dtype=np.float32), 3)
    with pytest.raises(ValueError, match="id 'doc0' is added twice"):
        index.add(vectors[:1], ["doc0"])
    with pytest.raises(ValueError, match="got 2 embeddings but 1 ids"):
        index.add(vectors[:2], ["x"])
    with pytest.raises(ValueError, match="unknown"):
        IndexSpec("annoy")
    with pytest.raises(ValueError, match="pq_m=7 does not divide 32"):
        EmbeddingIndex(32, IndexSpec("ivfpq", nlist=4, pq_m=7))
    with pytest.raises(ValueError, match="contains NaN"):
        index.search(np.full((1, 32), np.nan, dtype=np.float32), 1)
    with pytest.raises(ValueError, match="not name=value"):
        IndexSpec.parse("ivf,nprob=3")
    assert IndexSpec.parse("hnsw, hnsw_m=8, ef_search=40") == IndexSpec("hnsw", hnsw_m=8, ef_search=40)
