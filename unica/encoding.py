"""Batched encoding of items (texts, images, image + text dicts) with a UniCA model."""

from __future__ import annotations

import contextlib
import os
import pathlib
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from modeling_unica import UniCAModel, UniCAProcessor

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def autocast_context(dtype: str, device: torch.device):
    """`torch.autocast` for ``bf16`` on the model's device, a no-op context for ``fp32``."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[dtype])


@torch.no_grad()
def encode_items(
    model: UniCAModel,
    processor: UniCAProcessor,
    items: Sequence[Any],
    batch_size: int = 32,
    dtype: str = "fp32",
    show_progress: bool = True,
    desc: str = "encoding",
) -> np.ndarray:
    """Embed items (see `UniCAProcessor.process_items` for the kinds) into a float32 array.

    Example:

    ```python
    >>> emb = encode_items(model, processor, ["a red circle", {"text": "Red Circle", "image": "scene.png"}])
    >>> emb.shape
    (2, 384)
    ```
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    items = list(items)
    if not items:
        raise ValueError("nothing to encode: the list of items is empty")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    chunks = []
    try:
        for start in tqdm(range(0, len(items), batch_size), desc=desc, disable=not show_progress, unit="batch"):
            batch = processor.process_items(items[start : start + batch_size]).to(device)
            with autocast_context(dtype, device):
                embeddings = model(**batch).embeddings
            chunks.append(embeddings.float().cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(chunks, axis=0)


def read_jsonl_items(path: str | os.PathLike) -> list[dict]:
    """Read ``{"text": ..., "image": ...}`` records, one per line; image paths are relative to the file."""
    from dataset_builders.jsonl import iter_json_objects

    path = pathlib.Path(path)
    items = []
    for line_number, record in iter_json_objects(path):
        if not ({"text", "image"} & set(record)):
            raise ValueError(f"{path}:{line_number}: each line must be an object with 'text' and/or 'image'")
        item = {key: record[key] for key in ("text", "image") if record.get(key) not in (None, "")}
        if "image" in item:
            item["image"] = pathlib.Path(path.parent, item["image"])
        items.append(item)
    if not items:
        raise ValueError(f"JSONL file {str(path)!r} holds no records")
    return items


def pair_cli_items(texts: Iterable[str] | None, images: Iterable[str] | None) -> list[Any]:
    """Items from repeated ``--text`` / ``--image`` options: paired when both are given."""
    texts, images = list(texts or []), list(images or [])
    if texts and images:
        if len(texts) != len(images):
            raise ValueError(
                f"got {len(texts)} --text and {len(images)} --image; give equal counts to pair them, or one kind only"
            )
        return [{"text": t, "image": pathlib.Path(i)} for t, i in zip(texts, images)]
    if images:
        return [pathlib.Path(i) for i in images]
    return texts
