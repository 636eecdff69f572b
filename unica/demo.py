"""The offline demo (``make demo``): build UniCA on the embedded all-MiniLM-L6-v2 and a micro ViT,
save it as a remote-code checkpoint, reload it through ``AutoModel`` and embed text, image and
image + text items."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

logger = logging.getLogger("unica.demo")


def _shape_image(colour: str, kind: str, size: int = 64) -> Image.Image:
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    box = (size // 4, size // 4, 3 * size // 4, 3 * size // 4)
    (draw.ellipse if kind == "circle" else draw.rectangle)(box, fill=colour)
    return image


def run(out: Path) -> int:
    from unica.checkpoint import default_text_encoder, init_model, load_checkpoint, save_checkpoint
    from unica.encoding import encode_items

    torch.manual_seed(0)
    checkpoint = out / "unica-mini"
    model, processor = init_model(default_text_encoder(), "vit-micro", fusion="bica")
    save_checkpoint(model, processor, checkpoint, overwrite=True)
    model, processor = load_checkpoint(checkpoint)
    red_circle, blue_square = _shape_image("red", "circle"), _shape_image("blue", "square")
    queries = ["a red circle", "a blue square"]
    documents = [{"text": "Red Circle, painted in 1990.", "image": red_circle}, blue_square, "a text-only passage"]
    q = encode_items(model, processor, queries, show_progress=False)
    d = encode_items(model, processor, documents, show_progress=False)
    scores = q @ d.T
    np.save(out / "demo_scores.npy", scores)
    logger.info("checkpoint: %s", checkpoint)
    logger.info("query x document cosine similarities (untrained fusion):\n%s", np.array2string(scores, precision=3))
    return 0
