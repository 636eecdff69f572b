"""Property-based fuzzing: only the documented errors escape.

Four targets, each a Hypothesis strategy plus a ``check_*`` function that states the contract:

* ``load_image`` on random bytes, truncated / bit-flipped PNG, JPEG, GIF, WebP, ... files, PIL images of
  every mode and size (0 included), ``data:`` URIs and ``{"bytes", "path"}`` dicts -> an RGB image
  within ``max_pixels``, or ``ValueError`` / ``FileNotFoundError``;
* the processor's input handling (``split_item``, ``process_items``, ``__call__``) on random nested
  Python values and plausible items (texts with lone surrogates included) -> a consistent
  ``BatchFeature``, or ``ValueError`` / ``FileNotFoundError``;
* the M-BEIR readers (``read_jsonl_table``, ``read_queries``, ``read_qrels``) on random and mutated
  lines -> a table, or ``ValueError`` / ``FileNotFoundError`` naming the file;
* the ranking metrics on random rankings, references, grades and cutoffs -> values in [0, 1], or
  ``ValueError``; plus properties (recall@k monotone in k, a perfect ranking scores 1, MRR@1 is the
  precision of the top hit).

The tests here are short deterministic runs (``derandomize=True``); ``benchmarks/fuzz.py`` runs the
same targets for longer. ``@example`` cases are the failures the fuzzing found, kept as regression
tests (the M-BEIR ones as ``test_mbeir_errors_name_the_file`` / ``test_mbeir_null_line_does_not_crash``).
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import pathlib
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import event as hypothesis_event
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from PIL import Image

from eval.metrics import METRIC_NAMES, compute_ranking_metrics, query_metrics
from modeling_unica.processing_unica import load_image, split_item

Image.init()
MODES = ["1", "L", "P", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV", "I", "F",
         "I;16", "I;16B", "I;16L", "LA", "La", "PA"]
FORMATS = [name for name in ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF", "ICO", "PPM", "TGA", "PCX", "QOI", "SGI")
           if name in Image.SAVE]
DOCUMENTED_IMAGE_ERRORS = (ValueError, FileNotFoundError)


def event(label: str) -> None:
    """Count an outcome in Hypothesis' statistics (``--hypothesis-show-statistics``); no-op outside ``@given``."""
    try:
        hypothesis_event(label)
    except InvalidArgument:
        pass


def fuzz_settings(max_examples: int) -> settings:
    """Short, reproducible runs for the test suite."""
    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --------------------------------------------------------------------------------------------- images


@st.composite
def pil_images(draw, max_side: int = 20, min_side: int = 0) -> Image.Image:
    """A PIL image of any mode, random content (NaN / inf included for mode F), 0 to ``max_side`` px a side."""
    mode = draw(st.sampled_from(MODES))
    size = (draw(st.integers(min_side, max_side)), draw(st.integers(min_side, max_side)))
    image = Image.new(mode, size)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    image.frombytes(rng.integers(0, 256, len(image.tobytes()), dtype=np.uint8).tobytes())
    if mode == "P" and draw(st.booleans()):
        image.info["transparency"] = draw(st.integers(0, 255))
    return image


@st.composite
def encoded_images(draw) -> bytes:
    """A valid image file (bytes) in one of PIL's writable formats; incompatible modes fall back to RGB."""
    image = draw(pil_images(max_side=24, min_side=1))
    fmt = draw(st.sampled_from(FORMATS))
    try:
        rgb = image.convert("RGB")
    except ValueError:  # e.g. "La"
        rgb = Image.new("RGB", image.size, (200, 30, 30))
    for candidate, candidate_format in ((image, fmt), (rgb, fmt), (rgb, "PNG")):
        buffer = io.BytesIO()
        try:
            candidate.save(buffer, format=candidate_format)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        return buffer.getvalue()
    raise AssertionError("an RGB image could not be saved as PNG")


