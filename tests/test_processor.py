"""UniCAProcessor: input kinds, safe image loading and every bad input's error."""

from __future__ import annotations

import io
import logging
import pathlib

import numpy as np
import pytest
import torch
from conftest import make_image
from PIL import Image

from modeling_unica import load_image


def _png_bytes(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def test_all_input_kinds_give_the_same_pixels(tiny_pair, tmp_path):
    _, processor = tiny_pair
    image = make_image(0)
    path = tmp_path / "scene.png"
    image.save(path)
    data = path.read_bytes()
    batch = processor.process_items([image, path, data, {"bytes": data, "path": None}, {"image": str(path)}])
    assert batch["image_mask"].tolist() == [True] * 5
    pixels = batch["pixel_values"]
    for row in range(1, 5):
        torch.testing.assert_close(pixels[row], pixels[0])


def test_parallel_lists_and_dict_items_agree(tiny_pair):
    _, processor = tiny_pair
    image = make_image(1)
    a = processor(text=["a red circle", None, "only text"], images=[image, image, None])
    b = processor.process_items([{"text": "a red circle", "image": image}, image, "only text"])
    for key in ("input_ids", "attention_mask", "pixel_values", "image_mask"):
        torch.testing.assert_close(a[key], b[key])
    assert a["image_mask"].tolist() == [True, True, False]
    assert a["pixel_values"].shape == (2, 3, 32, 32)
    # Image-only items carry the empty text: [CLS] [SEP].
    assert a["input_ids"][1, :2].tolist() == [101, 102] and a["attention_mask"][1].sum() == 2


def test_single_inputs_are_a_batch_of_one(tiny_pair):
    _, processor = tiny_pair
    assert processor(text="a red circle")["input_ids"].shape[0] == 1
    assert processor(images=make_image(2))["pixel_values"].shape[0] == 1


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    loaded = load_image(_png_bytes(image, "JPEG", exif=exif.tobytes()))
    assert loaded.size == (20, 40)


@pytest.mark.parametrize("mode", ["RGBA", "P", "LA", "L", "CMYK", "I;16"])
def test_modes_are_converted_to_rgb(mode):
    if mode == "I;16":
        array = np.full((8, 8), 65535, dtype=np.uint16)
        array[:4] = 0
        image = Image.fromarray(array)
        assert image.mode == "I;16"
    else:
        image = make_image(3, size=8).convert(mode)
    loaded = load_image(image)
    assert loaded.mode == "RGB" and loaded.size == (8, 8)
    if mode == "I;16":
        # 16-bit values are scaled, not clipped: full white stays white, black stays black.
        assert loaded.getpixel((0, 7)) == (255, 255, 255) and loaded.getpixel((0, 0)) == (0, 0, 0)


def test_transparent_pixels_become_white():
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert load_image(image).getpixel((0, 0)) == (255, 255, 255)


def test_decompression_bomb_is_refused_without_changing_pil(tiny_pair):
    _, processor = tiny_pair
    before = Image.MAX_IMAGE_PIXELS
    data = _png_bytes(Image.new("RGB", (200, 200)))
    with pytest.raises(ValueError, match="over the limit of 10000"):
        load_image(data, max_pixels=10_000)
    processor.max_image_pixels = 10_000
    try:
        with pytest.raises(ValueError, match="input 1: .*over the limit"):
            processor.process_items(["ok", data])
    finally:
        processor.max_image_pixels = before
    assert Image.MAX_IMAGE_PIXELS == before


def test_truncated_and_non_image_files_name_the_file(tmp_path):
    data = _png_bytes(make_image(4, size=64))
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.png.*truncated or corrupt"):
        load_image(truncated)
    text_file = tmp_path / "notes.png"
    text_file.write_text("not an image")
    with pytest.raises(ValueError, match="notes.png.*not an image"):
        load_image(text_file)
    with pytest.raises(FileNotFoundError, match="missing.png.*does not exist"):
        load_image(tmp_path / "missing.png")


@pytest.mark.parametrize(
    ("items", "error", "message"),
    [
        ([], ValueError, "empty batch"),
        (["ok", {"text": "a", "caption": "b"}], ValueError, r"input 1: unknown keys \['caption'\]"),
        ([{"text": ""}], ValueError, "input 0: a dict item needs a non-empty 'text' or an 'image'"),
        (["ok", {"foo": 1}], ValueError, "input 1: a dict item needs a 'text' and/or 'image' key"),
        (["ok", "fine", 3.5], ValueError, "input 2: unsupported type float"),
        ([{"text": 7, "image": None}], ValueError, "input 0: 'text' must be a string"),
        ([pathlib.Path("/nonexistent/x.png")], FileNotFoundError, "input 0: image file '/nonexistent/x.png'"),
    ],
)
def test_bad_items(tiny_pair, items, error, message):
    _, processor = tiny_pair
    with pytest.raises(error, match=message):
        processor.process_items(items)


def test_bad_call_arguments(tiny_pair):
    _, processor = tiny_pair
    with pytest.raises(ValueError, match="text has 2 entries but images has 1"):
        processor(text=["a", "b"], images=[make_image(0)])
    with pytest.raises(ValueError, match="input 1: both text and image are empty"):
        processor(text=["a", None], images=[None, None])
    with pytest.raises(ValueError, match="got no inputs"):
        processor()


def test_long_text_is_truncated_with_one_warning(tiny_pair, caplog):
    _, processor = tiny_pair
    processor._warned_truncation = False
    limit = processor.max_text_length
    long_text = "word " * (limit + 50)
    with caplog.at_level(logging.WARNING):
        first = processor(text=[long_text, "short"])
        second = processor(text=[long_text])
    assert first["input_ids"].shape[1] == limit and second["input_ids"].shape[1] == limit
    assert first["input_ids"][0, -1].item() == 102  # still closed by [SEP]
    warnings = [r for r in caplog.records if "truncated to max_text_length" in r.getMessage()]
    assert len(warnings) == 1
