"""Model card rendering (never inventing numbers) and `unica push` validation / dry run (offline)."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import yaml

from unica.apps.cli import main as cli
from unica.card import render_model_card
from unica.checkpoint import validate_checkpoint


@pytest.fixture
def folder(tiny_checkpoint):
    return tiny_checkpoint


def _front_matter(card: str) -> dict:
    return yaml.safe_load(card.split("---\n")[1])


def test_card_without_results_says_not_measured(folder):
    card = render_model_card(folder)
    meta = _front_matter(card)
    assert meta["library_name"] == "sentence-transformers" and "model-index" not in meta
    assert "Evaluation: not measured" in card and "Ablations: not measured" in card
    assert "{{" not in card and "fusion-bica" in meta["tags"]
    # No invented numbers: the only decimals in the card are config values.
    assert "0.0000" not in card


def test_card_with_results_and_ablation(folder, tmp_path):
    results = {"tasks": {"webqa_task2": {"hit@5": 0.5123, "hit@10": 0.75, "mrr@1": 0.25},
                         "webqa_task1": {"hit@5": 0.9}},
               "training": {"psl_weight": 0.1, "temperature": 0.02, "data": "my-org/UMR-S10"}}
    (tmp_path / "results.json").write_text(json.dumps(results))
    (tmp_path / "ablation.json").write_text(json.dumps({"markdown": "| cell | hit@5 |\n|---|---|\n| bica | 0.5 |"}))
    card = render_model_card(folder, results_path=tmp_path / "results.json",
                             ablation_path=tmp_path / "ablation.json", repo_id="my-org/unica-mini")
    meta = _front_matter(card)
    metrics = {m["name"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert metrics == {"hit@5": 0.5123, "hit@10": 0.75, "mrr@1": 0.25}
    assert meta["model-index"][0]["name"] == "unica-mini"
    assert "| webqa_task2 | 0.5123 | 0.7500 | 0.2500 |" in card
    assert "| webqa_task1 | 0.9000 | not measured | not measured |" in card
    assert "| bica | 0.5 |" in card and "PSL weight 0.1" in card
    assert 'AutoModel.from_pretrained("my-org/unica-mini", trust_remote_code=True)' in card


def test_card_errors(folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="results file"):
        render_model_card(folder, results_path=tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(ValueError, match="not valid JSON"):
        render_model_card(folder, results_path=tmp_path / "bad.json")
    with pytest.raises(ValueError, match="not a UniCA checkpoint"):
        (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
        render_model_card(tmp_path)


def test_push_validates_and_dry_runs(folder, tmp_path, caplog):
    copy = tmp_path / "model"
    shutil.copytree(folder, copy)
    with pytest.raises(ValueError, match="missing README.md"):
        validate_checkpoint(copy)
    assert cli(["card", str(copy), "--repo-id", "my-org/unica-mini"]) == 0
    files = validate_checkpoint(copy)
    assert {"README.md", "model.safetensors", "modeling_unica.py", "st_unica.py", "modules.json"} <= set(files)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert cli(["push", str(copy), "--repo-id", "my-org/unica-mini", "--dry-run"]) == 0
    assert "would upload" in caplog.text and "model.safetensors" in caplog.text
    assert cli(["push", str(copy), "--repo-id", "not a repo", "--dry-run"]) == 1
    (copy / "pytorch_model.bin").write_bytes(b"pickle")
    (copy / "modeling_unica.py").unlink()
    (copy / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError) as error:
        validate_checkpoint(copy)
    message = str(error.value)
    assert "missing modeling_unica.py" in message and "pickled files" in message and "cannot be read" in message
    assert cli(["push", str(copy), "--repo-id", "my-org/unica-mini", "--dry-run"]) == 1
