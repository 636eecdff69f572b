"""Reliability of training configs, checkpoint writing and checkpoint loading.

YAML numbers PyYAML reads as strings (``5e-5``), configs that would train zero steps, a batch larger
than the data, resuming past a half-written ``trainer_state.json``, stale ``.partial-`` folders of a
killed save, folder permissions, strict weight loading, broken checkpoint files and unresolvable Hub
ids offline. Tiny real components: a random 2-layer BERT with the MiniLM tokenizer and a 32 px ViT.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch
from conftest import make_image
from test_trainer import make_rows, make_trainer, tiny_model
from test_trainer_cli import write_config

from unica.apps.cli import main
from unica.apps.train_cli import find_last_checkpoint, load_config
from unica.checkpoint import init_model, load_checkpoint, save_checkpoint
from unica.trainer import UniCATrainingArguments


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory, tiny_text_path) -> Path:
    """A saved UniCA checkpoint with a 2-layer text encoder (tests that change it copy it first)."""
    model, processor = tiny_model(tiny_text_path)
    return save_checkpoint(model, processor, tmp_path_factory.mktemp("small") / "model")


@pytest.fixture(scope="module")
def rows_file(tmp_path_factory) -> Path:
    """A JSONL of 8 training rows whose images are PNG files given by relative paths."""
    folder = tmp_path_factory.mktemp("rows")
    (folder / "images").mkdir()
    path = folder / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in make_rows(8, image_dir=folder / "images")))
    return path


def copy_checkpoint(source: Path, target: Path) -> Path:
    """A copy of a checkpoint folder (weights hard-linked: tests replace files, never edit them in place)."""
    shutil.copytree(source, target, copy_function=os.link)
    return target


def replace_file(path: Path, data: str | bytes) -> None:
    path.unlink()
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)


def error_lines(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]


# ---------------------------------------------------------------------- 1. config value types
def _training_yaml(tmp_path: Path, lines: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text("model: some/checkpoint\ndata:\n  path: rows.jsonl\ntraining:\n  output_dir: out\n" + lines)
    return path


def test_yaml_numbers_read_as_strings_are_coerced_to_the_field_types(tmp_path) -> None:
    # PyYAML (YAML 1.1) reads 5e-5 and 1e1 as strings: without a dot they are not floats.
    path = _training_yaml(tmp_path, "  learning_rate: 5e-5\n  warmup_steps: 1e1\n  max_steps: '12'\n"
                                    "  num_train_epochs: 2\n  logging_first_step: 'True'\n  fusion_learning_rate: 1e-3\n"
                                    "  cache_chunk_size: null\n")
    training = load_config(path)["training"]
    assert training["learning_rate"] == 5e-5 and type(training["learning_rate"]) is float
    assert training["warmup_steps"] == 10.0 and type(training["warmup_steps"]) is float
    assert training["max_steps"] == 12 and type(training["max_steps"]) is int
    assert training["num_train_epochs"] == 2
    assert training["logging_first_step"] is True
    assert training["fusion_learning_rate"] == 1e-3 and training["cache_chunk_size"] is None
    args = UniCATrainingArguments(**{**training, "output_dir": str(tmp_path / "out")})
    assert args.learning_rate == 5e-5 and args.max_steps == 12 and args.fusion_learning_rate == 1e-3


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("max_steps: ten", "max_steps='ten' .*an integer"),
        ("max_steps: 2.5", "max_steps=2.5 .*an integer"),
        ("per_device_train_batch_size: true", "per_device_train_batch_size=True .*an integer"),
        ("learning_rate: fast", "learning_rate='fast' .*a number"),
        ("logging_first_step: 1", "logging_first_step=1 .*true or false"),
        ("logging_first_step: maybe", "logging_first_step='maybe' .*true or false"),
    ],
)
def test_config_values_of_the_wrong_type_name_section_key_value_and_type(tmp_path, line, expected) -> None:
    path = _training_yaml(tmp_path, f"  {line}\n")
    with pytest.raises(ValueError, match=f"section 'training' of .*config.yaml.*{expected}"):
        load_config(path)


def test_cli_reports_a_bad_number_in_one_line(tmp_path, caplog) -> None:
    path = _training_yaml(tmp_path, "  max_steps: ten\n")
    assert main(["train", "--config", str(path)]) == 1
    assert any("max_steps='ten'" in line and "integer" in line for line in error_lines(caplog))


# ---------------------------------------------------------------------- 2. zero training steps
@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"max_steps": -5, "num_train_epochs": 0}, r"max_steps=-5.*num_train_epochs"),
        ({"max_steps": -5, "num_train_epochs": 3}, r"max_steps=-5.*-1.*num_train_epochs"),
        ({"max_steps": 0}, r"max_steps=0 .*zero steps"),
        ({"max_steps": -1, "num_train_epochs": 0}, r"num_train_epochs=0 .*max_steps=-1.*zero steps"),
        ({"max_steps": -1, "num_train_epochs": -2.0}, r"num_train_epochs=-2.0 .*max_steps=-1"),
    ],
)
def test_arguments_that_train_zero_steps_are_refused(tmp_path, settings, expected) -> None:
    with pytest.raises(ValueError, match=expected):
        UniCATrainingArguments(output_dir=str(tmp_path), **settings)


def test_epoch_based_and_step_based_arguments_are_accepted(tmp_path) -> None:
    assert UniCATrainingArguments(output_dir=str(tmp_path), max_steps=-1, num_train_epochs=0.5).num_train_epochs == 0.5
    assert UniCATrainingArguments(output_dir=str(tmp_path), max_steps=3, num_train_epochs=0).max_steps == 3


def test_cli_zero_step_config_fails_naming_both_keys(tmp_path, small_checkpoint, rows_file, caplog) -> None:
    config = write_config(tmp_path / "c.yaml", str(small_checkpoint), rows_file, output_dir=str(tmp_path / "o"),
                          max_steps=-5, num_train_epochs=0)
    assert main(["train", "--config", str(config)]) == 1
    assert any("max_steps=-5" in line and "num_train_epochs" in line for line in error_lines(caplog))
    assert not (tmp_path / "o" / "model.safetensors").exists()


# ---------------------------------------------------------------------- 3. batch larger than the data
def test_batch_larger_than_the_training_data_is_refused(tmp_path, small_checkpoint, rows_file, caplog) -> None:
    config = write_config(tmp_path / "c.yaml", str(small_checkpoint), rows_file, output_dir=str(tmp_path / "o"),
                          per_device_train_batch_size=16, max_steps=1)
    assert main(["train", "--config", str(config)]) == 1
    message = " ".join(error_lines(caplog))
    assert "per_device_train_batch_size=16" in message and "8 training rows" in message
    assert not (tmp_path / "o" / "model.safetensors").exists()


# ---------------------------------------------------------------------- 4. resuming past a broken trainer_state.json
def _fake_checkpoint(folder: Path, step: int, state: str | None = None) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "trainer_state.json").write_text(state if state is not None else json.dumps({"global_step": step}))
    return folder


def test_latest_skips_a_checkpoint_whose_trainer_state_is_truncated(tmp_path, caplog) -> None:
    _fake_checkpoint(tmp_path / "checkpoint-2", 2)
    _fake_checkpoint(tmp_path / "checkpoint-4", 4, state='{"global_step": 4, "log_hist')
    _fake_checkpoint(tmp_path / "checkpoint-6", 6, state="")
    assert find_last_checkpoint(tmp_path).name == "checkpoint-2"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(str(tmp_path / "checkpoint-4" / "trainer_state.json") in w for w in warnings), warnings
    assert any(str(tmp_path / "checkpoint-6" / "trainer_state.json") in w for w in warnings), warnings


def test_resume_falls_back_to_the_previous_complete_checkpoint(tmp_path, small_checkpoint, rows_file, caplog) -> None:
    caplog.set_level(logging.INFO, logger="unica")
    output = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", str(small_checkpoint), rows_file, output_dir=str(output),
                          save_strategy="steps", save_steps=2)
    assert main(["train", "--config", str(config)]) == 0
    state_file = output / "checkpoint-4" / "trainer_state.json"
    text = state_file.read_text()
    replace_file(state_file, text[: len(text) // 2])  # a save killed while writing the state

    # An explicit checkpoint with a broken state: one line naming the file.
    assert main(["train", "--config", str(config), "--resume-from-checkpoint", str(output / "checkpoint-4")]) == 1
    assert any(str(state_file) in line for line in error_lines(caplog)), error_lines(caplog)

    caplog.clear()
    assert main(["train", "--config", str(config), "--resume-from-checkpoint", "latest"]) == 0
    assert any(str(state_file) in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert f"resuming from {output / 'checkpoint-2'}" in caplog.text
    assert json.loads(state_file.read_text())["global_step"] == 4  # rewritten by the resumed run


# ---------------------------------------------------------------------- 5. stale partial folders
def test_save_removes_stale_partials_of_its_target_only(tmp_path, tiny_text_path) -> None:
    model, processor = tiny_model(tiny_text_path)
    stale = tmp_path / ".unica.partial-k1ll3d"  # what a save killed mid-write leaves
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "model.safetensors").write_bytes(b"half")
    keep = [tmp_path / ".other.partial-abc", tmp_path / ".unica2.partial-abc", tmp_path / "unica-notes",
            tmp_path / ".unica.old-123"]
    for folder in keep:
        folder.mkdir()
    (tmp_path / ".unica.partial-file").write_text("a file, not a staging folder")
    save_checkpoint(model, processor, tmp_path / "unica")
    assert not stale.exists()
    assert all(folder.is_dir() for folder in keep)
    assert (tmp_path / ".unica.partial-file").is_file()
    assert (tmp_path / "unica" / "model.safetensors").is_file()


def test_trainer_save_into_an_existing_folder_removes_stale_staging(tmp_path, tiny_text_path) -> None:
    trainer = make_trainer(tiny_text_path, tmp_path)
    output = Path(trainer.args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    stale = output / ".unica-save-k1ll3d"
    (stale / "checkpoint").mkdir(parents=True)
    (output / "checkpoint-1").mkdir()
    trainer.save_model()
    assert not stale.exists()
    assert (output / "checkpoint-1").is_dir() and (output / "model.safetensors").is_file()


# ---------------------------------------------------------------------- 6. folder permissions
def test_checkpoint_folders_follow_the_umask(tmp_path, tiny_text_path) -> None:
    model, processor = tiny_model(tiny_text_path)
    for umask, expected in ((0o022, 0o755), (0o027, 0o750)):
        previous = os.umask(umask)
        try:
            folder = save_checkpoint(model, processor, tmp_path / f"umask-{umask:o}")
        finally:
            os.umask(previous)
        assert stat.S_IMODE(folder.stat().st_mode) == expected


# ---------------------------------------------------------------------- 7. strict weight loading
@pytest.mark.parametrize(("layers", "kind", "example"), [(1, "unexpected", "layer.1."), (3, "missing", "layer.2.")])
def test_config_that_disagrees_with_the_weights_is_refused(tmp_path, small_checkpoint, layers, kind, example) -> None:
    folder = copy_checkpoint(small_checkpoint, tmp_path / "edited")
    config = json.loads((folder / "config.json").read_text())
    assert config["text_config"]["num_hidden_layers"] == 2
    config["text_config"]["num_hidden_layers"] = layers
    replace_file(folder / "config.json", json.dumps(config))
    with pytest.raises(ValueError, match=rf"{kind} weights \(16\).*text_model\.encoder\.{example}") as caught:
        load_checkpoint(folder)
    assert str(folder) in str(caught.value)


def test_strict_loading_keeps_renamed_vision_keys(tmp_path, small_checkpoint, tiny_text_path, clip_vision_path) -> None:
    """ViT keys are renamed on save and back on load; CLIP towers too: such checkpoints still load, unchanged."""
    items = ["a red circle", make_image(3), {"text": "blocks", "image": make_image(4)}]
    for name, vision in (("vit", None), ("clip", clip_vision_path)):
        if vision is None:
            model, processor = tiny_model(tiny_text_path)
            folder = small_checkpoint
        else:
            torch.manual_seed(0)
            model, processor = init_model(tiny_text_path, vision)
            folder = save_checkpoint(model, processor, tmp_path / name)
        loaded, loaded_processor = load_checkpoint(folder)
        with torch.no_grad():
            expected = model.eval()(**processor.process_items(items)).embeddings
            got = loaded(**loaded_processor.process_items(items)).embeddings
        torch.testing.assert_close(got, expected, atol=0, rtol=0, msg=name)


# ---------------------------------------------------------------------- 8. broken checkpoint files
def _truncate_weights(folder: Path) -> None:
    data = (folder / "model.safetensors").read_bytes()
    replace_file(folder / "model.safetensors", data[: len(data) // 2])


def _pickle_only(folder: Path) -> None:
    from safetensors.torch import load_file

    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()


@pytest.mark.parametrize(
    ("breakage", "file", "advice"),
    [
        (_truncate_weights, "model.safetensors", "truncated or corrupt"),
        (lambda folder: replace_file(folder / "config.json", '{"model_type": "unica", '), "config.json", "not valid JSON"),
        (_pickle_only, "pytorch_model.bin", "must have model.safetensors"),
    ],
    ids=["truncated-safetensors", "invalid-config", "pickle-only"],
)
def test_encode_a_broken_checkpoint_fails_in_one_line(tmp_path, small_checkpoint, caplog, breakage, file, advice) -> None:
    folder = copy_checkpoint(small_checkpoint, tmp_path / "broken")
    breakage(folder)
    assert main(["encode", str(folder), "--text", "a red circle", "--out", str(tmp_path / "e.npy")]) == 1
    errors = error_lines(caplog)
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert str(folder / file) in errors[0] and advice in errors[0], errors[0]
    assert not (tmp_path / "e.npy").exists()


# ---------------------------------------------------------------------- 9. Hub ids offline
def test_init_with_an_unresolvable_hub_id_offline_fails_in_one_line(tmp_path, caplog, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_id = "unica-tests/no-such-text-encoder"
    with pytest.raises(ValueError, match="local folder.*HF_HUB_OFFLINE"):
        init_model(hub_id, "vit-micro")
    assert main(["init", str(tmp_path / "out"), "--text", hub_id]) == 1
    errors = error_lines(caplog)
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert hub_id in errors[0] and "HF_HUB_OFFLINE" in errors[0] and "local folder" in errors[0]
    assert not (tmp_path / "out").exists()
