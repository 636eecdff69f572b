"""Rows of the exported tables: training triples, evaluation queries, corpus and qrels.

Training rows (UMR-S10, scenes, OpenClipart; what a retrieval trainer consumes), one per query:

=================  ==========================  ==================================================
column             feature                     meaning
=================  ==========================  ==================================================
qid                string                      M-BEIR query id ("<dataset id>:<n>")
task_id            int32                       M-BEIR task (0 text->image ... 8 image,text->image,text)
source             string                      source dataset ("WebQA", "Scenes", ...)
query_modality     string                      "text", "image" or "image,text"
query_text         string                      "" when the query has no text
query_image        Image()                     None when the query has no image
pos_did            string                      the first positive candidate
pos_modality       string
pos_text           string                      "" when the positive has no text
pos_image          Image()                     None when the positive has no image
neg_did            string                      the first hard negative ("" when there is none)
neg_modality       string
neg_text           string
neg_image          Image()
pos_dids           list[string]                every positive of the query
neg_dids           list[string]                every hard negative of the query
=================  ==========================  ==================================================

Every candidate named in ``pos_dids`` / ``neg_dids`` is in the ``candidates`` config (CANDIDATE_FEATURES).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
from tqdm.auto import tqdm

from .export import image_value
from .mbeir import resolve_image_path

logger = logging.getLogger(__name__)

TRAINING_FEATURES = datasets.Features(
    {
        "qid": datasets.Value("string"),
        "task_id": datasets.Value("int32"),
        "source": datasets.Value("string"),
        "query_modality": datasets.Value("string"),
        "query_text": datasets.Value("string"),
        "query_image": datasets.Image(),
        "pos_did": datasets.Value("string"),
        "pos_modality": datasets.Value("string"),
        "pos_text": datasets.Value("string"),
        "pos_image": datasets.Image(),
        "neg_did": datasets.Value("string"),
        "neg_modality": datasets.Value("string"),
        "neg_text": datasets.Value("string"),
        "neg_image": datasets.Image(),
        "pos_dids": datasets.List(datasets.Value("string")),
        "neg_dids": datasets.List(datasets.Value("string")),
    }
)
CANDIDATE_FEATURES = datasets.Features(
    {
        "did": datasets.Value("string"),
        "modality": datasets.Value("string"),
        "text": datasets.Value("string"),
        "image": datasets.Image(),
    }
)
QUERY_FEATURES = datasets.Features(
    {
        "qid": datasets.Value("string"),
        "task_id": datasets.Value("int32"),
        "query_modality": datasets.Value("string"),
        "query_text": datasets.Value("string"),
        "query_image": datasets.Image(),
        "pos_dids": datasets.List(datasets.Value("string")),
    }
)
QRELS_FEATURES = datasets.Features(
    {
        "qid": datasets.Value("string"),
        "did": datasets.Value("string"),
        "relevance": datasets.Value("int32"),
        "task_id": datasets.Value("int32"),
    }
)


def multimodal_item(text: str | None, image: Any, label: str = "an item") -> Any:
    """The processor item for a text and an image: the text, the image, or ``{"text": ..., "image": ...}``.

    The one rule for every caller (evaluation rows, training sides, MTEB batches, reconstruction rows):
    whitespace-only text counts as no text (the processor refuses it alone; with an image, the image is
    the item); neither text nor image is a ``ValueError`` naming ``label``, what the caller calls the row
    (``"a row"``, ``"query '2:1'"``). ``image`` is passed through as it is (a PIL image, a path, bytes, a
    ``datasets.Image`` value): ``None`` means no image. A text that is not a string is a ``TypeError``.

    Example:
        >>> multimodal_item("a red circle", None)
        'a red circle'
        >>> multimodal_item("   ", "scene.png")
        'scene.png'
        >>> multimodal_item("Red Circle, 1990", "scene.png")
        {'text': 'Red Circle, 1990', 'image': 'scene.png'}
        >>> multimodal_item("  ", None, label="query '2:1'")
        Traceback (most recent call last):
        ...
        ValueError: query '2:1' has neither text nor image
    """
    if text is not None and not isinstance(text, str):
        raise TypeError(f"{label}: the text must be a string or None, got {type(text).__name__}")
    has_text = bool(text and text.strip())
    if image is not None:
        return {"text": text, "image": image} if has_text else image
    if has_text:
        return text
    raise ValueError(f"{label} has neither text nor image")


@dataclass
class MissingImages:
    """Image files that are missing or unreadable, and what was dropped because of them (``skip_missing``).

    ``paths`` lists the missing files; ``unreadable`` the files that exist but are not images the
    processor's safe loader accepts (not an image, truncated, a decompression bomb), each with the record
    that uses it and the loader's message.
    """

    paths: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str, str]] = field(default_factory=list)  # (record, path, reason)
    dropped_queries: int = 0
    dropped_candidates: int = 0

    @property
    def count(self) -> int:
        """Missing plus unreadable image files."""
        return len(self.paths) + len(self.unreadable)

    def check(self, skip_missing: bool, where: str) -> None:
        """Raise unless ``skip_missing`` (missing files first, then unreadable ones); else log what was dropped."""
        if self.paths and not skip_missing:
            raise FileNotFoundError(
                f"{len(self.paths)} image files referenced in {where} are missing, e.g. {self.paths[:3]}; "
                "restore them or pass --skip-missing to drop the records that use them"
            )
        if self.unreadable and not skip_missing:
            record, path, reason = self.unreadable[0]
            raise ValueError(
                f"{record} uses image {path!r}, which cannot be read: {reason} ({len(self.unreadable)} unreadable "
                f"images in {where}); replace the files or pass --skip-missing to drop the records that use them"
            )
        if self.count:
            logger.warning(
                "skipped %d missing and %d unreadable images (%d queries and %d candidates dropped), e.g. %s",
                len(self.paths), len(self.unreadable), self.dropped_queries, self.dropped_candidates,
                (self.paths + [path for _, path, _ in self.unreadable])[:3],
            )


def decode_image(cell: Any) -> Any:
    """Decode one image with the processor's safe loader; returns an RGB ``PIL.Image``.

    ``cell`` is what an ``Image(decode=False)`` column holds (``{"bytes": ..., "path": ...}``), bytes or a
    path. The loader is the one training and evaluation use (EXIF orientation, modes, truncation,
    decompression-bomb limit): a missing file raises ``FileNotFoundError``, anything else that is not a
    readable image a ``ValueError`` (never PIL's own errors), so a caller can name the row that holds it.
    """
    # The remote-code loader pulls in torch and transformers: imported here, when an image is decoded.
    from modeling_unica.processing_unica import load_image

    return load_image(cell)


def image_problem(path: Path) -> str | None:
    """Why ``path`` is not a usable image (``"missing"`` or the safe loader's message), or ``None`` when it is.

    Decodes the file with the processor's own loader (:func:`decode_image`), so what passes here also
    loads at training and evaluation time (EXIF, modes, truncation, decompression-bomb limit).
    """
    if not path.is_file():
        return "missing"
    try:
        decode_image(path)
    except (ValueError, FileNotFoundError) as error:
        return str(error)
    return None


def drop_missing_images(
    root: Path, queries: list[dict], candidates: dict[str, dict], skip_missing: bool, where: str,
    workers: int | None = None, progress: bool = True,
) -> tuple[list[dict], dict[str, dict], MissingImages]:
    """Check every image the records use; with ``skip_missing`` drop what needs a missing or unreadable one.

    Each path must lie inside ``root`` (:func:`~dataset_builders.mbeir.resolve_image_path`: a path that
    leaves it is an error naming the record, ``skip_missing`` or not) and decode with the processor's safe
    loader. Each distinct file is decoded once, by ``workers`` threads (default: the CPU count; PIL decodes
    without holding the GIL). Candidates with a bad image are dropped and removed from the queries' lists;
    queries with a bad image or without a remaining positive are dropped.
    """
    uses: dict[Path, tuple[str, str]] = {}  # resolved file -> (first record using it, its relative path)
    candidate_files: dict[str, Path] = {}
    query_files: dict[int, Path] = {}
    for did, candidate in candidates.items():
        if candidate.get("img_path"):
            record = f"candidate {did!r}"
            candidate_files[did] = resolve_image_path(root, candidate["img_path"], record)
            uses.setdefault(candidate_files[did], (record, candidate["img_path"]))
    for index, query in enumerate(queries):
        if query.get("query_img_path"):
            record = f"query {query['qid']!r}"
            query_files[index] = resolve_image_path(root, query["query_img_path"], record)
            uses.setdefault(query_files[index], (record, query["query_img_path"]))
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        problems = dict(zip(uses, tqdm(
            pool.map(image_problem, uses), total=len(uses), desc="checking images", unit="image",
            disable=not progress or len(uses) < 1000,
        )))
    bad_files = {path for path, problem in problems.items() if problem}
    missing = MissingImages()
    for path in sorted(bad_files, key=lambda p: uses[p][1]):
        record, relative = uses[path]
        if problems[path] == "missing":
            missing.paths.append(relative)
        else:
            missing.unreadable.append((record, relative, problems[path]))
    bad_candidates = {did for did, path in candidate_files.items() if path in bad_files}
    kept_queries = []
    for index, query in enumerate(queries):
        if query_files.get(index) in bad_files:
            missing.dropped_queries += 1
            continue
        if bad_candidates:
            query = dict(query)
            query["pos_cand_list"] = [d for d in query["pos_cand_list"] if d not in bad_candidates]
            query["neg_cand_list"] = [d for d in (query.get("neg_cand_list") or []) if d not in bad_candidates]
            if not query["pos_cand_list"]:
                missing.dropped_queries += 1
                continue
        kept_queries.append(query)
    missing.dropped_candidates = len(bad_candidates)
    missing.check(skip_missing, where)
    kept_candidates = {d: c for d, c in candidates.items() if d not in bad_candidates}
    return kept_queries, kept_candidates, missing


def _side(candidate: dict | None, root: Path, embed: bool) -> tuple[str, str, str, dict | None]:
    if candidate is None:
        return "", "", "", None
    record = f"candidate {candidate['did']!r}"
    image = None
    if candidate.get("img_path"):
        image = image_value(resolve_image_path(root, candidate["img_path"], record), embed)
    text = candidate.get("txt") or ""
    multimodal_item(text, image, label=record)  # a record needs a text or an image: refused here, at build
    return candidate["did"], candidate.get("modality") or "", text, image


def training_rows(
    queries: Iterable[dict], candidates: dict[str, dict], root: Path, embed_images: bool = True
) -> Iterator[dict]:
    """Turn M-BEIR query records (with ``source``) into TRAINING_FEATURES rows."""
    for query in queries:
        pos = candidates[query["pos_cand_list"][0]]
        negatives = query.get("neg_cand_list") or []
        neg = candidates[negatives[0]] if negatives else None
        pos_did, pos_modality, pos_text, pos_image = _side(pos, root, embed_images)
        neg_did, neg_modality, neg_text, neg_image = _side(neg, root, embed_images)
        fields = _query_fields(query, root, embed_images)
        yield {
            "qid": fields["qid"],
            "task_id": fields["task_id"],
            "source": query.get("source") or "",
            "query_modality": fields["query_modality"],
            "query_text": fields["query_text"],
            "query_image": fields["query_image"],
            "pos_did": pos_did,
            "pos_modality": pos_modality,
            "pos_text": pos_text,
            "pos_image": pos_image,
            "neg_did": neg_did,
            "neg_modality": neg_modality,
            "neg_text": neg_text,
            "neg_image": neg_image,
            "pos_dids": list(query["pos_cand_list"]),
            "neg_dids": list(negatives),
        }


def candidate_rows(candidates: Iterable[dict], root: Path, embed_images: bool = True) -> Iterator[dict]:
    """Turn M-BEIR candidates into CANDIDATE_FEATURES rows."""
    for candidate in candidates:
        did, modality, text, image = _side(candidate, root, embed_images)
        yield {"did": did, "modality": modality, "text": text, "image": image}


def query_rows(queries: Iterable[dict], root: Path, embed_images: bool = True) -> Iterator[dict]:
    """Turn M-BEIR query records into QUERY_FEATURES rows (evaluation queries)."""
    for query in queries:
        yield {**_query_fields(query, root, embed_images), "pos_dids": list(query["pos_cand_list"])}


def _query_fields(query: dict, root: Path, embed_images: bool) -> dict:
    """The query columns shared by training and evaluation rows."""
    image_path, record = query.get("query_img_path"), f"query {query['qid']!r}"
    image = image_value(resolve_image_path(root, image_path, record), embed_images) if image_path else None
    text = query.get("query_txt") or ""
    multimodal_item(text, image, label=record)  # a record needs a text or an image: refused here, at build
    return {
        "qid": query["qid"],
        "task_id": int(query["task_id"]),
        "query_modality": query.get("query_modality") or "",
        "query_text": text,
        "query_image": image,
    }
