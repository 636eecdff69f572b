"""``unica pretrain``: stages 1 and 2 from a config -> a plain UniCA checkpoint that AutoModel loads (remote code
only) and ``unica train`` starts from; the same command under torchrun makes the update of one process; bad
configs fail with the key named, before the model is loaded. Tiny components (a 2-layer BERT, a 32 px ViT)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY_VIT
from safetensors.torch import load_file
from test_ddp import torchrun_two_processes

from unica.apps import pretrain_cli
from unica.apps.cli import main
from unica.checkpoint import load_checkpoint
from unica.cocoa import HEADS_FILE, PRETRAINING_RECORD_FILE

FIXTURE = Path(__file__).parent / "fixtures" / "scenes"


def pretrain_config(path: Path, text: str, output_dir: Path, pretrain: dict | None = None, data: dict | None = None,
                    **training) -> Path:
    config = {
        "init": {"text": text, "vision": "vit-micro", "vision_config_overrides": TINY_VIT, "fusion": "bica",
                 "pooling": "cls", "seed": 0},
        "data": data or {"builder": "mbeir", "root": str(FIXTURE), "max_rows": 8},
        "pretrain": pretrain or {"stage1_steps": 2, "stage2_steps": 2},
        "training": {"output_dir": str(output_dir), "per_device_train_batch_size": 4, "learning_rate": 1e-3,
                     "seed": 0, "report_to": "none", "disable_tqdm": True, "dataloader_pin_memory": False,
                     "logging_steps": 1, "save_strategy": "no", **training},
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def test_pretrain_writes_a_plain_checkpoint_that_automodel_loads_and_training_starts_from(tiny_text_path,
                                                                                          tmp_path) -> None:
    out = tmp_path / "pretrained"
    config = pretrain_config(tmp_path / "pretrain.yaml", tiny_text_path, out, save_strategy="steps", save_steps=4)
    assert main(["pretrain", "--config", str(config)]) == 0
    state = json.loads((out / "trainer_state.json").read_text())
    assert [entry["stage"] for entry in state["log_history"] if "stage" in entry] == [1.0, 1.0, 2.0, 2.0]
    record = json.loads((out / PRETRAINING_RECORD_FILE).read_text())
    assert record["steps"] == 4 and record["settings"]["decoder_text_mask_ratio"] == 0.6
    assert (out / "checkpoint-4" / HEADS_FILE).is_file() and not (out / HEADS_FILE).exists()
    weights = load_file(out / "model.safetensors")
    assert not any("decoder" in name or "head" in name for name in weights)  # a plain UniCA checkpoint
    model, processor = load_checkpoint(out)
    initial, _ = pretrain_cli.load_model(yaml.safe_load(config.read_text()))
    assert not torch.equal(model.visual_projection.proj.weight, initial.visual_projection.proj.weight)  # trained

    # AutoModel with the checkpoint's own code, in a process where this repository's packages cannot be imported.
    image = tmp_path / "scene.png"
    from dataset_builders import load_scenes

    load_scenes(FIXTURE, split="train")[1]["pos_image"].save(image)
    with torch.no_grad():
        expected = model.eval()(**processor(text=["a red circle", None], images=[None, str(image)])).embeddings
    script = textwrap.dedent(f"""
        import sys
        for name in ("unica", "modeling_unica", "configuration_unica", "dataset_builders"):
            sys.modules[name] = None
        import numpy as np, torch
        from transformers import AutoModel, AutoProcessor
        model = AutoModel.from_pretrained({str(out)!r}, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained({str(out)!r}, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        with torch.no_grad():
            batch = processor(text=["a red circle", None], images=[None, {str(image)!r}])
            np.save({str(tmp_path / "remote.npy")!r}, model(**batch).embeddings.numpy())
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "remote.npy"), expected.numpy(), atol=1e-6, rtol=0)

    # Resuming the finished run trains and writes nothing.
    before = (out / "model.safetensors").stat().st_mtime_ns
    assert main(["pretrain", "--config", str(config), "--resume-from-checkpoint", "latest"]) == 0
    assert (out / "model.safetensors").stat().st_mtime_ns == before

    # Stage 3: contrastive training starts from the pre-trained checkpoint.
    train = tmp_path / "train.yaml"
    train.write_text(yaml.safe_dump({
        "model": str(out), "data": {"builder": "mbeir", "root": str(FIXTURE), "max_rows": 8},
        "training": {"output_dir": str(tmp_path / "trained"), "max_steps": 1, "per_device_train_batch_size": 4,
                     "report_to": "none", "disable_tqdm": True, "save_strategy": "no",
                     "dataloader_pin_memory": False}}), encoding="utf-8")
    assert main(["train", "--config", str(train)]) == 0
    trained, _ = load_checkpoint(tmp_path / "trained")
    assert not torch.equal(trained.visual_projection.proj.weight, model.visual_projection.proj.weight)


