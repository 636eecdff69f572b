"""The search behind ``unica app``: a checkpoint's embeddings of an evaluation task's corpus in a FAISS index.

Usable without Gradio::

    from unica.apps.app.search import SearchIndex

    index = SearchIndex.from_eval_folder("./unica-mini", "./scenes-eval", task="task2",
                                         cache_dir="results/embedding-cache")
    for hit in index.search(text="a red circle", image="scene.png", k=5):
        print(hit.rank, hit.doc_id, round(hit.score, 3), hit.text)

* The corpus is a task of an evaluation folder (what ``unica build-dataset webqa`` / ``mbeir-eval`` write),
  read by the harness's loader (``eval.harness.load_retrieval_tasks``: memory-mapped, images undecoded).
* Candidate embeddings are the harness's: the same cache entries (``eval.cache.EmbeddingCache``, keyed by
  ``combine_fingerprints(encoder.fingerprint, role="candidate")`` and ``fingerprint_records`` of the pool's
  ids and undecoded contents), so pointing ``cache_dir`` at the folder ``unica evaluate`` used
  (``<out>/embedding-cache`` by default) encodes nothing. On a miss the pool is encoded once, chunk by
  chunk with a progress bar, and stored in that cache. The FAISS index is built from them
  (``eval.index.build_index``; exact inner product by default, milliseconds for a demo corpus); an
  approximate index (IVF, HNSW, IVF-PQ) is saved beside the cache entry and loaded next time.
* Queries are embedded as the harness embeds them (``role="query"``: the checkpoint's query prompt),
  so a query of the evaluation set gets the ranking the harness scored.
* Bad input is a ``ValueError`` with a one-line message: an empty query, a text over
  :data:`MAX_QUERY_CHARS`, an image that is corrupt, of a type outside :data:`QUERY_IMAGE_FORMATS`, or
  over ``max_pixels`` pixels (checked from the header, before decoding).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import threading
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from dataset_builders.rows import multimodal_item
from eval.cache import EmbeddingCache, combine_fingerprints, fingerprint_model_dir, fingerprint_records
from eval.harness import LazyItems, RetrievalTask, available_tasks, load_retrieval_tasks, resolve_task
from eval.index import EmbeddingIndex, IndexSpec, build_index
from eval.metrics import query_metrics
from modeling_unica.processing_unica import load_image

from .defaults import DEFAULT_MAX_QUERY_PIXELS, MAX_K, MAX_QUERY_CHARS, QUERY_IMAGE_FORMATS

logger = logging.getLogger("unica.app")

# Items decoded and encoded at a time when a corpus is encoded (as the harness's chunks).
ENCODE_CHUNK_ITEMS = 2048


def default_cache_dir() -> Path:
    """``$UNICA_CACHE_DIR``, else ``$XDG_CACHE_HOME/unica/embedding-cache`` (``~/.cache/...``)."""
    if os.environ.get("UNICA_CACHE_DIR"):
        return Path(os.environ["UNICA_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base, "unica", "embedding-cache")


@dataclass(frozen=True)
class Hit:
    """One retrieved document.

    ``rank`` counts from 1; ``position`` is the document's row in the task's corpus table; ``text`` is its
    text (None when it has none) and ``image`` its undecoded image (bytes or a file path; None when it has
    none: decode it with :meth:`SearchIndex.document_image`). ``relevant`` is set for a query of the
    evaluation set (:meth:`SearchIndex.search_query`): whether the task's qrels mark the document relevant.
    """

    rank: int
    doc_id: str
    score: float
    position: int
    text: str | None = None
    image: Any = field(default=None, repr=False, compare=False)
    relevant: bool | None = None

    @property
    def has_image(self) -> bool:
        return self.image is not None

    def as_dict(self) -> dict[str, Any]:
        """The hit without its image bytes (JSON-friendly)."""
        values = asdict(self)
        values.pop("image")
        return {**values, "has_image": self.has_image}


@dataclass(frozen=True)
class EvalQuery:
    """A query of the evaluation set: its id, text, whether it has an image, and its relevant document ids."""

    qid: str
    position: int
    text: str | None
    has_image: bool
    relevant: tuple[str, ...]

    def label(self, width: int = 90) -> str:
        """A one-line description for a picker: ``qid · text [+ image]``."""
        text = " ".join((self.text or "").split())
        if len(text) > width:
            text = text[: width - 1] + "…"
        kind = (" + image" if text else "image only") if self.has_image else ""
        return f"{self.qid} · {text}{kind}" if text else f"{self.qid} · {kind}"


def _split_item(item: Any) -> tuple[str | None, Any]:
    """(text, image) of a processor item (str, image / bytes / path, or {"text", "image"} dict)."""
    if isinstance(item, dict):
        return item.get("text"), item.get("image")
    if isinstance(item, str):
        return item, None
    return None, item


def load_query_image(source: Any, max_pixels: int = DEFAULT_MAX_QUERY_PIXELS) -> Image.Image:
    """A query image (a path, bytes or a PIL image) checked and decoded to RGB, or a one-line ``ValueError``.

    Refused: a file that is not an image (``"... is not an image file"``), an image of a type outside
    :data:`QUERY_IMAGE_FORMATS` (``"unsupported image type"``), one over ``max_pixels`` pixels (read from the
    header: nothing is decoded) and a corrupt or truncated one. Decoding is the processor's safe loader
    (``modeling_unica.processing_unica.load_image``: EXIF orientation, modes, transparency on white).

    Example:
        >>> from PIL import Image
        >>> load_query_image(Image.new("RGB", (4, 4))).size
        (4, 4)
        >>> load_query_image(b"not an image")
        Traceback (most recent call last):
        ...
        ValueError: the uploaded file is not an image file (use PNG, JPEG, WEBP, GIF, BMP or TIFF)
    """
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise ValueError(f"max_pixels={max_pixels!r} must be a positive integer")
    if isinstance(source, Image.Image):
        return load_image(source, max_pixels=max_pixels)
    if isinstance(source, (str, os.PathLike)):
        if not os.path.isfile(source):
            raise FileNotFoundError(f"image file {str(source)!r} does not exist")
        with open(source, "rb") as handle:
            data = handle.read()
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        raise ValueError(f"cannot read a query image from {type(source).__name__}; pass a path, bytes or a PIL image")
    if not data:
        raise ValueError("the uploaded file is empty; drop a PNG, JPEG, WEBP, GIF, BMP or TIFF image")
    allowed = ", ".join(QUERY_IMAGE_FORMATS[:-1]) + " or " + QUERY_IMAGE_FORMATS[-1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            header = Image.open(io.BytesIO(data), formats=QUERY_IMAGE_FORMATS)
        except Image.DecompressionBombError:
            raise ValueError(f"the image has too many pixels (over {max_pixels}); use a smaller image") from None
        except UnidentifiedImageError:
            kind = _other_image_format(data)
            if kind:
                raise ValueError(f"unsupported image type {kind}; use {allowed}") from None
            raise ValueError(f"the uploaded file is not an image file (use {allowed})") from None
        except Exception as error:  # PIL's plugins raise many kinds of errors on malformed headers
            raise ValueError(f"the image cannot be read ({type(error).__name__}: {error})") from None
    width, height = header.size
    if width * height > max_pixels:
        raise ValueError(f"the image has {width}x{height} = {width * height} pixels, over the limit of {max_pixels}; "
                         "use a smaller image")
    try:
        return load_image(data, max_pixels=max_pixels)
    except ValueError as error:
        raise ValueError(f"the image is corrupt or truncated ({error})") from None


def _other_image_format(data: bytes) -> str | None:
    """The format name when PIL reads ``data`` as an image of a format that queries do not take."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Image.open(io.BytesIO(data)).format or "unknown"
    except Exception:  # not an image PIL knows at all
        return None


