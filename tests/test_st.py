"""sentence-transformers: a UniCA checkpoint is a SentenceTransformer; training through its Trainer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_image
from datasets import Dataset
from PIL import Image, ImageDraw
from sentence_transformers import SentenceTransformer

from unica.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def st_folder(tiny_pair, tmp_path_factory):
    model, processor = tiny_pair
    folder = tmp_path_factory.mktemp("st") / "unica-st"
    save_checkpoint(model, processor, folder, prompts={"query": "query: "})
    return folder


@pytest.fixture(scope="module")
def st_model(st_folder):
    return SentenceTransformer(str(st_folder), trust_remote_code=True, device="cpu")


def _direct(tiny_pair, items):
    model, processor = tiny_pair
    with torch.no_grad():
        return model(**processor.process_items(items)).embeddings.numpy()


def test_st_embeddings_equal_unica_model(st_model, tiny_pair, tmp_path):
    path = tmp_path / "scene.png"
    make_image(30).save(path)
    image = make_image(31)
    cases = {
        "text": ["a red circle", "two blue squares painted in Lyon in 1990"],
        "image": [image, make_image(32)],
        "image+text": [{"text": "Red Circle, 1990", "image": image}, {"text": "other", "image": make_image(33)}],
        "mixed": ["a passage", image, {"text": "Red Circle", "image": image}, str(path), {"image": str(path)}],
    }
    for name, inputs in cases.items():
        expected_items = [
            __import__("pathlib").Path(x) if isinstance(x, str) and x.endswith(".png") else
            ({"image": __import__("pathlib").Path(x["image"])} if isinstance(x, dict) and isinstance(x.get("image"), str)
             else x)
            for x in inputs
        ]
        got = st_model.encode(inputs, batch_size=2)
        np.testing.assert_allclose(got, _direct(tiny_pair, expected_items), atol=1e-5, rtol=0, err_msg=name)


def test_prompts_batch_size_tensor_and_precision(st_model, tiny_pair):
    queries = ["the red circle painted in 1990", "a blue square"]
    q = st_model.encode_query(queries)
    np.testing.assert_allclose(q, _direct(tiny_pair, ["query: " + t for t in queries]), atol=1e-5, rtol=0)
    d = st_model.encode_document(queries)  # the document prompt is empty
    np.testing.assert_allclose(d, _direct(tiny_pair, queries), atol=1e-5, rtol=0)
    tensor = st_model.encode(queries, convert_to_tensor=True, batch_size=1, normalize_embeddings=True)
    assert isinstance(tensor, torch.Tensor) and tensor.shape == (2, 384)
    np.testing.assert_allclose(tensor.numpy(), d, atol=1e-5)
    binary = st_model.encode(queries, precision="ubinary")
    assert binary.dtype == np.uint8 and binary.shape == (2, 384 // 8)
    similarity = st_model.similarity(q, d)
    assert similarity.shape == (2, 2) and float(similarity[0, 0]) > float(similarity[0, 1])
    assert st_model.get_embedding_dimension() == 384


@pytest.mark.parametrize(
    ("inputs", "error", "message"),
    [
        (["ok", {"text": "a", "caption": "b"}], ValueError, r"input 1: dict inputs take 'text' and/or 'image'"),
        ([{"image": "/nonexistent/picture.png"}], FileNotFoundError, "input 0: image file '/nonexistent/picture.png'"),
        (["ok", 42], ValueError, "input 1: unsupported type int"),
        (["https://example.com/cat.png"], ValueError, "input 0: .*looks like an image URL"),
    ],
)
def test_st_bad_inputs(st_model, inputs, error, message):
    with pytest.raises(error, match=message):
        st_model.encode(inputs)


def _shape(colour: str) -> Image.Image:
    image = Image.new("RGB", (32, 32), "white")
    ImageDraw.Draw(image).ellipse((6, 6, 26, 26), fill=colour)
    return image


@pytest.mark.slow
@pytest.mark.parametrize("loss_name", ["mnrl", "cached_mnrl", "infonce_psl"])
def test_sentence_transformers_trainer_reduces_loss(st_folder, tmp_path, loss_name):
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import (
        CachedMultipleNegativesRankingLoss,
        MultipleNegativesRankingLoss,
    )

    from unica.st_losses import InfoNCEWithPSLLoss

    torch.manual_seed(0)
    model = SentenceTransformer(str(st_folder), trust_remote_code=True, device="cpu")
    colours = ["red", "blue", "green", "yellow"]
    years = [1990, 2001, 1984, 2012]
    train = Dataset.from_dict({
        "anchor": [f"the {c} one from {y}" for c, y in zip(colours, years)] * 2,
        "positive": [{"text": f"made in {y}", "image": _shape(c)} for c, y in zip(colours, years)] * 2,
    })
    losses = {
        "mnrl": lambda: MultipleNegativesRankingLoss(model, scale=20.0),
        "cached_mnrl": lambda: CachedMultipleNegativesRankingLoss(model, scale=20.0, mini_batch_size=2),
        "infonce_psl": lambda: InfoNCEWithPSLLoss(model, temperature=0.05, psl_weight=0.5),
    }
    loss = losses[loss_name]()

    def evaluate() -> float:
        features = [model.preprocess(list(train["anchor"][:4])), model.preprocess(list(train["positive"][:4]))]
        with torch.no_grad():
            return float(loss(features, None))

    before = evaluate()
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "out"), num_train_epochs=4, per_device_train_batch_size=4, learning_rate=2e-4,
        save_strategy="no", report_to=[], logging_steps=100, use_cpu=True, seed=0, dataloader_drop_last=True,
    )
    SentenceTransformerTrainer(model=model, args=args, train_dataset=train, loss=loss).train()
    after = evaluate()
    assert after < before * 0.9, (before, after)
    model.save(str(tmp_path / "saved"))
    reloaded = SentenceTransformer(str(tmp_path / "saved"), trust_remote_code=True, device="cpu")
    np.testing.assert_allclose(reloaded.encode(["the red one"]), model.encode(["the red one"]), atol=1e-5)