RUNNER = """
import sys

from unica.apps.cli import main

sys.exit(main(["pretrain", "--config", sys.argv[1]]))
"""


def test_torchrun_pretrain_makes_the_update_of_one_process(tiny_text_path, tmp_path) -> None:
    """One stage-1 and one stage-2 step (SGD: the update is the gradient) on 4 rows: batches of 4 in one process,
    of 2 in each of two; the checkpoints (model and heads) agree."""
    sgd = dict(optim="sgd", learning_rate=0.5, lr_scheduler_type="constant", max_grad_norm=0.5, weight_decay=0.0,
               save_strategy="steps", save_steps=2, use_cpu=True)
    data = {"builder": "mbeir", "root": str(FIXTURE), "max_rows": 4}
    steps = {"stage1_steps": 1, "stage2_steps": 1}
    one = pretrain_config(tmp_path / "one.yaml", tiny_text_path, tmp_path / "one", steps, data, **sgd)
    sgd["per_device_train_batch_size"] = 2
    two = pretrain_config(tmp_path / "two.yaml", tiny_text_path, tmp_path / "two", steps, data, **sgd)
    assert main(["pretrain", "--config", str(one)]) == 0
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER, encoding="utf-8")
    run = torchrun_two_processes(runner, str(two))
    assert run.returncode == 0, run.stderr[-3000:]
    for name in ("model.safetensors", HEADS_FILE):
        single, double = (load_file(tmp_path / folder / "checkpoint-2" / name) for folder in ("one", "two"))
        assert single.keys() == double.keys()
        for key, value in single.items():
            torch.testing.assert_close(double[key], value, atol=2e-6, rtol=1e-4, msg=key)
    record = json.loads((tmp_path / "two" / PRETRAINING_RECORD_FILE).read_text())
    assert record["world_size"] == 2


@pytest.fixture
def no_model_loading(monkeypatch):
    """Fails the test if the command gets as far as loading the model."""

    def refuse(config):
        raise AssertionError("the model was loaded before the config error was found")

    monkeypatch.setattr(pretrain_cli, "load_model", refuse)


@pytest.mark.parametrize(("pretrain", "training", "message"), [
    ({"stage1_steps": 2, "text_mask_ratoi": 0.2}, {},
     r"unknown key\(s\) 'text_mask_ratoi' \(did you mean 'text_mask_ratio'\?\) in section 'pretrain'"),
    ({"stage1_steps": 2, "image_mask_ratio": 1.0}, {},
     r"pretrain.image_mask_ratio=1.0 is not a mask ratio: use a number in \[0, 1\)"),
    ({"stage2_steps": 2, "decoder_hidden_size": 64}, {},
     r"pretrain.decoder_hidden_size=64 does not fit the encoder, whose hidden size is 32.*set decoder_hidden_size: 32"),
    ({"stage2_steps": 2, "decoder_heads": 5}, {}, r"pretrain.decoder_heads=5 must divide the decoder width 32"),
    ({"stage1_steps": 2, "stage2_steps": 2}, {"max_steps": 10},
     r"max_steps=10 differs from pretrain.stage1_steps \+ stage2_steps = 4; leave max_steps out"),
    ({"stage1_steps": 2}, {"psl_weight": 0.1}, r"unknown key\(s\) 'psl_weight' in section 'training'"),
])
def test_config_errors_name_the_key_before_the_model_is_loaded(pretrain, training, message, tiny_text_path, tmp_path,
                                                               caplog, no_model_loading) -> None:
    config = pretrain_config(tmp_path / "bad.yaml", tiny_text_path, tmp_path / "o", pretrain, **training)
    assert main(["pretrain", "--config", str(config)]) == 1
    assert any(re.search(message, record.getMessage()) for record in caplog.records), caplog.text
    assert not (tmp_path / "o" / "config.json").exists()


def test_patch_reconstruction_of_data_without_images_fails_before_the_model_is_loaded(tiny_text_path, tmp_path,
                                                                                      caplog, no_model_loading) -> None:
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"qid": str(i), "query_text": f"question {i}", "query_image": None,
                                        "pos_text": f"answer {i}", "pos_image": None}) + "\n" for i in range(4)))
    config = pretrain_config(tmp_path / "text.yaml", tiny_text_path, tmp_path / "o", data={"path": str(rows)})
    assert main(["pretrain", "--config", str(config)]) == 1
    assert "no training row has an image on the sides ['query', 'pos']; set pretrain.image_mask_ratio: 0" in caplog.text
    evaluation = pretrain_config(tmp_path / "eval.yaml", tiny_text_path, tmp_path / "o",
                                 data={"path": str(rows), "eval_split": "test"})
    assert main(["pretrain", "--config", str(evaluation)]) == 1
    assert "['eval_split']: unica pretrain does not evaluate" in caplog.text
