"""Batched encoding of items (texts, images, image + text dicts) with a UniCA model.

:func:`encode_items` is the one batched encode loop; :class:`UniCAEncoder` puts it behind the evaluation
harness's encoder protocol (``eval.harness.Encoder``: ``encode(items, batch_size, show_progress, desc)``
and ``fingerprint``), and ``unica.mteb_encoder`` behind MTEB's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from modeling_unica import UniCAModel, UniCAProcessor
from unica.st import read_prompts

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
    prompt: str | None = None,
) -> np.ndarray:
    """Embed items (see `UniCAProcessor.process_items` for the kinds) into a float32 array.

    ``prompt`` goes before every item's text (``UniCAProcessor.process_items``), e.g. the checkpoint's
    ``"query"`` prompt (:func:`unica.st.read_prompts`).

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
            batch = processor.process_items(items[start : start + batch_size], prompt=prompt).to(device)
            with autocast_context(dtype, device):
                embeddings = model(**batch).embeddings
            chunks.append(embeddings.float().cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(chunks, axis=0)


class UniCAEncoder:
    """A UniCA model + processor as an evaluation-harness encoder (the ``eval.harness.Encoder`` protocol).

    Args:
        model, processor: the UniCA model and its processor.
        fingerprint: the model's fingerprint, e.g. ``eval.cache.fingerprint_model_dir`` of its checkpoint
            folder (computed by the caller: this layer does not import ``eval``).
        dtype: ``"fp32"`` or ``"bf16"`` (autocast), folded into :attr:`fingerprint`.
        batch_size: the default batch size of :meth:`encode`.

    ``fingerprint`` (the attribute) covers the model's fingerprint and ``dtype``, so cached embeddings
    of another dtype are never reused; ``model_fingerprint`` is the one given.

    Example:

    ```python
    >>> from eval.cache import fingerprint_model_dir
    >>> from eval.harness import evaluate
    >>> encoder = UniCAEncoder.from_checkpoint("./unica-mini", fingerprint=fingerprint_model_dir("./unica-mini"))
    >>> encoder.encode(["a red circle", {"text": "Red Circle", "image": "scene.png"}]).shape
    (2, 384)
    >>> evaluate(encoder, "./scenes-eval", tasks=["task2"])["tasks"]["task2"]["hit@5"]
    0.62
    ```
    """

    def __init__(self, model: UniCAModel, processor: UniCAProcessor, fingerprint: str, dtype: str = "fp32",
                 batch_size: int = 32, prompts: dict[str, str] | None = None):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not isinstance(fingerprint, str) or not fingerprint:
            raise ValueError(f"fingerprint must be a non-empty string (the model's), got {fingerprint!r}")
        self.model, self.processor = model, processor
        self.model_fingerprint = fingerprint
        self.dtype, self.batch_size = dtype, batch_size
        self.prompts = dict(prompts or {})
        payload = json.dumps({"encoder": "unica", "model": fingerprint, "dtype": dtype, "prompts": self.prompts},
                             sort_keys=True)
        self.fingerprint = hashlib.sha256(payload.encode("utf-8")).hexdigest()

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, fingerprint: str, dtype: str = "fp32",
                        batch_size: int = 32) -> UniCAEncoder:
        """Load a checkpoint folder (``unica.checkpoint.load_checkpoint``); ``fingerprint`` is the folder's."""
        from unica.checkpoint import load_checkpoint

        if dtype not in DTYPES:  # before the model is loaded
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        model, processor = load_checkpoint(path)
        return cls(model, processor, fingerprint, dtype=dtype, batch_size=batch_size, prompts=read_prompts(path))

    def encode(self, items: Sequence[Any], batch_size: int | None = None, show_progress: bool = False,
               desc: str = "encoding", role: str | None = None) -> np.ndarray:
        """:func:`encode_items` with this encoder's dtype (and batch size unless one is given); ``role``
        (``"query"`` / ``"document"``) puts the prompt of that name (``prompts``) before each text."""
        return encode_items(self.model, self.processor, items, batch_size=batch_size or self.batch_size,
                            dtype=self.dtype, show_progress=show_progress, desc=desc,
                            prompt=self.prompts.get(role) if role else None)


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
