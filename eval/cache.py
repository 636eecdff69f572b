"""On-disk cache of embeddings, keyed by a model fingerprint and a data fingerprint.

A cache entry is ``<root>/<model fp[:2]>/<model fp>/<data fp>.npy`` plus a ``.json`` beside it
recording both fingerprints, the array's shape and dtype, and the sha256 of the ``.npy`` file.
An entry is reused only when the recorded fingerprints equal the requested ones and the file's
checksum matches; otherwise it is re-computed with a warning saying why.

Several processes may share a cache: writers of one entry take turns (a lock on ``<entry>.npy.lock``)
and write the array and its metadata as a pair, each through a uniquely named temporary file renamed
into place (``dataset_builders.atomic``), so a writer killed at any point leaves the old entry, an
entry whose checksum no longer matches (a miss), or the complete new one. A reader that finds the
array and metadata of different writes looks again while holding the lock. A different model
(other weights, config, tokenizer, or encoding settings folded in with
:func:`combine_fingerprints`) has a different fingerprint, so its embeddings are never reused.

Example:
    >>> import numpy as np, tempfile
    >>> from eval.cache import EmbeddingCache, combine_fingerprints, fingerprint_records
    >>> cache = EmbeddingCache(tempfile.mkdtemp())
    >>> model_fp = combine_fingerprints("model-weights-digest", dtype="float32")
    >>> data_fp = fingerprint_records(["d1", "d2"], ["a cat", "a dog"])
    >>> first = cache.get_or_compute(model_fp, data_fp, lambda: np.ones((2, 4), "float32"))
    >>> again = cache.get_or_compute(model_fp, data_fp, lambda: 1 / 0)  # not called: a cache hit
    >>> bool((first == again).all()), cache.hits, cache.misses
    (True, 1, 1)
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dataset_builders.atomic import TEMPORARY_MARKER, atomic_path, atomic_write, file_lock

logger = logging.getLogger(__name__)

_HEX = re.compile(r"^[0-9a-f]{16,128}$")
_FORMAT_VERSION = 1
# Files in a model folder that do not change what the model computes.
_IGNORED_SUFFIXES = (".md", ".lock", ".tmp")


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    with open(path, "rb") as handle:
        return _sha256_handle(handle, chunk_size)


def _sha256_handle(handle, chunk_size: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    while block := handle.read(chunk_size):
        digest.update(block)
    return digest.hexdigest()


def fingerprint_model_dir(model_dir: str | os.PathLike) -> str:
    """sha256 over every file of a model folder (config, weights, tokenizer, processor, ...).

    Each file contributes its relative path and the sha256 of its bytes; ``config.json`` is
    hashed in canonical JSON form so key order and whitespace do not matter. Markdown files (the
    model card), hidden files, lock files and half-written temporaries (names with ``.partial-``)
    are ignored: they do not change the embeddings.

    Example:
        >>> import tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (folder / "config.json").write_text('{"hidden_size": 8}')
        >>> len(fingerprint_model_dir(folder))
        64
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model folder {model_dir} does not exist; pass the checkpoint folder to fingerprint")
    files = sorted(
        path
        for path in model_dir.rglob("*")
        if path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(model_dir).parts)
        and not path.name.endswith(_IGNORED_SUFFIXES)
        and TEMPORARY_MARKER not in path.name
    )
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} has no config.json; is it a model checkpoint folder?")
    digest = hashlib.sha256(b"unica-model-fingerprint-v1\n")
    for path in files:
        relative = path.relative_to(model_dir).as_posix()
        if path.name == "config.json":
            try:
                content = json.dumps(json.loads(path.read_text(encoding="utf-8")), sort_keys=True)
                file_hash = hashlib.sha256(content.encode("utf-8")).hexdigest()
            except ValueError as error:
                raise ValueError(f"{path} is not valid JSON ({error}); fix or re-save the checkpoint") from None
        else:
            file_hash = sha256_file(path)
        digest.update(f"{relative}\0{file_hash}\n".encode())
    return digest.hexdigest()


def fingerprint_state_dict(state_dict: Mapping[str, Any]) -> str:
    """sha256 over a model's parameters in memory (names, dtypes, shapes and bytes).

    Accepts torch tensors (any dtype, bf16 included) or numpy arrays; use it when the model was
    not loaded from a folder, e.g. right after training.
    """
    if not state_dict:
        raise ValueError("state_dict is empty; pass model.state_dict()")
    digest = hashlib.sha256(b"unica-state-dict-fingerprint-v1\n")
    for name in sorted(state_dict):
        value = state_dict[name]
        if hasattr(value, "detach"):  # a torch tensor; hash its raw bytes (numpy has no bfloat16)
            import torch

            tensor = value.detach().to("cpu").contiguous()
            raw = tensor.reshape(-1).view(torch.uint8).numpy().tobytes()
            dtype, shape = str(tensor.dtype), tuple(tensor.shape)
        else:
            array = np.ascontiguousarray(np.asarray(value))
            raw, dtype, shape = array.tobytes(), str(array.dtype), array.shape
        digest.update(f"{name}\0{dtype}\0{shape}\n".encode())
        digest.update(hashlib.sha256(raw).digest())
    return digest.hexdigest()


