"""UniCAProcessor input policies: empty texts, images above PIL's own pixel limit, and ``data:`` URIs.

The large-image tests never decode: they use hand-written PNG files whose header claims a huge size
(a few KB on disk) and replace ``ImageFile.load`` with a stub, so they check which limit applies and
that decoding is (or is not) attempted, without allocating hundreds of megabytes.
"""

from __future__ import annotations

import base64
import io
import struct
import warnings
import zlib

import PIL
import pytest
import torch
from conftest import make_image
from PIL import Image, ImageFile

from modeling_unica.processing_unica import load_image, split_item

PIL_LIMIT = Image.MAX_IMAGE_PIXELS  # 89_478_485 unless something changed it (the tests check it did not)


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _huge_bilevel_png(width: int, height: int) -> bytes:
    """A valid 1-bit greyscale PNG of ``width`` x ``height`` black pixels, compressed row by row (a few KB)."""
    compressor = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)  # filter byte 0 + packed bits
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


class DecodeAttempted(OSError):
    """Raised by the ``ImageFile.load`` stub instead of decoding."""


@pytest.fixture
def no_decoding(monkeypatch):
    """Replace ``ImageFile.load`` by a stub that records the size and PIL's limit, then raises."""
    calls: list[tuple[tuple[int, int], int | None]] = []

    def fake_load(self):
        calls.append((self.size, Image.MAX_IMAGE_PIXELS))
        raise DecodeAttempted("decoding skipped by the test")

    monkeypatch.setattr(ImageFile.ImageFile, "load", fake_load)
    return calls


# ------------------------------------------------------------------------------------------- empty text


@pytest.mark.parametrize("item", ["", " ", "  \n\t ", {"text": ""}, {"text": "   "}, {"text": "\n", "image": None}])
def test_split_item_refuses_blank_text_without_image(item):
    with pytest.raises(ValueError, match="input 3: .*empty"):
        split_item(item, 3)


@pytest.mark.parametrize("text", [None, "", "  "])
def test_image_items_may_have_empty_text(text):
    image = make_image(0, size=8)
    assert split_item({"text": text, "image": image}, 0) == (text, image)


@pytest.mark.parametrize(
    ("call", "index"),
    [
        (lambda p: p.process_items(["ok", ""]), 1),
        (lambda p: p.process_items(["ok", "fine", "   "]), 2),
        (lambda p: p.process_items([{"text": " \t"}]), 0),
        (lambda p: p(text=["ok", "  "]), 1),
        (lambda p: p(text=""), 0),
        (lambda p: p(text=["ok", " "], images=[None, None]), 1),
        (lambda p: p(text=["ok", None]), 1),
    ],
)
def test_processor_refuses_blank_text_everywhere(tiny_pair, call, index):
    _, processor = tiny_pair
    with pytest.raises(ValueError, match=f"input {index}: "):
        call(processor)


@pytest.mark.parametrize(
    "call",
    [
        lambda p: p.process_items(["ok", "caf\udce9"]),  # json.loads('"caf\\udce9"') gives such strings
        lambda p: p(text=["ok", "\ud800 text"]),
        lambda p: p.process_items(["ok", {"text": "\udfff", "image": make_image(0, size=8)}]),
    ],
)
def test_texts_that_are_not_valid_unicode_are_refused_by_index(tiny_pair, call):
    _, processor = tiny_pair
    with pytest.raises(ValueError, match="input 1: .*lone surrogate"):
        call(processor)


def test_image_only_items_keep_the_empty_text(tiny_pair):
    _, processor = tiny_pair
    image = make_image(1)
    a = processor(text=["", "  ", "a red circle"], images=[image, image, image])
    b = processor(images=[image, image, image])
    assert a["image_mask"].tolist() == [True, True, True]
    torch.testing.assert_close(a["input_ids"][:2, :2], b["input_ids"][:2])
    assert a["attention_mask"][:2].sum(dim=1).tolist() == [2, 2]  # [CLS] [SEP]


# ------------------------------------------------------------------------------------------- pixel limits


def test_over_pils_error_limit_is_refused_by_our_limit_without_decoding(no_decoding):
    data = _huge_bilevel_png(14_000, 12_800)  # 179.2 M pixels: over PIL's 2x error threshold (178.96 M)
    assert len(data) < 100_000
    for limit in (None, 150_000_000):  # the default (PIL's value) and one between PIL's limit and the size
        kwargs = {} if limit is None else {"max_pixels": limit}
        shown = f"{limit or PIL_LIMIT}"
        with pytest.raises(ValueError, match=f"14000x12800 = 179200000 pixels, over the limit of {shown}"):
            load_image(data, **kwargs)
    assert no_decoding == []
    assert Image.MAX_IMAGE_PIXELS == PIL_LIMIT


