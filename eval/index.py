"""FAISS search over embeddings with string ids: exact inner product, IVF, HNSW or IVF-PQ.

Embeddings may arrive in shards (one ``.npy`` per shard, each with its ids in a ``.ids.json`` and
a :class:`ShardManifest` in a ``.manifest.json`` beside it, as written by :func:`save_embedding_shard`);
:func:`build_index_from_shards` streams them (memory-mapped, in chunks) into one index, so the float32
matrix never has to be held twice. Before merging, :func:`check_shards` refuses shards that were
encoded by another model or from other data (the manifests' fingerprints), that disagree with their
manifest, or whose ids miss or repeat ids of the pool they were cut from, so stale shards are never
scored silently.

Example:
    >>> import numpy as np
    >>> from eval.index import IndexSpec, build_index
    >>> vectors = np.eye(3, dtype="float32")
    >>> index = build_index(vectors, ["a", "b", "c"], IndexSpec("flat"))
    >>> index.search(np.array([[0.0, 0.9, 0.1]], dtype="float32"), k=2).ids
    [['b', 'c']]
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import numbers
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import faiss
import numpy as np

from dataset_builders.atomic import atomic_path, atomic_write, file_lock

logger = logging.getLogger(__name__)

INDEX_KINDS: tuple[str, ...] = ("flat", "ivf", "hnsw", "ivfpq")
_ADD_CHUNK_ROWS = 65_536
_SHARD_RE = re.compile(r"^(?P<prefix>.+)-(?P<index>\d{5})-of-(?P<total>\d{5})\.npy$")
SHARD_MANIFEST_FORMAT = 1
_RERUN = "re-run the shards (--shard i/n) with this model and data, or use a fresh --shard-dir"


@dataclass(frozen=True)
class IndexSpec:
    """Which FAISS index to build and its parameters (all searches are inner product).

    Args:
        kind: "flat" (exact), "ivf" (inverted lists, exact vectors), "hnsw" (graph) or
            "ivfpq" (inverted lists, product-quantised vectors).
        nlist: IVF lists; default ``4 * sqrt(n)`` (at most n / 39 so each centroid has training points).
        nprobe: IVF lists visited per query.
        hnsw_m: HNSW neighbours per node.
        ef_construction / ef_search: HNSW beam widths at build and search time.
        pq_m / pq_bits: IVF-PQ sub-quantisers (must divide the dimension) and bits per code.
        train_size: vectors sampled for IVF training; default ``min(n, 64 * nlist)`` (IVF-PQ: at
            least ``39 * 2**pq_bits`` for its codebooks).
        normalize: L2-normalise vectors and queries, so inner product is cosine similarity.
        seed: seed for the training sample and k-means.

    Example:
        >>> IndexSpec.parse("ivf,nlist=1024,nprobe=32").nprobe
        32
    """

    kind: str = "flat"
    nlist: int | None = None
    nprobe: int = 16
    hnsw_m: int = 32
    ef_construction: int = 200
    ef_search: int = 128
    pq_m: int = 64
    pq_bits: int = 8
    train_size: int | None = None
    normalize: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in INDEX_KINDS:
            raise ValueError(f"index kind {self.kind!r} is unknown; choose one of {list(INDEX_KINDS)}")
        for name in ("nprobe", "hnsw_m", "ef_construction", "ef_search", "pq_m", "pq_bits"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"index parameter {name}={value!r} must be a positive integer")
        for name in ("nlist", "train_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ValueError(f"index parameter {name}={value!r} must be a positive integer or None")
        if self.pq_bits > 16:
            raise ValueError(f"index parameter pq_bits={self.pq_bits} is too large; use 4 to 16 (8 is usual)")

    @classmethod
    def parse(cls, text: str) -> IndexSpec:
        """Parse ``"kind[,name=value,...]"``, e.g. ``"hnsw,hnsw_m=32,ef_search=64"`` (the CLI form)."""
        parts = [part.strip() for part in text.split(",") if part.strip()]
        if not parts:
            raise ValueError("index spec is empty; write e.g. 'flat' or 'ivf,nlist=1024,nprobe=32'")
        types = {field.name: field.type for field in fields(cls)}
        values: dict = {"kind": parts[0]}
        for part in parts[1:]:
            name, sep, raw = part.partition("=")
            name = name.strip()
            if not sep or name not in types or name == "kind":
                known = sorted(set(types) - {"kind"})
                raise ValueError(f"index spec part {part!r} is not name=value with a name from {known}")
            raw = raw.strip()
            if name == "normalize":
                if raw.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(f"index spec normalize={raw!r} must be true or false")
                values[name] = raw.lower() in ("true", "1")
            else:
                try:
                    values[name] = int(raw)
                except ValueError:
                    raise ValueError(f"index spec {name}={raw!r} must be an integer") from None
        return cls(**values)


@dataclass
class SearchResult:
    """Top-k search results: ``ids[i]`` is query i's ranking (best first; shorter than k when the
    index holds fewer reachable vectors); ``scores`` and ``indices`` are (n_queries, k) arrays
    padded with NaN and -1."""

    ids: list[list[str]]
    scores: np.ndarray
    indices: np.ndarray


def _as_float32_matrix(array: np.ndarray, name: str, dim: int | None = None) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (rows, dim), got shape {array.shape}")
    if dim is not None and array.shape[1] != dim:
        raise ValueError(f"{name} has dimension {array.shape[1]} but the index has {dim}; encode with the same model")
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values; check the encoder output")
    return array


def _normalized(array: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError(f"{int((norms == 0).sum())} vectors have norm 0 and cannot be normalised")
    return array / norms


def default_nlist(num_vectors: int) -> int:
    """``4 * sqrt(n)`` lists, capped so that every centroid has about 39 training points."""
    return max(1, min(int(4 * math.sqrt(num_vectors)), num_vectors // 39))


class EmbeddingIndex:
    """A FAISS inner-product index whose results are document ids (strings).

    Build it with :func:`build_index` or :func:`build_index_from_shards`; or by hand with
    ``EmbeddingIndex(dim, spec, expected_size=n)``, :meth:`train` (IVF kinds) and :meth:`add`.
    """

    def __init__(self, dim: int, spec: IndexSpec | None = None, expected_size: int | None = None) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"dim={dim!r} must be a positive integer")
        self.dim = dim
        self.spec = spec or IndexSpec()
        self.ids: list[str] = []
        self._id_set: set[str] = set()
        self._index = None
        self.nlist: int | None = None
        if self.spec.kind == "ivfpq" and dim % self.spec.pq_m:
            raise ValueError(f"ivfpq needs pq_m dividing the dimension; pq_m={self.spec.pq_m} does not divide {dim}")
        if self.spec.kind == "flat":
            self._index = faiss.IndexFlatIP(dim)
        elif self.spec.kind == "hnsw":
            self._index = faiss.IndexHNSWFlat(dim, self.spec.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            self._index.hnsw.efConstruction = self.spec.ef_construction
            self._index.hnsw.efSearch = self.spec.ef_search
        else:
            if self.spec.nlist is None and expected_size is None:
                raise ValueError(f"{self.spec.kind} needs nlist or expected_size to choose the number of lists")
            self.nlist = self.spec.nlist or default_nlist(expected_size)
            quantizer = faiss.IndexFlatIP(dim)
            if self.spec.kind == "ivf":
                self._index = faiss.IndexIVFFlat(quantizer, dim, self.nlist, faiss.METRIC_INNER_PRODUCT)
            else:
                self._index = faiss.IndexIVFPQ(
                    quantizer, dim, self.nlist, self.spec.pq_m, self.spec.pq_bits, faiss.METRIC_INNER_PRODUCT
                )
            self._quantizer = quantizer  # the IVF index holds a pointer; keep the Python object alive
            self._index.nprobe = self.spec.nprobe
            self._index.cp.seed = self.spec.seed

    @property
    def ntotal(self) -> int:
        """Number of vectors in the index."""
        return int(self._index.ntotal)

    @property
    def needs_training(self) -> bool:
        """True for IVF kinds until :meth:`train` has run."""
        return not self._index.is_trained

    def train(self, sample: np.ndarray) -> None:
        """Train the IVF coarse quantiser (and PQ codebooks) on a sample of the vectors."""
        sample = _as_float32_matrix(sample, "training sample", self.dim)
        if self.spec.normalize:
            sample = _normalized(sample)
        if self.nlist is not None and len(sample) < self.nlist:
            raise ValueError(
                f"training sample has {len(sample)} vectors but nlist={self.nlist}; lower nlist or add vectors"
            )
        if self.spec.kind == "ivfpq" and len(sample) < 2**self.spec.pq_bits:
            raise ValueError(f"ivfpq training needs at least {2**self.spec.pq_bits} vectors, got {len(sample)}")
        logger.info("training %s index (nlist=%s) on %d vectors", self.spec.kind, self.nlist, len(sample))
        self._index.train(sample)

    def add(self, embeddings: np.ndarray, ids: Sequence[str]) -> None:
        """Add vectors with their ids (ids must be unique across the whole index)."""
        embeddings = _as_float32_matrix(embeddings, "embeddings", self.dim)
        ids = [str(doc_id) for doc_id in ids]
        if len(ids) != len(embeddings):
            raise ValueError(f"got {len(embeddings)} embeddings but {len(ids)} ids; pass one id per row")
        new_ids = set(ids)
        if len(new_ids) != len(ids) or not self._id_set.isdisjoint(new_ids):
            seen = set(self._id_set)
            duplicate = next(doc_id for doc_id in ids if doc_id in seen or seen.add(doc_id))
            raise ValueError(f"id {duplicate!r} is added twice; document ids must be unique in an index")
        if self.needs_training:
            raise ValueError(f"the {self.spec.kind} index is not trained; call train() with a sample first")
        if self.spec.normalize:
            embeddings = _normalized(embeddings)
        self._index.add(embeddings)
        self.ids.extend(ids)
        self._id_set |= new_ids

    def search(self, queries: np.ndarray, k: int) -> SearchResult:
        """Top-k ids per query by inner product (cosine when ``spec.normalize``).

        Within the returned top k, equal scores are ordered by insertion order (earlier first);
        which of several tied vectors enters the top k at its edge is FAISS's choice.
        """
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k <= 0:
            raise ValueError(f"k={k!r} must be a positive integer")
        k = int(k)
        if self.ntotal == 0:
            raise ValueError("the index is empty; add embeddings before searching")
        queries = _as_float32_matrix(queries, "queries", self.dim)
        if self.spec.normalize:
            queries = _normalized(queries)
        k_search = min(k, self.ntotal)
        scores, indices = self._index.search(queries, k_search)
        scores = np.where(indices < 0, np.nan, scores).astype(np.float32)
        # Sort by score (desc), then insertion order, so ties come out deterministically.
        order = np.lexsort(
            (np.where(indices < 0, np.iinfo(np.int64).max, indices), -np.nan_to_num(scores, nan=-np.inf))
        )
        scores = np.take_along_axis(scores, order, axis=1)
        indices = np.take_along_axis(indices, order, axis=1)
        if k_search < k:
            scores = np.pad(scores, ((0, 0), (0, k - k_search)), constant_values=np.nan)
            indices = np.pad(indices, ((0, 0), (0, k - k_search)), constant_values=-1)
        id_lists = [[self.ids[i] for i in row if i >= 0] for row in indices.tolist()]
        return SearchResult(ids=id_lists, scores=scores, indices=indices)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``index.faiss``, ``ids.json`` and ``spec.json`` into ``directory``.

        Each file is written atomically, and the three under one lock (``index.faiss.lock``), so two
        processes saving into the same folder leave one index's three files, not a mix.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with file_lock(directory / "index.faiss"):
            with atomic_path(directory / "index.faiss") as temporary:
                faiss.write_index(self._index, str(temporary))
            _write_json(directory / "ids.json", self.ids)
            _write_json(directory / "spec.json", {"dim": self.dim, "nlist": self.nlist, "spec": asdict(self.spec)})
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> EmbeddingIndex:
        """Load an index written by :meth:`save`."""
        directory = Path(directory)
        for name in ("index.faiss", "ids.json", "spec.json"):
            if not (directory / name).is_file():
                raise FileNotFoundError(
                    f"{directory / name} is missing; is {directory} an index saved by EmbeddingIndex.save?"
                )
        meta = json.loads((directory / "spec.json").read_text(encoding="utf-8"))
        spec = IndexSpec(**meta["spec"])
        index = cls.__new__(cls)
        index.dim = int(meta["dim"])
        index.spec = spec
        index.nlist = meta["nlist"]
        index._index = faiss.read_index(str(directory / "index.faiss"))
        index.ids = json.loads((directory / "ids.json").read_text(encoding="utf-8"))
        index._id_set = set(index.ids)
        if len(index.ids) != index.ntotal:
            raise ValueError(f"{directory}: ids.json has {len(index.ids)} ids but the index {index.ntotal} vectors")
        if spec.kind in ("ivf", "ivfpq"):
            index._index.nprobe = spec.nprobe
        elif spec.kind == "hnsw":
            index._index.hnsw.efSearch = spec.ef_search
        return index

    def set_search_params(self, *, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Change the search-time effort (IVF ``nprobe``, HNSW ``ef_search``) without rebuilding."""
        if nprobe is not None:
            if self.spec.kind not in ("ivf", "ivfpq"):
                raise ValueError(f"nprobe applies to ivf / ivfpq indexes, not {self.spec.kind}")
            self._index.nprobe = int(nprobe)
        if ef_search is not None:
            if self.spec.kind != "hnsw":
                raise ValueError(f"ef_search applies to hnsw indexes, not {self.spec.kind}")
            self._index.hnsw.efSearch = int(ef_search)


