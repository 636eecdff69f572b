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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import datasets

from .export import image_value

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


@dataclass
class MissingImages:
    """Image paths that do not exist, and what was dropped because of them (with ``skip_missing``)."""

    paths: list[str] = field(default_factory=list)
    dropped_queries: int = 0
    dropped_candidates: int = 0

    def check(self, skip_missing: bool, where: str) -> None:
        """Raise ``FileNotFoundError`` with the count and first examples unless ``skip_missing``."""
        if self.paths and not skip_missing:
            raise FileNotFoundError(
                f"{len(self.paths)} image files referenced in {where} are missing, e.g. {self.paths[:3]}; "
                "restore them or pass --skip-missing to drop the records that use them"
            )
        if self.paths:
            logger.warning(
                "skipped %d missing images (%d queries and %d candidates dropped), e.g. %s",
                len(self.paths), self.dropped_queries, self.dropped_candidates, self.paths[:3],
            )


def drop_missing_images(
    root: Path, queries: list[dict], candidates: dict[str, dict], skip_missing: bool, where: str
) -> tuple[list[dict], dict[str, dict], MissingImages]:
    """Check that every image exists; with ``skip_missing`` drop what needs a missing one.

    Candidates with a missing image are dropped and removed from the queries' lists; queries with a
    missing image or without a remaining positive are dropped.
    """
    missing = MissingImages()
    bad_candidates = set()
    for did, candidate in candidates.items():
        if candidate.get("img_path") and not (root / candidate["img_path"]).is_file():
            missing.paths.append(candidate["img_path"])
            bad_candidates.add(did)
    kept_queries = []
    for query in queries:
        if query.get("query_img_path") and not (root / query["query_img_path"]).is_file():
            missing.paths.append(query["query_img_path"])
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
    image = image_value(root / candidate["img_path"], embed) if candidate.get("img_path") else None
    return candidate["did"], candidate.get("modality") or "", candidate.get("txt") or "", image


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
    image_path = query.get("query_img_path")
    return {
        "qid": query["qid"],
        "task_id": int(query["task_id"]),
        "query_modality": query.get("query_modality") or "",
        "query_text": query.get("query_txt") or "",
        "query_image": image_value(root / image_path, embed_images) if image_path else None,
    }
