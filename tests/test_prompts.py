"""Issue 12 item 9: a checkpoint's query / document prompts (``config_sentence_transformers.json``) are applied
in one place, the processor, for sentence-transformers, ``unica evaluate`` (the harness passes each encode's
role) and training (the collator), so a model is trained and scored on the inputs it embeds in use."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from test_trainer import make_rows, tiny_model
from test_trainer_cli import data_file, write_config  # noqa: F401 (fixture)

from eval.harness import RetrievalTask, evaluate_tasks
from unica.apps.train_cli import build_trainer, load_config
from unica.checkpoint import save_checkpoint
from unica.encoding import UniCAEncoder

PROMPTS = {"query": "search query: ", "document": "passage: "}


@pytest.fixture(scope="module")
def prompted_checkpoint(tiny_text_path, tmp_path_factory):
    model, processor = tiny_model(tiny_text_path)
    return save_checkpoint(model, processor, tmp_path_factory.mktemp("prompted") / "model", prompts=PROMPTS)


def test_unica_encoder_applies_the_prompts_as_sentence_transformers_does(prompted_checkpoint) -> None:
    encoder = UniCAEncoder.from_checkpoint(prompted_checkpoint, fingerprint="f" * 64)
    st = SentenceTransformer(str(prompted_checkpoint), trust_remote_code=True)
    texts = ["a red circle", "two blue squares"]
    np.testing.assert_allclose(encoder.encode(texts, role="query"), st.encode_query(texts), atol=1e-5)
    np.testing.assert_allclose(encoder.encode(texts, role="document"), st.encode_document(texts), atol=1e-5)
    assert not np.allclose(encoder.encode(texts, role="query"), encoder.encode(texts), atol=1e-4)


class RecordingEncoder(UniCAEncoder):
    """The real UniCA encoder, noting which role each call had."""

    roles: list

    def encode(self, items, batch_size=None, show_progress=False, desc="encoding", role=None):
        self.roles.append((role, len(items)))
        return super().encode(items, batch_size, show_progress, desc, role)


def test_the_harness_encodes_queries_as_queries_and_candidates_as_documents(prompted_checkpoint) -> None:
    encoder = RecordingEncoder.from_checkpoint(prompted_checkpoint, fingerprint="f" * 64)
    encoder.roles = []
    task = RetrievalTask(name="task1", query_ids=["q0", "q1"], query_items=["a red circle", "a blue square"],
                         relevant=[["d0"], ["d1"]], grades=[[1.0], [1.0]], corpus_ids=["d0", "d1", "d2"],
                         corpus_items=["red circle", "blue square", "green star"])
    evaluate_tasks(encoder, [task], k_values=[1, 2], show_progress=False)
    assert sorted(encoder.roles) == [("document", 3), ("query", 2)]


def test_training_applies_the_checkpoints_prompts_and_keeps_them(prompted_checkpoint, data_file, tmp_path) -> None:  # noqa: F811
    config = write_config(tmp_path / "train.yaml", str(prompted_checkpoint), data_file,
                          output_dir=str(tmp_path / "out"), max_steps=1)
    trainer = build_trainer(load_config(config))
    rows = make_rows(2)
    rows[0]["query_text"], rows[0]["pos_text"] = "where is the red circle", "a red circle"
    batch = trainer.data_collator(rows)
    processor = trainer.processing_class
    expected_query = processor.process_items(["search query: where is the red circle"])["input_ids"][0]
    expected_positive = processor.process_items([{"text": "passage: a red circle", "image": rows[0]["pos_image"]}]
                                                if rows[0]["pos_image"] is not None else ["passage: a red circle"])
    assert torch.equal(batch["query"]["input_ids"][0, : len(expected_query)], expected_query)
    positive_ids = expected_positive["input_ids"][0]
    assert torch.equal(batch["positive"]["input_ids"][0, : len(positive_ids)], positive_ids)
    trainer.train()
    trainer.save_model()
    saved = json.loads((tmp_path / "out" / "config_sentence_transformers.json").read_text())
    assert saved["prompts"] == PROMPTS