def _content_bytes(content: Any) -> bytes:
    if content is None:
        return b"\0none"
    if isinstance(content, bytes):
        return b"\0bytes" + content
    if isinstance(content, str):
        return b"\0str" + content.encode("utf-8")
    if isinstance(content, os.PathLike):
        return b"\0file" + bytes.fromhex(sha256_file(content))
    if hasattr(content, "tobytes") and hasattr(content, "size") and hasattr(content, "mode"):  # a PIL image
        return f"\0image{content.mode}{content.size}".encode() + content.tobytes()
    if isinstance(content, Mapping):
        return b"\0map" + b"".join(
            str(key).encode("utf-8") + b"=" + hashlib.sha256(_content_bytes(content[key])).digest()
            for key in sorted(content, key=str)
        )
    if isinstance(content, (list, tuple)):
        return b"\0list" + b"".join(hashlib.sha256(_content_bytes(item)).digest() for item in content)
    if isinstance(content, (int, float, bool)):
        return b"\0num" + repr(content).encode()
    raise ValueError(
        f"cannot fingerprint content of type {type(content).__name__}; pass str, bytes, a path, a PIL image, "
        "or dicts / lists of those"
    )


def fingerprint_records(ids: Iterable[Any], contents: Iterable[Any] | None = None) -> str:
    """sha256 over candidate ids and, when given, their content (text, image bytes / paths / PIL
    images, or ``{"text": ..., "image": ...}`` dicts), in order.

    ``contents`` is consumed as a stream (one record at a time), so a generator over a memory-mapped
    table fingerprints a corpus of any size without holding it: the harness passes the undecoded image
    bytes (``eval.harness.LazyItems.contents``), never decoded images.

    Example:
        >>> fingerprint_records(["d1"], ["a cat"]) == fingerprint_records(["d1"], ["a dog"])
        False
        >>> fingerprint_records(["d1"], iter(["a cat"])) == fingerprint_records(["d1"], ["a cat"])
        True
    """
    digest = hashlib.sha256(b"unica-records-fingerprint-v1\n")
    ids = list(ids)
    if not ids:
        raise ValueError("ids is empty; a data fingerprint needs at least one record")
    if contents is None:
        for doc_id in ids:
            digest.update(hashlib.sha256(_content_bytes(str(doc_id))).digest())
        return digest.hexdigest()
    count, missing = 0, object()
    for doc_id, content in itertools.zip_longest(ids, contents, fillvalue=missing):
        if doc_id is missing or content is missing:
            given = "more" if doc_id is missing else str(count)
            raise ValueError(f"got {len(ids)} ids but {given} contents; pass one content per id")
        digest.update(hashlib.sha256(_content_bytes(str(doc_id))).digest())
        digest.update(hashlib.sha256(_content_bytes(content)).digest())
        count += 1
    return digest.hexdigest()


