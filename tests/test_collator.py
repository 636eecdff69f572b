"""Tests for unica.collator.RetrievalCollator: every side kind and image form, query-major negatives,
and errors that name the row."""

from __future__ import annotations

import io
import pathlib

import datasets
import pytest
import torch
from conftest import make_image

from unica.collator import RetrievalCollator, count_negatives, required_columns


def _png_bytes(seed: int) -> bytes:
    buffer = io.BytesIO()
    make_image(seed).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def processor(tiny_pair):
    return tiny_pair[1]


def _row(qid: str, **sides) -> dict:
    row = {"qid": qid, "query_text": "", "query_image": None, "pos_text": "", "pos_image": None,
           "neg_text": "", "neg_image": None}
    row.update(sides)
    return row


def test_sides_of_every_kind_and_image_form(processor, tmp_path) -> None:
    path = tmp_path / "img.png"
    make_image(1).save(path)
    rows = [
        _row("a", query_text="a red circle", pos_image=make_image(1), neg_text="Blue square", neg_image=str(path)),
        _row("b", query_image=path, pos_text="a caption", neg_image={"bytes": _png_bytes(2), "path": None}),
        _row("c", query_text="find it", query_image=_png_bytes(3), pos_text="doc", pos_image={"bytes": None, "path": str(path)},
             neg_text="other"),
    ]
    batch = RetrievalCollator(processor, hard_negatives=1)(rows)
    assert sorted(batch) == ["negative", "positive", "query"]
    assert batch["query"]["image_mask"].tolist() == [False, True, True]
    assert batch["positive"]["image_mask"].tolist() == [True, False, True]
    assert batch["negative"]["image_mask"].tolist() == [True, True, False]
    assert batch["positive"]["pixel_values"].shape == (2, 3, 32, 32)
    # The same image given as PIL, path and {"path"} dict gives the same pixels.
    expected = processor.process_items([make_image(1)])["pixel_values"][0]
    torch.testing.assert_close(batch["positive"]["pixel_values"][0], expected)
    torch.testing.assert_close(batch["negative"]["pixel_values"][0], expected)
    torch.testing.assert_close(batch["positive"]["pixel_values"][1], expected)
    # Texts are tokenised as the processor does on its own.
    alone = processor.process_items(["a red circle"])["input_ids"][0]
    assert batch["query"]["input_ids"][0, : alone.shape[0]].tolist() == alone.tolist()
    assert "negative" not in RetrievalCollator(processor)(rows)


def test_negatives_are_query_major_from_list_columns(processor) -> None:
    rows = [
        _row("a", query_text="q0", pos_text="p0", neg_text=["n00", "n01", "n02"], neg_image=[None, None, None]),
        _row("b", query_text="q1", pos_text="p1", neg_text=["n10", "n11"], neg_image=[None, make_image(5)]),
    ]
    batch = RetrievalCollator(processor, hard_negatives=2)(rows)
    tokens = processor.tokenizer.batch_decode(batch["negative"]["input_ids"], skip_special_tokens=True)
    assert tokens == ["n00", "n01", "n10", "n11"]
    assert batch["negative"]["image_mask"].tolist() == [False, False, False, True]
    assert count_negatives(["x", "y"], None) == 2 and count_negatives("", None) == 0


def test_empty_side_and_unreadable_image_name_the_row(processor, tmp_path) -> None:
    collator = RetrievalCollator(processor)
    with pytest.raises(ValueError, match=r"row 1 \(qid '10:7'\): the positive side is empty"):
        collator([_row("10:6", query_text="q", pos_text="p"), _row("10:7", query_text="q", pos_text="  ")])
    broken = tmp_path / "broken.png"
    broken.write_bytes(_png_bytes(1)[:60])
    with pytest.raises(ValueError, match=r"row 0 \(qid 'x'\): the query image cannot be read: .*broken.png"):
        collator([_row("x", query_image=str(broken), pos_text="p")])
    with pytest.raises(FileNotFoundError, match=r"row 0 \(qid 'y'\): the positive image cannot be read"):
        collator([_row("y", query_text="q", pos_image=pathlib.Path(tmp_path / "missing.png"))])


def test_check_dataset_names_missing_columns_and_short_rows(processor) -> None:
    rows = datasets.Dataset.from_list([_row("a", query_text="q", pos_text="p", neg_text="n"),
                                       _row("b", query_text="q", pos_text="p")])
    with pytest.raises(ValueError, match=r"hard_negatives=1 but row 1 \(qid 'b'\) of training dataset provides 0"):
        RetrievalCollator(processor, hard_negatives=1).check_dataset(rows)
    RetrievalCollator(processor, hard_negatives=1).check_dataset(rows.select([0]))
    with pytest.raises(ValueError, match=r"provides 1 hard negative"):
        RetrievalCollator(processor, hard_negatives=2).check_dataset(rows.select([0]))
    with pytest.raises(ValueError, match=r"missing the columns \['pos_text', 'pos_image'\]"):
        RetrievalCollator(processor).check_dataset(rows.remove_columns(["pos_text", "pos_image"]))
    assert required_columns(0) == ["query_text", "query_image", "pos_text", "pos_image"]
