"""Retrieval evaluation harness: encode queries and candidates with ANY encoder, search with FAISS, score per task.

Reproduces the UniCA paper's WebQA protocol (hit@5 / hit@10 — what the paper and M-BEIR call
Recall@k — and MRR@1 on the hybrid task 2 and the text task 1) on any evaluation folder exported by
``unica build-dataset webqa`` / ``mbeir-eval`` (configs ``task{N}_queries``, ``task{N}_corpus``,
``task{N}_qrels``).

The harness knows no model: like MTEB, it takes an :class:`Encoder` — anything with
``encode(items, batch_size, show_progress, desc)`` returning L2-normalised float32 rows and a
``fingerprint`` string — so UniCA (``unica.encoding.UniCAEncoder``), a converted VISTA and any
sentence-transformers model (:class:`eval.encoders.SentenceTransformerEncoder`) are scored side by side.
Items are texts, images, or ``{"text": ..., "image": ...}`` dicts (:func:`row_item`).

* Candidate embeddings are cached on disk, keyed by the encoder's fingerprint and the data's (ids +
  content): a second run re-encodes nothing, a different encoder never reuses them, a corrupt cache
  file is re-encoded with a warning.
* ``pool="local"`` searches each task's own candidate pool; ``pool="global"`` the union of the pools
  of every task evaluated (M-BEIR's two settings, at the scale of the loaded tasks).
* Large corpora: ``shard=(i, n)`` encodes only candidate shard ``i`` of ``n`` into ``shard_dir`` (one
  process per shard, or ``torchrun``: rank ``i`` of ``n`` takes shard ``i``); a later run with the
  same ``shard_dir`` merges the shards into one index instead of encoding.

Example:

```python
>>> from eval.encoders import SentenceTransformerEncoder
>>> from eval.harness import evaluate
>>> encoder = SentenceTransformerEncoder("./my-model", trust_remote_code=True)
>>> results = evaluate(encoder, "./webqa-eval", out_dir="results/", tasks=["task1", "task2"])
>>> results["tasks"]["task2"]["hit@5"]
0.41
```

A UniCA checkpoint folder is evaluated the same way by ``unica evaluate`` (``unica.apps.evaluate``).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from dataset_builders.rows import multimodal_item
from eval.cache import EmbeddingCache, combine_fingerprints, fingerprint_records
from eval.index import IndexSpec, build_index, build_index_from_shards, save_embedding_shard
from eval.metrics import compute_ranking_metrics

logger = logging.getLogger(__name__)

DEFAULT_K_VALUES = (1, 5, 10, 20, 50)
DEFAULT_METRICS = ("hit@1", "hit@5", "hit@10", "mrr@1", "mrr@10", "recall@5", "recall@10", "ndcg@10")
# The cut-offs of the metrics the report's table shows (1, 5, 10): k_values must include one of them.
REPORT_K_VALUES = tuple(sorted({int(metric.split("@")[1]) for metric in DEFAULT_METRICS}))
_TASK_CONFIG = re.compile(r"^task(\d+)_queries$")


def check_k_values(k_values: Sequence[int], option: str = "k_values", report: bool = True) -> list[int]:
    """Validate cut-offs before anything is loaded or encoded; returns them as ints.

    Every k must be a positive integer; with ``report`` (a results table will be written) at least one
    must be a cut-off of a reported metric (:data:`REPORT_K_VALUES`), or the table would be empty.
    ``option`` names the setting in errors (``"--k"`` from the command line).

    Example:
        >>> check_k_values([1, 5, 20])
        [1, 5, 20]
    """
    example = f"e.g. {option} {','.join(map(str, REPORT_K_VALUES))}"
    if isinstance(k_values, (str, bytes)) or not isinstance(k_values, Sequence):
        raise ValueError(f"{option}={k_values!r} must be a list of positive integers, {example}")
    if not k_values:
        raise ValueError(f"{option} is empty; pass at least one cut-off, {example}")
    bad = [k for k in k_values if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0]
    if bad:
        raise ValueError(f"{option} contains {', '.join(map(repr, bad))}; every cut-off must be a positive integer "
                         f"(k >= 1), {example}")
    k_values = [int(k) for k in k_values]
    if report and not set(k_values) & set(REPORT_K_VALUES):
        raise ValueError(
            f"{option} {','.join(map(str, k_values))} gives none of the reported metrics ({', '.join(DEFAULT_METRICS)}); "
            f"include at least one of {', '.join(map(str, REPORT_K_VALUES))} (other cut-offs, such as 20 or 50, only "
            f"add values to results.json and points to the recall curve), {example}"
        )
    return k_values


@runtime_checkable
class Encoder(Protocol):
    """What the harness evaluates: any model that embeds items, as MTEB's encoders do.

    ``encode`` embeds items — ``str`` (a text), an image (``PIL.Image``), or ``{"text": ..., "image": ...}``
    — into one L2-normalised float32 row each, ``(len(items), dim)``. ``batch_size=None`` means the
    encoder's own default; ``desc`` labels the progress bar (an encoder may ignore it). ``fingerprint``
    identifies everything that determines the embeddings (weights, tokenizer, dtype, ...): cached candidate
    embeddings are reused only for an equal fingerprint (any string; a checkpoint folder's is
    :func:`eval.cache.fingerprint_model_dir`).

    Implementations: ``unica.encoding.UniCAEncoder``, :class:`eval.encoders.SentenceTransformerEncoder`.
    """

    fingerprint: str

    def encode(self, items: Sequence[Any], batch_size: int | None = None, show_progress: bool = False,
               desc: str = "encoding") -> np.ndarray: ...


@dataclass
class RetrievalTask:
    """One evaluation task: queries with their relevant ids, and the task's candidate pool."""

    name: str
    query_ids: list[str]
    query_items: list[Any]
    relevant: list[list[str]]
    corpus_ids: list[str]
    corpus_items: list[Any]
    grades: list[list[float]] = field(default_factory=list)