def query_item(text: str | None = None, image: Any = None, max_pixels: int = DEFAULT_MAX_QUERY_PIXELS) -> Any:
    """The processor item of a query (a text, an image, or both), checked; ``ValueError`` for an empty query.

    ``image`` is a path, bytes or a PIL image (:func:`load_query_image`); whitespace-only text is no text.
    """
    if text is not None and not isinstance(text, str):
        raise ValueError(f"the query text must be a string, got {type(text).__name__}")
    if text and len(text) > MAX_QUERY_CHARS:
        raise ValueError(f"the query text has {len(text)} characters; use at most {MAX_QUERY_CHARS}")
    decoded = None if image is None else load_query_image(image, max_pixels=max_pixels)
    try:
        return multimodal_item(text, decoded, label="the query")
    except ValueError:
        raise ValueError("the query is empty: type a text, drop an image, or both") from None


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_K:
        raise ValueError(f"k={k!r} must be an integer from 1 to {MAX_K}")
    return int(k)


# torch's thread count is process-wide: queries that change it for their duration take turns.
_THREADS_LOCK = threading.Lock()


class SearchModel:
    """A checkpoint loaded once for search: the model, its processor and its harness encoder.

    ``encoder`` is a ``unica.encoding.UniCAEncoder`` whose fingerprint is the harness's (the folder's
    ``fingerprint_model_dir``, the dtype and the prompts), so it finds what ``unica evaluate`` cached.
    Encoding is serialised by a lock (a server answers queries from several threads).

    ``query_threads``: torch threads while a query is embedded (default 1; None: torch's setting). One query's
    matrix products are small: a second thread gains little, and on cores shared with other work it waits for
    one (``benchmarks/app_latency.json``, 2 busy cores: p95 up to 0.91 s with 2 threads, 20 ms with 1). The
    corpus is encoded with torch's setting.
    """

    def __init__(self, checkpoint: str | os.PathLike, dtype: str = "fp32", batch_size: int = 32,
                 name: str | None = None, query_threads: int | None = 1):
        from unica.checkpoint import check_checkpoint_files
        from unica.encoding import UniCAEncoder

        if query_threads is not None and (isinstance(query_threads, bool) or not isinstance(query_threads, int)
                                          or query_threads < 1):
            raise ValueError(f"query_threads={query_threads!r} must be a positive integer or None")
        self.query_threads = query_threads
        self.checkpoint = Path(checkpoint)
        check_checkpoint_files(self.checkpoint)
        self.name = name or self.checkpoint.resolve().name
        self.encoder = UniCAEncoder.from_checkpoint(self.checkpoint, fingerprint_model_dir(self.checkpoint),
                                                    dtype=dtype, batch_size=batch_size)
        self.fusion = str(getattr(self.encoder.model.config, "fusion", "?"))
        self.lock = threading.Lock()

    @property
    def candidate_key(self) -> str:
        """The model half of the harness's candidate cache key."""
        return combine_fingerprints(self.encoder.fingerprint, role="candidate")

    def encode_query(self, item: Any) -> np.ndarray:
        """One query item as a (1, dim) float32 row, with the checkpoint's query prompt."""
        if self.query_threads is None:
            with self.lock:
                return self.encoder.encode([item], batch_size=1, show_progress=False, role="query")
        import torch

        with self.lock, _THREADS_LOCK:
            previous = torch.get_num_threads()
            torch.set_num_threads(self.query_threads)
            try:
                return self.encoder.encode([item], batch_size=1, show_progress=False, role="query")
            finally:
                torch.set_num_threads(previous)

    def encode_corpus(self, items: Sequence[Any], desc: str, show_progress: bool = True) -> np.ndarray:
        """Every corpus item, chunk by chunk (decoded just before it is encoded), one progress bar."""
        total, rows = len(items), None
        step = ENCODE_CHUNK_ITEMS
        with self.lock, tqdm(total=total, desc=desc, unit="item", disable=not show_progress) as bar:
            for start in range(0, total, step):
                chunk = list(items[start : start + step])
                embedded = np.asarray(self.encoder.encode(chunk, show_progress=False, desc=desc, role="document"),
                                      dtype=np.float32)
                if rows is None:
                    rows = np.empty((total, embedded.shape[1]), dtype=np.float32)
                rows[start : start + len(chunk)] = embedded
                bar.update(len(chunk))
        if rows is None:
            raise ValueError(f"nothing to encode for {desc}: the corpus is empty")
        return rows


