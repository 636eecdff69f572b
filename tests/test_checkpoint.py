"""Checkpoint folders: round trip, remote-code isolation, atomic writes and the init / encode CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import TINY_VIT, make_image

from dataset_builders.atomic import atomic_directory
from unica.apps.cli import main as cli
from unica.checkpoint import REQUIRED_FILES, load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def saved(tiny_pair, tmp_path_factory):
    model, processor = tiny_pair
    with torch.no_grad():
        model.fusion_encoder.layers[0].text_attention_gate.fill_(0.3)  # a non-trivial, "trained" Bi-CA
    folder = tmp_path_factory.mktemp("ckpt") / "unica-mini"
    save_checkpoint(model, processor, folder)
    yield folder
    with torch.no_grad():
        model.fusion_encoder.layers[0].text_attention_gate.zero_()


def _items(tmp_path):
    path = tmp_path / "scene.png"
    make_image(21).save(path)
    return path, ["a red circle", {"text": "Red Circle, 1990", "image": str(path)}, {"image": str(path)}]


def test_folder_has_remote_code_auto_map_and_safetensors(saved):
    for name in REQUIRED_FILES:
        assert (saved / name).is_file(), name
    assert not list(saved.glob("*.bin")) and not list(saved.glob("*.pt"))
    config = json.loads((saved / "config.json").read_text())
    assert config["model_type"] == "unica"
    assert config["auto_map"] == {"AutoConfig": "configuration_unica.UniCAConfig",
                                  "AutoModel": "modeling_unica.UniCAModel",
                                  "AutoProcessor": "processing_unica.UniCAProcessor"}
    processor_config = json.loads((saved / "processor_config.json").read_text())
    assert processor_config["auto_map"]["AutoProcessor"] == "processing_unica.UniCAProcessor"
    assert not (saved.parent / ".unica-mini.partial").exists()
    assert [p.name for p in saved.parent.iterdir()] == ["unica-mini"]


def test_round_trip_gives_identical_embeddings(saved, tiny_pair, tmp_path):
    model, processor = tiny_pair
    _, items = _items(tmp_path)
    loaded_model, loaded_processor = load_checkpoint(saved)
    with torch.no_grad():
        expected = model(**processor.process_items(items)).embeddings
        got = loaded_model(**loaded_processor.process_items(items)).embeddings
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
    assert loaded_model.config.fusion == "bica" and loaded_processor.max_text_length == processor.max_text_length


def test_loads_without_this_package_via_remote_code(saved, tiny_pair, tmp_path):
    """In a subprocess where unica / modeling_unica / configuration_unica cannot be imported."""
    model, processor = tiny_pair
    image_path, items = _items(tmp_path)
    with torch.no_grad():
        expected = model(**processor.process_items(items)).embeddings.numpy()
    script = textwrap.dedent(f"""
        import sys
        for name in ("unica", "modeling_unica", "configuration_unica", "dataset_builders"):
            sys.modules[name] = None  # any import of these now raises ImportError
        import numpy as np, torch
        from PIL import Image
        from transformers import AutoModel, AutoProcessor
        model = AutoModel.from_pretrained({str(saved)!r}, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained({str(saved)!r}, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        assert type(processor).__module__.startswith("transformers_modules"), type(processor).__module__
        image = Image.open({str(image_path)!r})
        batch = processor(text=["a red circle", "Red Circle, 1990", None], images=[None, image, image])
        with torch.no_grad():
            np.save({str(tmp_path / "remote.npy")!r}, model(**batch).embeddings.numpy())
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "remote.npy"), expected, atol=1e-6, rtol=0)


def test_auto_classes_work_without_trust_remote_code_when_installed(saved):
    from transformers import AutoConfig, AutoModel, AutoProcessor

    import modeling_unica

    assert isinstance(AutoModel.from_pretrained(saved), modeling_unica.UniCAModel)
    assert isinstance(AutoProcessor.from_pretrained(saved), modeling_unica.UniCAProcessor)
    assert AutoConfig.from_pretrained(saved).model_type == "unica"


def test_atomic_directory_leaves_nothing_on_failure(tmp_path):
    def broken(folder):
        (folder / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"), atomic_directory(tmp_path / "out") as folder:
        broken(folder)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError, match="already exists"), atomic_directory(tmp_path / "out"):
        pass


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a UniCA checkpoint folder"):
        load_checkpoint(tmp_path)


def test_cli_init_and_encode(minilm_path, tmp_path, caplog):
    out = tmp_path / "cli-model"
    code = cli(["init", str(out), "--text", minilm_path, "--vision", "vit-micro", "--fusion", "concat",
                "--image-size", str(TINY_VIT["image_size"]), "--patch-size", str(TINY_VIT["patch_size"])])
    assert code == 0 and (out / "model.safetensors").is_file()
    assert json.loads((out / "config.json").read_text())["fusion"] == "concat"
    assert cli(["init", str(out), "--text", minilm_path]) == 1  # refuses to overwrite
    assert "already exists" in caplog.text
    image_path, _ = _items(tmp_path)
    jsonl = tmp_path / "records.jsonl"
    jsonl.write_text(json.dumps({"text": "a red circle", "image": image_path.name}) + "\n"
                     + json.dumps({"text": "only text"}) + "\n")
    assert cli(["encode", str(out), "--text", "a red circle", "--image", str(image_path),
                "--out", str(tmp_path / "one.npy")]) == 0
    assert cli(["encode", str(out), "--jsonl", str(jsonl), "--out", str(tmp_path / "many.npy"),
                "--batch-size", "1", "--dtype", "bf16", "--threads", "1"]) == 0
    one, many = np.load(tmp_path / "one.npy"), np.load(tmp_path / "many.npy")
    assert one.shape == (1, 384) and many.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(many, axis=1), 1.0, atol=1e-2)
    assert float(one[0] @ many[0]) > 0.99  # same item in fp32 vs bf16
    assert cli(["encode", str(out), "--text", "a", "--text", "b", "--image", str(image_path),
                "--out", str(tmp_path / "bad.npy")]) == 1
    assert "equal counts" in caplog.text
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{broken\n')
    assert cli(["encode", str(out), "--jsonl", str(bad), "--out", str(tmp_path / "bad.npy")]) == 1
    assert "bad.jsonl:2: malformed JSON" in caplog.text
    assert not (tmp_path / "bad.npy").exists()