def row_item(text: str | None, image: Any) -> Any:
    """A processor item from a row's text and (decoded) image: str, image or {"text", "image"}.

    :func:`dataset_builders.rows.multimodal_item`: whitespace-only text is no text; neither is an error.
    """
    return multimodal_item(text, image, label="a row")


def available_tasks(dataset_dir: str | os.PathLike) -> list[str]:
    """Task names (``task{N}``) an evaluation folder holds, from its dataset card's configs."""
    from dataset_builders.export import read_card_metadata

    metadata = read_card_metadata(Path(dataset_dir))
    names = [c["config_name"] for c in metadata.get("configs", [])]
    tasks = [f"task{m.group(1)}" for name in names if (m := _TASK_CONFIG.match(name))]
    if not tasks:
        raise ValueError(f"{dataset_dir} has no task{{N}}_queries configs; build it with `unica build-dataset webqa` "
                         "or `mbeir-eval`")
    return tasks


def resolve_task(name: str, available: Sequence[str]) -> str:
    """Accept ``task2``, ``2`` or a prefixed name such as ``webqa_task2``."""
    match = re.search(r"(?:^|_)task(\d+)$", name) or re.match(r"^(\d+)$", name)
    task = f"task{match.group(1)}" if match else None
    if task not in available:
        raise ValueError(f"unknown task {name!r}; this evaluation folder has {', '.join(available)}")
    return task


def load_retrieval_tasks(
    dataset_dir: str | os.PathLike, tasks: Sequence[str] | None = None, split: str = "test"
) -> list[RetrievalTask]:
    """Load tasks from an exported evaluation folder (``datasets.load_dataset`` on its configs)."""
    from datasets import load_dataset

    dataset_dir = str(dataset_dir)
    if not os.path.isdir(dataset_dir):
        raise FileNotFoundError(f"evaluation folder {dataset_dir!r} does not exist")
    available = available_tasks(dataset_dir)
    selected = [resolve_task(t, available) for t in tasks] if tasks else available
    loaded = []
    for task in selected:
        queries = load_dataset(dataset_dir, f"{task}_queries", split=split)
        corpus = load_dataset(dataset_dir, f"{task}_corpus", split=split)
        qrels = load_dataset(dataset_dir, f"{task}_qrels", split=split)
        relevant: dict[str, dict[str, float]] = {}
        for row in qrels:
            if row["relevance"] > 0:
                relevant.setdefault(row["qid"], {})[row["did"]] = float(row["relevance"])
        query_ids = list(queries["qid"])
        loaded.append(RetrievalTask(
            name=task,
            query_ids=query_ids,
            query_items=[row_item(r["query_text"], r["query_image"]) for r in queries],
            relevant=[list(relevant.get(q, {})) for q in query_ids],
            grades=[list(relevant.get(q, {}).values()) for q in query_ids],
            corpus_ids=list(corpus["did"]),
            corpus_items=[row_item(r["text"], r["image"]) for r in corpus],
        ))
        logger.info("%s: %d queries, %d candidates", task, len(query_ids), len(loaded[-1].corpus_ids))
    return loaded