def _write_json(path: Path, payload) -> None:
    atomic_write(path, json.dumps(payload))


def build_index(embeddings: np.ndarray, ids: Sequence[str], spec: IndexSpec | None = None) -> EmbeddingIndex:
    """Build an index over in-memory embeddings (rows parallel to ``ids``).

    Example:
        >>> import numpy as np
        >>> index = build_index(np.eye(2, dtype="float32"), ["x", "y"])
        >>> index.ntotal
        2
    """
    embeddings = _as_float32_matrix(embeddings, "embeddings")
    spec = spec or IndexSpec()
    index = EmbeddingIndex(embeddings.shape[1], spec, expected_size=len(embeddings))
    if index.needs_training:
        index.train(_training_sample([embeddings], index, spec))
    for start in range(0, len(embeddings), _ADD_CHUNK_ROWS):
        index.add(embeddings[start : start + _ADD_CHUNK_ROWS], ids[start : start + _ADD_CHUNK_ROWS])
    return index


def _training_sample(matrices: Sequence[np.ndarray], index: EmbeddingIndex, spec: IndexSpec) -> np.ndarray:
    """Uniform sample of rows across (possibly memory-mapped) matrices, read in row order."""
    sizes = [len(matrix) for matrix in matrices]
    total = sum(sizes)
    default = 64 * (index.nlist or 1)
    if spec.kind == "ivfpq":  # each PQ codebook wants about 39 points per centroid
        default = max(default, 39 * 2**spec.pq_bits)
    size = min(total, spec.train_size or default)
    rng = np.random.default_rng(spec.seed)
    chosen = np.sort(rng.choice(total, size=size, replace=False))
    parts, offset = [], 0
    for matrix, rows in zip(matrices, sizes):
        local = chosen[(chosen >= offset) & (chosen < offset + rows)] - offset
        if len(local):
            parts.append(np.asarray(matrix[local], dtype=np.float32))
        offset += rows
    return np.concatenate(parts)


