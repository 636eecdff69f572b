"""Tests for ``unica train``: config checks, a run stopped mid-way and resumed from its last complete
checkpoint reaching the weights of an uninterrupted run, and ``torchrun --nproc_per_node 2`` (gloo)
giving the loss and update of one process on the concatenated batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import make_tiny_text_encoder
from safetensors.torch import load_file
from test_trainer import make_rows, tiny_model
from transformers import TrainerCallback

from unica.apps.cli import main
from unica.apps.train_cli import build_trainer, find_last_checkpoint, load_config
from unica.checkpoint import save_checkpoint

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    """A JSONL of 8 training rows whose images are PNG files given by relative paths."""
    folder = tmp_path_factory.mktemp("rows")
    (folder / "images").mkdir()
    rows = make_rows(8, image_dir=folder / "images")
    path = folder / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _checkpoint(tmp_path_factory, minilm_path: str, dropout: float) -> str:
    text = make_tiny_text_encoder(tmp_path_factory.mktemp("bert"), minilm_path, dropout=dropout)
    model, processor = tiny_model(text)
    return str(save_checkpoint(model, processor, tmp_path_factory.mktemp("ckpt") / "model"))


@pytest.fixture(scope="module")
def model_without_dropout(tmp_path_factory, minilm_path) -> str:
    return _checkpoint(tmp_path_factory, minilm_path, dropout=0.0)


def write_config(path: Path, model: str, data: Path, **training) -> Path:
    settings = dict(per_device_train_batch_size=2, max_steps=4, learning_rate=1e-3, hard_negatives=1,
                    temperature=0.05, psl_weight=0.2, seed=0, report_to="none", disable_tqdm=True,
                    dataloader_pin_memory=False, save_strategy="no", logging_steps=1)
    settings.update(training)
    path.write_text(yaml.safe_dump({"model": model, "data": {"path": str(data)}, "training": settings}))
    return path


def test_config_errors_list_valid_keys_and_missing_columns(tmp_path, data_file, model_without_dropout, caplog) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"model": "m", "data": {"path": "x"}, "training": {"output_dir": "o", "lerning_rate": 1}}))
    with pytest.raises(ValueError, match=r"unknown key\(s\) 'lerning_rate' \(did you mean 'learning_rate'\?\) .*valid keys: .*psl_weight"):
        load_config(bad)
    bad.write_text(yaml.safe_dump({"init": {"txt": "x"}, "data": {"builder": "scenes"}, "training": {"output_dir": "o"}}))
    with pytest.raises(ValueError, match=r"'txt' \(did you mean 'text'\?\) in section 'init'.*valid keys: .*fusion"):
        load_config(bad)
    bad.write_text(yaml.safe_dump({"init": {}, "dataset": {}, "training": {"output_dir": "o"}}))
    with pytest.raises(ValueError, match=r"unknown key\(s\) 'dataset' .*valid keys: data, init, model, training"):
        load_config(bad)

    rows = [{k: v for k, v in json.loads(line).items() if not k.startswith("pos_")}
            for line in data_file.read_text().splitlines()]
    no_positives = tmp_path / "rows.jsonl"
    no_positives.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = write_config(tmp_path / "c.yaml", model_without_dropout, no_positives, output_dir=str(tmp_path / "o"))
    assert main(["train", "--config", str(config)]) == 1
    assert "missing the columns ['pos_text', 'pos_image']" in caplog.text
    assert not (tmp_path / "o" / "config.json").exists()


class StopAfter(TrainerCallback):
    """Stops training after ``step`` optimizer steps, as a kill after a checkpoint would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True
        return control


def test_resume_from_latest_checkpoint_reaches_the_uninterrupted_weights(tmp_path_factory, minilm_path, data_file) -> None:
    model = _checkpoint(tmp_path_factory, minilm_path, dropout=0.1)  # dropout on: the RNG state must resume too
    tmp_path = tmp_path_factory.mktemp("resume")
    common = dict(save_strategy="steps", save_steps=2)
    full = write_config(tmp_path / "full.yaml", model, data_file, output_dir=str(tmp_path / "full"), **common)
    assert main(["train", "--config", str(full)]) == 0

    cut = write_config(tmp_path / "cut.yaml", model, data_file, output_dir=str(tmp_path / "cut"), **common)
    trainer = build_trainer(load_config(cut), callbacks=[StopAfter(2)])
    trainer.train()
    assert trainer.state.global_step == 2
    # A crash while writing checkpoint-3 leaves a folder without trainer_state.json: 'latest' skips it.
    (tmp_path / "cut" / "checkpoint-3").mkdir()
    (tmp_path / "cut" / "checkpoint-3" / "config.json").write_text("{}")
    assert find_last_checkpoint(tmp_path / "cut").name == "checkpoint-2"
    assert main(["train", "--config", str(cut), "--resume-from-checkpoint", "latest"]) == 0

    resumed = load_file(tmp_path / "cut" / "model.safetensors")
    uninterrupted = load_file(tmp_path / "full" / "model.safetensors")
    initial = load_file(Path(model) / "model.safetensors")
    assert not torch.equal(uninterrupted["visual_projection.proj.weight"], initial["visual_projection.proj.weight"])
    for name, value in uninterrupted.items():
        torch.testing.assert_close(resumed[name], value, atol=1e-6, rtol=1e-5, msg=name)


def _logged_loss(output_dir: Path) -> float:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return next(entry["loss"] for entry in state["log_history"] if "loss" in entry)


def test_two_processes_equal_one_process_on_the_concatenated_batch(tmp_path, data_file, model_without_dropout) -> None:
    one_step = dict(max_steps=1, optim="sgd", learning_rate=1.0, max_grad_norm=0.0, lr_scheduler_type="constant",
                    gather_across_processes=True)
    two = write_config(tmp_path / "two.yaml", model_without_dropout, data_file, output_dir=str(tmp_path / "two"),
                       per_device_train_batch_size=4, **one_step)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "unica", "train", "--config", str(two)]
    run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]

    one = write_config(tmp_path / "one.yaml", model_without_dropout, data_file, output_dir=str(tmp_path / "one"),
                       per_device_train_batch_size=8, **one_step)
    assert main(["train", "--config", str(one)]) == 0

    assert _logged_loss(tmp_path / "two") == pytest.approx(_logged_loss(tmp_path / "one"), abs=1e-5)
    initial = load_file(Path(model_without_dropout) / "model.safetensors")
    after_two = load_file(tmp_path / "two" / "model.safetensors")
    after_one = load_file(tmp_path / "one" / "model.safetensors")
    moved = 0
    for name, start in initial.items():
        # SGD with lr 1: the update is minus the gradient.
        torch.testing.assert_close(after_two[name] - start, after_one[name] - start, atol=2e-6, rtol=1e-4, msg=name)
        moved += int(not torch.equal(after_one[name], start))
    assert moved > 20