@st.composite
def mutated(draw, data: bytes) -> bytes:
    """``data`` truncated, with flipped bytes, with a slice removed, or with random bytes spliced in."""
    how = draw(st.sampled_from(["truncate", "flip", "delete", "splice"]))
    if not data:
        return data
    if how == "truncate":
        return data[: draw(st.integers(0, len(data) - 1))]
    array = bytearray(data)
    if how == "flip":
        for _ in range(draw(st.integers(1, 8))):
            position = draw(st.integers(0, len(array) - 1))
            array[position] ^= draw(st.integers(1, 255))
        return bytes(array)
    start = draw(st.integers(0, len(array) - 1))
    end = draw(st.integers(start, min(len(array), start + 64)))
    if how == "delete":
        return bytes(array[:start] + array[end:])
    return bytes(array[:start]) + draw(st.binary(min_size=1, max_size=32)) + bytes(array[end:])


def _data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


image_bytes = st.one_of(st.binary(max_size=200), encoded_images(), encoded_images().flatmap(mutated))
# (kind, payload): "path" payloads are written to a file by the check, the others are passed as they are.
image_sources = st.one_of(
    st.tuples(st.just("value"), image_bytes),
    st.tuples(st.just("value"), pil_images()),
    st.tuples(st.just("path"), image_bytes),
    st.tuples(st.just("dict_path"), image_bytes),
    st.tuples(st.just("value"), st.builds(lambda data: {"bytes": data, "path": None}, image_bytes)),
    st.tuples(st.just("value"), st.builds(_data_uri, image_bytes)),
    st.tuples(st.just("value"), st.builds(lambda prefix, rest: prefix + rest,
                                          st.sampled_from(["data:", "data:image/png;base64,", "DATA:image/gif,",
                                                           "data:text/plain;base64,", "data:image/;base64"]),
                                          st.text(max_size=40))),
    st.tuples(st.just("value"), st.one_of(st.none(), st.integers(), st.text(max_size=20),
                                          st.dictionaries(st.sampled_from(["bytes", "path", "x"]),
                                                          st.one_of(st.none(), st.integers(), st.text(max_size=8)),
                                                          max_size=2))),
)
max_pixels_values = st.one_of(st.just(89_478_485), st.integers(1, 600))


def check_load_image(kind: str, payload, max_pixels: int) -> None:
    """``load_image`` returns an RGB image within ``max_pixels`` or raises ValueError / FileNotFoundError."""
    with tempfile.TemporaryDirectory() as folder:
        source = payload
        if kind in ("path", "dict_path"):
            path = os.path.join(folder, "image.bin")
            with open(path, "wb") as handle:
                handle.write(payload)
            source = path if kind == "path" else {"bytes": None, "path": path}
        try:
            image = load_image(source, max_pixels=max_pixels)
        except DOCUMENTED_IMAGE_ERRORS as error:
            event(f"load_image: {type(error).__name__}")
            return
    event("load_image: image")
    assert isinstance(image, Image.Image) and image.mode == "RGB"
    assert 0 < image.width * image.height <= max_pixels


ICO_WITH_TRUNCATED_PNG = (b"\x00\x00\x01\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x16\x00\x00\x00"
                          b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x01\x00\x00\x00\x00"
                          b"7n\xf9$\x00\x00\x00\x00IDAT")


@pytest.mark.filterwarnings("ignore::UserWarning:PIL.TiffImagePlugin")  # PIL's notes on the corrupt files
@fuzz_settings(600)
@given(image_sources, max_pixels_values)
# Found by this test on the previous load_image (OSError escaped from Image.open; an empty image was accepted):
@example(("value", ICO_WITH_TRUNCATED_PNG), 89_478_485)  # OSError: image file is truncated
@example(("value", b"\x00\x00\x01\x00\x01" + bytes(13) + b"\x04\x00\x00\x00"), 89_478_485)  # Unsupported BMP header
@example(("value", b"\x00\x00\x01\x00\x01" + bytes(17)), 89_478_485)  # OSError: Truncated File Read
@example(("value", b"RIFF\x00\x00\x00\x00WEBPVP8 "), 89_478_485)  # OSError: could not create decoder object
@example(("value", Image.new("1", (0, 0))), 89_478_485)  # returned a 0x0 image
def test_load_image_raises_only_documented_errors(source, max_pixels):
    check_load_image(*source, max_pixels)


# --------------------------------------------------------------------------------------------- processor