def _contents(items: Sequence[Any]):
    """What the harness's data fingerprint hashes: the undecoded contents of lazy items, else the items."""
    return items.contents() if isinstance(items, LazyItems) else items


def corpus_key(task: RetrievalTask) -> str:
    """The data half of the harness's candidate cache key: the pool's ids and undecoded contents."""
    return fingerprint_records(task.corpus_ids, _contents(task.corpus_items))


def candidate_embeddings(model: SearchModel, task: RetrievalTask, cache: EmbeddingCache | None,
                         show_progress: bool = True) -> tuple[np.ndarray, bool]:
    """(the task corpus's embeddings, whether they came from the cache): the harness's entry when it exists,
    else encoded once and stored there."""
    desc = f"{model.name}: {task.name} candidates"
    if cache is None:
        return model.encode_corpus(task.corpus_items, desc, show_progress), False
    hits = cache.hits
    embeddings = cache.get_or_compute(model.candidate_key, corpus_key(task),
                                      lambda: model.encode_corpus(task.corpus_items, desc, show_progress))
    return embeddings, cache.hits > hits


def _index_for(embeddings: np.ndarray, ids: list[str], spec: IndexSpec, cache: EmbeddingCache | None,
               model_key: str, data_key: str | None) -> EmbeddingIndex:
    """A flat index is built (milliseconds); an approximate one is loaded from beside its cache entry, or
    trained, built and saved there."""
    if spec.kind == "flat" or cache is None or data_key is None:
        return build_index(embeddings, ids, spec)
    digest = hashlib.sha256(json.dumps(asdict(spec), sort_keys=True).encode()).hexdigest()[:16]
    folder = cache.path_for(model_key, data_key).with_name(f"{data_key}.index-{spec.kind}-{digest}")
    if (folder / "index.faiss").is_file():
        try:
            index = EmbeddingIndex.load(folder)
            if index.ids == ids:
                logger.info("loaded the %s index from %s", spec.kind, folder)
                return index
            logger.warning("the saved index %s holds other ids; rebuilding it", folder)
        except (OSError, ValueError, RuntimeError) as error:
            logger.warning("the saved index %s cannot be loaded (%s); rebuilding it", folder, error)
    index = build_index(embeddings, ids, spec)
    try:
        index.save(folder)
    except OSError as error:  # a read-only cache: the index is rebuilt next time
        logger.warning("could not save the %s index to %s (%s)", spec.kind, folder, error)
    return index


