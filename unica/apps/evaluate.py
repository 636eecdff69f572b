"""Evaluate a UniCA checkpoint folder: load it, wrap it as an encoder, run the (model-agnostic) harness.

This is where the two layers meet: ``unica.encoding.UniCAEncoder`` (core) gets the checkpoint folder's
fingerprint from ``eval.cache.fingerprint_model_dir`` (eval), and ``eval.harness.evaluate`` scores it.
``unica evaluate``, the demo and the ablation runner call :func:`evaluate_checkpoint`.

Example:

```python
>>> from unica.apps.evaluate import evaluate_checkpoint
>>> results = evaluate_checkpoint("./my-model", "./webqa-eval", out_dir="results/", tasks=["task1", "task2"])
>>> results["tasks"]["task2"]["hit@5"]
0.41
```
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from eval.cache import fingerprint_model_dir
from eval.harness import DEFAULT_K_VALUES, check_k_values, evaluate
from eval.index import IndexSpec
from unica.encoding import UniCAEncoder, load_for_inference, resolve_dtype
from unica.st import read_prompts

__all__ = ["evaluate_checkpoint"]


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    dataset_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    tasks: Sequence[str] | None = None,
    batch_size: int = 32,
    dtype: str = "fp32",
    index_spec: IndexSpec | None = None,
    cache_dir: str | os.PathLike | None = None,
    k_values: Sequence[int] = DEFAULT_K_VALUES,
    pool: str = "local",
    split: str = "test",
    shard: tuple[int, int] | None = None,
    shard_dir: str | os.PathLike | None = None,
    show_progress: bool = True,
    num_workers: int = 0,
) -> dict[str, Any]:
    """Evaluate a checkpoint folder; with ``out_dir`` writes results.json, results.md and recall_curves.png.

    ``results["tasks"][task]`` holds the mean metrics; ``results["per_query"]`` the per-query values
    (for paired bootstrap); the written ``results.json`` also records the model fingerprint and settings.
    ``k_values`` are checked before anything is loaded (``eval.harness.check_k_values``). ``dtype``: ``"fp32"``,
    ``"bf16"`` or ``"auto"`` (bf16 on a CPU with native bf16, fp32 elsewhere: ``unica.encoding.resolve_dtype``;
    ``unica evaluate``'s default); the settings record the dtype used. ``num_workers``: DataLoader workers that
    decode and preprocess batches ahead of the model (``unica.encoding.encode_items``; the same embeddings).
    """
    k_values = check_k_values(k_values, report=out_dir is not None and shard is None)
    dtype = resolve_dtype(dtype)  # "auto": bf16 where the CPU computes it natively (unica.encoding.resolve_dtype)
    model, processor = load_for_inference(checkpoint, dtype)
    fingerprint = fingerprint_model_dir(checkpoint)
    encoder = UniCAEncoder(model, processor, fingerprint, dtype=dtype, batch_size=batch_size,
                           prompts=read_prompts(checkpoint),  # the query / document prompts, as ST applies them
                           num_workers=num_workers)
    settings = {"checkpoint": str(checkpoint), "dataset": str(dataset_dir), "model_fingerprint": fingerprint,
                "dtype": dtype}
    # The harness decodes and encodes the candidates in chunks of whole batches of this size.
    return evaluate(encoder, dataset_dir, out_dir=out_dir, tasks=tasks, batch_size=batch_size,
                    index_spec=index_spec, cache_dir=cache_dir,
                    k_values=k_values, pool=pool, split=split, shard=shard, shard_dir=shard_dir,
                    show_progress=show_progress, settings=settings, title="UniCA retrieval evaluation")