_small_png = io.BytesIO()
Image.new("RGB", (6, 6), (200, 30, 30)).save(_small_png, format="PNG")
SMALL_PNG = _small_png.getvalue()

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=16), st.binary(max_size=24),
    st.sampled_from(["", " ", "\t\n ", "a red circle", "data:", "data:image/png;base64,", _data_uri(SMALL_PNG),
                     SMALL_PNG, b"", bytearray(SMALL_PNG), memoryview(SMALL_PNG)]),
    pil_images(max_side=6),
    st.builds(pathlib.PurePosixPath, st.text(max_size=8)),
)
keys = st.one_of(st.sampled_from(["text", "image", "bytes", "path"]), st.text(max_size=4))
nested_values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.tuples(children, children),
                               st.dictionaries(keys, children, max_size=3)),
    max_leaves=8,
)
# Texts with lone surrogates: what json.loads gives for '"\\ud800"' (M-BEIR files, web APIs).
surrogate_texts = st.text(st.characters(categories=["Cs", "Ll", "Zs"]), min_size=1, max_size=6)
plausible_items = st.one_of(
    st.text(min_size=1, max_size=24), surrogate_texts, st.sampled_from(["a red circle", "  padded  ", "ünïcödé ✓", "x" * 600]),
    pil_images(max_side=12, min_side=1), st.just(SMALL_PNG), st.just(_data_uri(SMALL_PNG)),
    st.builds(lambda text, image: {"text": text, "image": image},
              st.one_of(st.none(), st.text(max_size=12)), st.one_of(pil_images(max_side=8, min_side=1),
                                                                    st.just(SMALL_PNG))),
    st.builds(lambda text: {"text": text}, st.text(max_size=12)),
)
image_items = st.one_of(pil_images(max_side=12, min_side=1), st.just(SMALL_PNG), st.just(_data_uri(SMALL_PNG)),
                        st.just(bytearray(SMALL_PNG)), st.just(pathlib.Path("/nonexistent/x.png")))
batch_values = st.one_of(nested_values, st.lists(plausible_items, min_size=1, max_size=5),
                         st.lists(image_items, min_size=1, max_size=4),
                         st.lists(st.one_of(plausible_items, nested_values), max_size=4))
PROCESSOR_ERRORS = (ValueError, FileNotFoundError)


def _check_batch(batch, items: int | None) -> None:
    ids, mask = batch["input_ids"], batch["image_mask"]
    assert ids.ndim == 2 and batch["attention_mask"].shape == ids.shape
    assert mask.shape == (ids.shape[0],) and (items is None or ids.shape[0] == items)
    images = int(mask.sum())
    assert ("pixel_values" in batch) == (images > 0)
    if images:
        assert batch["pixel_values"].shape[0] == images


def check_processor(processor, value, other, mode: str) -> None:
    """``split_item`` / ``process_items`` / ``__call__`` give a consistent batch or a documented error."""
    if mode == "split_item":
        try:
            text, image = split_item(value, 7)
        except ValueError as error:
            event("split_item: ValueError")
            assert "input 7" in str(error)
            return
        event("split_item: item")
        assert image is not None or (isinstance(text, str) and text.strip())
        return
    try:
        if mode == "process_items":
            batch = processor.process_items(value)
            items = len(value) if isinstance(value, (list, tuple)) else None
        elif mode == "call_text":
            batch, items = processor(text=value), None
        elif mode == "call_images":
            batch, items = processor(images=value), None
        else:
            batch, items = processor(text=value, images=other), None
    except PROCESSOR_ERRORS as error:
        event(f"{mode}: {type(error).__name__}")
        return
    event(f"{mode}: batch")
    _check_batch(batch, items)


processor_cases = st.tuples(
    batch_values, batch_values,
    st.sampled_from(["split_item", "process_items", "call_text", "call_images", "call_both"]),
)


@fuzz_settings(500)
@given(processor_cases)
# Found by this test on the previous processor: "" accepted as a text-only item, TypeError escaping.
@example(("", None, "split_item"))
@example((False, None, "call_text"))  # TypeError: 'bool' object is not iterable
@example((None, None, "process_items"))  # TypeError: 'NoneType' object is not iterable
@example(([Image.new("RGB", (0, 3))], None, "process_items"))  # an empty image: now refused
@example((["\ud800"], [], "process_items"))  # found: the tokenizer's TypeError on a lone surrogate escaped
def test_processor_raises_only_documented_errors(tiny_pair, case):
    check_processor(tiny_pair[1], *case)


