"""Reliability of the evaluation side: concurrent and killed writers never leave a half entry or half file,
and `unica evaluate` / `unica ablate` / `unica card` refuse bad input before loading or training anything."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from test_ablation import ablation_config

from dataset_builders.atomic import TEMPORARY_MARKER
from eval.cache import EmbeddingCache, combine_fingerprints, fingerprint_model_dir, fingerprint_records
from unica.apps.ablation import load_ablation_config
from unica.apps.cli import main as cli
from unica.card import render_model_card

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "fixtures" / "scenes"
MODEL_FP = combine_fingerprints("model-weights", dtype="float32", role="candidate")
DATA_FP = fingerprint_records(["d1", "d2"], ["a cat", "a dog"])


def _array(seed: int, rows: int, dim: int) -> np.ndarray:
    """The array writer ``seed`` stores: distinct per seed, identical in every process."""
    return np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)


def _payload(seed: int) -> dict:
    """The results.json writer ``seed`` stores: large enough that writing it takes a while."""
    return {"writer": seed, "values": [round(float(v), 6) for v in _array(seed, 100, 200).ravel()]}


def _script(body: str) -> str:
    prelude = f"""
        import json, sys, time
        from pathlib import Path
        sys.path.insert(0, {str(REPO)!r})
        import numpy as np
        def array(seed, rows, dim):
            return np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    """
    return textwrap.dedent(prelude) + textwrap.dedent(body)


# ------------------------------------------------------------------------------------------ concurrent writers

_WRITER = """
    from eval.cache import EmbeddingCache
    from eval.index import save_embedding_shard
    from eval.report import write_results_json
    root, seed, puts, go = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
    model_fp, data_fp = sys.argv[5], sys.argv[6]
    embeddings = array(seed, 2000, 128)
    payload = {"writer": seed, "values": [round(float(v), 6) for v in array(seed, 100, 200).ravel()]}
    cache = EmbeddingCache(root / "cache")
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.001)
    errors = []
    for _ in range(puts):
        for what, write in (
            ("put", lambda: cache.put(model_fp, data_fp, embeddings)),
            ("results.json", lambda: write_results_json(payload, root / "out" / "results.json")),
            ("shard", lambda: save_embedding_shard(root / "shards", embeddings, [str(i) for i in range(2000)], 0, 1)),
        ):
            try:
                write()
            except Exception as error:
                errors.append(f"{what}: {error!r}")
    print(json.dumps(errors), flush=True)
"""


def test_concurrent_writers_never_fail_and_readers_see_whole_entries(tmp_path, caplog):
    go = tmp_path / "go"
    script = _script(_WRITER)
    writers = [
        subprocess.Popen([sys.executable, "-c", script, str(tmp_path), str(seed), "40", str(go), MODEL_FP, DATA_FP],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for seed in (1, 2)
    ]
    for writer in writers:
        assert writer.stdout.readline().strip() == "ready", writer.stderr.read()
    expected = {seed: _array(seed, 2000, 128) for seed in (1, 2)}
    payloads = [_payload(1), _payload(2)]
    cache = EmbeddingCache(tmp_path / "cache")
    results_path, shard = tmp_path / "out" / "results.json", tmp_path / "shards" / "embeddings-00000-of-00001.npy"
    seen = {"cache": 0, "json": 0, "shard": 0}
    caplog.set_level(logging.WARNING, logger="eval.cache")
    go.touch()
    while any(writer.poll() is None for writer in writers):
        got = cache.get(MODEL_FP, DATA_FP)
        if got is not None:
            assert any(np.array_equal(got, array) for array in expected.values())
            seen["cache"] += 1
        if results_path.is_file():
            assert json.loads(results_path.read_text(encoding="utf-8")) in payloads
            seen["json"] += 1
        if shard.is_file():
            loaded = np.load(shard)
            assert any(np.array_equal(loaded, array) for array in expected.values())
            seen["shard"] += 1
    reports = [writer.communicate() for writer in writers]
    for writer, (out, err) in zip(writers, reports):
        assert writer.returncode == 0, err
        assert json.loads(out.strip().splitlines()[-1]) == [], "a writer failed"
    assert min(seen.values()) > 0, seen  # the reader really read while the writers wrote
    # A reader that meets an entry between its array and its metadata waits for the writer, not "corrupt".
    assert "corrupt" not in caplog.text
    final = cache.get(MODEL_FP, DATA_FP)
    assert final is not None and any(np.array_equal(final, array) for array in expected.values())
    entry = cache.path_for(MODEL_FP, DATA_FP).parent
    assert not [p.name for p in entry.iterdir() if TEMPORARY_MARKER in p.name or p.name.endswith(".tmp")]


# ------------------------------------------------------------------------------------------ killed writers

_LOOPING_WRITER = """
    from eval.cache import EmbeddingCache
    cache = EmbeddingCache(sys.argv[1])
    arrays = [array(10, 1024, 1024), array(11, 1024, 1024)]  # 4 MiB each
    print("ready", flush=True)
    i = 0
    while True:
        cache.put(sys.argv[2], sys.argv[3], arrays[i % 2])
        i += 1