def combine_fingerprints(*parts: str, **settings: Any) -> str:
    """One fingerprint from several (e.g. the model's) and the settings that change the output
    (``dtype="bf16"``, ``max_length=77``, ``role="query"``).

    Example:
        >>> combine_fingerprints("ab" * 32, dtype="bf16") != combine_fingerprints("ab" * 32, dtype="float32")
        True
    """
    if not parts and not settings:
        raise ValueError("combine_fingerprints needs at least one fingerprint or setting")
    payload = json.dumps({"parts": [str(part) for part in parts], "settings": settings}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _check_fingerprint(value: str, name: str) -> str:
    if not isinstance(value, str) or not _HEX.match(value):
        raise ValueError(
            f"{name}={value!r} is not a hex digest; compute it with fingerprint_model_dir / fingerprint_records / "
            "combine_fingerprints"
        )
    return value


class EmbeddingCache:
    """Embeddings on disk under ``root``, keyed by (model fingerprint, data fingerprint).

    ``hits`` and ``misses`` count lookups, so a caller (and a test) can check that a second run
    encoded nothing.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    def path_for(self, model_fingerprint: str, data_fingerprint: str) -> Path:
        """The ``.npy`` path of an entry (its metadata is the same path with ``.json``)."""
        model_fingerprint = _check_fingerprint(model_fingerprint, "model_fingerprint")
        data_fingerprint = _check_fingerprint(data_fingerprint, "data_fingerprint")
        return self.root / model_fingerprint[:2] / model_fingerprint / f"{data_fingerprint}.npy"

    def get(self, model_fingerprint: str, data_fingerprint: str) -> np.ndarray | None:
        """The cached embeddings, or None when absent, written for other fingerprints, or corrupt
        (the last two with a warning).

        A first look takes no lock. If it finds a problem, it looks again holding the entry's lock: a
        writer of another process may have been between the array and its metadata, and only what is
        still wrong once no writer is active is reported.
        """
        path = self.path_for(model_fingerprint, data_fingerprint)
        array, problem = self._read(path, model_fingerprint, data_fingerprint)
        if problem is not None:
            try:
                with file_lock(path):
                    array, problem = self._read(path, model_fingerprint, data_fingerprint)
            except OSError as error:  # e.g. a read-only cache: the lock file cannot be created
                logger.debug("cannot lock %s (%s); keeping the unlocked read", path, error)
        if problem is not None:
            logger.warning(*problem)
        return array

    def _read(
        self, path: Path, model_fingerprint: str, data_fingerprint: str
    ) -> tuple[np.ndarray | None, tuple | None]:
        """(array or None, None) or (None, a warning's logging arguments)."""
        meta_path = path.with_suffix(".json")
        if not path.is_file() and not meta_path.is_file():
            return None, None
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            recorded = (meta["model_fingerprint"], meta["data_fingerprint"])
            expected_sha, shape, dtype = meta["sha256"], tuple(meta["shape"]), meta["dtype"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            return None, ("embedding cache entry %s is corrupt (metadata: %s); re-encoding", path, error)
        if recorded != (model_fingerprint, data_fingerprint):
            return None, (
                "embedding cache entry %s was written for model %s / data %s, not model %s / data %s; "
                "not reusing it, re-encoding",
                path, recorded[0][:12], recorded[1][:12], model_fingerprint[:12], data_fingerprint[:12],
            )  # fmt: skip
        try:
            # One open file for the checksum and the load: a writer renaming a new array into place
            # meanwhile cannot make us load other bytes than the ones we checked.
            with open(path, "rb") as handle:
                if _sha256_handle(handle) != expected_sha:
                    return None, ("embedding cache entry %s is corrupt (checksum mismatch); re-encoding", path)
                handle.seek(0)
                array = np.load(handle, allow_pickle=False)
        except (OSError, ValueError, EOFError) as error:
            return None, ("embedding cache entry %s is corrupt (%s); re-encoding", path, error)
        if array.shape != shape or str(array.dtype) != dtype:
            return None, (
                "embedding cache entry %s is corrupt (array %s %s, metadata says %s %s); re-encoding",
                path, array.shape, array.dtype, shape, dtype,
            )  # fmt: skip
        return array, None

    def put(self, model_fingerprint: str, data_fingerprint: str, embeddings: np.ndarray) -> Path:
        """Store embeddings: array, then its metadata, under the entry's lock, each written atomically.

        Holding the lock, it also removes temporaries that a killed writer of this entry left behind
        (every live writer of the entry writes only while holding the same lock).
        """
        path = self.path_for(model_fingerprint, data_fingerprint)
        embeddings = np.asarray(embeddings)
        if embeddings.ndim != 2 or embeddings.shape[0] == 0:
            raise ValueError(f"embeddings must be a non-empty 2-D array (rows, dim), got shape {embeddings.shape}")
        if embeddings.dtype == object:
            raise ValueError("embeddings has dtype object; pass a numeric array (float32 / float16)")
        meta_path = path.with_suffix(".json")
        with file_lock(path):
            _remove_stale_temporaries(path, meta_path)
            with atomic_path(path) as temporary:
                with open(temporary, "wb") as handle:
                    np.save(handle, embeddings, allow_pickle=False)
                checksum = sha256_file(temporary)
            meta = {
                "format": _FORMAT_VERSION,
                "model_fingerprint": model_fingerprint,
                "data_fingerprint": data_fingerprint,
                "shape": list(embeddings.shape),
                "dtype": str(embeddings.dtype),
                "sha256": checksum,
            }
            atomic_write(meta_path, json.dumps(meta, indent=1))
        return path

    def get_or_compute(
        self, model_fingerprint: str, data_fingerprint: str, compute_fn: Callable[[], np.ndarray]
    ) -> np.ndarray:
        """Cached embeddings if a valid entry exists, else ``compute_fn()`` (stored, then returned)."""
        cached = self.get(model_fingerprint, data_fingerprint)
        if cached is not None:
            self.hits += 1
            logger.info("embedding cache hit: %s", self.path_for(model_fingerprint, data_fingerprint))
            return cached
        self.misses += 1
        embeddings = np.asarray(compute_fn())
        self.put(model_fingerprint, data_fingerprint, embeddings)
        return embeddings


def _remove_stale_temporaries(*targets: Path) -> None:
    """Delete temporaries of ``targets`` (``.<name>.partial-*``, old-style ``<name>.tmp``) left by killed writers.

    Call it only while holding the targets' lock, so that no live writer's temporary is removed.
    """
    for target in targets:
        stale = [target.with_name(target.name + ".tmp")]
        try:
            with os.scandir(target.parent) as entries:
                prefix = f".{target.name}{TEMPORARY_MARKER}"
                stale += [Path(entry.path) for entry in entries if entry.name.startswith(prefix)]
        except FileNotFoundError:
            continue
        for path in stale:
            try:
                path.unlink(missing_ok=True)
            except OSError as error:
                logger.debug("could not remove stale temporary %s (%s)", path, error)