# --------------------------------------------------------------------------------------------- M-BEIR

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                         st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=10))
json_values = st.recursive(json_scalars, lambda children: st.one_of(
    st.lists(children, max_size=3), st.dictionaries(st.text(max_size=5), children, max_size=3)), max_leaves=6)
plausible = {
    "qid": st.builds("{}:{}".format, st.integers(0, 12), st.integers(0, 50)),
    "did": st.builds("{}:{}".format, st.integers(0, 12), st.integers(0, 50)),
    "query_txt": st.text(max_size=12),
    "txt": st.text(max_size=12),
    "query_img_path": st.text(max_size=12),
    "img_path": st.text(max_size=12),
    "query_modality": st.sampled_from(["text", "image", "image,text", "audio"]),
    "modality": st.sampled_from(["text", "image", "image,text", "audio"]),
    "pos_cand_list": st.lists(st.builds("{}:{}".format, st.integers(0, 12), st.integers(0, 50)), max_size=3),
    "neg_cand_list": st.lists(st.text(max_size=6), max_size=2),
    "task_id": st.integers(-1, 9),
}
QUERY_FIELDS = ("qid", "query_txt", "query_img_path", "query_modality", "pos_cand_list", "neg_cand_list", "task_id")
CANDIDATE_FIELDS = ("did", "txt", "img_path", "modality")
records = st.one_of(
    # Any subset of the fields, each plausible or any JSON value, plus unknown fields.
    st.fixed_dictionaries(
        {}, optional={name: st.one_of(strategy, strategy, json_values) for name, strategy in plausible.items()}
    ).flatmap(lambda record: st.dictionaries(st.text(max_size=6), json_values, max_size=2).map(
        lambda extra: {**extra, **record})),
    # Complete, plausible query and candidate records (they reach the checks after parsing).
    st.fixed_dictionaries({name: plausible[name] for name in QUERY_FIELDS}),
    st.fixed_dictionaries({name: plausible[name] for name in CANDIDATE_FIELDS}),
)


@st.composite
def jsonl_lines(draw) -> bytes:
    """A JSONL line: a record, a mutated record, or something else (``null`` lines included: pyarrow 26's
    JSON reader segfaults on one at the start of a block, which the reader must catch first)."""
    kind = draw(st.sampled_from(["record", "record", "record", "record", "mutated", "other"]))
    if kind == "other":
        return draw(st.sampled_from([b"", b"   ", b"[1, 2]", b"42", b'"qid"', b"[null]", b"{", b'{"qid": NaN}',
                                     b'{"qid": "1:1", "qid": "1:2"}', b"\xff\xfe{}", b'{"qid": "\xe9"}',
                                     b"null", b"  null", b"null {}", b"{} null", b'{"qid": "1:1"}{"qid": "1:2"}',
                                     b"\xef\xbb\xbf{}", b"\tnull\r"]))
    line = json.dumps(draw(records), ensure_ascii=draw(st.booleans())).encode("utf-8")
    return draw(mutated(line)) if kind == "mutated" else line


qrels_tokens = st.one_of(st.sampled_from(["0", "1", "-1", "--5", "\u00b2", "\u0663", "1:2", "x", "9" * 30]),
                         st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=4))
qrels_lines = st.one_of(
    st.lists(qrels_tokens, min_size=0, max_size=6).map(" ".join),
    st.tuples(st.just("1:1"), st.just("0"), st.just("2:3"), qrels_tokens, qrels_tokens).map(" ".join),
)


@st.composite
def mbeir_files(draw) -> tuple[str, bytes]:
    """(reader, file content): random and mutated JSONL or qrels lines, "²" and invalid UTF-8 included."""
    reader = draw(st.sampled_from(["queries_table", "candidates_table", "read_queries", "read_queries_pool",
                                   "read_qrels"]))
    if reader == "read_qrels":
        lines = [line.encode("utf-8", "surrogatepass") for line in draw(st.lists(qrels_lines, max_size=5))]
        if draw(st.booleans()):
            lines.append(draw(st.binary(max_size=12)))
    else:
        lines = draw(st.lists(jsonl_lines(), max_size=5))
    separator = draw(st.sampled_from([b"\n", b"\r\n"]))
    content = separator.join(lines) + draw(st.sampled_from([b"", b"\n"]))
    return reader, content


