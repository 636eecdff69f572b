"""The MTEB-style encoder interface, offline (no mteb install needed: batches are plain dicts)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_image
from torch.utils.data import DataLoader

from unica.checkpoint import save_checkpoint
from unica.mteb_encoder import UniCAMTEBEncoder


def test_encode_batches_with_prompts_and_similarity(tiny_pair, tmp_path):
    model, processor = tiny_pair
    folder = tmp_path / "model"
    save_checkpoint(model, processor, folder, prompts={"query": "query: "})
    encoder = UniCAMTEBEncoder.from_checkpoint(folder)
    image = make_image(40)
    rows = [{"text": "Red Circle, 1990", "image": image}, {"text": "Blue Square", "image": make_image(41)}]
    loader = DataLoader(rows, batch_size=2, collate_fn=lambda b: {"text": [r["text"] for r in b],
                                                                   "image": [r["image"] for r in b]})
    documents = encoder.encode(loader, prompt_type="document")
    queries = encoder.encode([{"text": ["the red circle"]}, {"text": ["a blue square"]}], prompt_type="query")
    images = encoder.encode([{"image": [image]}])
    with torch.no_grad():
        expected_docs = model(**processor.process_items(rows)).embeddings.numpy()
        expected_q = model(**processor.process_items(["query: the red circle", "query: a blue square"])).embeddings
        expected_img = model(**processor.process_items([image])).embeddings.numpy()
    np.testing.assert_allclose(documents, expected_docs, atol=1e-5)
    np.testing.assert_allclose(queries, expected_q.numpy(), atol=1e-5)
    np.testing.assert_allclose(images, expected_img, atol=1e-5)
    scores = encoder.similarity(queries, documents)
    assert scores.shape == (2, 2)
    np.testing.assert_allclose(encoder.similarity_pairwise(queries, queries).numpy(), [1.0, 1.0], atol=1e-5)
    with pytest.raises(ValueError, match="needs a 'text' or 'image' list"):
        encoder.encode([{"audio": [1]}])