def shard_paths(directory: str | os.PathLike, prefix: str = "embeddings") -> list[Path]:
    """The complete, ordered list of ``{prefix}-XXXXX-of-NNNNN.npy`` shards in ``directory``.

    Raises ``FileNotFoundError`` if a shard or its ``.ids.json`` is missing, so that an index is
    never built from part of a corpus.
    """
    directory = Path(directory)
    found: dict[int, Path] = {}
    totals = set()
    for path in directory.glob(f"{prefix}-*-of-*.npy"):
        match = _SHARD_RE.match(path.name)
        if match and match["prefix"] == prefix:
            found[int(match["index"])] = path
            totals.add(int(match["total"]))
    if not found:
        raise FileNotFoundError(f"no shards named {prefix}-XXXXX-of-NNNNN.npy in {directory}")
    if len(totals) != 1:
        raise ValueError(f"shards in {directory} disagree on the shard count ({sorted(totals)}); remove stale shards")
    total = totals.pop()
    missing = [i for i in range(total) if i not in found]
    if missing:
        names = ", ".join(f"{prefix}-{i:05d}-of-{total:05d}.npy" for i in missing[:3])
        names += ", ..." if len(missing) > 3 else ""
        raise FileNotFoundError(
            f"{directory} lacks shards {missing} of {total} ({names}); encode them (--shard {missing[0]}/{total} "
            "with the same --shard-dir) before building the index"
        )
    paths = [found[i] for i in range(total)]
    for path in paths:
        if not _ids_path(path).is_file():
            raise FileNotFoundError(f"{_ids_path(path)} is missing; each shard needs its ids file")
    return paths