class SearchIndex:
    """One model's FAISS index over one task's corpus; answers free queries and the set's own queries.

    Build it with :meth:`from_eval_folder` (loads the model) or :meth:`build` (a loaded :class:`SearchModel`
    and a ``eval.harness.RetrievalTask``). ``from_cache`` says whether the candidate embeddings came from
    the cache (nothing encoded).
    """

    def __init__(self, model: SearchModel, task: RetrievalTask, index: EmbeddingIndex, from_cache: bool = False,
                 max_pixels: int = DEFAULT_MAX_QUERY_PIXELS):
        self.model, self.task, self.index = model, task, index
        self.from_cache = from_cache
        self.max_pixels = max_pixels
        self._query_positions = {qid: position for position, qid in enumerate(task.query_ids)}
        self._queries: list[EvalQuery] | None = None

    @classmethod
    def build(cls, model: SearchModel, task: RetrievalTask, cache: EmbeddingCache | str | os.PathLike | None = None,
              index_spec: IndexSpec | None = None, show_progress: bool = True,
              max_pixels: int = DEFAULT_MAX_QUERY_PIXELS) -> SearchIndex:
        """The index of ``task``'s corpus for ``model``: embeddings from ``cache`` (an ``EmbeddingCache`` or
        its folder) when it holds them, else encoded and stored there."""
        if cache is not None and not isinstance(cache, EmbeddingCache):
            cache = EmbeddingCache(cache)
        spec = index_spec or IndexSpec()
        embeddings, from_cache = candidate_embeddings(model, task, cache, show_progress)
        data_key = corpus_key(task) if cache is not None and spec.kind != "flat" else None
        index = _index_for(embeddings, task.corpus_ids, spec, cache, model.candidate_key, data_key)
        logger.info("%s: %s index of %d %s candidates (%s)", model.name, spec.kind, index.ntotal, task.name,
                    "embeddings from the cache" if from_cache else "encoded")
        return cls(model, task, index, from_cache=from_cache, max_pixels=max_pixels)

    @classmethod
    def from_eval_folder(cls, checkpoint: str | os.PathLike, corpus: str | os.PathLike, task: str | None = None,
                         cache_dir: str | os.PathLike | None = None, index_spec: IndexSpec | None = None,
                         dtype: str = "fp32", batch_size: int = 32, split: str = "test", show_progress: bool = True,
                         max_pixels: int = DEFAULT_MAX_QUERY_PIXELS, query_threads: int | None = 1) -> SearchIndex:
        """Load ``checkpoint`` and index ``task`` (default: the folder's first) of the evaluation folder
        ``corpus``; ``cache_dir`` is the harness's embedding cache (None: encode, store nothing).

        The folder and task are checked before the model is loaded.
        """
        tasks = check_eval_folder(corpus, task)
        loaded = load_retrieval_tasks(corpus, [tasks[0] if task is None else resolve_task(task, tasks)], split=split)[0]
        model = SearchModel(checkpoint, dtype=dtype, batch_size=batch_size, query_threads=query_threads)
        return cls.build(model, loaded, cache=cache_dir, index_spec=index_spec, show_progress=show_progress,
                         max_pixels=max_pixels)

    # Queries -------------------------------------------------------------------------------------------------

    def search(self, text: str | None = None, image: Any = None, k: int = 10) -> list[Hit]:
        """The top ``k`` documents for a text, an image (path, bytes or PIL image), or both.

        ``ValueError`` (one line) for an empty query, a text over :data:`MAX_QUERY_CHARS` and a bad image
        (:func:`load_query_image`).
        """
        k = _check_k(k)
        return self.search_item(query_item(text, image, max_pixels=self.max_pixels), k)

    def search_item(self, item: Any, k: int = 10, relevant: Sequence[str] | None = None) -> list[Hit]:
        """The top ``k`` for a processor item already checked (:func:`query_item`); ``relevant`` marks hits."""
        k = _check_k(k)
        result = self.index.search(self.model.encode_query(item), k)
        positions = [int(i) for i in result.indices[0] if i >= 0]
        scores = [float(s) for s in result.scores[0][: len(positions)]]
        contents = self._contents_at(positions)
        marks = set(relevant) if relevant is not None else None
        hits = []
        for rank, (position, score) in enumerate(zip(positions, scores), start=1):
            text, image = _split_item(contents[position])
            doc_id = self.task.corpus_ids[position]
            hits.append(Hit(rank=rank, doc_id=doc_id, score=score, position=position, text=text, image=image,
                            relevant=None if marks is None else doc_id in marks))
        return hits

    def search_query(self, qid: str, k: int = 10) -> list[Hit]:
        """The top ``k`` for the evaluation set's query ``qid`` (its own text and image), relevant hits marked."""
        position = self.query_position(qid)
        return self.search_item(self.task.query_items[position], k, relevant=self.task.relevant[position])

    def query_position(self, qid: str) -> int:
        if qid not in self._query_positions:
            raise ValueError(f"query {qid!r} is not a query of {self.task.name}")
        return self._query_positions[qid]

    def query_scores(self, qid: str, hits: Sequence[Hit]) -> dict[str, float]:
        """``hit@k`` (at least one relevant document in the top k: what the UniCA paper and M-BEIR call
        Recall@k), ``recall@k`` (the share of the relevant documents found) and ``mrr@k`` of ``hits``
        for query ``qid``, with k = ``len(hits)``; plus ``relevant`` / ``found`` counts."""
        position = self.query_position(qid)
        relevant = self.task.relevant[position]
        k = max(len(hits), 1)
        ranking = [hit.doc_id for hit in hits]
        scores = query_metrics(ranking, relevant, [k], metrics=["hit", "recall", "mrr"])
        found = len(set(ranking) & set(relevant))
        return {**scores, "k": k, "relevant": len(relevant), "found": found}

    def queries(self) -> list[EvalQuery]:
        """The evaluation set's queries of this task (texts read without decoding any image)."""
        if self._queries is None:
            queries = []
            for position, (qid, content) in enumerate(zip(self.task.query_ids, _contents(self.task.query_items))):
                text, image = _split_item(content)
                queries.append(EvalQuery(qid=qid, position=position, text=text, has_image=image is not None,
                                         relevant=tuple(self.task.relevant[position])))
            self._queries = queries
        return self._queries

    def query_image(self, qid: str) -> Image.Image | None:
        """The decoded image of the evaluation query ``qid`` (None when it has none)."""
        return _split_item(self.task.query_items[self.query_position(qid)])[1]

    # Documents -----------------------------------------------------------------------------------------------

    def _contents_at(self, positions: Sequence[int]) -> dict[int, Any]:
        """{position: undecoded item} of corpus rows (one read of the table, no image decoded)."""
        wanted = sorted(set(positions))
        items = self.task.corpus_items
        if not isinstance(items, LazyItems):
            return {position: items[position] for position in wanted}
        return dict(zip(wanted, items.select(wanted).contents()))

    def document_image(self, position: int) -> Image.Image | None:
        """The decoded image of corpus row ``position`` (None when the document has none)."""
        return _split_item(self.task.corpus_items[position])[1]

    def __len__(self) -> int:
        return self.index.ntotal

    def __repr__(self) -> str:
        return f"SearchIndex({self.model.name}, {self.task.name}, {len(self)} documents)"


