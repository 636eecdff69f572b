"""Training straight from an M-BEIR root (``data: {builder: mbeir, root: ...}``) and how the M-BEIR reader
picks and merges candidate pools (identical records shared by local pools, a union pool named otherwise)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml
from conftest import TINY_VIT

from dataset_builders.mbeir import MBEIRLayout, load_pool_subset
from dataset_builders.scenes import generate_scenes
from dataset_builders.umr import build_umr_s10, load_training_rows
from unica.apps.cli import main
from unica.apps.train_cli import build_trainer, load_config


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _doc(i: int, txt: str | None = None) -> dict:
    return {"did": f"2:{i}", "txt": txt or f"doc {i}", "img_path": None, "modality": "text"}


def _root(tmp_path: Path, pools: dict[str, list[dict]], queries: int = 4) -> Path:
    """An M-BEIR root with text queries 2:1..2:n (positive 2:i, negative 2:i+1) and the given pool files."""
    root = tmp_path / "mbeir"
    _write_jsonl(root / "query/train/mbeir_webqa_train.jsonl", [
        {"qid": f"2:{i}", "query_txt": f"q {i}", "query_img_path": None, "query_modality": "text",
         "pos_cand_list": [f"2:{i}"], "neg_cand_list": [f"2:{i + 1}"], "task_id": 1}
        for i in range(1, queries + 1)
    ])
    for name, records in pools.items():
        _write_jsonl(root / "cand_pool" / name, records)
    return root


# ------------------------------------------------------------------------------------------ training


@pytest.fixture(scope="module")
def scenes_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mbeir") / "scenes"
    generate_scenes(root, num_scenes=30, seed=0, image_size=32, progress=False)
    return root


def _config(path: Path, text: str, data: dict, output_dir: Path) -> Path:
    config = {
        "init": {"text": text, "vision": "vit-micro", "vision_config_overrides": TINY_VIT, "seed": 0},
        "data": data,
        "training": {"output_dir": str(output_dir), "max_steps": 2, "per_device_train_batch_size": 4,
                     "learning_rate": 1e-3, "hard_negatives": 1, "report_to": "none", "disable_tqdm": True,
                     "dataloader_pin_memory": False, "save_strategy": "no", "logging_steps": 1, "seed": 0},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_training_config_with_an_mbeir_root_trains(scenes_root, tiny_text_path, tmp_path) -> None:
    data = {"builder": "mbeir", "root": str(scenes_root), "split": "train", "eval_split": "test"}
    config = _config(tmp_path / "train.yaml", tiny_text_path, data, tmp_path / "run")
    counts = json.loads((scenes_root / "metadata.json").read_text())["queries"]

    trainer = build_trainer(load_config(config))  # what `unica train` builds
    assert len(trainer.train_dataset) == sum(counts["train"].values())
    assert len(trainer.eval_dataset) == sum(counts["test"].values())
    first = trainer.train_dataset[0]
    assert first["qid"].startswith("10:") and first["pos_dids"] and first["neg_dids"]
    del trainer

    assert main(["train", "--config", str(config)]) == 0
    state = json.loads((tmp_path / "run/trainer_state.json").read_text())
    assert state["global_step"] == 2
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert len(losses) == 2 and all(loss > 0 for loss in losses)
    record = json.loads((tmp_path / "run/training_record.json").read_text())
    assert f"M-BEIR-format data in {scenes_root}" in json.dumps(record)


def test_the_mbeir_data_section_lists_unknown_keys_and_needs_a_root(tmp_path) -> None:
    config = tmp_path / "c.yaml"
    section = {"builder": "mbeir", "root": "./M-BEIR", "num_scenes": 30}
    config.write_text(yaml.safe_dump({"init": {}, "data": section, "training": {"output_dir": "o"}}))
    with pytest.raises(ValueError, match=r"unknown key\(s\) 'num_scenes' in section 'data' of .* \(builder: mbeir\); "
                                         r"valid keys: .*pool_files, query_files, root, skip_missing, split"):
        load_config(config)
    config.write_text(yaml.safe_dump({"init": {}, "data": {"builder": "mbeir"}, "training": {"output_dir": "o"}}))
    with pytest.raises(ValueError, match=r"\(builder: mbeir\) needs root: the folder of M-BEIR-format data"):
        load_config(config)
    config.write_text(yaml.safe_dump({"init": {}, "data": {"builder": "mbeer", "root": "x"}, "training": {"output_dir": "o"}}))
    with pytest.raises(ValueError, match=r"unknown data builder 'mbeer' .*available: scenes, mbeir"):
        load_config(config)


# ------------------------------------------------------------------------------------------ pools


def test_identical_records_shared_by_local_pools_are_merged(tmp_path, caplog) -> None:
    task1 = [_doc(i) for i in range(1, 5)]  # 2:1..2:4
    task2 = [_doc(i) for i in range(3, 7)]  # 2:3..2:6: 2:3 and 2:4 also in task1, identical
    root = _root(tmp_path, {"local/mbeir_webqa_task1_cand_pool.jsonl": task1,
                            "local/mbeir_webqa_task2_cand_pool.jsonl": task2})
    pools = MBEIRLayout(root).training_pools()
    subset = load_pool_subset(pools)
    assert subset.merged_duplicates == 2 and subset.pool_size == 6
    assert subset.table.column("did").to_pylist() == [f"2:{i}" for i in range(1, 7)]

    with caplog.at_level(logging.INFO, logger="dataset_builders"):
        sample = build_umr_s10(root, tmp_path / "out", fraction=1.0, min_per_stratum=0)
    assert len(sample.queries) == 4 and sorted(sample.candidates) == [f"2:{i}" for i in range(1, 6)]
    assert sample.pool_size == 6
    assert "the 2 local pools" in caplog.text and "mbeir_webqa_task2_cand_pool.jsonl" in caplog.text
    assert "merged 2 identical duplicate candidate record(s) (2 dids listed more than once" in caplog.text


def test_conflicting_records_with_one_did_are_refused_naming_did_files_and_difference(tmp_path) -> None:
    task1 = [_doc(i) for i in range(1, 6)]
    task2 = [_doc(5), _doc(4, txt="another text")]  # 2:5 identical, 2:4 differs
    root = _root(tmp_path, {"local/mbeir_webqa_task1_cand_pool.jsonl": task1,
                            "local/mbeir_webqa_task2_cand_pool.jsonl": task2})
    with pytest.raises(ValueError, match=(
        r"1 duplicate candidate ids \(did\) name different records, e\.g\. '2:4' in "
        r"\S*mbeir_webqa_task1_cand_pool\.jsonl:4 and \S*mbeir_webqa_task2_cand_pool\.jsonl:2 "
        r"\(txt 'doc 4' vs 'another text'\)"
    )):
        build_umr_s10(root, tmp_path / "out", fraction=1.0)
    assert not (tmp_path / "out").exists()


def test_the_pool_used_is_logged_and_a_union_pool_named_otherwise_is_found(tmp_path, caplog) -> None:
    union = [_doc(i) for i in range(1, 6)]
    # The local pools alone would be refused (a conflicting 2:1): the union pool must be the one read.
    root = _root(tmp_path, {"global/mbeir_union_up_train_cand_pool.jsonl": union,
                            "local/mbeir_webqa_task1_cand_pool.jsonl": [_doc(1)],
                            "local/mbeir_webqa_task2_cand_pool.jsonl": [_doc(1, txt="other")]})
    with caplog.at_level(logging.INFO, logger="dataset_builders"):
        rows = load_training_rows(root, split="train")
    assert len(rows) == 4 and rows[0]["pos_text"] == "doc 1"
    assert ("candidate pool for train: " + str(root / "cand_pool/global/mbeir_union_up_train_cand_pool.jsonl")
            + " (no mbeir_union_train_cand_pool.jsonl; it is the only cand_pool/global/*_train_cand_pool.jsonl)"
            ) in caplog.text

    caplog.clear()
    (root / "cand_pool/global/mbeir_union_up_train_cand_pool.jsonl").rename(
        root / "cand_pool/global/mbeir_union_train_cand_pool.jsonl")
    with caplog.at_level(logging.INFO, logger="dataset_builders"):
        build_umr_s10(root, tmp_path / "out", fraction=1.0)
    assert f"candidate pool for train: {root / 'cand_pool/global/mbeir_union_train_cand_pool.jsonl'} (the union pool)" in caplog.text

    _write_jsonl(root / "cand_pool/global/mbeir_union_up_train_cand_pool.jsonl", union)
    (root / "cand_pool/global/mbeir_union_train_cand_pool.jsonl").rename(
        root / "cand_pool/global/mbeir_other_train_cand_pool.jsonl")
    with pytest.raises(ValueError, match=r"several pools could be the train union pool: "
                                         r"\['mbeir_other_train_cand_pool\.jsonl', 'mbeir_union_up_train_cand_pool\.jsonl'\]"):
        build_umr_s10(root, tmp_path / "out2", fraction=1.0)
