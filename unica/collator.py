"""RetrievalCollator: training rows (query, positive, hard negatives) -> processor batches.

A row follows the training schema of :mod:`dataset_builders.rows` (``TRAINING_FEATURES``): each side
(``query``, ``pos``, ``neg``) has a ``{side}_text`` column ("" when absent) and a ``{side}_image``
column (``None`` when absent). A side is text, image or image + text. An image may be a
``PIL.Image``, a path (``str`` or ``pathlib.Path``; relative paths are resolved against
``image_root``), ``bytes`` or a ``datasets.Image`` value (``{"bytes": ..., "path": ...}``, what an
``Image(decode=False)`` column holds).

The schema holds one hard negative per row. Rows may hold more: ``neg_text`` / ``neg_image`` as
parallel lists (entry ``j`` is the ``j``-th negative), e.g. in a JSONL of records.

Rows that name their documents (``pos_did``, and optionally ``pos_dids`` / ``neg_did`` / ``neg_dids``, as
the builders of :mod:`dataset_builders` write them) also get an ``"ids"`` group: integer ids of each
positive and negative and of every known positive of each query, which the loss uses to leave in-batch
false negatives (another row's positive that is also a positive of this query) out of the softmax.

Images are decoded here, row by row, with the processor's safe loader: an unreadable image raises
an error naming the row and the side, not a bare PIL traceback from a data-loader worker.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from dataset_builders.rows import multimodal_item
from modeling_unica.processing_unica import UniCAProcessor, load_image

logger = logging.getLogger(__name__)

__all__ = ["SIDES", "RetrievalCollator", "count_negatives", "document_id", "required_columns"]

# Output group -> column prefix in the training schema.
SIDES = {"query": "query", "positive": "pos", "negative": "neg"}


def required_columns(hard_negatives: int = 0) -> list[str]:
    """The columns a training dataset needs for ``hard_negatives`` negatives per query.

    Example:
        >>> required_columns(1)
        ['query_text', 'query_image', 'pos_text', 'pos_image', 'neg_text', 'neg_image']
    """
    prefixes = ["query", "pos"] + (["neg"] if hard_negatives > 0 else [])
    return [f"{prefix}_{kind}" for prefix in prefixes for kind in ("text", "image")]


def document_id(did: Any) -> int:
    """A stable non-negative 63-bit integer for a document id string; ``-1`` for no id (``None`` / ``""``).

    The same ``did`` gives the same integer in every process and run (blake2b, not Python's salted ``hash``).

    Example:
        >>> document_id("9:1") == document_id("9:1"), document_id(""), document_id(None)
        (True, -1, -1)
    """
    if did is None or did == "":
        return -1
    return int.from_bytes(hashlib.blake2b(str(did).encode("utf-8"), digest_size=8).digest(), "big") >> 1


def _is_empty_text(text: Any) -> bool:
    return text is None or (isinstance(text, str) and not text.strip())


def count_negatives(text: Any, image: Any) -> int:
    """How many hard negatives a row's ``neg_text`` / ``neg_image`` values provide.

    Example:
        >>> count_negatives("a red circle", None), count_negatives("", None), count_negatives(["a", "b"], [None, None])
        (1, 0, 2)
    """
    if isinstance(text, (list, tuple)) or isinstance(image, (list, tuple)):
        texts = list(text) if isinstance(text, (list, tuple)) else []
        images = list(image) if isinstance(image, (list, tuple)) else []
        return max(len(texts), len(images))
    return 0 if (_is_empty_text(text) and image is None) else 1


class RetrievalCollator:
    """Collate training rows into ``{"query": batch, "positive": batch, "negative": batch}``.

    Each value is a dict of tensors from :meth:`UniCAProcessor.process_items` (``input_ids``,
    ``attention_mask``, ``image_mask`` and, when the group has images, ``pixel_values``). The
    ``negative`` group holds ``B * hard_negatives`` items, query-major (item ``i * k + j`` is row
    ``i``'s ``j``-th negative), and is left out when ``hard_negatives == 0``.

    Args:
        processor: the model's :class:`UniCAProcessor`.
        hard_negatives: negatives per query ``k``; every row must provide at least ``k`` (see the
            module docstring). Check a whole dataset up front with :meth:`check_dataset`.
        image_root: folder against which relative image paths are resolved (default: the working
            directory).
        id_column: the column that names a row in error messages (the row's position otherwise).
        prompts: the checkpoint's sentence-transformers prompts (:func:`unica.st.read_prompts`): ``"query"``
            goes before query texts, ``"document"`` before positive and negative texts, as at inference.

    Example:
        >>> collator = RetrievalCollator(processor, hard_negatives=1)
        >>> batch = collator([{"query_text": "a red circle", "query_image": None,
        ...                    "pos_text": "", "pos_image": "scene.png",
        ...                    "neg_text": "a blue square", "neg_image": None}])
        >>> batch["positive"]["image_mask"].tolist()
        [True]
    """

    def __init__(
        self,
        processor: UniCAProcessor,
        hard_negatives: int = 0,
        image_root: str | os.PathLike | None = None,
        id_column: str = "qid",
        prompts: Mapping[str, str] | None = None,
    ) -> None:
        if not isinstance(hard_negatives, int) or isinstance(hard_negatives, bool) or hard_negatives < 0:
            raise ValueError(f"hard_negatives must be an integer >= 0, got {hard_negatives!r}")
        if not hasattr(processor, "process_items"):
            raise ValueError(
                f"processor must be a UniCAProcessor (with process_items), got {type(processor).__name__}"
            )
        self.processor = processor
        self.hard_negatives = hard_negatives
        self.image_root = pathlib.Path(image_root) if image_root is not None else None
        self.id_column = id_column
        self.prompts = dict(prompts or {})

    # ------------------------------------------------------------------ checks
    def check_dataset(self, dataset: Any, name: str = "training dataset") -> None:
        """Raise ``ValueError`` before training if ``dataset`` lacks columns or rows lack negatives.

        Reads only the text columns and the image columns' null flags (no image is decoded), so it is
        cheap on a ``datasets.Dataset`` of any size.

        Example:
            >>> RetrievalCollator(processor, hard_negatives=2).check_dataset(dataset)
            Traceback (most recent call last):
            ...
            ValueError: hard_negatives=2 but row 0 (qid '10:1') of training dataset provides 1 hard negative(s) ...
        """
        columns = list(getattr(dataset, "column_names", None) or [])
        missing = [column for column in required_columns(self.hard_negatives) if column not in columns]
        if missing:
            raise ValueError(
                f"{name} is missing the columns {missing} (it has {columns}); a training dataset needs "
                f"{required_columns(self.hard_negatives)} (see dataset_builders.rows.TRAINING_FEATURES)"
            )
        if self.hard_negatives == 0 or len(dataset) == 0:
            return
        texts = _column_values(dataset, "neg_text")
        images = _column_presence(dataset, "neg_image")
        for index, (text, image) in enumerate(zip(texts, images)):
            provided = count_negatives(text, image)
            if provided < self.hard_negatives:
                ids = _column_values(dataset, self.id_column) if self.id_column in columns else None
                raise ValueError(
                    f"hard_negatives={self.hard_negatives} but {self._row_name(index, ids[index] if ids else None)} "
                    f"of {name} provides {provided} hard negative(s); the training schema holds one per row "
                    "(neg_text / neg_image). Lower hard_negatives, drop rows without negatives, or give "
                    "neg_text / neg_image as lists"
                )

    def _row_name(self, index: int, row_id: Any) -> str:
        return f"row {index} ({self.id_column} {row_id!r})" if row_id not in (None, "") else f"row {index}"

    # ------------------------------------------------------------------ collation
    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, torch.Tensor]]:
        if not rows:
            raise ValueError("RetrievalCollator got an empty list of rows")
        groups: dict[str, list[Any]] = {"query": [], "positive": []}
        if self.hard_negatives:
            groups["negative"] = []
        for index, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise ValueError(f"row {index} is a {type(row).__name__}; rows must be dicts of the training schema")
            name = self._row_name(index, row.get(self.id_column))
            groups["query"].append(self._side(row, "query", name))
            groups["positive"].append(self._side(row, "pos", name))
            if self.hard_negatives:
                groups["negative"].extend(self._negatives(row, name))
        batch = {
            group: dict(self.processor.process_items(items, prompt=self.prompts.get(
                "query" if group == "query" else "document") or None))
            for group, items in groups.items()
        }
        if all("pos_did" in row for row in rows):
            batch["ids"] = self._document_ids(rows)
        return batch

    def _document_ids(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """``positive`` (B,), ``query_positives`` (B, P, ``-1`` padded) and ``negative`` (B * k,) document ids."""
        positives = [document_id(row["pos_did"]) for row in rows]
        known = []
        for row, positive in zip(rows, positives):
            ids = {positive} | {document_id(did) for did in (row.get("pos_dids") or [])}
            known.append(sorted(ids - {-1}) or [-1])
        width = max(len(ids) for ids in known)
        ids = {
            "positive": torch.tensor(positives, dtype=torch.long),
            "query_positives": torch.tensor([ids + [-1] * (width - len(ids)) for ids in known], dtype=torch.long),
        }
        if self.hard_negatives:
            negatives = []
            for row in rows:
                listed = row.get("neg_dids")
                if isinstance(row.get("neg_text"), (list, tuple)) or isinstance(row.get("neg_image"), (list, tuple)):
                    # Parallel lists: entry j of neg_dids names negative j, when the row gives one per negative.
                    names = list(listed) if isinstance(listed, (list, tuple)) else []
                    names += [None] * (self.hard_negatives - len(names))
                else:
                    names = [row.get("neg_did")]
                negatives += [document_id(did) for did in names[: self.hard_negatives]]
            ids["negative"] = torch.tensor(negatives, dtype=torch.long)
        return ids

    def _negatives(self, row: Mapping[str, Any], name: str) -> list[Any]:
        text, image = row.get("neg_text"), row.get("neg_image")
        provided = count_negatives(text, image)
        if provided < self.hard_negatives:
            raise ValueError(
                f"hard_negatives={self.hard_negatives} but {name} provides {provided} hard negative(s) "
                "(neg_text / neg_image); lower hard_negatives or fix the row"
            )
        if not isinstance(text, (list, tuple)) and not isinstance(image, (list, tuple)):
            return [self._item(text, image, name, "negative")]
        texts = list(text) if isinstance(text, (list, tuple)) else [text] * provided
        images = list(image) if isinstance(image, (list, tuple)) else [image] * provided
        texts += [None] * (provided - len(texts))
        images += [None] * (provided - len(images))
        return [
            self._item(texts[j], images[j], name, f"negative {j}") for j in range(self.hard_negatives)
        ]

    def _side(self, row: Mapping[str, Any], prefix: str, name: str) -> Any:
        text_key, image_key = f"{prefix}_text", f"{prefix}_image"
        if text_key not in row and image_key not in row:
            raise ValueError(f"{name} has neither {text_key!r} nor {image_key!r}; got keys {sorted(row)}")
        side = "query" if prefix == "query" else "positive"
        return self._item(row.get(text_key), row.get(image_key), name, side)

    def _item(self, text: Any, image: Any, name: str, side: str) -> Any:
        if text is not None and not isinstance(text, str):
            raise ValueError(f"{name}: the {side} text must be a string, got {type(text).__name__}")
        if image is not None:
            try:
                image = load_image(self._resolve(image), self.processor.max_image_pixels)
            except (ValueError, FileNotFoundError, OSError) as error:
                raise type(error)(f"{name}: the {side} image cannot be read: {error}") from error
        try:
            return multimodal_item(text, image, label=f"{name}: the {side} side")
        except ValueError:
            raise ValueError(f"{name}: the {side} side is empty (no text and no image); fix or drop the row") from None

    def _resolve(self, image: Any) -> Any:
        if isinstance(image, str):
            image = pathlib.Path(image)
        if isinstance(image, dict) and image.get("bytes") is None and image.get("path"):
            image = pathlib.Path(image["path"])
        if isinstance(image, pathlib.Path) and not image.is_absolute() and self.image_root is not None:
            image = self.image_root / image
        return image


def _column_values(dataset: Any, column: str) -> list[Any]:
    """A column's Python values; for a ``datasets.Dataset`` read from Arrow without decoding features."""
    data = getattr(dataset, "data", None)
    if data is not None and hasattr(data, "column"):
        indices = getattr(dataset, "_indices", None)
        values = data.column(column)
        if indices is not None:
            values = values.take(indices.column(0))
        return values.to_pylist()
    return [row[column] for row in dataset]


def _column_presence(dataset: Any, column: str) -> list[Any]:
    """Per row: ``None`` when the image column is null, a list when it holds a list, else ``True``."""
    data = getattr(dataset, "data", None)
    if data is not None and hasattr(data, "column"):
        import pyarrow as pa

        values = data.column(column)
        indices = getattr(dataset, "_indices", None)
        if indices is not None:
            values = values.take(indices.column(0))
        if pa.types.is_list(values.type) or pa.types.is_large_list(values.type):
            return [None if v is None else [True] * len(v) for v in values.to_pylist()]
        return [None if null else True for null in values.is_null().to_pylist()]
    return [None if row[column] is None else row[column] for row in dataset]