def check_eval_folder(corpus: str | os.PathLike, task: str | None = None) -> list[str]:
    """The task names of an evaluation folder, checked before anything is loaded (one-line errors).

    ``FileNotFoundError`` for a missing folder; ``ValueError`` for a folder that is not an evaluation set
    (no ``task{N}_queries`` configs) and for a ``task`` it does not hold.
    """
    folder = Path(corpus)
    if not folder.is_dir():
        raise FileNotFoundError(f"corpus folder {str(corpus)!r} does not exist; pass an evaluation folder written by "
                                "`unica build-dataset webqa|mbeir-eval`")
    try:
        tasks = available_tasks(folder)
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{str(corpus)!r} is not an evaluation folder ({error})") from None
    if task is not None:
        resolve_task(task, tasks)
    return tasks


class SearchSession:
    """One or two checkpoints over every task of an evaluation folder (what the page searches).

    Each model is loaded once; each (model, task) index is built on first use (from the harness cache when
    it holds the embeddings) and kept. Inputs are checked (:func:`check_eval_folder`, the checkpoint files)
    before any model is loaded.
    """

    def __init__(self, checkpoints: Sequence[str | os.PathLike], corpus: str | os.PathLike,
                 cache_dir: str | os.PathLike | None = None, index_spec: IndexSpec | None = None,
                 dtype: str = "fp32", batch_size: int = 32, split: str = "test", show_progress: bool = True,
                 max_pixels: int = DEFAULT_MAX_QUERY_PIXELS, names: Sequence[str] | None = None,
                 query_threads: int | None = 1):
        from unica.checkpoint import check_checkpoint_files

        checkpoints = list(checkpoints)
        if not 1 <= len(checkpoints) <= 2:
            raise ValueError(f"search one checkpoint or compare two, got {len(checkpoints)}")
        self.tasks = check_eval_folder(corpus)
        for checkpoint in checkpoints:
            check_checkpoint_files(checkpoint)
        self.corpus, self.split = Path(corpus), split
        self.cache = EmbeddingCache(cache_dir) if cache_dir is not None else None
        self.index_spec = index_spec or IndexSpec()
        self.show_progress, self.max_pixels = show_progress, max_pixels
        names = list(names) if names else distinct_names(checkpoints)
        self.models = [SearchModel(c, dtype=dtype, batch_size=batch_size, name=n, query_threads=query_threads)
                       for c, n in zip(checkpoints, names)]
        self._tasks: dict[str, RetrievalTask] = {}
        self._indexes: dict[tuple[int, str], SearchIndex] = {}
        self._lock = threading.Lock()

    def task(self, name: str) -> RetrievalTask:
        name = resolve_task(name, self.tasks)
        if name not in self._tasks:
            self._tasks[name] = load_retrieval_tasks(self.corpus, [name], split=self.split)[0]
        return self._tasks[name]

    def index(self, model: int, task: str) -> SearchIndex:
        """Model ``model``'s (0 or 1) index of ``task``, built on first use."""
        task = resolve_task(task, self.tasks)
        with self._lock:
            key = (model, task)
            if key not in self._indexes:
                self._indexes[key] = SearchIndex.build(self.models[model], self.task(task), cache=self.cache,
                                                       index_spec=self.index_spec, show_progress=self.show_progress,
                                                       max_pixels=self.max_pixels)
            return self._indexes[key]

    def indexes(self, task: str) -> list[SearchIndex]:
        """Every model's index of ``task``."""
        return [self.index(number, task) for number in range(len(self.models))]


def distinct_names(checkpoints: Sequence[str | os.PathLike]) -> list[str]:
    """Folder names, told apart by their parent folder when equal (``a/unica-mini`` vs ``b/unica-mini``)."""
    paths = [Path(c).resolve() for c in checkpoints]
    names = [p.name for p in paths]
    if len(set(names)) < len(names):
        names = [f"{p.parent.name}/{p.name}" for p in paths]
    if len(set(names)) < len(names):
        names = [f"{n} ({i + 1})" for i, n in enumerate(names)]
    return names