def check_mbeir(reader: str, content: bytes) -> None:
    """The M-BEIR readers return their result or raise ValueError / FileNotFoundError naming the file."""
    import pyarrow as pa

    from dataset_builders import mbeir

    with tempfile.TemporaryDirectory() as folder:
        path = pathlib.Path(folder) / "mbeir_fuzz_task1_test.jsonl"
        path.write_bytes(content)
        try:
            if reader == "queries_table":
                result = mbeir.read_jsonl_table(path, mbeir.QUERY_SCHEMA, required=("qid",))
            elif reader == "candidates_table":
                result = mbeir.read_jsonl_table(path, mbeir.CANDIDATE_SCHEMA, required=("did",))
            elif reader == "read_queries":
                result = mbeir.read_queries([path])
            elif reader == "read_queries_pool":
                result = mbeir.read_queries([path], pool_modalities={"1:1": "text", "2:3": "image"})
            else:
                result = mbeir.read_qrels(path)
        except (ValueError, FileNotFoundError) as error:
            event(f"{reader}: {type(error).__name__}")
            assert str(path) in str(error), f"{type(error).__name__} does not name the file: {error}"
            return
    event(f"{reader}: result")
    if reader == "read_qrels":
        assert all(isinstance(row[2], int) and isinstance(row[3], int) for row in result)
    else:
        assert isinstance(result, pa.Table)


@fuzz_settings(400)
@given(mbeir_files())
def test_mbeir_readers_raise_only_documented_errors(case):
    check_mbeir(*case)


# Found by the M-BEIR fuzzing (ValueError / UnicodeDecodeError without the file name, and a segfault); fixed
# in dataset_builders since (commit "M-BEIR readers (found by fuzzing)"), kept as regression tests.
@pytest.mark.parametrize(
    ("reader", "content"),
    [
        ("queries_table", b"\x80{}"),  # UnicodeDecodeError from the line-by-line re-scan
        ("read_qrels", b"1:1 0 \xff 1 1\n"),  # UnicodeDecodeError
        ("read_qrels", "1:1 0 2:3 1 \u00b2\n".encode()),  # "²".isdigit() but int("²") fails
        ("read_qrels", b"1:1 0 2:3 --5 1\n"),  # lstrip("-") accepted "--5"
        ("read_queries", json.dumps({"qid": "\u00b2:1", "query_modality": "text", "pos_cand_list": ["1:1"],
                                     "task_id": 1}).encode()),  # source_name: int("²")
    ],
)
def test_mbeir_errors_name_the_file(reader, content):
    check_mbeir(reader, content)


@pytest.mark.parametrize(
    ("reader", "content"),
    [
        ("queries_table", b'{"\x80qid": "0:0"}\n'),  # required field 'qid' missing -> _line_of_row
        ("candidates_table", b'{"qid": "\xe9"}'),
        ("read_queries", b'{"qid": "1:1", "x": "\xff", "query_modality": "text", "pos_cand_list": []}\n'),
    ],
)
def test_mbeir_invalid_utf8_in_an_ignored_field(reader, content):
    check_mbeir(reader, content)


@pytest.mark.parametrize("content", [b'null\n{"qid": "1:1"}\n', b'{"qid": "1:1"}\n  null\n'])
def test_mbeir_null_line_does_not_crash(tmp_path, content):
    """In a subprocess: pyarrow's JSON reader segfaults on a ``null`` line at the start of a block
    (apache/arrow#47409), which would kill the test run instead of failing it."""
    import subprocess
    import sys

    path = tmp_path / "queries.jsonl"
    path.write_bytes(content)
    code = ("import sys; from dataset_builders import mbeir\n"
            "try:\n    mbeir.read_jsonl_table(sys.argv[1], mbeir.QUERY_SCHEMA, ['qid'])\n"
            "except ValueError as error:\n    print(error)\n")
    repo = pathlib.Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code, str(path)], cwd=repo, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, f"the reader crashed the process (exit status {done.returncode})"
    assert str(path) in done.stdout


# --------------------------------------------------------------------------------------------- metrics

doc_ids = st.one_of(st.sampled_from([f"d{i}" for i in range(8)]), st.integers(0, 4))
grade_values = st.one_of(st.floats(), st.integers(-3, 3), st.sampled_from([None, "1", "2.5", "x", True, "nan"]))