@pytest.mark.parametrize(("width", "height"), [(12_000, 8_000), (14_000, 12_800)])  # warning range, error range
def test_max_pixels_above_pils_limit_is_the_only_limit(tmp_path, no_decoding, width, height):
    path = tmp_path / "huge.png"
    path.write_bytes(_huge_bilevel_png(width, height))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for source in (path, str(path), path.read_bytes(), {"bytes": None, "path": str(path)}):
            with pytest.raises(ValueError, match="decoding skipped by the test"):
                load_image(source, max_pixels=200_000_000)
    # Decoding was attempted at the full size, with PIL's process-wide limit untouched even meanwhile.
    assert no_decoding == [((width, height), PIL_LIMIT)] * 4
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert Image.MAX_IMAGE_PIXELS == PIL_LIMIT


def test_processor_max_image_pixels_is_passed_through(tiny_pair, no_decoding):
    _, processor = tiny_pair
    data = _huge_bilevel_png(12_000, 8_000)
    with pytest.raises(ValueError, match="input 1: .*over the limit of 89478485"):
        processor.process_items(["ok", data])
    assert no_decoding == []
    processor.max_image_pixels = 100_000_000
    try:
        with pytest.raises(ValueError, match="input 1: .*decoding skipped by the test"):
            processor.process_items(["ok", data])
    finally:
        processor.max_image_pixels = PIL_LIMIT
    assert no_decoding == [((12_000, 8_000), PIL_LIMIT)]


def test_formats_whose_plugin_checks_pils_limit_are_refused_clearly(no_decoding):
    """WebP's plugin checks PIL's limit itself while reading the header (Pillow >= 13): no per-call way around it.

    Pillow 12 (what gradio's `pillow<13` pin installs with the `app` / `dev` extras) reads the header without that
    check: then our own limit applies, as for every other format, and an image under it goes on to decoding."""
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), "red").save(buffer, format="WEBP", lossless=True)
    data = bytearray(buffer.getvalue())
    start = data.index(b"VP8L") + 9  # after the chunk header and the 0x2f signature: 14-bit width-1, height-1
    bits = int.from_bytes(data[start : start + 4], "little") & ~((1 << 28) - 1)
    data[start : start + 4] = (bits | (14_000 - 1) | ((12_800 - 1) << 14)).to_bytes(4, "little")
    if int(PIL.__version__.split(".")[0]) >= 13:
        with pytest.raises(ValueError, match="over PIL's own size limit for its format"):
            load_image(bytes(data), max_pixels=200_000_000)
        assert no_decoding == [] and Image.MAX_IMAGE_PIXELS == PIL_LIMIT
    else:
        with pytest.raises(ValueError, match="decoding skipped by the test"):
            load_image(bytes(data), max_pixels=200_000_000)
        assert no_decoding == [((14_000, 12_800), PIL_LIMIT)] and Image.MAX_IMAGE_PIXELS == PIL_LIMIT
        with pytest.raises(ValueError, match="over the limit of 100000000"):
            load_image(bytes(data), max_pixels=100_000_000)


# ------------------------------------------------------------------------------------------- data: URIs


def _data_uri(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"


def test_data_uri_images_are_decoded(tiny_pair):
    _, processor = tiny_pair
    image = make_image(5)
    data = _png_bytes(image)
    uri = _data_uri(data)
    assert list(load_image(uri).getdata()) == list(load_image(data).getdata())
    # Media type parameters, upper-case scheme and line-wrapped base64 (as in e-mail) are fine.
    payload = uri.split(",", 1)[1]
    lines = [payload[start : start + 76] for start in range(0, len(payload), 76)]
    wrapped = "DATA:image/png;name=scene.png;base64," + "\n".join(lines)
    assert load_image(wrapped).size == image.size
    a = processor(images=[uri, data])
    b = processor.process_items([{"text": "a scene", "image": uri}, {"image": data}])
    torch.testing.assert_close(a["pixel_values"][0], a["pixel_values"][1])
    torch.testing.assert_close(a["pixel_values"], b["pixel_values"])


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("data:image/png;base64,@@@not base64@@@", "malformed data: URI.*base64"),
        ("data:image/png;base64,aGVsbG8", "malformed data: URI.*base64"),  # bad padding
        ("data:image/png;base64,", "malformed data: URI.*no data"),
        ("data:image/png;base64", "malformed data: URI.*','"),
        ("data:image/png,%89PNG", "only base64"),
        ("data:text/plain;base64,aGVsbG8=", "media type 'text/plain'.*not an image"),
        ("data:;base64,aGVsbG8=", "media type ''.*not an image"),
        ("data:image/png;base64,aGVsbG8=", "not an image file PIL can read"),  # valid base64, not an image
    ],
)
def test_malformed_data_uris_are_clear_value_errors(uri, message):
    with pytest.raises(ValueError, match=message):
        load_image(uri)


def test_data_uri_errors_do_not_echo_the_payload(tiny_pair):
    _, processor = tiny_pair
    uri = "data:image/png;base64," + "A" * 40_000  # valid base64 of zero bytes: not an image
    with pytest.raises(ValueError, match="input 0: .*not an image file") as info:
        processor(images=[uri])
    assert len(str(info.value)) < 400
