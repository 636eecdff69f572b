"""Model cards say what the model is: its components (pretrained or random), its training, its own results only,
and usage snippets that run as written."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import yaml

from unica.card import render_model_card


def card_metadata(card: str) -> dict:
    return yaml.safe_load(card.split("---")[1])


def python_blocks(card: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", card, flags=re.S)


def test_an_untrained_checkpoint_says_so_and_names_its_components(tiny_checkpoint):
    card = render_model_card(tiny_checkpoint)
    assert "- Text encoder: `sentence-transformers/all-MiniLM-L6-v2` (pretrained weights" in card
    assert "- Vision tower: `vit-micro` (randomly initialised" in card
    assert "not fine-tuned by UniCA's trainer" in card
    assert "English text only" not in card and "Trained and evaluated in English" not in card
    metadata = card_metadata(card)
    # The embedded copy is recorded by its Hub id, so the Hub links the base model; a random preset is no base model.
    assert metadata["base_model"] == ["sentence-transformers/all-MiniLM-L6-v2"]
    assert metadata["license"] == "apache-2.0" and "model-index" not in metadata


def test_the_card_of_a_trained_checkpoint_gives_its_data_steps_and_labels_other_runs(tiny_checkpoint, tmp_path):
    import shutil

    folder = tmp_path / "trained"
    shutil.copytree(tiny_checkpoint, folder)
    record = {"objective": "InfoNCE + 0.1 * PSL (cosine)", "temperature": 0.05, "psl_weight": 0.1, "hard_negatives": 1,
              "learning_rate": 1e-4, "fusion_learning_rate": 1e-3, "per_device_train_batch_size": 16, "world_size": 2,
              "data": "synthetic scenes", "train_rows": 1309, "steps": 150, "epochs": 1.83}
    (folder / "training_record.json").write_text(json.dumps(record))
    ablation = tmp_path / "ablation.json"
    ablation.write_text(json.dumps({"markdown": "| cell | hit@5 |\n|---|---|\n| concat | 0.5 |", "tasks": {}}))
    card = render_model_card(folder, ablation_path=ablation)
    assert "- Length: 150 optimiser steps over 1309 training rows (1.83 epochs), batch 16 per device x 2" in card
    assert "- Data: synthetic scenes" in card and "(fusion layers and projection: 0.001)" in card
    assert "Fine-tuned and evaluated on English text only." in card
    assert "not from this checkpoint" in card.split("## Ablations")[1]


def test_the_usage_snippets_run_as_written(tiny_checkpoint, tmp_path):
    card = render_model_card(tiny_checkpoint)
    blocks = python_blocks(card)
    assert len(blocks) == 2
    for number, block in enumerate(blocks):
        script = tmp_path / f"snippet{number}.py"
        script.write_text(block)
        result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path,
                                env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}, timeout=300)
        assert result.returncode == 0, f"snippet {number} failed:\n{block}\n{result.stderr[-2000:]}"
    # The sentence-transformers snippet prints a 1 x 3 similarity matrix.
    assert re.search(r"tensor\(\[\[ *[-\d.]+, +[-\d.]+, +[-\d.]+\]\]\)", result.stdout), result.stdout


def test_a_checkpoint_built_before_components_were_recorded_says_not_recorded(tiny_checkpoint, tmp_path):
    import shutil

    folder = tmp_path / "old"
    shutil.copytree(tiny_checkpoint, folder)
    config = json.loads((folder / "config.json").read_text())
    config.pop("components")
    (folder / "config.json").write_text(json.dumps(config))
    card = render_model_card(folder)
    assert "Base components: not recorded" in card and "randomly initialised (a preset" not in card
