"""Evaluation at scale: a lazy corpus (decoded chunk by chunk, never upfront), shards that carry a manifest
and are checked on merge, and a global pool encoded once.

The evaluation folders are real exports (``dataset_builders.export``: Parquet + dataset card, read back with
``datasets.load_dataset``); the encoder is a deterministic one of our own behind the harness's ``Encoder``
protocol, which records every item it is given.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image
from PIL import Image

from dataset_builders.export import write_dataset_card, write_rows
from dataset_builders.rows import CANDIDATE_FEATURES, QRELS_FEATURES, QUERY_FEATURES
from eval.cache import EmbeddingCache, combine_fingerprints, fingerprint_records
from eval.harness import evaluate, load_retrieval_tasks
from eval.index import save_embedding_shard

K = [1, 5, 10]


class HashingEncoder:
    """An ``eval.harness.Encoder``: words hashed into buckets plus an image's mean colour, L2-normalised.

    ``salt`` changes both the embeddings and the fingerprint (another "model"). ``calls`` keeps the items
    of every ``encode`` call, so a test can count what was encoded and check that images arrive decoded.
    """

    def __init__(self, salt: str = "a", dim: int = 32):
        self.salt, self.dim = salt, dim
        self.fingerprint = hashlib.sha256(f"hashing-encoder:{salt}:{dim}".encode()).hexdigest()
        self.calls: list[list] = []

    def _vector(self, item) -> np.ndarray:
        if isinstance(item, dict):
            text, image = item.get("text"), item.get("image")
        else:
            text, image = (item, None) if isinstance(item, str) else (None, item)
        vector = np.full(self.dim, 1e-3)
        for word in (text or "").split():
            vector[int(hashlib.sha256(f"{self.salt}:{word}".encode()).hexdigest()[:8], 16) % self.dim] += 1.0
        if image is not None:
            assert isinstance(image, Image.Image) and image.mode == "RGB", "the harness hands over decoded RGB images"
            vector[:3] += np.asarray(image, dtype=np.float64).mean(axis=(0, 1)) / 255.0
        return vector / np.linalg.norm(vector)

    def encode(self, items, batch_size=None, show_progress=False, desc="encoding") -> np.ndarray:
        items = list(items)
        self.calls.append(items)
        return np.stack([self._vector(item) for item in items]).astype(np.float32)

    def encoded(self, kind: str) -> list[str]:
        """The texts of every candidate (``"photo ..."``) or query (``"find ..."``) encoded so far."""
        texts = [item["text"] if isinstance(item, dict) else item for call in self.calls for item in call]
        return [text for text in texts if text.startswith("photo" if kind == "candidate" else "find")]


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    make_image(seed, size=16).save(buffer, format="PNG")
    return buffer.getvalue()


def candidate(did: str, seed: int, image: bytes | None = None) -> dict:
    return {"did": did, "modality": "image,text", "text": f"photo {did} colour{seed % 7}",
            "image": {"bytes": image if image is not None else png(seed), "path": f"{did}.png"}}


def write_eval_folder(folder: Path, tasks: dict[int, tuple[list[dict], list[dict]]]) -> Path:
    """An evaluation folder as ``unica build-dataset`` exports it: per task queries, corpus and qrels.

    ``tasks`` maps a task id to (corpus rows, query rows); each query row names its positive ``did``.
    """
    summaries = []
    for task, (corpus, queries) in tasks.items():
        query_rows = [{"qid": q["qid"], "task_id": task, "query_modality": "image,text" if q.get("image") else "text",
                       "query_text": q["text"], "query_image": q.get("image"), "pos_dids": [q["did"]]}
                      for q in queries]
        summaries.append(write_rows(folder, f"task{task}_queries", "test", QUERY_FEATURES, query_rows))
        summaries.append(write_rows(folder, f"task{task}_corpus", "test", CANDIDATE_FEATURES, corpus))
        summaries.append(write_rows(folder, f"task{task}_qrels", "test", QRELS_FEATURES,
                                    [{"qid": q["qid"], "did": q["did"], "relevance": 1, "task_id": task}
                                     for q in queries]))
    write_dataset_card(folder, summaries, title="scale test", description="generated for tests/test_eval_scale.py")
    return folder


def queries_for(dids: list[str], task: int) -> list[dict]:
    return [{"qid": f"{task}:{i}", "text": f"find photo {did}", "did": did} for i, did in enumerate(dids)]


@pytest.fixture
def one_task(tmp_path) -> tuple[Path, list[dict]]:
    corpus = [candidate(f"d{i}", i) for i in range(40)]
    queries = queries_for([f"d{i}" for i in range(0, 40, 3)], task=2)
    queries[0]["image"] = {"bytes": png(100), "path": "q.png"}  # an image+text query, decoded lazily too
    return write_eval_folder(tmp_path / "eval", {2: (corpus, queries)}), corpus


def test_the_corpus_is_decoded_chunk_by_chunk_and_a_bad_image_names_its_row(tmp_path, one_task):
    folder, corpus = one_task
    rows = list(corpus)
    rows[13] = candidate("d13", 13, image=b"these bytes are not an image")
    broken = write_eval_folder(tmp_path / "broken", {2: (rows, queries_for(["d1", "d13"], task=2))})

    (task,) = load_retrieval_tasks(broken)  # nothing is decoded here: the bad image does not stop loading
    assert task.corpus_ids[13] == "d13" and len(task.corpus_items) == 40
    first = task.corpus_items[0]  # decoded when read, with the safe loader: an RGB image
    assert first["text"] == "photo d0 colour0" and first["image"].mode == "RGB" and first["image"].size == (16, 16)

    encoder = HashingEncoder()
    with pytest.raises(ValueError, match=r"^task2_corpus did='d13': its image cannot be decoded .*not an image file"):
        evaluate(encoder, broken, k_values=K, show_progress=False, chunk_size=8)
    # The chunk before the bad row was decoded and encoded; the bad chunk never reached the encoder.
    assert [len(call) for call in encoder.calls] == [8]

    encoder = HashingEncoder()
    results = evaluate(encoder, folder, k_values=K, show_progress=False, chunk_size=8)
    assert max(len(call) for call in encoder.calls) <= 8  # one chunk of decoded images at a time
    assert len(encoder.encoded("candidate")) == 40 and len(encoder.encoded("query")) == 14
    assert results["tasks"]["task2"]["num_candidates"] == 40 and results["tasks"]["task2"]["hit@10"] > 0.5


def test_the_data_fingerprint_hashes_the_undecoded_image_bytes(tmp_path, one_task):
    """The cache key of a pool is the fingerprint of its ids, texts and image *bytes* as stored: computing it
    decodes nothing, and it is the same whoever computes it from the same cells."""
    folder, corpus = one_task
    expected = fingerprint_records([row["did"] for row in corpus],
                                   [{"text": row["text"], "image": row["image"]["bytes"]} for row in corpus])
    encoder = HashingEncoder()
    results = evaluate(encoder, folder, k_values=K, cache_dir=tmp_path / "cache", show_progress=False)
    assert results["settings"]["cache"] == {"hits": 0, "misses": 1}
    entry = EmbeddingCache(tmp_path / "cache").path_for(combine_fingerprints(encoder.fingerprint, role="candidate"),
                                                        expected)
    assert entry.is_file()
    again = evaluate(encoder, folder, k_values=K, cache_dir=tmp_path / "cache", show_progress=False)
    assert again["settings"]["cache"] == {"hits": 1, "misses": 0}
    assert again["tasks"]["task2"] == results["tasks"]["task2"]


def _shard_files(directory: Path, index: int) -> list[Path]:
    return sorted(directory.glob(f"embeddings-{index:05d}-of-00002.*"))


def test_shards_carry_a_manifest_and_stale_missing_or_duplicated_shards_are_refused(tmp_path, one_task):
    folder, corpus = one_task
    model = HashingEncoder("a")
    whole = evaluate(model, folder, k_values=K, show_progress=False)
    shard_dir = tmp_path / "shards"
    for index in range(2):
        evaluate(model, folder, k_values=K, shard=(index, 2), shard_dir=shard_dir, show_progress=False)
    merged = evaluate(model, folder, k_values=K, shard_dir=shard_dir, show_progress=False)
    assert merged["tasks"]["task2"] == whole["tasks"]["task2"]
    assert merged["rankings"]["task2"] == whole["rankings"]["task2"]

    # Stale: shards of another model, or of other data (one candidate's text changed), are refused.
    with pytest.raises(ValueError, match=r"shard .*embeddings-00000-of-00002\.npy is stale: it was encoded from "
                                         r"another model .*use a fresh --shard-dir"):
        evaluate(HashingEncoder("b"), folder, k_values=K, shard_dir=shard_dir, show_progress=False)
    edited = [dict(row) for row in corpus]
    edited[5]["text"] = "a different caption"
    other = write_eval_folder(tmp_path / "other", {2: (edited, queries_for(["d1"], task=2))})
    with pytest.raises(ValueError, match=r"is stale: it was encoded from other candidates"):
        evaluate(model, other, k_values=K, shard_dir=shard_dir, show_progress=False)

    pool_dir = shard_dir / "task2"
    manifest = json.loads((pool_dir / "embeddings-00000-of-00002.manifest.json").read_text())
    assert manifest["encoder_fingerprint"] == model.fingerprint and (manifest["shard_index"], manifest["num_shards"],
                                                                     manifest["count"]) == (0, 2, 20)

    def tampered(name: str, rows: slice, ids_from: int) -> Path:
        """A copy of the shards whose shard 1 holds ``rows`` of shard ``ids_from``, with valid fingerprints."""
        directory = tmp_path / name
        shutil.copytree(shard_dir, directory)
        source = directory / "task2" / f"embeddings-{ids_from:05d}-of-00002"
        vectors = np.load(f"{source}.npy")[rows]
        ids = json.loads(Path(f"{source}.ids.json").read_text())[rows]
        save_embedding_shard(directory / "task2", vectors, ids, 1, 2, encoder_fingerprint=model.fingerprint,
                             data_fingerprint=manifest["data_fingerprint"])
        return directory

    with pytest.raises(ValueError, match=r"id 'd0' is in shard .*embeddings-00000-of-00002\.npy and again in shard "
                                         r".*embeddings-00001-of-00002\.npy; re-run the shards"):
        evaluate(model, folder, k_values=K, shard_dir=tampered("duplicated", slice(None), 0), show_progress=False)
    with pytest.raises(ValueError, match=r"lack 1 of the pool's 40 candidate ids, e\.g\. \['d39'\]"):
        evaluate(model, folder, k_values=K, shard_dir=tampered("short", slice(0, -1), 1), show_progress=False)

    for path in _shard_files(pool_dir, 1):
        path.unlink()
    with pytest.raises(FileNotFoundError, match=r"lacks shards \[1\] of 2 \(embeddings-00001-of-00002\.npy\); "
                                                r"encode them \(--shard 1/2"):
        evaluate(model, folder, k_values=K, shard_dir=shard_dir, show_progress=False)


def test_a_global_pool_shared_by_two_tasks_is_encoded_once(tmp_path):
    """Tasks 1 and 2 share 15 of their 30 candidates: the global pool has 45, encoded once, sharded or not."""
    rows = [candidate(f"d{i}", i) for i in range(45)]
    folder = write_eval_folder(tmp_path / "eval", {
        1: (rows[:30], queries_for([f"d{i}" for i in range(0, 30, 4)], task=1)),
        2: (rows[15:], queries_for([f"d{i}" for i in range(15, 45, 4)], task=2)),
    })
    encoder = HashingEncoder()
    whole = evaluate(encoder, folder, k_values=K, pool="global", show_progress=False)
    assert sorted(encoder.encoded("candidate")) == sorted(row["text"] for row in rows)
    assert {task: values["num_candidates"] for task, values in whole["tasks"].items()} == {"task1": 45, "task2": 45}

    encoder, shard_dir = HashingEncoder(), tmp_path / "shards"
    written = [evaluate(encoder, folder, k_values=K, pool="global", shard=(index, 2), shard_dir=shard_dir,
                        show_progress=False) for index in range(2)]
    assert len(encoder.encoded("candidate")) == 45  # each candidate once over both shards, not once per task
    assert [result["shards"] for result in written] == [[str(shard_dir / "global" / f"embeddings-0000{i}-of-00002.npy")]
                                                        for i in range(2)]
    assert encoder.encoded("query") == []  # a shard run encodes candidates only
    assert sorted(path.name for path in shard_dir.rglob("*.npy")) == [f"embeddings-0000{i}-of-00002.npy"
                                                                      for i in range(2)]
    merged = evaluate(encoder, folder, k_values=K, pool="global", shard_dir=shard_dir, show_progress=False)
    assert merged["tasks"] == whole["tasks"]
    assert len(encoder.encoded("candidate")) == 45  # merging encodes no candidate
