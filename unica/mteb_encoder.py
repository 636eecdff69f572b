"""An encoder MTEB (v2) can call, for its any-to-any retrieval tasks such as ``WebQAT2ITRetrieval``
(M-BEIR WebQA task 2, the UniCA paper's hybrid task).

MTEB hands the encoder a ``DataLoader`` whose batches are dicts with a ``"text"`` list, an
``"image"`` list, or both (image + text documents); the encoder returns one embedding per row.
Queries and documents get the checkpoint's sentence-transformers prompts (``query`` / ``document``).
Each MTEB batch is embedded with :func:`unica.encoding.encode_items` (the one batched encode loop).

Where the data can be downloaded (not in this sandbox)::

    pip install mteb
    python -c "
    import mteb
    from unica.mteb_encoder import UniCAMTEBEncoder
    model = UniCAMTEBEncoder.from_checkpoint('./my-model')
    tasks = mteb.get_tasks(tasks=['WebQAT2ITRetrieval', 'WebQAT2TRetrieval'])
    print(mteb.evaluate(model, tasks))
    "

MTEB's scores for these tasks use its own retrieval evaluator (nDCG@10 as main score); the paper's
hit@k / MRR@1 come from ``unica evaluate``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

from dataset_builders.rows import multimodal_item
from unica.encoding import encode_items
from unica.st import read_prompts


class UniCAMTEBEncoder:
    """MTEB-style encoder around a UniCA model and processor.

    Example:

    ```python
    >>> encoder = UniCAMTEBEncoder.from_checkpoint("./unica-mini")
    >>> loader = [{"text": ["a red circle"]}, {"text": ["Red Circle, 1990"], "image": [img]}]
    >>> encoder.encode(loader, prompt_type="query").shape
    (2, 384)
    ```
    """

    def __init__(self, model, processor, prompts: Mapping[str, str] | None = None, batch_dtype: str = "fp32",
                 batch_size: int = 32):
        self.model = model.eval()
        self.processor = processor
        self.prompts = dict(prompts or {})
        self.batch_dtype = batch_dtype
        self.batch_size = batch_size

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, dtype: str = "fp32", batch_size: int = 32) -> UniCAMTEBEncoder:
        from unica.checkpoint import load_checkpoint

        model, processor = load_checkpoint(path)
        return cls(model, processor, read_prompts(path), batch_dtype=dtype, batch_size=batch_size)

    def _prompt(self, prompt_type: Any) -> str:
        if prompt_type is None:
            return ""
        name = getattr(prompt_type, "value", prompt_type)
        name = "document" if name in ("passage", "document") else name
        return self.prompts.get(name, "")

    @staticmethod
    def _batch_items(batch: Mapping[str, Any]) -> list[Any]:
        texts, images = batch.get("text"), batch.get("image")
        if texts is None and images is None:
            raise ValueError(f"an MTEB batch needs a 'text' or 'image' list, got keys {sorted(batch)}")
        size = len(texts) if texts is not None else len(images)
        if texts is not None and images is not None and len(images) != size:
            raise ValueError(f"batch has {size} texts but {len(images)} images")
        items = []
        for row in range(size):
            text = texts[row] if texts is not None else None
            image = images[row] if images is not None else None
            items.append(multimodal_item(text, image, label=f"MTEB batch row {row}"))
        return items

    def encode(self, inputs: Iterable[Mapping[str, Any]], *, task_metadata: Any = None, hf_split: str | None = None,
               hf_subset: str | None = None, prompt_type: Any = None, **kwargs) -> np.ndarray:
        """Embed every row of every batch (MTEB's ``encode`` signature); returns ``(rows, hidden)`` float32."""
        prompt = self._prompt(prompt_type)
        chunks = [
            encode_items(self.model, self.processor, self._batch_items(batch), batch_size=self.batch_size,
                         dtype=self.batch_dtype, show_progress=False, prompt=prompt)
            for batch in inputs
        ]
        if not chunks:
            raise ValueError("encode got no batches")
        return np.concatenate(chunks)

    def similarity(self, embeddings1: np.ndarray, embeddings2: np.ndarray) -> torch.Tensor:
        """Cosine similarity matrix (the embeddings are L2-normalised)."""
        return torch.as_tensor(embeddings1) @ torch.as_tensor(embeddings2).T

    def similarity_pairwise(self, embeddings1: np.ndarray, embeddings2: np.ndarray) -> torch.Tensor:
        return (torch.as_tensor(embeddings1) * torch.as_tensor(embeddings2)).sum(-1)
