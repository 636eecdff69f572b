"""Issue 12, training and publishing at scale: a finished run is not trained past its end on resume,
in-batch false negatives (two rows sharing a positive, common in M-BEIR) are masked, and a trained
folder is publishable as it stands (JSON arguments, a training record and a model card; only its own files
uploaded; results of another model refused by the card)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import datasets
import pytest
import torch
import torch.nn.functional as F
from test_trainer import make_rows, make_trainer
from test_trainer_cli import data_file, model_without_dropout, write_config  # noqa: F401 (fixtures)

from eval.cache import fingerprint_model_dir
from unica.apps.cli import main
from unica.checkpoint import validate_checkpoint
from unica.collator import RetrievalCollator, document_id
from unica.losses import info_nce, retrieval_loss


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------- item 5: a finished run stays finished
def test_resuming_a_finished_run_trains_nothing_and_changes_nothing(tmp_path, data_file, model_without_dropout,  # noqa: F811
                                                                     caplog) -> None:
    config = write_config(tmp_path / "run.yaml", model_without_dropout, data_file, output_dir=str(tmp_path / "out"),
                          max_steps=2, save_strategy="steps", save_steps=2)
    assert main(["train", "--config", str(config)]) == 0
    out = tmp_path / "out"
    before = {p.relative_to(out).as_posix(): (_digest(p), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()}

    caplog.set_level("INFO")
    assert main(["train", "--config", str(config), "--resume-from-checkpoint", "latest"]) == 0
    after = {p.relative_to(out).as_posix(): (_digest(p), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()}
    assert after == before  # not one file written: no checkpoint-3, the final model untouched
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 2
    assert "is complete (step 2 of max_steps=2)" in caplog.text


# ---------------------------------------------------------------------- item 7: in-batch false negatives
def test_a_shared_positive_is_not_a_negative_of_the_other_query() -> None:
    torch.manual_seed(0)
    query, positives = torch.randn(3, 8), torch.randn(3, 8)
    positives[1] = positives[0] + 0.01 * torch.randn(8)  # rows 0 and 1 hold the same document
    ids = torch.tensor([document_id("d0"), document_id("d0"), document_id("d2")])
    masked = info_nce(query, positives, temperature=0.1, positive_ids=ids)

    # By hand: each of queries 0 and 1 loses the other's copy of their shared positive from its softmax.
    logits = F.normalize(query, dim=-1) @ F.normalize(positives, dim=-1).T / 0.1
    expected = torch.stack([
        -torch.log_softmax(logits[0, [0, 2]], 0)[0],
        -torch.log_softmax(logits[1, [1, 2]], 0)[0],
        -torch.log_softmax(logits[2], 0)[2],
    ]).mean()
    torch.testing.assert_close(masked, expected)
    assert not torch.isclose(info_nce(query, positives, temperature=0.1), expected)  # unmasked: another value

    # Symmetric: positive 0 against query 1 (whose positive it also is) is masked the same way.
    symmetric = info_nce(query, positives, temperature=0.1, positive_ids=ids, symmetric=True)
    reverse = logits.T
    expected_reverse = torch.stack([
        -torch.log_softmax(reverse[0, [0, 2]], 0)[0],
        -torch.log_softmax(reverse[1, [1, 2]], 0)[0],
        -torch.log_softmax(reverse[2], 0)[2],
    ]).mean()
    torch.testing.assert_close(symmetric, (expected + expected_reverse) / 2)


def test_a_hard_negative_that_is_another_querys_known_positive_is_masked_for_it() -> None:
    torch.manual_seed(1)
    query, positives, negatives = torch.randn(2, 8), torch.randn(2, 8), torch.randn(2, 1, 8)
    positive_ids = torch.tensor([document_id("a"), document_id("b")])
    negative_ids = torch.tensor([document_id("x"), document_id("y")])
    known = torch.tensor([[document_id("a"), document_id("y")], [document_id("b"), -1]])  # query 0: a and y
    masked = info_nce(query, positives, negatives, temperature=0.2, positive_ids=positive_ids,
                      negative_ids=negative_ids, query_positive_ids=known)
    candidates = F.normalize(torch.cat([positives, negatives.reshape(2, 8)]), dim=-1)
    logits = F.normalize(query, dim=-1) @ candidates.T / 0.2
    expected = torch.stack([-torch.log_softmax(logits[0, [0, 1, 2]], 0)[0],  # column 3 (y) left out for query 0
                            -torch.log_softmax(logits[1], 0)[1]]).mean()
    torch.testing.assert_close(masked, expected)


def test_the_trainer_masks_rows_that_share_a_positive(tiny_text_path, tmp_path) -> None:
    rows = make_rows(4)
    for i, row in enumerate(rows):
        row.update(pos_did=f"doc{i}", pos_dids=[f"doc{i}"], neg_did=f"neg{i}")
    # Rows 0 and 1 are two queries of the same document: their positives are one candidate.
    rows[1].update(pos_text=rows[0]["pos_text"], pos_image=rows[0]["pos_image"], pos_did="doc0", pos_dids=["doc0"])
    trainer = make_trainer(tiny_text_path, tmp_path, rows=rows)
    batch = trainer.data_collator(rows)
    assert batch["ids"]["positive"].tolist() == [document_id(d) for d in ("doc0", "doc0", "doc2", "doc3")]
    model = trainer.model.eval()  # no dropout: the two forward passes below see the same embeddings
    with torch.no_grad():
        loss = trainer.compute_loss(model, batch)
        embeddings = [model(**batch[group]).embeddings for group in ("query", "positive", "negative")]
        unmasked = retrieval_loss(embeddings[0], embeddings[1], embeddings[2].view(4, 1, -1), temperature=0.05,
                                  psl_weight=0.5).loss
        masked = retrieval_loss(embeddings[0], embeddings[1], embeddings[2].view(4, 1, -1), temperature=0.05,
                                psl_weight=0.5, positive_ids=batch["ids"]["positive"]).loss
    torch.testing.assert_close(loss, masked)
    assert abs(float(loss - unmasked)) > 1e-4


def test_collator_ids_follow_each_rows_negatives() -> None:
    class Processor:  # the collator only needs process_items; ids do not depend on it
        max_image_pixels = None

        @staticmethod
        def process_items(items, prompt=None):
            return {"image_mask": torch.zeros(len(items), dtype=torch.bool)}

    collator = RetrievalCollator(Processor(), hard_negatives=2)
    rows = [{"query_text": "q", "query_image": None, "pos_text": "p", "pos_image": None, "pos_did": "p0",
             "pos_dids": ["p0", "p9"], "neg_text": ["n", "m"], "neg_image": None, "neg_dids": ["n0", "n1"]},
            {"query_text": "r", "query_image": None, "pos_text": "p", "pos_image": None, "pos_did": "p1",
             "neg_text": ["n", "m"], "neg_image": None}]
    ids = collator(rows)["ids"]
    assert ids["negative"].tolist() == [document_id("n0"), document_id("n1"), -1, -1]
    assert ids["query_positives"].tolist() == [sorted([document_id("p0"), document_id("p9")]), [document_id("p1"), -1]]


# ---------------------------------------------------------------------- item 12: a trained folder publishes
def test_a_trained_folder_is_publishable_as_it_stands(tiny_text_path, tmp_path) -> None:
    trainer = make_trainer(tiny_text_path, tmp_path, max_steps=2, save_strategy="steps", save_steps=1,
                           psl_weight=0.3)
    trainer.training_data = "my-org/UMR-S10 (split train)"
    trainer.train()
    trainer.save_model()
    out = tmp_path / "out"
    assert not list(out.glob("*.bin"))  # no pickled training_args.bin
    args = json.loads((out / "training_args.json").read_text())
    assert args["psl_weight"] == 0.3 and args["max_steps"] == 2
    record = json.loads((out / "training_record.json").read_text())
    assert record["steps"] == 2 and record["psl_weight"] == 0.3 and record["temperature"] == pytest.approx(0.05)
    assert record["objective"] == "InfoNCE + 0.3 * PSL (cosine)" and record["data"] == "my-org/UMR-S10 (split train)"
    card = (out / "README.md").read_text()
    assert "- Objective: InfoNCE + 0.3 * PSL (cosine), temperature 0.05" in card and "my-org/UMR-S10 (split train)" in card
    assert f'from_pretrained("{out}"' in card and ".unica-save-" not in card  # the final path, not a staging one

    files = validate_checkpoint(out)  # a publishable folder: the checkpoint-N resume states are not its files
    assert (out / "checkpoint-1" / "optimizer.pt").is_file()
    assert not [f for f in files if f.startswith("checkpoint-")]
    assert {"model.safetensors", "README.md", "training_record.json", "training_args.json"} <= set(files)
    assert main(["push", str(out), "--repo-id", "my-org/unica-test", "--dry-run"]) == 0


def test_the_card_refuses_results_of_another_model(tiny_text_path, tmp_path, caplog) -> None:
    trainer = make_trainer(tiny_text_path, tmp_path)
    trainer.train()
    trainer.save_model()
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"tasks": {"task2": {"hit@5": 0.5}}, "settings": {"model_fingerprint": "0" * 64}}))
    assert main(["card", str(tmp_path / "out"), "--results", str(results)]) != 0
    assert "was measured on another model" in caplog.text
    assert "0.5000" not in (tmp_path / "out" / "README.md").read_text()  # the card written on save is kept

    results.write_text(json.dumps({"tasks": {"task2": {"hit@5": 0.5}},
                                   "settings": {"model_fingerprint": fingerprint_model_dir(tmp_path / "out")}}))
    assert main(["card", str(tmp_path / "out"), "--results", str(results)]) == 0
    assert "0.5000" in (tmp_path / "out" / "README.md").read_text()


def test_rows_without_document_ids_train_unmasked(tiny_text_path, tmp_path) -> None:
    trainer = make_trainer(tiny_text_path, tmp_path)
    assert "ids" not in trainer.data_collator(datasets.Dataset.from_list(make_rows(2)).to_list())