def _sometimes(draw, valid, invalid, rate: int = 8):
    """Draw from ``invalid`` about once in ``rate`` cases, else from ``valid``."""
    return draw(invalid) if draw(st.integers(0, rate - 1)) == 0 else draw(valid)


@st.composite
def metric_cases(draw) -> dict:
    """Rankings (duplicates possible), references (ids not retrieved, empty lists), grades (NaN, inf, huge,
    strings, None), cutoffs, metric names and policies; each part is occasionally invalid."""
    queries = draw(st.integers(0, 4))
    references = [draw(st.lists(doc_ids, max_size=5)) for _ in range(queries)]
    case = {
        "predictions": [draw(st.lists(doc_ids, min_size=1, max_size=8, unique=True)) for _ in range(queries)],
        "references": references,
        "k_values": _sometimes(draw, st.lists(st.integers(1, 12), min_size=1, max_size=4), st.one_of(
            st.lists(st.one_of(st.integers(-2, 12), st.sampled_from([True, 1.0, "3", None])), max_size=4),
            st.integers(-1, 12), st.sampled_from([None, 1.5, "5"]))),
        "metrics": _sometimes(draw, st.one_of(st.none(), st.lists(st.sampled_from(METRIC_NAMES), min_size=1,
                                                                  max_size=3)),
                              st.one_of(st.sampled_from(["ndcg", "bogus", 5]),
                                        st.lists(st.sampled_from([*METRIC_NAMES, "bogus"]), max_size=3))),
        "no_relevant": _sometimes(draw, st.sampled_from(["skip", "skip", "zero"]), st.sampled_from(["error", "bogus"])),
        "return_per_query": True,
    }
    if queries and draw(st.integers(0, 3)) == 0:  # rankings with duplicates or empty ones
        case["predictions"][draw(st.integers(0, queries - 1))] = draw(st.lists(doc_ids, max_size=8))
    if draw(st.booleans()):
        valid_grades = st.one_of(st.floats(-2, 10), st.integers(-3, 3), st.floats(1e300, 1e308))
        elements = st.one_of(valid_grades, grade_values) if draw(st.integers(0, 4)) == 0 else valid_grades
        case["reference_grades"] = [
            draw(st.lists(elements, min_size=len(ids), max_size=len(ids) + _sometimes(draw, st.just(0), st.just(1))))
            for ids in references
        ]
    if draw(st.integers(0, 19)) == 0:  # structurally wrong input
        key = draw(st.sampled_from(["predictions", "references", "reference_grades"]))
        case[key] = draw(st.one_of(st.none(), st.integers(), st.text(max_size=3),
                                   st.lists(st.one_of(st.none(), st.integers(), st.text(max_size=3),
                                                      st.lists(st.lists(st.integers(), max_size=1), max_size=2)),
                                            max_size=3)))
    return case


def _in_unit_interval(value) -> bool:
    return isinstance(value, float) and 0.0 <= value <= 1.0


def check_metrics(case: dict) -> None:
    """Means and per-query values are in [0, 1] (NaN only where a query / every query was skipped)."""
    try:
        result = compute_ranking_metrics(**case)
    except ValueError:
        event("metrics: ValueError")
        return
    event("metrics: result")
    names = [name for name in result if "@" in name]
    assert names and result["num_queries"] == len(case["predictions"])
    all_skipped = result["num_queries_without_relevant"] == result["num_queries"] and case["no_relevant"] == "skip"
    for name in names:
        value = result[name]
        assert _in_unit_interval(value) or (all_skipped and math.isnan(value)), (name, value)
        for query_value in result["per_query"][name]:
            assert _in_unit_interval(query_value) or math.isnan(query_value), (name, query_value)


def _case(**overrides) -> dict:
    case = {"predictions": [["a", "b"]], "references": [["a"]], "k_values": [1, 3], "metrics": None,
            "no_relevant": "skip", "return_per_query": True}
    return {**case, **overrides}