def _ids_path(shard: Path) -> Path:
    return shard.with_name(shard.name[: -len(".npy")] + ".ids.json")


def manifest_path(shard: str | os.PathLike) -> Path:
    """Where the :class:`ShardManifest` of a ``.npy`` shard lives (``<name>.manifest.json`` beside it)."""
    shard = Path(shard)
    return shard.with_name(shard.name[: -len(".npy")] + ".manifest.json")


def ids_digest(ids: Sequence[str]) -> str:
    """sha256 of a list of ids, in order (what a :class:`ShardManifest` records of its shard's ids).

    Example:
        >>> ids_digest(["a", "b"]) == ids_digest(["b", "a"])
        False
    """
    return hashlib.sha256(json.dumps([str(doc_id) for doc_id in ids]).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ShardManifest:
    """What one embedding shard was encoded from; written beside it and checked by :func:`check_shards`.

    Attributes:
        shard_index, num_shards: which shard of how many (``--shard i/n``).
        count: rows of the shard (= its ids).
        ids_sha256: :func:`ids_digest` of the shard's ids.
        encoder_fingerprint: the encoder that produced the rows (``None`` when the writer gave none).
        data_fingerprint: the data of the whole pool the shard was cut from, e.g.
            ``eval.cache.fingerprint_records(pool ids, contents)`` (``None`` when the writer gave none).
        format: the manifest format version.
    """

    shard_index: int
    num_shards: int
    count: int
    ids_sha256: str
    encoder_fingerprint: str | None = None
    data_fingerprint: str | None = None
    format: int = SHARD_MANIFEST_FORMAT

    @classmethod
    def read(cls, shard: str | os.PathLike) -> ShardManifest | None:
        """The manifest of a ``.npy`` shard; ``None`` when it has none, ``ValueError`` when it is unreadable."""
        path = manifest_path(shard)
        if not path.is_file():
            return None
        try:
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError) as error:
            raise ValueError(f"shard manifest {path} cannot be read ({error}); {_RERUN}") from None


