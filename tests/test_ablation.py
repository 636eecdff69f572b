"""Ablation runner end to end on the scenes fixture (tiny grid, 2 training steps per cell)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import yaml

from unica.apps.ablation import load_ablation_config, run_ablation
from unica.apps.cli import main as cli

FIXTURE = Path(__file__).parent / "fixtures" / "scenes"


def ablation_config(tmp_path: Path, max_steps: int = 2, **changes) -> Path:
    """A tiny ablation YAML on the scenes fixture; ``section__key=value`` changes one setting."""
    config = {
        "train": {
            "init": {"text": "default", "vision": "vit-micro", "bica_layers": 1,
                     "vision_config_overrides": {"image_size": 32, "patch_size": 8, "num_hidden_layers": 1}},
            "data": {"builder": "scenes", "root": str(FIXTURE), "num_scenes": 600, "image_size": 64, "seed": 0,
                     "max_rows": 16},
            "training": {"output_dir": str(tmp_path / "ignored"), "max_steps": max_steps, "per_device_train_batch_size": 4,
                         "learning_rate": 1e-4, "temperature": 0.05, "hard_negatives": 1,
                         "dataloader_pin_memory": False},
        },
        "grid": {"fusion": ["concat", "bica"], "psl_weight": [0.0, 0.5], "learning_rate": [1e-4], "seed": [0]},
        "baseline": {"fusion": "concat", "psl_weight": 0.0},
        "evaluation": {"tasks": ["task2"], "metrics": ["hit@5", "mrr@1"], "num_resamples": 200,
                       "scenes_tasks": [2]},
    }
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        config[section][key] = value
    path = tmp_path / "ablation.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_ablation_grid_tables_and_resume(tmp_path, caplog, capsys):
    config_path = ablation_config(tmp_path)
    out = tmp_path / "ablation"
    with caplog.at_level(logging.INFO, logger="unica.apps.ablation"):
        summary = run_ablation(load_ablation_config(config_path), out)
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("cell ")]
    assert [line.split(":")[0] for line in progress] == [f"cell {i}/4" for i in (1, 1, 2, 2, 3, 3, 4, 4)]
    assert "training concat psl=0 lr=0.0001 seed 0 (2 steps)" in progress[0]
    cells = summary["tasks"]["task2"]["cells"]
    assert set(cells) == {"concat psl=0 lr=0.0001", "concat psl=0.5 lr=0.0001", "bica psl=0 lr=0.0001",
                          "bica psl=0.5 lr=0.0001"}
    payload = json.loads((out / "ablation.json").read_text())
    markdown = (out / "ablation.md").read_text()
    assert "baseline" in markdown and "concat psl=0 lr=0.0001" in markdown and payload["markdown"] in markdown
    assert "| concat psl=0.5 lr=0.0001 |" in markdown
    # Each cell's mean is its run's metric; each delta is the mean per-query difference to the baseline.
    runs = out / "runs"
    base = json.loads((runs / "concat_psl0_lr0.0001" / "seed0" / "evaluation.json").read_text())
    bica = json.loads((runs / "bica_psl0.5_lr0.0001" / "seed0" / "evaluation.json").read_text())
    assert cells["concat psl=0 lr=0.0001"]["hit@5"].mean == pytest.approx(base["tasks"]["task2"]["hit@5"])
    delta = payload["tasks"]["task2"]["deltas"]["bica psl=0.5 lr=0.0001"]["hit@5"]
    expected = np.mean(np.array(bica["per_query"]["task2"]["hit@5"]) - np.array(base["per_query"]["task2"]["hit@5"]))
    assert delta["delta"] == pytest.approx(expected) and delta["ci_low"] <= delta["delta"] <= delta["ci_high"]
    assert (runs / "bica_psl0.5_lr0.0001" / "seed0" / "final" / "model.safetensors").is_file()
    # A second run reuses the finished cells (nothing retrained), says so, reproduces the numbers and prints the
    # summary table with the paths of what it wrote.
    caplog.clear()
    capsys.readouterr()
    with caplog.at_level(logging.INFO, logger="unica.apps.ablation"):
        assert cli(["ablate", "--config", str(config_path), "--out", str(out)]) == 0
    reused = [r.getMessage() for r in caplog.records if "reusing the finished run" in r.getMessage()]
    assert len(reused) == 4 and reused[0].startswith("cell 1/4: concat psl=0 lr=0.0001 seed 0")
    assert not any("training" in r.getMessage() for r in caplog.records if r.getMessage().startswith("cell "))
    printed = capsys.readouterr().out
    assert "| concat psl=0.5 lr=0.0001 |" in printed and str(out / "ablation.json") in printed
    again = json.loads((out / "ablation.json").read_text())
    assert again["tasks"] == payload["tasks"]
    # A finished cell trained with other settings is never passed off as this config's: a clear error instead.
    changed = ablation_config(tmp_path, max_steps=3)
    with pytest.raises(ValueError, match="was trained with other settings"):
        run_ablation(load_ablation_config(changed), out)


def test_ablation_config_errors(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"train": {}, "grid": {"fusion": ["concat"], "dropout": [0.1]}}))
    with pytest.raises(ValueError, match=r"grid has unknown axes \['dropout'\]"):
        load_ablation_config(path)
    path.write_text(yaml.safe_dump({"train": {}, "grids": {}}))
    with pytest.raises(ValueError, match="unknown keys"):
        load_ablation_config(path)
    with pytest.raises(FileNotFoundError):
        load_ablation_config(tmp_path / "missing.yaml")
