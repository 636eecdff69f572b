"""Embedding cache: reuse only for the same model and data; other models and corrupt files are re-encoded."""

import json
import logging
import shutil

import numpy as np
import pytest
from safetensors.numpy import save_file

from eval.cache import (
    EmbeddingCache,
    combine_fingerprints,
    fingerprint_model_dir,
    fingerprint_records,
    fingerprint_state_dict,
)


def _model_dir(path, weight_value, config=None):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config or {"model_type": "unica", "hidden_size": 4}))
    save_file({"proj.weight": np.full((4, 4), weight_value, dtype=np.float32)}, str(path / "model.safetensors"))
    return path


class Encoder:
    """Counts calls, so a test can see whether anything was encoded."""

    def __init__(self, value):
        self.value, self.calls = value, 0

    def __call__(self):
        self.calls += 1
        return np.full((3, 4), self.value, dtype=np.float32)


def test_model_fingerprint_tracks_weights_and_config_not_card(tmp_path):
    a = fingerprint_model_dir(_model_dir(tmp_path / "a", 0.5))
    b = fingerprint_model_dir(_model_dir(tmp_path / "b", 0.25))
    assert a != b  # other weights
    same = _model_dir(tmp_path / "same", 0.5, config={"hidden_size": 4, "model_type": "unica"})
    (same / "README.md").write_text("# a model card")
    assert fingerprint_model_dir(same) == a  # key order and the card do not matter
    (same / "tokenizer.json").write_text("{}")
    assert fingerprint_model_dir(same) != a  # a tokenizer file does
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        fingerprint_model_dir(tmp_path / "a" / "..")


def test_state_dict_and_record_fingerprints():
    torch = pytest.importorskip("torch")
    weights = {"w": torch.ones(2, 2, dtype=torch.bfloat16)}
    changed = {"w": torch.ones(2, 2, dtype=torch.bfloat16) * 2}
    assert fingerprint_state_dict(weights) == fingerprint_state_dict({"w": torch.ones(2, 2, dtype=torch.bfloat16)})
    assert fingerprint_state_dict(weights) != fingerprint_state_dict(changed)
    assert fingerprint_state_dict(weights) != fingerprint_state_dict({"w": torch.ones(2, 2)})  # dtype matters
    base = fingerprint_records(["d1", "d2"], ["a cat", {"text": "a dog", "image": b"\x89PNG"}])
    assert base == fingerprint_records(["d1", "d2"], ["a cat", {"image": b"\x89PNG", "text": "a dog"}])
    assert base != fingerprint_records(["d2", "d1"], ["a cat", {"text": "a dog", "image": b"\x89PNG"}])
    assert base != fingerprint_records(["d1", "d2"], ["a cat", {"text": "a dog", "image": b"\x89PNH"}])
    with pytest.raises(ValueError, match="got 2 ids but 1 contents"):
        fingerprint_records(["d1", "d2"], ["x"])


def test_second_run_encodes_nothing(tmp_path):
    model_fp = combine_fingerprints(fingerprint_model_dir(_model_dir(tmp_path / "m", 0.5)), dtype="float32")
    data_fp = fingerprint_records(["d1", "d2", "d3"], ["x", "y", "z"])
    encoder = Encoder(1.0)
    first = EmbeddingCache(tmp_path / "cache").get_or_compute(model_fp, data_fp, encoder)
    second_cache = EmbeddingCache(tmp_path / "cache")  # a new process would build a new object
    second = second_cache.get_or_compute(model_fp, data_fp, encoder)
    assert encoder.calls == 1 and second_cache.hits == 1 and second_cache.misses == 0
    np.testing.assert_array_equal(first, second)


def test_other_model_or_setting_is_never_reused(tmp_path):
    cache = EmbeddingCache(tmp_path / "cache")
    data_fp = fingerprint_records(["d1", "d2", "d3"])
    model_a = fingerprint_model_dir(_model_dir(tmp_path / "a", 0.5))
    model_b = fingerprint_model_dir(_model_dir(tmp_path / "b", 0.25))
    cache.get_or_compute(model_a, data_fp, Encoder(1.0))
    encoder_b = Encoder(2.0)
    assert cache.get_or_compute(model_b, data_fp, encoder_b)[0, 0] == 2.0 and encoder_b.calls == 1
    bf16 = Encoder(3.0)
    cache.get_or_compute(combine_fingerprints(model_a, dtype="bf16"), data_fp, bf16)
    assert bf16.calls == 1
    assert cache.get_or_compute(model_a, data_fp, Encoder(9.0))[0, 0] == 1.0  # a's own entry is still there


def test_entry_copied_from_another_model_is_detected(tmp_path, caplog):
    cache = EmbeddingCache(tmp_path / "cache")
    data_fp, model_a, model_b = "d" * 64, "a" * 64, "b" * 64
    cache.get_or_compute(model_a, data_fp, Encoder(1.0))
    # Someone copies model a's files to where model b's entry would be.
    target = cache.path_for(model_b, data_fp)
    target.parent.mkdir(parents=True)
    source = cache.path_for(model_a, data_fp)
    shutil.copy(source, target)
    shutil.copy(source.with_suffix(".json"), target.with_suffix(".json"))
    encoder = Encoder(2.0)
    with caplog.at_level(logging.WARNING, logger="eval.cache"):
        out = cache.get_or_compute(model_b, data_fp, encoder)
    assert encoder.calls == 1 and out[0, 0] == 2.0
    assert "was written for model aaaaaaaaaaaa" in caplog.text and "not reusing it" in caplog.text
    assert json.loads(target.with_suffix(".json").read_text())["model_fingerprint"] == model_b


@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "garbage_meta"])
def test_corrupt_entry_is_re_encoded_with_a_warning(tmp_path, caplog, damage):
    cache = EmbeddingCache(tmp_path / "cache")
    model_fp, data_fp = "c" * 64, "e" * 64
    cache.get_or_compute(model_fp, data_fp, Encoder(1.0))
    path = cache.path_for(model_fp, data_fp)
    if damage == "flip_byte":
        raw = bytearray(path.read_bytes())
        raw[-1] ^= 0xFF
        path.write_bytes(bytes(raw))
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:50])
    else:
        path.with_suffix(".json").write_text("{not json")
    encoder = Encoder(1.0)
    with caplog.at_level(logging.WARNING, logger="eval.cache"):
        out = cache.get_or_compute(model_fp, data_fp, encoder)
    assert encoder.calls == 1 and out.shape == (3, 4)
    assert "is corrupt" in caplog.text and "re-encoding" in caplog.text
    assert cache.get(model_fp, data_fp) is not None  # repaired


def test_bad_fingerprints_and_embeddings(tmp_path):
    cache = EmbeddingCache(tmp_path)
    with pytest.raises(ValueError, match="model_fingerprint='my-model' is not a hex digest"):
        cache.get_or_compute("my-model", "e" * 64, Encoder(1.0))
    with pytest.raises(ValueError, match="non-empty 2-D array"):
        cache.get_or_compute("c" * 64, "e" * 64, lambda: np.ones(3))