def save_embedding_shard(
    directory: str | os.PathLike,
    embeddings: np.ndarray,
    ids: Sequence[str],
    shard_index: int,
    num_shards: int,
    prefix: str = "embeddings",
    *,
    encoder_fingerprint: str | None = None,
    data_fingerprint: str | None = None,
) -> Path:
    """Write one shard for :func:`build_index_from_shards`: ``.npy``, ``.ids.json`` and ``.manifest.json``
    (a :class:`ShardManifest`: shard i/n, count, the ids' digest and the given fingerprints), each
    atomically, the three under the shard's lock, the manifest last.

    ``encoder_fingerprint`` (the model) and ``data_fingerprint`` (the whole pool the shard is cut from)
    let a merge refuse shards of another model or other data; pass both when sharding an evaluation.

    Example:
        >>> import numpy as np, tempfile
        >>> path = save_embedding_shard(tempfile.mkdtemp(), np.ones((2, 4), "float32"), ["a", "b"], 0, 1)
        >>> path.name
        'embeddings-00000-of-00001.npy'
    """
    if not (0 <= shard_index < num_shards):
        raise ValueError(f"shard_index={shard_index} must be in [0, num_shards={num_shards})")
    embeddings = _as_float32_matrix(embeddings, "embeddings")
    ids = [str(doc_id) for doc_id in ids]
    if len(ids) != len(embeddings):
        raise ValueError(f"got {len(embeddings)} embeddings but {len(ids)} ids; pass one id per row")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{prefix}-{shard_index:05d}-of-{num_shards:05d}.npy"
    manifest = ShardManifest(shard_index=shard_index, num_shards=num_shards, count=len(ids),
                             ids_sha256=ids_digest(ids), encoder_fingerprint=encoder_fingerprint,
                             data_fingerprint=data_fingerprint)
    with file_lock(path):
        with atomic_path(path) as temporary:
            with open(temporary, "wb") as handle:
                np.save(handle, embeddings)
        _write_json(_ids_path(path), ids)
        atomic_write(manifest_path(path), json.dumps(asdict(manifest), indent=1))
    return path


