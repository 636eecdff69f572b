"""Encoders for the evaluation harness (:class:`eval.harness.Encoder`) that need no UniCA code.

:class:`SentenceTransformerEncoder` wraps any sentence-transformers model with its public API
(``SentenceTransformer.encode``): a text model, a multimodal one, or a UniCA checkpoint folder (every
UniCA checkpoint is a sentence-transformers model, loaded with ``trust_remote_code=True``). Items are
handed to the model as they are: texts, images and ``{"text": ..., "image": ...}`` dicts.

Example:

```python
>>> from eval.encoders import SentenceTransformerEncoder
>>> from eval.harness import evaluate
>>> encoder = SentenceTransformerEncoder("./unica-mini", trust_remote_code=True, device="cpu")
>>> encoder.encode(["a red circle", {"text": "Red Circle, 1990", "image": image}]).shape
(2, 384)
>>> evaluate(encoder, "./scenes-eval", tasks=["task2"])["tasks"]["task2"]["hit@5"]
0.62
```
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from eval.cache import combine_fingerprints, fingerprint_model_dir, fingerprint_state_dict

__all__ = ["SentenceTransformerEncoder"]


class SentenceTransformerEncoder:
    """:class:`eval.harness.Encoder` around a ``sentence_transformers.SentenceTransformer``.

    Args:
        model_or_path: a ``SentenceTransformer``, or what ``SentenceTransformer(...)`` loads (a model
            folder or a Hub id), loaded with ``load_kwargs`` (e.g. ``trust_remote_code=True``, ``device``).
        batch_size: the default batch size of :meth:`encode`.
        fingerprint: identifies the model for the embedding cache. Default: for a folder,
            :func:`eval.cache.fingerprint_model_dir` (every weight, config and tokenizer file); otherwise
            the in-memory weights (:func:`eval.cache.fingerprint_state_dict`) with the model's class and
            prompts. Pass one when something else (e.g. a tokenizer setting) changes the embeddings.

    The rows are L2-normalised (``normalize_embeddings=True``) float32, as the harness expects.
    """

    def __init__(self, model_or_path: Any, batch_size: int = 32, fingerprint: str | None = None, **load_kwargs: Any):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if isinstance(model_or_path, (str, os.PathLike)):
            from sentence_transformers import SentenceTransformer

            path = model_or_path
            self.model = SentenceTransformer(str(path), **load_kwargs)
            if fingerprint is None and Path(path).is_dir():
                fingerprint = fingerprint_model_dir(path)
        else:
            if load_kwargs:
                raise ValueError(f"{sorted(load_kwargs)} are loading options; they apply only when a path or Hub id "
                                 "is given, not a loaded model")
            if not callable(getattr(model_or_path, "encode", None)):
                raise TypeError(f"model_or_path must be a SentenceTransformer, a model folder or a Hub id, got "
                                f"{type(model_or_path).__name__}")
            self.model = model_or_path
        if fingerprint is None:
            fingerprint = combine_fingerprints(
                fingerprint_state_dict(self.model.state_dict()), model_class=type(self.model).__name__,
                prompts=dict(getattr(self.model, "prompts", None) or {}),
                default_prompt_name=getattr(self.model, "default_prompt_name", None),
            )
        self.fingerprint = fingerprint
        self.batch_size = batch_size

    def encode(self, items: Sequence[Any], batch_size: int | None = None, show_progress: bool = False,
               desc: str = "encoding", role: str | None = None) -> np.ndarray:
        """Embed items (texts, images, ``{"text", "image"}`` dicts) into ``(len(items), dim)`` float32 rows.

        ``role`` (``"query"`` / ``"document"``) picks the model's prompt of that name, where it has one (as
        ``encode_query`` / ``encode_document`` do). ``desc`` is accepted for the harness and not shown
        (sentence-transformers labels its own bar).
        """
        prompts = getattr(self.model, "prompts", None) or {}
        prompt_name = role if role is not None and role in prompts else None
        items = list(items)
        if not items:
            raise ValueError("nothing to encode: the list of items is empty")
        embeddings = self.model.encode(items, batch_size=batch_size or self.batch_size, show_progress_bar=show_progress,
                                       convert_to_numpy=True, normalize_embeddings=True, prompt_name=prompt_name)
        return np.asarray(embeddings, dtype=np.float32)
