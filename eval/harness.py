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

* Lazy corpus: :func:`load_retrieval_tasks` keeps each table as the memory-mapped Arrow dataset with its
  image column undecoded (``datasets.Image(decode=False)``); a task's ``query_items`` / ``corpus_items``
  are :class:`LazyItems`, which decode an image only when its item is read. The harness encodes a pool
  chunk by chunk (``chunk_size`` items, default :data:`DEFAULT_CHUNK_ITEMS`, rounded up to a multiple of
  the batch size): it decodes one chunk's images with the safe loader
  (:func:`dataset_builders.rows.decode_image`), hands the chunk to the encoder (its own progress bar off;
  one bar per pool here) and writes the rows into one float32 matrix. A 400K-image pool therefore never
  sits in memory as decoded images, and a bad image is a ``ValueError`` naming its table (the task) and
  id, raised when its chunk is encoded.
* Candidate embeddings are cached on disk, keyed by the encoder's fingerprint and the data's: the pool's
  ids and undecoded content (text and image bytes, streamed from the Arrow table: nothing is decoded to
  fingerprint). A second run re-encodes nothing, a different encoder never reuses them, a corrupt cache
  file is re-encoded with a warning.
* ``pool="local"`` searches each task's own candidate pool; ``pool="global"`` the union of the pools
  of every task evaluated (M-BEIR's two settings, at the scale of the loaded tasks), encoded once and
  searched by every task.
* Large corpora: ``shard=(i, n)`` encodes only candidate shard ``i`` of ``n`` of each pool into
  ``shard_dir/<pool>`` (one process per shard, or ``torchrun``: rank ``i`` of ``n`` takes shard ``i``);
  each shard carries a manifest (:class:`eval.index.ShardManifest`: the encoder's fingerprint, the whole
  pool's data fingerprint, shard i/n, its count and ids' digest). A later run with the same
  ``shard_dir`` merges the shards into one index instead of encoding, and refuses (``ValueError`` naming
  the shard file) a shard of another model or other data, a shard that disagrees with its manifest, and
  ids that are missing from the shards or held twice; a missing shard file is a ``FileNotFoundError``.

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

import functools
import inspect
import logging
import math
import operator
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from tqdm.auto import tqdm

from dataset_builders.rows import decode_image, multimodal_item
from eval.cache import EmbeddingCache, combine_fingerprints, fingerprint_records
from eval.index import IndexSpec, build_index, build_index_from_shards, save_embedding_shard
from eval.metrics import compute_ranking_metrics

logger = logging.getLogger(__name__)

DEFAULT_K_VALUES = (1, 5, 10, 20, 50)
DEFAULT_METRICS = ("hit@1", "hit@5", "hit@10", "mrr@1", "mrr@10", "recall@5", "recall@10", "ndcg@10")
# The cut-offs of the metrics the report's table shows (1, 5, 10): k_values must include one of them.
REPORT_K_VALUES = tuple(sorted({int(metric.split("@")[1]) for metric in DEFAULT_METRICS}))
_TASK_CONFIG = re.compile(r"^task(\d+)_queries$")
# Items decoded and handed to the encoder at a time (rounded up to a multiple of the batch size).
DEFAULT_CHUNK_ITEMS = 2048
# The (id, text, image) columns of the exported tables (dataset_builders.rows CANDIDATE / QUERY_FEATURES).
CORPUS_COLUMNS = ("did", "text", "image")
QUERY_COLUMNS = ("qid", "query_text", "query_image")


def report_metrics(k_values: Sequence[int]) -> list[str]:
    """The metrics a report shows (results.md, the ``unica evaluate`` lines): ``hit@k`` for every cut-off asked
    for, then those of :data:`DEFAULT_METRICS` (mrr, recall, ndcg) whose cut-off was asked for.

    Example:
        >>> report_metrics([1, 5, 20])
        ['hit@1', 'hit@5', 'hit@20', 'mrr@1', 'recall@5']
    """
    cutoffs = sorted({int(k) for k in k_values})
    others = [m for m in DEFAULT_METRICS if not m.startswith("hit@") and int(m.split("@")[1]) in cutoffs]
    return [f"hit@{k}" for k in cutoffs] + others


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

    The harness calls ``encode`` once per chunk of decoded items (``show_progress=False``: it shows one
    progress bar per pool itself), so an encoder never holds more than a chunk of images. ``role`` is
    ``"query"`` or ``"document"`` (candidates): an encoder with query / document prompts (a checkpoint's
    sentence-transformers ``prompts``) applies the one of that role, as ``encode_query`` /
    ``encode_document`` do. ``role`` is optional: an encoder whose ``encode`` lacks it is called without it.

    Implementations: ``unica.encoding.UniCAEncoder``, :class:`eval.encoders.SentenceTransformerEncoder`.
    """

    fingerprint: str

    def encode(self, items: Sequence[Any], batch_size: int | None = None, show_progress: bool = False,
               desc: str = "encoding", role: str | None = None) -> np.ndarray: ...


class LazyItems(Sequence):
    """Rows of memory-mapped tables as processor items, each image decoded only when its item is read.

    What :func:`load_retrieval_tasks` gives as a task's ``query_items`` / ``corpus_items``: the
    ``datasets.Dataset`` tables stay on disk (Arrow, memory-mapped) with their image column undecoded
    (``Image(decode=False)``), so a 400K-image pool costs its ids, not 400K decoded images.

    * ``items[i]``, ``items[a:b]`` and iteration decode (:meth:`decode`: the safe loader,
      :func:`dataset_builders.rows.decode_image`); a bad image is a ``ValueError`` naming its table
      (e.g. ``task2_corpus``) and id.
    * :meth:`contents` streams each row's text and undecoded image bytes: what the data fingerprint hashes.
    * :meth:`select` and :meth:`concat` make views (a shard, the global pool) without reading any image.

    Args:
        parts: ``(label, table)`` pairs read one after the other; ``label`` names the table in errors.
        columns: the tables' (id, text, image) column names (:data:`CORPUS_COLUMNS`, :data:`QUERY_COLUMNS`).
    """

    def __init__(self, parts: Sequence[tuple[str, Any]], columns: Sequence[str] = CORPUS_COLUMNS):
        self.parts = [(str(label), table) for label, table in parts]
        self.columns = tuple(columns)
        if len(self.columns) != 3:
            raise ValueError(f"columns={columns!r} must name the (id, text, image) columns")
        self._starts = [0]
        for _, table in self.parts:
            self._starts.append(self._starts[-1] + len(table))

    def __len__(self) -> int:
        return self._starts[-1]

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step == 1:
                return self.decode(start, stop)
            return [self[position] for position in range(start, stop, step)]
        position = operator.index(index)
        position += len(self) if position < 0 else 0
        if not 0 <= position < len(self):
            raise IndexError(f"item {index} is out of range: there are {len(self)} items")
        return self.decode(position, position + 1)[0]

    def __iter__(self) -> Iterator[Any]:
        for start in range(0, len(self), DEFAULT_CHUNK_ITEMS):
            yield from self.decode(start, start + DEFAULT_CHUNK_ITEMS)

    def __repr__(self) -> str:
        return f"LazyItems({len(self)} items of {', '.join(label for label, _ in self.parts) or 'no table'})"

    def _rows(self, start: int, stop: int) -> Iterator[tuple[str, dict[str, list]]]:
        """(label, columns) of the rows ``[start, stop)``: one table read per part they span."""
        for (label, table), offset in zip(self.parts, self._starts):
            low, high = max(start - offset, 0), min(stop - offset, len(table))
            if low < high:
                yield label, table[low:high]

    def _columns_of(self, rows: dict[str, list]) -> Iterator[tuple[Any, Any, Any]]:
        """(id, text, image cell) per row of a column batch; a table without text or images has None there."""
        id_column, text_column, image_column = self.columns
        count = len(rows[id_column])
        return zip(rows[id_column], rows.get(text_column) or [None] * count, rows.get(image_column) or [None] * count)

    def ids(self) -> list[str]:
        """The id of every row, in order (only the id column is read)."""
        return [doc_id for _, table in self.parts for doc_id in table[self.columns[0]]]

    def decode(self, start: int, stop: int) -> list[Any]:
        """The items of rows ``[start, stop)`` with their images decoded (RGB ``PIL`` images)."""
        items = []
        for label, rows in self._rows(start, stop):
            for doc_id, text, cell in self._columns_of(rows):
                where = f"{label} {self.columns[0]}={doc_id!r}"
                items.append(multimodal_item(text, None if cell is None else _decode_cell(cell, where), label=where))
        return items

    def contents(self, batch_size: int = 4096) -> Iterator[Any]:
        """Each row's text and undecoded image (its bytes, or its file) in order, shaped as its item.

        What :func:`eval.cache.fingerprint_records` hashes for the data fingerprint: read from the Arrow
        table in batches, nothing decoded, nothing kept.
        """
        for label, table in self.parts:
            for rows in table.iter(batch_size=batch_size):
                for doc_id, text, cell in self._columns_of(rows):
                    yield multimodal_item(text, _undecoded_image(cell), label=f"{label} {self.columns[0]}={doc_id!r}")

    def select(self, positions: Sequence[int]) -> LazyItems:
        """A view of the rows at ``positions`` (strictly increasing), still undecoded."""
        positions = np.asarray(positions, dtype=np.int64)
        if positions.size and (positions[0] < 0 or positions[-1] >= len(self) or (np.diff(positions) <= 0).any()):
            raise ValueError(f"positions must be strictly increasing and within the {len(self)} items")
        parts = []
        for (label, table), offset in zip(self.parts, self._starts):
            local = positions[(positions >= offset) & (positions < offset + len(table))] - offset
            if len(local) == len(table):
                parts.append((label, table))
            elif len(local):
                parts.append((label, table.select(local)))
        return LazyItems(parts, self.columns)

    @classmethod
    def concat(cls, sequences: Sequence[LazyItems]) -> LazyItems:
        """The rows of several :class:`LazyItems` (of the same columns) one after the other."""
        columns = {items.columns for items in sequences}
        if len(columns) > 1:
            raise ValueError(f"cannot concatenate items of different columns {sorted(columns)}")
        return cls([part for items in sequences for part in items.parts], columns.pop() if columns else CORPUS_COLUMNS)


def _decode_cell(cell: Any, where: str) -> Any:
    """Decode an image cell with the safe loader; a bad image is a ValueError naming ``where`` (table and id)."""
    try:
        return decode_image(cell)
    except (ValueError, FileNotFoundError) as error:
        raise ValueError(
            f"{where}: its image cannot be decoded ({error}); replace the image in the evaluation folder or rebuild "
            "it with `unica build-dataset` (which checks every image and, with --skip-missing, drops bad ones)"
        ) from error


def _undecoded_image(cell: Any) -> Any:
    """What identifies an undecoded image cell: its bytes, else its file (hashed by content when it exists)."""
    if not isinstance(cell, Mapping):
        return cell
    if cell.get("bytes") is not None:
        return bytes(cell["bytes"])
    path = cell.get("path")
    return Path(path) if path and os.path.isfile(path) else path


def _contents(items: Sequence[Any]) -> Iterator[Any] | Sequence[Any]:
    """What the data fingerprint hashes: undecoded cells of :class:`LazyItems`, else the items themselves."""
    return items.contents() if isinstance(items, LazyItems) else items


def _subset(items: Sequence[Any], positions: Sequence[int]) -> Sequence[Any]:
    """The items at ``positions`` (increasing), as a lazy view when ``items`` is lazy."""
    if isinstance(items, LazyItems):
        return items.select(positions)
    return [items[position] for position in positions]


@dataclass
class RetrievalTask:
    """One evaluation task: queries with their relevant ids, and the task's candidate pool.

    ``query_items`` / ``corpus_items`` are parallel to ``query_ids`` / ``corpus_ids``: :class:`LazyItems`
    (images decoded when read) from :func:`load_retrieval_tasks`, or any list of items a caller builds.
    """

    name: str
    query_ids: list[str]
    query_items: Sequence[Any]
    relevant: list[list[str]]
    corpus_ids: list[str]
    corpus_items: Sequence[Any]
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


def _load_lazy(dataset_dir: str, config: str, split: str, columns: Sequence[str]) -> LazyItems:
    """One config's table, memory-mapped, with its image column undecoded, as :class:`LazyItems`."""
    from datasets import Image, load_dataset

    table = load_dataset(dataset_dir, config, split=split)
    image_column = columns[2]
    if isinstance(table.features.get(image_column), Image):
        table = table.cast_column(image_column, Image(decode=False))
    return LazyItems([(config, table)], columns)


def load_retrieval_tasks(
    dataset_dir: str | os.PathLike, tasks: Sequence[str] | None = None, split: str = "test"
) -> list[RetrievalTask]:
    """Load tasks from an exported evaluation folder (``datasets.load_dataset`` on its configs).

    Nothing is decoded: queries and corpus are :class:`LazyItems` over the memory-mapped tables; only the
    ids and qrels are read into memory.
    """
    import pyarrow
    from datasets import load_dataset

    dataset_dir = str(dataset_dir)
    if not os.path.isdir(dataset_dir):
        raise FileNotFoundError(f"evaluation folder {dataset_dir!r} does not exist")
    available = available_tasks(dataset_dir)
    selected = [resolve_task(t, available) for t in tasks] if tasks else available
    loaded = []
    for task in selected:
        queries = _load_lazy(dataset_dir, f"{task}_queries", split, QUERY_COLUMNS)
        corpus = _load_lazy(dataset_dir, f"{task}_corpus", split, CORPUS_COLUMNS)
        qrels = load_dataset(dataset_dir, f"{task}_qrels", split=split)
        relevant: dict[str, dict[str, float]] = {}
        for qid, did, relevance in zip(qrels["qid"], qrels["did"], qrels["relevance"]):
            if relevance > 0:
                relevant.setdefault(qid, {})[did] = float(relevance)
        query_ids = queries.ids()
        loaded.append(RetrievalTask(
            name=task,
            query_ids=query_ids,
            query_items=queries,
            relevant=[list(relevant.get(q, {})) for q in query_ids],
            grades=[list(relevant.get(q, {}).values()) for q in query_ids],
            corpus_ids=corpus.ids(),
            corpus_items=corpus,
        ))
        logger.info("%s: %d queries, %d candidates", task, len(query_ids), len(loaded[-1].corpus_ids))
    # A first load prepares Arrow files from the Parquet ones; the buffers it freed stay in Arrow's memory pool
    # (tens of MB for a 200K pool) unless given back.
    pyarrow.default_memory_pool().release_unused()
    return loaded


def _check_encoder(encoder: Any) -> None:
    if not isinstance(encoder, Encoder) or not isinstance(encoder.fingerprint, str) or not encoder.fingerprint:
        raise TypeError(
            f"{type(encoder).__name__} is not an eval.harness.Encoder (encode(items, batch_size, show_progress, desc) "
            "and a non-empty fingerprint string); wrap a sentence-transformers model in "
            "eval.encoders.SentenceTransformerEncoder, a UniCA model in unica.encoding.UniCAEncoder"
        )


def _check_positive(value: int | None, name: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name}={value!r} must be a positive integer or None")


@dataclass
class _Pool:
    """A candidate pool and the tasks that search it: one per task (``pool="local"``) or one for all."""

    name: str
    ids: list[str]
    items: Sequence[Any]
    tasks: list[RetrievalTask]
    _fingerprint: str | None = None

    def fingerprint(self) -> str:
        """The data fingerprint of the pool's ids and undecoded contents (computed once)."""
        if self._fingerprint is None:
            self._fingerprint = fingerprint_records(self.ids, _contents(self.items))
        return self._fingerprint


def _pools(tasks: Sequence[RetrievalTask], pool: str) -> list[_Pool]:
    """Each task's own pool (``"local"``), or one ``"global"`` pool: every id once, at its first task's row."""
    if pool == "local":
        return [_Pool(task.name, task.corpus_ids, task.corpus_items, [task]) for task in tasks]
    if pool != "global":
        raise ValueError(f"pool must be 'local' or 'global', got {pool!r}")
    ids, seen, parts = [], set(), []
    for task in tasks:
        first = []  # positions of the ids this task is the first to bring
        for position, doc_id in enumerate(task.corpus_ids):
            if doc_id not in seen:
                seen.add(doc_id)
                ids.append(doc_id)
                first.append(position)
        parts.append(_subset(task.corpus_items, first))
    if all(isinstance(part, LazyItems) for part in parts):
        items: Sequence[Any] = LazyItems.concat(parts)
    else:
        items = [item for part in parts for item in part]
    return [_Pool("global", ids, items, list(tasks))]


@dataclass
class _Encoding:
    """How the harness calls the encoder: batch size, chunks, progress bars, and the candidate cache."""

    encoder: Encoder
    batch_size: int | None = None
    show_progress: bool = True
    cache: EmbeddingCache | None = None
    chunk_size: int | None = None

    @property
    def chunk_items(self) -> int:
        """Items decoded and encoded at a time: ``chunk_size`` rounded up to a multiple of the batch size."""
        chunk = self.chunk_size or DEFAULT_CHUNK_ITEMS
        return math.ceil(chunk / self.batch_size) * self.batch_size if self.batch_size else chunk

    @functools.cached_property
    def _takes_role(self) -> bool:
        """Whether the encoder's ``encode`` takes ``role`` (those written before it was added do not)."""
        parameters = inspect.signature(self.encoder.encode).parameters
        return "role" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())

    def _role(self, role: str) -> dict[str, str]:
        """``{"role": role}`` for an encoder that takes it, else nothing."""
        return {"role": role} if self._takes_role else {}

    def encode(self, items: Sequence[Any], desc: str, role: str = "document") -> np.ndarray:
        """Embed items chunk by chunk into one float32 matrix; one progress bar for them all.

        Each chunk is decoded (``items[a:b]`` of :class:`LazyItems`) just before the encoder sees it, so
        at most one chunk of decoded images is held at a time.
        """
        total = len(items)
        if not total:
            raise ValueError(f"nothing to encode for {desc}: there are no items")
        step, embeddings = self.chunk_items, None
        with tqdm(total=total, desc=desc, unit="item", disable=not self.show_progress) as bar:
            for start in range(0, total, step):
                chunk = list(items[start : start + step])
                rows = np.asarray(self.encoder.encode(chunk, batch_size=self.batch_size, show_progress=False,
                                                      desc=desc, **self._role(role)), dtype=np.float32)
                width = rows.shape[1] if rows.ndim == 2 else None
                if width is None or rows.shape[0] != len(chunk) or (embeddings is not None and
                                                                    width != embeddings.shape[1]):
                    raise ValueError(f"{type(self.encoder).__name__}.encode returned shape {rows.shape} for "
                                     f"{len(chunk)} items ({desc}); expected one row per item, of one dimension")
                if embeddings is None:
                    embeddings = np.empty((total, width), dtype=np.float32)
                embeddings[start : start + len(chunk)] = rows
                bar.update(len(chunk))
        return embeddings

    def encode_candidates(self, candidates: _Pool) -> np.ndarray:
        """The pool's embeddings, from the cache when it holds them for this encoder and data."""
        desc = f"{candidates.name} candidates"
        if self.cache is None:
            return self.encode(candidates.items, desc)
        model_key = combine_fingerprints(self.encoder.fingerprint, role="candidate")
        return self.cache.get_or_compute(model_key, candidates.fingerprint(),
                                         lambda: self.encode(candidates.items, desc))

    def write_shard(self, candidates: _Pool, shard: tuple[int, int], shard_dir: str | os.PathLike) -> Path:
        """Encode shard ``i`` of ``n`` of the pool (contiguous rows) into ``shard_dir/<pool>``, with its manifest."""
        index, count = shard
        size = len(candidates.ids)
        if count > size:
            raise ValueError(f"shard {index}/{count}: the {candidates.name} pool has only {size} candidates; use at "
                             f"most {size} shards")
        base, extra = divmod(size, count)  # the rows np.array_split gives shard `index`
        start = index * base + min(index, extra)
        stop = start + base + (index < extra)
        embeddings = self.encode(_subset(candidates.items, range(start, stop)),
                                 f"{candidates.name} shard {index}/{count}")
        return save_embedding_shard(Path(shard_dir) / candidates.name, embeddings, candidates.ids[start:stop], index,
                                    count, encoder_fingerprint=self.encoder.fingerprint,
                                    data_fingerprint=candidates.fingerprint())

    def candidate_index(self, candidates: _Pool, index_spec: IndexSpec, shard_dir: str | os.PathLike | None):
        """The pool's index: merged from checked shards under ``shard_dir``, else encoded (or cached)."""
        if shard_dir is not None:
            return build_index_from_shards(Path(shard_dir) / candidates.name, index_spec,
                                           encoder_fingerprint=self.encoder.fingerprint,
                                           data_fingerprint=candidates.fingerprint(), expected_ids=candidates.ids)
        return build_index(self.encode_candidates(candidates), candidates.ids, index_spec)


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
    chunk_size: int | None = None,
) -> dict[str, Any]:
    """Metrics (means) and per-query values per task; with ``shard`` only writes candidate shards.

    ``cache`` holds candidate embeddings keyed by ``encoder.fingerprint``; ``batch_size=None`` is the
    encoder's; ``chunk_size`` items are decoded and encoded at a time (default :data:`DEFAULT_CHUNK_ITEMS`).
    Each pool is encoded once, whatever the number of tasks searching it (``pool="global"``). With
    ``shard=(i, n)`` the result's ``"shards"`` lists the shard files written (one per pool).
    """
    _check_encoder(encoder)
    if not tasks:
        raise ValueError("no tasks to evaluate")
    _check_positive(batch_size, "batch_size")
    _check_positive(chunk_size, "chunk_size")
    if shard is not None:
        if shard_dir is None:
            raise ValueError("shard= needs shard_dir= (where each shard's embeddings are written)")
        index, count = shard
        if not (isinstance(index, int) and isinstance(count, int) and 0 <= index < count):
            raise ValueError(f"shard={shard!r} must be (i, n) with 0 <= i < n")
    encoding = _Encoding(encoder, batch_size=batch_size, show_progress=show_progress, cache=cache,
                         chunk_size=chunk_size)
    pools = _pools(tasks, pool)
    index_spec = index_spec or IndexSpec()
    results: dict[str, Any] = {"tasks": {}, "per_query": {}, "rankings": {}}
    if shard is not None:
        results["shards"] = [str(encoding.write_shard(candidates, shard, shard_dir)) for candidates in pools]
        return results
    for candidates in pools:
        index = encoding.candidate_index(candidates, index_spec, shard_dir)
        for task in candidates.tasks:
            queries = encoding.encode(task.query_items, f"{task.name} queries", role="query")
            search = index.search(queries, max(k_values))
            scored = compute_ranking_metrics(search.ids, task.relevant, k_values=k_values,
                                             reference_grades=task.grades, return_per_query=True)
            per_query = scored.pop("per_query")
            results["tasks"][task.name] = {**scored, "num_queries": len(task.query_ids),
                                           "num_candidates": len(candidates.ids), "pool": pool}
            results["per_query"][task.name] = {"qids": task.query_ids, **per_query}
            results["rankings"][task.name] = search.ids
        del index  # one pool's index in memory at a time
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
    chunk_size: int | None = None,
) -> dict[str, Any]:
    """Evaluate an :class:`Encoder` on an evaluation folder; with ``out_dir`` writes results.json, results.md
    and recall_curves.png (``title`` heads results.md).

    ``results["tasks"][task]`` holds the mean metrics; ``results["per_query"]`` the per-query values
    (for paired bootstrap); ``results["settings"]`` (also in the written ``results.json``) describes the
    run: ``settings`` (what the caller records about the model; default the encoder's class and
    fingerprint), then the dataset, pool, index kind, cut-offs and the cache's hits and misses.
    ``k_values`` are checked before anything is loaded or encoded (:func:`check_k_values`). The folder's
    tables stay memory-mapped and undecoded (:func:`load_retrieval_tasks`); ``chunk_size`` items are decoded
    and encoded at a time; ``shard`` / ``shard_dir`` as in :func:`evaluate_tasks`.
    """
    k_values = check_k_values(k_values, report=out_dir is not None and shard is None)
    _check_encoder(encoder)
    cache = EmbeddingCache(cache_dir) if cache_dir else None
    loaded = load_retrieval_tasks(dataset_dir, tasks, split=split)
    results = evaluate_tasks(encoder, loaded, k_values=k_values, index_spec=index_spec, pool=pool, shard=shard,
                             shard_dir=shard_dir, batch_size=batch_size, cache=cache, show_progress=show_progress,
                             chunk_size=chunk_size)
    recorded = dict(settings) if settings is not None else {"encoder": type(encoder).__name__,
                                                             "fingerprint": encoder.fingerprint}
    recorded.update(dataset=str(dataset_dir), pool=pool, index=(index_spec or IndexSpec()).kind,
                    k_values=list(k_values))
    results["settings"] = recorded
    if cache is not None:
        results["settings"]["cache"] = {"hits": cache.hits, "misses": cache.misses}
    if out_dir is not None and shard is None:
        from eval.report import write_evaluation_report

        write_evaluation_report(out_dir, results["tasks"], [m for m in report_metrics(k_values) if _has(results, m)],
                                extra={"settings": results["settings"], "per_query": results["per_query"]},
                                title=title)
    return results


def _has(results: dict, metric: str) -> bool:
    return any(metric in values for values in results["tasks"].values())