def check_shards(
    paths: Sequence[str | os.PathLike],
    *,
    encoder_fingerprint: str | None = None,
    data_fingerprint: str | None = None,
    expected_ids: Sequence[str] | None = None,
) -> list[list[str]]:
    """Check shards before they are merged; returns each shard's ids (read from its ``.ids.json``).

    Refused with a ``ValueError`` naming the shard file and the fix:

    * a shard whose manifest records another ``encoder_fingerprint`` or ``data_fingerprint`` than the
      given ones (or that has no manifest when one is given): a stale shard of another model or data;
    * a shard whose ids file disagrees with its manifest (count, digest, shard i/n of its name);
    * an id in two shards, and, with ``expected_ids`` (the pool's ids), an id of the pool that no shard
      holds or a shard id that is not in the pool.
    """
    paths = [Path(path) for path in paths]
    expected = None if expected_ids is None else {str(doc_id) for doc_id in expected_ids}
    holder: dict[str, Path] = {}  # id -> the shard holding it
    all_ids = []
    for path in paths:
        ids = json.loads(_ids_path(path).read_text(encoding="utf-8"))
        _check_manifest(path, ids, encoder_fingerprint, data_fingerprint)
        for doc_id in ids:
            if doc_id in holder:
                where = "twice in shard" if holder[doc_id] == path else f"in shard {holder[doc_id]} and again in shard"
                raise ValueError(f"id {doc_id!r} is {where} {path}; {_RERUN}")
            if expected is not None and doc_id not in expected:
                raise ValueError(f"shard {path} holds id {doc_id!r}, which is not in the pool being evaluated; {_RERUN}")
            holder[doc_id] = path
        all_ids.append(ids)
    if expected is not None and len(holder) != len(expected):
        missing = [doc_id for doc_id in expected_ids if str(doc_id) not in holder]
        folder = paths[0].parent if paths else "the shard folder"
        raise ValueError(
            f"the shards in {folder} lack {len(missing)} of the pool's {len(expected)} candidate ids, e.g. "
            f"{missing[:3]}; {_RERUN}"
        )
    return all_ids