def _check_encoder(encoder: Any) -> None:
    if not isinstance(encoder, Encoder) or not isinstance(encoder.fingerprint, str) or not encoder.fingerprint:
        raise TypeError(
            f"{type(encoder).__name__} is not an eval.harness.Encoder (encode(items, batch_size, show_progress, desc) "
            "and a non-empty fingerprint string); wrap a sentence-transformers model in "
            "eval.encoders.SentenceTransformerEncoder, a UniCA model in unica.encoding.UniCAEncoder"
        )


@dataclass
class _Encoding:
    """How the harness calls the encoder: batch size, progress bars, and the candidate cache."""

    encoder: Encoder
    batch_size: int | None = None
    show_progress: bool = True
    cache: EmbeddingCache | None = None

    def encode(self, items: Sequence[Any], desc: str) -> np.ndarray:
        embeddings = np.asarray(self.encoder.encode(items, batch_size=self.batch_size,
                                                    show_progress=self.show_progress, desc=desc), dtype=np.float32)
        if embeddings.ndim != 2 or embeddings.shape[0] != len(items):
            raise ValueError(f"{type(self.encoder).__name__}.encode returned shape {embeddings.shape} for "
                             f"{len(items)} items ({desc}); expected one row per item")
        return embeddings

    def encode_candidates(self, ids: Sequence[str], items: Sequence[Any], desc: str) -> np.ndarray:
        if self.cache is None:
            return self.encode(items, desc)
        model_key = combine_fingerprints(self.encoder.fingerprint, role="candidate")
        data_key = fingerprint_records(ids, items)
        return self.cache.get_or_compute(model_key, data_key, lambda: self.encode(items, desc))


def _pools(tasks: Sequence[RetrievalTask], pool: str) -> dict[str, tuple[list[str], list[Any]]]:
    if pool == "local":
        return {task.name: (task.corpus_ids, task.corpus_items) for task in tasks}
    if pool != "global":
        raise ValueError(f"pool must be 'local' or 'global', got {pool!r}")
    ids, items, seen = [], [], set()
    for task in tasks:
        for doc_id, item in zip(task.corpus_ids, task.corpus_items):
            if doc_id not in seen:
                seen.add(doc_id)
                ids.append(doc_id)
                items.append(item)
    return {task.name: (ids, items) for task in tasks}