"""


def test_writer_killed_during_put_never_leaves_a_valid_looking_bad_entry(tmp_path):
    rng = np.random.default_rng(1234)
    arrays = [_array(10, 1024, 1024), _array(11, 1024, 1024)]
    cache = EmbeddingCache(tmp_path / "cache")
    script = _script(_LOOPING_WRITER)
    for _ in range(6):
        writer = subprocess.Popen([sys.executable, "-c", script, str(cache.root), MODEL_FP, DATA_FP],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert writer.stdout.readline().strip() == "ready", writer.stderr.read()
        time.sleep(float(rng.uniform(0.02, 0.4)))
        writer.kill()  # SIGKILL: no cleanup, no finally blocks
        writer.communicate()
        got = cache.get(MODEL_FP, DATA_FP)
        assert got is None or any(np.array_equal(got, array) for array in arrays)
    # The lock of a killed writer is released: a new writer stores the entry, and stale temporaries go.
    cache.put(MODEL_FP, DATA_FP, arrays[0])
    assert np.array_equal(cache.get(MODEL_FP, DATA_FP), arrays[0])
    entry = cache.path_for(MODEL_FP, DATA_FP).parent
    assert sorted(p.name for p in entry.iterdir() if not p.name.endswith(".lock")) == [
        f"{DATA_FP}.json", f"{DATA_FP}.npy"]


def test_model_fingerprint_ignores_temporaries_and_locks(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"hidden_size": 8}')
    (folder / "model.safetensors").write_bytes(b"weights")
    before = fingerprint_model_dir(folder)
    (folder / f"model.safetensors{TEMPORARY_MARKER}abc123.safetensors").write_bytes(b"half")
    (folder / f".model.safetensors{TEMPORARY_MARKER}def456.safetensors").write_bytes(b"half")
    (folder / "model.safetensors.lock").write_bytes(b"")
    assert fingerprint_model_dir(folder) == before
    (folder / "tokenizer.json").write_text("{}")
    assert fingerprint_model_dir(folder) != before


# ------------------------------------------------------------------------------------------ unica evaluate


@pytest.fixture(scope="module")
def eval_set(tmp_path_factory):
    from dataset_builders.evaluation import build_evaluation_sets

    out = tmp_path_factory.mktemp("eval") / "scenes-eval"
    build_evaluation_sets(FIXTURE, out, dataset="scenes", tasks=(2,))
    return out


def test_evaluate_refuses_an_existing_results_folder(tmp_path, caplog):
    out = tmp_path / "results"
    out.mkdir()
    (out / "results.json").write_text('{"tasks": {"task2": {"hit@5": 0.75}}}')
    # The checkpoint and dataset do not exist: the folder check must come before anything is loaded.
    args = ["evaluate", str(tmp_path / "no-model"), "--dataset", str(tmp_path / "no-data"), "--out", str(out)]
    assert cli(args) == 1
    assert f"{str(out)!r} already exists" in caplog.text and "pass --overwrite" in caplog.text
    assert json.loads((out / "results.json").read_text()) == {"tasks": {"task2": {"hit@5": 0.75}}}
    assert sorted(p.name for p in out.iterdir()) == ["results.json"]
    caplog.clear()
    # --overwrite passes the check (and then fails on the missing checkpoint); an empty folder needs no flag.
    assert cli([*args, "--overwrite"]) == 1
    assert "already exists" not in caplog.text and "no-model" in caplog.text
    caplog.clear()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli(["evaluate", str(tmp_path / "no-model"), "--dataset", str(tmp_path / "no-data"), "--out",
                str(empty)]) == 1
    assert "already exists" not in caplog.text


def test_evaluate_overwrite_replaces_results(tiny_checkpoint, eval_set, tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    (out / "results.json").write_text('{"stale": true}')
    assert cli(["evaluate", str(tiny_checkpoint), "--dataset", str(eval_set), "--out", str(out), "--k", "1,5",
                "--overwrite"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert "stale" not in results and results["settings"]["k_values"] == [1, 5]
    task = results["tasks"]["task2"]
    assert 0.0 <= task["hit@1"] <= task["hit@5"] <= 1.0 and task["num_queries"] > 0


@pytest.mark.parametrize("k, fragment", [
    ("3", "none of the reported metrics"),
    ("3,7", "none of the reported metrics"),
    ("0,5", "positive"),
    ("-1", "positive"),
    (",", "at least one"),
])
def test_evaluate_rejects_bad_cutoffs_before_encoding(tiny_checkpoint, eval_set, tmp_path, caplog, k, fragment):
    out = tmp_path / "results"
    assert cli(["evaluate", str(tiny_checkpoint), "--dataset", str(eval_set), "--out", str(out),
                f"--k={k}"]) == 1
    message = caplog.text
    assert "--k" in message and fragment in message
    if fragment == "none of the reported metrics":
        assert "1, 5, 10" in message  # the cut-offs that do give the reported metrics
    assert not out.exists()  # nothing encoded, cached or written


# ------------------------------------------------------------------------------------------ unica ablate


def _ablation_config(tmp_path: Path, **changes) -> Path:
    return ablation_config(tmp_path, max_steps=1, **changes)


@pytest.mark.parametrize("changes, fragments", [
    ({"evaluation__metrics": ["hit@5", "recal@10"]}, ["evaluation.metrics", "'recal@10'", "hit@5", "ndcg@10"]),
    ({"evaluation__metrics": ["hit@3"]}, ["evaluation.metrics", "'hit@3'", "hit@1"]),
    ({"evaluation__metrics": []}, ["evaluation.metrics"]),
    ({"grid__fusion": ["concat", "cross"]}, ["grid.fusion", "'cross'", "bica", "concat"]),
    ({"grid__psl_weight": [0.0, -0.1]}, ["grid.psl_weight", "-0.1", ">= 0"]),
    ({"grid__learning_rate": [0.0]}, ["grid.learning_rate", "> 0"]),
    ({"grid__learning_rate": ["fast"]}, ["grid.learning_rate", "'fast'"]),
    ({"grid__seed": [0, 1.5]}, ["grid.seed", "1.5", "integer"]),
    ({"baseline__fusion": "bica-x"}, ["baseline", "bica-x", "grid"]),
    ({"baseline__dropout": 0.1}, ["baseline", "dropout", "fusion", "psl_weight"]),
    ({"evaluation__tasks": ["task9"]}, ["evaluation.tasks", "task9", "task2"]),
    ({"evaluation__batch_size": 0}, ["evaluation.batch_size", "positive integer"]),
])
def test_ablation_config_is_validated_before_training(tmp_path, caplog, changes, fragments):
    path = _ablation_config(tmp_path, **changes)
    with pytest.raises(ValueError) as raised:
        load_ablation_config(path)
    for fragment in fragments:
        assert fragment in str(raised.value)
    out = tmp_path / "ablation-out"
    assert cli(["ablate", "--config", str(path), "--out", str(out)]) == 1
    assert str(raised.value) in caplog.text
    assert not out.exists()  # nothing trained, built or written


def test_valid_ablation_config_loads(tmp_path):
    config = load_ablation_config(_ablation_config(tmp_path, **{"grid__psl_weight": [0, 0.1]}))
    assert config["grid"]["fusion"] == ["concat", "bica"] and config["evaluation"]["metrics"] == ["hit@5", "mrr@1"]
    example = load_ablation_config(REPO / "examples" / "ablation_scenes.yaml")
    assert example["evaluation"]["metrics"] == ["hit@5", "hit@10", "mrr@1"]


# ------------------------------------------------------------------------------------------ unica card


@pytest.mark.parametrize("option, content, name", [
    ("--results", [{"hit@5": 0.5}], "results"),
    ("--results", {"tasks": [{"hit@5": 0.5}]}, "results"),
    ("--results", {"tasks": {"task2": 0.5}}, "results"),
    ("--ablation", ["| cell |"], "ablation"),
])
def test_card_rejects_json_of_the_wrong_shape(tiny_checkpoint, tmp_path, caplog, option, content, name):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(content))
    readme = tiny_checkpoint / "README.md"
    before = readme.read_bytes() if readme.exists() else None
    with pytest.raises(ValueError) as raised:
        render_model_card(tiny_checkpoint, **{f"{name}_path": path})
    assert str(path) in str(raised.value) and "expected" in str(raised.value)
    assert cli(["card", str(tiny_checkpoint), option, str(path)]) == 1
    assert str(path) in caplog.text and "Traceback" not in caplog.text
    assert (readme.read_bytes() if readme.exists() else None) == before  # the card was not rewritten
    if name == "results":
        assert "unica evaluate" in str(raised.value)


def test_card_is_written_atomically_without_leftovers(tiny_checkpoint, tmp_path):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_checkpoint, folder)
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"tasks": {"task2": {"hit@5": 0.625}}}))
    assert cli(["card", str(folder), "--results", str(results)]) == 0
    assert "| task2 | 0.6250 |" in (folder / "README.md").read_text()
    assert not [p.name for p in folder.iterdir() if TEMPORARY_MARKER in p.name or ".partial" in p.name]
    assert os.stat(folder / "README.md").st_size > 0