def _check_manifest(path: Path, ids: list[str], encoder_fingerprint: str | None, data_fingerprint: str | None) -> None:
    """Refuse a shard whose manifest disagrees with its ids or name, or records other fingerprints."""
    manifest = ShardManifest.read(path)
    if manifest is None:
        if encoder_fingerprint is not None or data_fingerprint is not None:
            raise ValueError(
                f"shard {path} has no manifest ({manifest_path(path).name}): it was written before shards recorded "
                f"their model and data, or its writer was killed; {_RERUN}"
            )
        return
    name = _SHARD_RE.match(path.name)
    if (
        manifest.count != len(ids)
        or manifest.ids_sha256 != ids_digest(ids)
        or (name and (int(name["index"]), int(name["total"])) != (manifest.shard_index, manifest.num_shards))
    ):
        raise ValueError(
            f"shard {path} does not match its manifest {manifest_path(path).name} (its ids or shard number "
            f"differ: a partial copy or another run's files); {_RERUN}"
        )
    for what, recorded, wanted, fix in (
        ("encoder", manifest.encoder_fingerprint, encoder_fingerprint, "another model"),
        ("data", manifest.data_fingerprint, data_fingerprint, "other candidates (another evaluation folder, split, "
         "task selection or pool)"),
    ):
        if wanted is not None and recorded != wanted:
            raise ValueError(
                f"shard {path} is stale: it was encoded from {fix} ({what} fingerprint "
                f"{str(recorded)[:12]}, this run's is {wanted[:12]}); {_RERUN}"
            )


def build_index_from_shards(
    shards: str | os.PathLike | Sequence[str | os.PathLike],
    spec: IndexSpec | None = None,
    prefix: str = "embeddings",
    *,
    encoder_fingerprint: str | None = None,
    data_fingerprint: str | None = None,
    expected_ids: Sequence[str] | None = None,
) -> EmbeddingIndex:
    """Merge embedding shards into one index, streaming each memory-mapped shard in chunks.

    ``shards`` is a directory (all ``{prefix}-XXXXX-of-NNNNN.npy`` shards, checked complete) or an
    explicit list of ``.npy`` paths; each needs its ``.ids.json`` beside it. Every shard is checked first
    (:func:`check_shards`): against its manifest, for ids held twice, and, when given, against the
    ``encoder_fingerprint`` / ``data_fingerprint`` its manifest must record and the pool's ``expected_ids``.
    """
    if isinstance(shards, (str, os.PathLike)):
        paths = shard_paths(shards, prefix)
    else:
        paths = [Path(path) for path in shards]
        if not paths:
            raise ValueError("shards is an empty list; pass a directory or at least one .npy path")
        for path in paths:
            if not path.is_file() or not _ids_path(path).is_file():
                raise FileNotFoundError(f"shard {path} or its ids file {_ids_path(path)} is missing")
    shard_ids = check_shards(paths, encoder_fingerprint=encoder_fingerprint, data_fingerprint=data_fingerprint,
                             expected_ids=expected_ids)
    matrices = [np.load(path, mmap_mode="r") for path in paths]
    dims = {matrix.shape[1] if matrix.ndim == 2 else None for matrix in matrices}
    if len(dims) != 1 or None in dims:
        raise ValueError(
            f"shards have different or invalid shapes {[m.shape for m in matrices]}; re-encode them with one model"
        )
    for path, matrix, ids in zip(paths, matrices, shard_ids):
        if len(ids) != len(matrix):
            raise ValueError(f"shard {path} has {len(matrix)} rows but {len(ids)} ids; re-encode the shard")
    spec = spec or IndexSpec()
    total = sum(len(matrix) for matrix in matrices)
    index = EmbeddingIndex(dims.pop(), spec, expected_size=total)
    if index.needs_training:
        index.train(_training_sample(matrices, index, spec))
    for path, matrix, ids in zip(paths, matrices, shard_ids):
        for start in range(0, len(matrix), _ADD_CHUNK_ROWS):
            index.add(matrix[start : start + _ADD_CHUNK_ROWS], ids[start : start + _ADD_CHUNK_ROWS])
        logger.info("added shard %s (%d vectors, %d total)", path.name, len(matrix), index.ntotal)
    return index