def evaluate_tasks(
    encoder: Encoder,
    tasks: Sequence[RetrievalTask],
    k_values: Sequence[int] = DEFAULT_K_VALUES,
    index_spec: IndexSpec | None = None,
    pool: str = "local",
    shard: tuple[int, int] | None = None,
    shard_dir: str | os.PathLike | None = None,
    batch_size: int | None = None,
    cache: EmbeddingCache | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Metrics (means) and per-query values per task; with ``shard`` only writes candidate shards.

    ``cache`` holds candidate embeddings keyed by ``encoder.fingerprint``; ``batch_size=None`` is the encoder's.
    """
    _check_encoder(encoder)
    if not tasks:
        raise ValueError("no tasks to evaluate")
    encoding = _Encoding(encoder, batch_size=batch_size, show_progress=show_progress, cache=cache)
    pools = _pools(tasks, pool)
    index_spec = index_spec or IndexSpec()
    results: dict[str, Any] = {"tasks": {}, "per_query": {}, "rankings": {}}
    built: dict[int, Any] = {}
    for task in tasks:
        ids, items = pools[task.name]
        pool_name = "global" if pool == "global" else task.name
        if shard is not None:
            index, count = shard
            if shard_dir is None:
                raise ValueError("shard= needs shard_dir= (where each shard's embeddings are written)")
            part = np.array_split(np.arange(len(ids)), count)[index]
            embeddings = encoding.encode([items[i] for i in part], f"{pool_name} shard {index}/{count}")
            save_embedding_shard(Path(shard_dir) / pool_name, embeddings, [ids[i] for i in part], index, count)
            continue
        if id(ids) not in built:
            if shard_dir is not None:
                built[id(ids)] = build_index_from_shards(Path(shard_dir) / pool_name, index_spec)
            else:
                built[id(ids)] = build_index(encoding.encode_candidates(ids, items, f"{pool_name} candidates"), ids,
                                             index_spec)
        index = built[id(ids)]
        queries = encoding.encode(task.query_items, f"{task.name} queries")
        search = index.search(queries, max(k_values))
        scored = compute_ranking_metrics(search.ids, task.relevant, k_values=k_values, reference_grades=task.grades,
                                         return_per_query=True)
        per_query = scored.pop("per_query")
        results["tasks"][task.name] = {**scored, "num_queries": len(task.query_ids), "num_candidates": len(ids),
                                       "pool": pool}
        results["per_query"][task.name] = {"qids": task.query_ids, **per_query}
        results["rankings"][task.name] = search.ids
    return results


def evaluate(
    encoder: Encoder,
    dataset_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    tasks: Sequence[str] | None = None,
    batch_size: int | None = None,
    index_spec: IndexSpec | None = None,
    cache_dir: str | os.PathLike | None = None,
    k_values: Sequence[int] = DEFAULT_K_VALUES,
    pool: str = "local",
    split: str = "test",
    shard: tuple[int, int] | None = None,
    shard_dir: str | os.PathLike | None = None,
    show_progress: bool = True,
    settings: Mapping[str, Any] | None = None,
    title: str = "Retrieval evaluation",
) -> dict[str, Any]:
    """Evaluate an :class:`Encoder` on an evaluation folder; with ``out_dir`` writes results.json, results.md
    and recall_curves.png (``title`` heads results.md).

    ``results["tasks"][task]`` holds the mean metrics; ``results["per_query"]`` the per-query values
    (for paired bootstrap); ``results["settings"]`` (also in the written ``results.json``) describes the
    run: ``settings`` (what the caller records about the model; default the encoder's class and
    fingerprint), then the dataset, pool, index kind, cut-offs and the cache's hits and misses.
    ``k_values`` are checked before anything is loaded or encoded (:func:`check_k_values`).
    """
    k_values = check_k_values(k_values, report=out_dir is not None and shard is None)
    _check_encoder(encoder)
    cache = EmbeddingCache(cache_dir) if cache_dir else None
    loaded = load_retrieval_tasks(dataset_dir, tasks, split=split)
    results = evaluate_tasks(encoder, loaded, k_values=k_values, index_spec=index_spec, pool=pool, shard=shard,
                             shard_dir=shard_dir, batch_size=batch_size, cache=cache, show_progress=show_progress)
    recorded = dict(settings) if settings is not None else {"encoder": type(encoder).__name__,
                                                             "fingerprint": encoder.fingerprint}
    recorded.update(dataset=str(dataset_dir), pool=pool, index=(index_spec or IndexSpec()).kind,
                    k_values=list(k_values))
    results["settings"] = recorded
    if cache is not None:
        results["settings"]["cache"] = {"hits": cache.hits, "misses": cache.misses}
    if out_dir is not None and shard is None:
        from eval.report import write_evaluation_report

        write_evaluation_report(out_dir, results["tasks"], [m for m in DEFAULT_METRICS if _has(results, m)],
                                extra={"settings": results["settings"], "per_query": results["per_query"]},
                                title=title)
    return results


def _has(results: dict, metric: str) -> bool:
    return any(metric in values for values in results["tasks"].values())