@fuzz_settings(500)
@given(metric_cases())
# Found by this test (each escaped as IndexError / TypeError or gave NaN before the fix):
@example(_case(predictions=[["d0"], []], references=[[], []], k_values=1, metrics=[]))
@example(_case(predictions=[[]], references=[[]], reference_grades=0))
@example(_case(predictions=None, references=[]))
@example(_case(references=[["a", "b"]], reference_grades=[[math.inf, 1.0]]))  # ndcg inf / inf
@example(_case(predictions=[["a", "b", "c"]], references=[["a", "b", "c"]], reference_grades=[[1e308] * 3]))
@example(_case(reference_grades=[[None]]))
@example(_case(predictions=[[["x"]]]))  # an unhashable id
@example(_case(references=[[["x"]]]))
@example(_case(k_values=1.5))
@example(_case(metrics=5))
def test_metrics_values_are_in_unit_interval_or_value_error(case):
    check_metrics(case)


@st.composite
def valid_queries(draw) -> tuple[list, list, list | None]:
    """A ranking without duplicates, a non-empty reference, and (sometimes) positive finite grades."""
    relevant = draw(st.lists(doc_ids, min_size=1, max_size=5, unique=True))
    ranking = draw(st.lists(doc_ids, max_size=10, unique=True))
    grades = draw(st.one_of(st.none(), st.lists(st.floats(0.01, 100), min_size=len(relevant),
                                                max_size=len(relevant))))
    return ranking, relevant, grades


def check_metric_properties(ranking: list, relevant: list, grades: list | None) -> None:
    """recall@k / hit@k / hits non-decreasing in k; MRR@1 == precision@1 == hit@1; perfect ranking scores 1."""
    k_values = list(range(1, 13))
    try:
        values = query_metrics(ranking, relevant, k_values, grades=grades)
    except ValueError:
        assert not ranking, "only an empty ranking may be refused here"
        return
    for name in ("recall", "hit", "map", "mrr"):
        series = [values[f"{name}@{k}"] for k in k_values]
        assert all(a <= b for a, b in zip(series, series[1:])), (name, series)
    hits = [values[f"precision@{k}"] * k for k in k_values]
    assert all(a <= b + 1e-9 for a, b in zip(hits, hits[1:]))
    assert values["mrr@1"] == values["precision@1"] == values["hit@1"]
    # A perfect ranking: the relevant ids by grade (best first), then the others.
    order = sorted(range(len(relevant)), key=lambda i: -(grades[i] if grades else 1.0))
    perfect = [relevant[i] for i in order] + [doc for doc in ranking if doc not in relevant]
    best = query_metrics(perfect, relevant, k_values, grades=grades)
    count = len(relevant)
    for k in k_values:
        assert best[f"hit@{k}"] == best[f"mrr@{k}"] == 1.0
        assert best[f"ndcg@{k}"] == pytest.approx(1.0, abs=1e-12)
        assert best[f"recall@{k}"] == pytest.approx(min(k, count) / count)
        assert best[f"map@{k}"] == pytest.approx(min(k, count) / count)
        assert best[f"precision@{k}"] == pytest.approx(min(k, count) / k)
        assert values[f"ndcg@{k}"] <= best[f"ndcg@{k}"] + 1e-12


@fuzz_settings(300)
@given(valid_queries())
def test_metric_properties(query):
    check_metric_properties(*query)


metrics_agree_cases = st.tuples(st.lists(doc_ids, min_size=1, max_size=8), st.lists(doc_ids, max_size=4),
                                st.lists(st.integers(1, 9), min_size=1, max_size=3))


def check_metrics_agree(ranking: list, relevant: list, k_values: list) -> None:
    """``query_metrics`` (public) follows the same conventions as ``compute_ranking_metrics``."""
    try:
        mean = compute_ranking_metrics([ranking], [relevant], k_values=k_values, return_per_query=True)
    except ValueError as error:
        with pytest.raises(ValueError):
            query_metrics(ranking, relevant, k_values)
        assert "more than once" in str(error)
        return
    single = query_metrics(ranking, relevant, k_values)
    for name, value in single.items():
        assert value == mean["per_query"][name][0] or (math.isnan(value) and math.isnan(mean["per_query"][name][0]))


@fuzz_settings(200)
@given(metrics_agree_cases)
@example((["d0", "d0"], [], [1]))  # found: query_metrics scored duplicates (recall@2 = 2.0 for ["a", "a"] vs ["a"])
@example((["a", "a"], ["a"], [2]))
def test_query_metrics_and_compute_agree(case):
    check_metrics_agree(*case)
