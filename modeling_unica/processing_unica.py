"""UniCAProcessor: tokenizer + image processor, with safe image loading.

Inputs per item may be a text (`str`), an image (`PIL.Image`, `pathlib.Path`, `bytes`, a `datasets.Image`
value such as `{"bytes": ..., "path": ...}`), or a `{"text": ..., "image": ...}` dict. The output batch
holds `input_ids` / `attention_mask` for every item (image-only items get the empty text, VISTA's
convention), `pixel_values` for the items that have an image, and `image_mask` saying which those are.

An item without an image needs a text with something in it: an empty or whitespace-only text alone
would be embedded as the empty text (`[CLS] [SEP]`), the same vector whatever the input, so it is
refused with a `ValueError` naming the input's index (plain strings, dict items and `processor(text=...)`
alike). An image item may have an empty text.

Where an image is expected (`images=`, a dict item's `"image"`), a `str` is a file path or a
`data:image/<type>;base64,<data>` URI; a plain `str` item is always a text.

Text options (`padding`, `truncation`, `max_length`, also inside `text_kwargs` / `common_kwargs`) are
honoured or refused with the reason, never dropped; `images_kwargs` are refused (image preprocessing is
the image processor's saved settings). Images are always preprocessed by the PIL backend of transformers'
image processors, with or without torchvision installed (`IMAGE_PROCESSOR_BACKEND`), or, for a checkpoint
converted from VISTA, by VISTA's own transform reproduced with PIL and numpy (`image_transform="eva_clip"`).

This file is shipped to the Hub as remote code: it imports only torch, transformers, numpy and PIL.
"""

from __future__ import annotations

import base64
import binascii
import inspect
import io
import json
import os
import pathlib
import shutil
import struct
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from transformers import BatchFeature
from transformers.processing_utils import ProcessorMixin
from transformers.utils import logging

logger = logging.get_logger(__name__)

# PIL's own default limit (about 89.5 megapixels): larger images are refused as decompression bombs.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
ITEM_KEYS = {"text", "image"}
# Inputs that are one item (not a list of items) when given where a batch is expected.
SINGLE_VALUE_TYPES = (str, dict, Image.Image, bytes, bytearray, memoryview, pathlib.PurePath)
# transformers picks its torchvision image-processor backend where torchvision is installed and PIL elsewhere;
# the two resize differently, so one checkpoint would embed an image differently from machine to machine.
# UniCA pins the PIL (numpy) backend: it is what checkpoints load with, everywhere.
IMAGE_PROCESSOR_BACKEND = "pil"
# Text options this processor honours (as keywords, or inside `text_kwargs` / `common_kwargs`).
TEXT_OPTIONS = ("padding", "truncation", "max_length")
TRUNCATE = (True, "longest_first", "only_first")  # one text per item: every strategy that applies to it
NO_TRUNCATION = (False, "do_not_truncate")
PAD_TO_LONGEST = (True, "longest")
# Image transforms the processor computes itself instead of calling its image processor (whose sizes, mean and std
# it reads): "eva_clip" is EVA-CLIP's (open_clip's) evaluation transform, VISTA's `preprocess_val` (a checkpoint
# converted from VISTA uses it; see `eva_clip_pixel_values`).
IMAGE_TRANSFORMS = ("eva_clip",)

try:  # transformers >= 5: image processors are built on one backend class each
    from transformers.image_processing_backends import TorchvisionBackend
except ImportError:  # pragma: no cover - older transformers
    TorchvisionBackend = None


def _describe(source: Any) -> str:
    if _is_data_uri(source):
        return f"'{source[:32]}...' ({len(source)} characters)"
    if isinstance(source, (str, os.PathLike)):
        text = str(source)
        return repr(text) if len(text) <= 200 else f"{text[:120]!r}... ({len(text)} characters)"
    if isinstance(source, dict) and source.get("path"):
        return _describe(source["path"])
    return f"<{type(source).__name__}>"


def _is_blank(text: Any) -> bool:
    """True for None and for strings that are empty or whitespace only."""
    return text is None or (isinstance(text, str) and not text.strip())


def _is_data_uri(source: Any) -> bool:
    return isinstance(source, str) and source[:5].lower() == "data:"


def _decode_data_uri(uri: str) -> bytes:
    """The bytes of a `data:image/<type>[;param=value...];base64,<data>` URI (RFC 2397); ValueError otherwise."""
    header, comma, payload = uri[5:].partition(",")
    if not comma:
        raise ValueError(
            "malformed data: URI: no ',' between the media type and the data; expected "
            "'data:image/<type>;base64,<data>'"
        )
    params = [part.strip() for part in header.split(";")]
    media_type = params[0].lower()
    if len(params) < 2 or params[-1].lower() != "base64":
        raise ValueError("only base64 data: URIs are supported for images: 'data:image/<type>;base64,<data>'")
    if not media_type.startswith("image/"):
        raise ValueError(f"data: URI has media type {media_type!r}, which is not an image type (image/...)")
    payload = "".join(payload.split())  # base64 is often wrapped over several lines
    if not payload:
        raise ValueError("malformed data: URI: no data after ','")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ValueError(f"malformed data: URI: the data is not valid base64 ({error})") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; transparent images are composited on white (clip art stays visible)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # 16/32-bit greyscale: scale to 8 bits instead of letting PIL clip everything above 255.
        with np.errstate(invalid="ignore"):  # signalling NaNs in mode F data
            array = np.asarray(image, dtype=np.float64)
        finite = array[np.isfinite(array)]
        top = 65535.0 if image.mode.startswith("I;16") else max(float(finite.max()) if finite.size else 1.0, 1.0)
        array = np.nan_to_num(array, nan=0.0, posinf=top, neginf=0.0)
        array = np.clip(array / top * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(array).convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("LA").convert("RGBA") if image.mode == "La" else image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _open_without_pil_limit(stream: io.BytesIO) -> Image.Image:
    """Identify an image and read its header as `Image.open` does, minus the check of PIL's process-wide
    `Image.MAX_IMAGE_PIXELS` (the caller applies its own limit). Nothing is decoded.

    Only used after `Image.open` refused the image as over twice PIL's limit. Plugins that check PIL's
    limit themselves (WebP while reading the header; GIF, ICO, MPO, tiled TIFF in some cases) still
    raise `DecompressionBombError`.
    """
    Image.init()  # register every plugin (reads PIL's registry, changes no setting)
    stream.seek(0)
    prefix = stream.read(16)
    for format_id in Image.ID:
        factory, accept = Image.OPEN[format_id]
        accepted = accept(prefix) if accept else True
        if not accepted or isinstance(accepted, str):
            continue
        stream.seek(0)
        try:
            return factory(stream, "")
        except (SyntaxError, IndexError, TypeError, struct.error):  # what Image.open takes as "not this format"
            continue
    raise UnidentifiedImageError("cannot identify image file")


def _open(stream: Any, name: str) -> Image.Image:
    """`Image.open` (lazy: the header only) with PIL's process-wide pixel limit out of the way."""
    try:
        with warnings.catch_warnings():
            # PIL warns between its limit and twice it: `max_pixels` decides instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                return Image.open(stream)
            except Image.DecompressionBombError:
                if not isinstance(stream, io.BytesIO):
                    with open(stream, "rb") as handle:
                        stream = io.BytesIO(handle.read())
                return _open_without_pil_limit(stream)
    except Image.DecompressionBombError as error:
        raise ValueError(
            f"image {name} is over PIL's own size limit for its format, which max_pixels cannot raise ({error})"
        ) from error
    except UnidentifiedImageError as error:
        raise ValueError(f"image {name} is not an image file PIL can read") from error
    except FileNotFoundError as error:  # removed since the isfile() check
        raise FileNotFoundError(f"image file {name} does not exist") from error
    except MemoryError:
        raise
    except Exception as error:  # PIL's plugins raise many kinds of errors on malformed headers
        raise ValueError(f"image {name} cannot be opened: {type(error).__name__}: {error}") from error


def load_image(source: Any, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Open an image safely and return it as RGB.

    Accepts a `PIL.Image`, a path (`str` or `pathlib.Path`), a `data:image/<type>;base64,<data>` URI
    string, `bytes`, or a `datasets.Image` value (`{"bytes": ..., "path": ...}`). EXIF orientation is
    applied; images over `max_pixels` pixels are refused before decoding (decompression bombs);
    `max_pixels` may be above PIL's own `Image.MAX_IMAGE_PIXELS`. A missing file raises
    `FileNotFoundError`; anything else that is not a readable image (truncated or corrupt data, a
    malformed data URI, an empty image) raises `ValueError` naming the file. No process-wide PIL setting
    is changed.

    Example:

    ```python
    >>> load_image("scene.png").mode
    'RGB'
    ```
    """
    name = _describe(source)
    if isinstance(source, dict):
        if source.get("bytes") is not None:
            source = source["bytes"]
        elif source.get("path"):
            source = source["path"]
        else:
            raise ValueError(f"image value {source!r} has neither 'bytes' nor 'path'")
    opened = not isinstance(source, Image.Image)
    if isinstance(source, Image.Image):
        image = source
    else:
        if _is_data_uri(source):
            try:
                source = _decode_data_uri(source)
            except ValueError as error:
                raise ValueError(f"image {name}: {error}") from None
        if isinstance(source, (str, os.PathLike)):
            if not os.path.isfile(source):
                raise FileNotFoundError(f"image file {name} does not exist")
            stream = source
        elif isinstance(source, (bytes, bytearray, memoryview)):
            stream = io.BytesIO(bytes(source))
        else:
            raise ValueError(
                f"cannot read an image from {type(source).__name__}; pass a PIL.Image, a path, a data: URI, bytes "
                "or a {'bytes': ..., 'path': ...} dict"
            )
        image = _open(stream, name)
    width, height = image.size
    if width * height > max_pixels:
        raise ValueError(
            f"image {name} has {width}x{height} = {width * height} pixels, over the limit of {max_pixels} "
            "(a possible decompression bomb); raise max_image_pixels on the processor if you trust it"
        )
    if width * height == 0:
        raise ValueError(f"image {name} is empty ({width}x{height} pixels)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
    except Image.DecompressionBombError as error:
        raise ValueError(
            f"image {name} is over PIL's own size limit for its format, which max_pixels cannot raise ({error})"
        ) from error
    except MemoryError:
        raise
    except Exception as error:  # decoders raise OSError, SyntaxError, struct.error, EOFError, ... on bad data
        raise ValueError(f"image {name} is truncated or corrupt: {error}") from error
    try:
        # In place for an image opened here (no copy of a large image); a caller's image is not modified.
        oriented = ImageOps.exif_transpose(image, in_place=opened)
        image = image if oriented is None else oriented
    except MemoryError:
        raise
    except Exception as error:  # unreadable EXIF: keep the pixels, skip the orientation
        logger.warning(f"image {name}: EXIF orientation ignored, the EXIF data cannot be read ({error})")
    try:
        return _to_rgb(image)
    except MemoryError:
        raise
    except Exception as error:
        raise ValueError(f"image {name} (mode {image.mode}) cannot be converted to RGB: {error}") from error


def _is_image_value(value: Any) -> bool:
    return isinstance(value, (Image.Image, pathlib.PurePath, bytes, bytearray, memoryview)) or (
        isinstance(value, dict) and ("bytes" in value or "path" in value) and not (set(value) & ITEM_KEYS)
    )


def split_item(item: Any, index: int) -> tuple[str | None, Any]:
    """Split one input into (text, image source). `str` is text; see the module docstring for the rest.

    Raises `ValueError` naming `index` for an item with neither a non-blank text nor an image.
    """
    if isinstance(item, str):
        if _is_blank(item):
            raise ValueError(
                f"input {index}: the text is empty or whitespace only and there is no image; drop the item or "
                "give it some text or an image"
            )
        return item, None
    if isinstance(item, dict) and set(item) & ITEM_KEYS:
        unknown = set(item) - ITEM_KEYS
        if unknown:
            raise ValueError(f"input {index}: unknown keys {sorted(unknown)}; a dict item takes 'text' and/or 'image'")
        text, image = item.get("text"), item.get("image")
        if text is not None and not isinstance(text, str):
            raise ValueError(f"input {index}: 'text' must be a string, got {type(text).__name__}")
        if _is_blank(text) and image is None:
            raise ValueError(
                f"input {index}: a dict item needs a non-empty 'text' or an 'image' (the text is missing, empty or "
                "whitespace only)"
            )
        return text, image
    if _is_image_value(item):
        return None, item
    if isinstance(item, dict):
        raise ValueError(f"input {index}: a dict item needs a 'text' and/or 'image' key, got keys {sorted(item)}")
    raise ValueError(
        f"input {index}: unsupported type {type(item).__name__}; use str (text), PIL.Image / pathlib.Path / "
        "bytes (image) or a {'text': ..., 'image': ...} dict"
    )


class UniCAProcessor(ProcessorMixin):
    r"""Tokenizer + image processor for [`UniCAModel`].

    Args:
        image_processor: a transformers image processor (e.g. `ViTImageProcessorPil`, `CLIPImageProcessorPil`).
        tokenizer: the text encoder's tokenizer.
        max_text_length (`int`, defaults to 512): longer texts are truncated (with a one-time warning); the
            most tokens a text may have (`max_length` can only lower it).
        max_image_pixels (`int`): images with more pixels are refused, before decoding, as possible
            decompression bombs. It may be above PIL's own `Image.MAX_IMAGE_PIXELS` (left unchanged), except
            where a PIL plugin checks that limit itself (WebP over twice PIL's limit; some GIF, ICO, MPO
            and tiled TIFF files): those are refused with a `ValueError` saying so.
        image_transform (`str`, *optional*): `None` (the default): images are preprocessed by `image_processor`.
            `"eva_clip"`: by EVA-CLIP's evaluation transform (VISTA's `preprocess_val`, see `eva_clip_pixel_values`)
            with `image_processor`'s `size["shortest_edge"]`, `crop_size`, `image_mean` and `image_std`; what a
            checkpoint converted from VISTA (`unica convert-vista`) uses, so it embeds an image as VISTA does.

    Example:

    ```python
    >>> from PIL import Image
    >>> processor = AutoProcessor.from_pretrained("./unica-mini", trust_remote_code=True)
    >>> batch = processor(text=["a red circle", "a blue square", None],
    ...                   images=[None, Image.open("scene.png"), "other.png"])
    >>> batch["image_mask"].tolist()
    [False, True, True]
    >>> batch = processor.process_items(["a red circle", {"text": "Red Circle, 1990", "image": Image.open("scene.png")}])
    ```
    """


    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        max_text_length: int = 512,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        image_transform: str | None = None,
        **kwargs,
    ):
        if TorchvisionBackend is not None and isinstance(image_processor, TorchvisionBackend):
            raise ValueError(
                f"{type(image_processor).__name__} is a torchvision-backend image processor; UniCA preprocesses "
                "images with the PIL backend so that every machine, with or without torchvision, gets the same "
                "pixels: load it with AutoImageProcessor.from_pretrained(..., backend='pil') or use its ...Pil class"
            )
        self.max_text_length = max_text_length
        self.max_image_pixels = max_image_pixels
        if image_transform is not None and image_transform not in IMAGE_TRANSFORMS:
            raise ValueError(
                f"image_transform must be None (the image processor's own preprocessing) or one of {IMAGE_TRANSFORMS}, "
                f"got {image_transform!r}"
            )
        if image_transform == "eva_clip" and image_processor is not None:
            eva_clip_settings(image_processor)  # raises, naming what is missing
        self.image_transform = image_transform
        self._warned_truncation = False
        super().__init__(image_processor, tokenizer, **kwargs)

    @classmethod
    def _get_arguments_from_pretrained(cls, pretrained_model_name_or_path, processor_dict=None, **kwargs):
        """Load the image processor on the PIL backend (`IMAGE_PROCESSOR_BACKEND`) and the tokenizer.

        `ProcessorMixin` would let transformers pick the image processor's backend, torchvision where it is
        installed; a checkpoint must preprocess the same everywhere. Other loading options go to both.
        """
        from transformers import AutoImageProcessor, AutoTokenizer

        backend = kwargs.pop("backend", IMAGE_PROCESSOR_BACKEND)
        image_processor = AutoImageProcessor.from_pretrained(pretrained_model_name_or_path, backend=backend, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(pretrained_model_name_or_path, **kwargs)
        return [image_processor, tokenizer]

    # ------------------------------------------------------------------ entry points
    def __call__(
        self,
        images: Any = None,
        text: str | Sequence[str | None] | None = None,
        videos: Any = None,
        audio: Any = None,
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        """Process parallel lists `text` and `images` (entries may be None), or one of them alone.

        A single `str` / image is treated as a batch of one. Items of `text` may also be
        `{"text", "image"}` dicts (then `images` must be None). Keyword options are those of
        `process_items`.
        """
        if videos is not None or audio is not None:
            raise ValueError("UniCAProcessor handles text and images only; got videos/audio")
        if return_tensors not in (None, "pt"):
            raise ValueError(f"return_tensors must be 'pt', got {return_tensors!r}")
        texts = self._as_list(text, "text")
        image_list = self._as_list(images, "images")
        if texts is not None and image_list is not None:
            if len(texts) != len(image_list):
                raise ValueError(
                    f"text has {len(texts)} entries but images has {len(image_list)}; pass parallel lists (use None "
                    "for a missing side)"
                )
            items = [{"text": t, "image": i} for t, i in zip(texts, image_list)]
            for index, (t, i) in enumerate(zip(texts, image_list)):
                if _is_blank(t) and i is None:
                    raise ValueError(
                        f"input {index}: both text and image are empty (the text is missing, empty or whitespace only)"
                    )
        elif texts is not None:
            items = texts
            for index, item in enumerate(items):
                if item is None:
                    raise ValueError(f"input {index}: text is None and no images were given")
        elif image_list is not None:
            items = [{"image": i} if i is not None else None for i in image_list]
            for index, item in enumerate(items):
                if item is None:
                    raise ValueError(f"input {index}: image is None")
        else:
            raise ValueError("UniCAProcessor got no inputs: pass text=, images= or both")
        return self.process_items(items, **kwargs)

    @staticmethod
    def _as_list(value: Any, what: str = "text/images") -> list | None:
        if value is None:
            return None
        if isinstance(value, SINGLE_VALUE_TYPES):
            return [value]
        try:
            return list(value)
        except TypeError:
            raise ValueError(f"{what} must be one item or a list of items, got {type(value).__name__}") from None

    def process_items(self, items: Sequence[Any], prompt: str | None = None, **kwargs) -> BatchFeature:
        """Process a list of items, each a text, an image or a `{"text", "image"}` dict (see module docs).

        Keyword options (also accepted inside `text_kwargs` / `common_kwargs`, transformers' convention):

        * `max_length` (`int`, at most `max_text_length`, the default): tokens kept per text, [CLS] and
          [SEP] included;
        * `truncation`: `True` / `"longest_first"` / `"only_first"` (the default: longer texts are cut to
          `max_length`, keeping the closing [SEP]) or `False` / `"do_not_truncate"` (a longer text raises
          `ValueError` naming it);
        * `padding`: `True` / `"longest"` (the default: to the batch's longest text) or `"max_length"`
          (every text to `max_length`). `False` is refused: the output is tensors, one length per batch.

        `images_kwargs` are refused: image preprocessing is `image_processor`'s settings, saved with it.

        `prompt` (e.g. the checkpoint's sentence-transformers `"query"` prompt) is put before the text of every
        item that has one; an image alone gets none. The one place prompts are applied: sentence-transformers,
        the MTEB encoder, `unica evaluate` and the trainer all pass theirs here.
        """
        if prompt is not None and not isinstance(prompt, str):
            raise TypeError(f"prompt must be a string or None, got {type(prompt).__name__}")
        options = self._text_options(kwargs)
        items = self._as_list(items, "items")
        if items is None:
            raise ValueError("UniCAProcessor.process_items got None; pass a list of texts and/or images")
        if not items:
            raise ValueError("UniCAProcessor got an empty batch; pass at least one text or image")
        texts: list[str] = []
        images: list[Image.Image] = []
        image_mask: list[bool] = []
        for index, item in enumerate(items):
            text, image = split_item(item, index)
            if prompt and not _is_blank(text):
                text = prompt + text
            texts.append(text or "")
            image_mask.append(image is not None)
            if image is not None:
                try:
                    images.append(load_image(image, self.max_image_pixels))
                except (ValueError, FileNotFoundError) as error:
                    kind = FileNotFoundError if isinstance(error, FileNotFoundError) else ValueError
                    raise kind(f"input {index}: {error}") from error
        data = self._tokenize(texts, **options)
        data["image_mask"] = torch.tensor(image_mask, dtype=torch.bool)
        if images:
            data["pixel_values"] = self._pixel_values(images)
        return BatchFeature(data=data)

    def _pixel_values(self, images: list[Image.Image]) -> torch.Tensor:
        """`(len(images), 3, H, W)` float32 pixel values of RGB images, by `image_transform` or `image_processor`."""
        if self.image_transform == "eva_clip":
            settings = eva_clip_settings(self.image_processor)
            return torch.from_numpy(np.stack([eva_clip_pixel_values(image, *settings) for image in images]))
        return torch.as_tensor(self.image_processor(images=images, return_tensors="pt")["pixel_values"])

    def _text_options(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """`padding` / `truncation` / `max_length` from keywords and keyword groups, checked; TypeError for the rest."""
        groups = {name: kwargs.pop(name, None) or {} for name in ("text_kwargs", "common_kwargs", "images_kwargs")}
        for key in kwargs:
            if key not in TEXT_OPTIONS:
                raise TypeError(f"UniCAProcessor got an unexpected keyword argument {key!r}")
        if groups["images_kwargs"]:
            raise TypeError(
                f"UniCAProcessor got images_kwargs {sorted(groups['images_kwargs'])}: image preprocessing is the image "
                "processor's own settings, saved with the checkpoint; change them on processor.image_processor"
            )
        options = dict(kwargs)
        for group in ("text_kwargs", "common_kwargs"):
            if not isinstance(groups[group], dict):
                raise TypeError(f"{group} must be a dict of options, got {type(groups[group]).__name__}")
            for key, value in groups[group].items():
                if key == "return_tensors":
                    if value not in (None, "pt"):
                        raise ValueError(f"return_tensors must be 'pt', got {value!r} (in {group})")
                    continue  # tensors are what the processor returns anyway
                if key not in TEXT_OPTIONS:
                    raise TypeError(f"UniCAProcessor got {group} {key!r}; it takes {', '.join(TEXT_OPTIONS)} only")
                if key in options:
                    raise TypeError(f"{key} is given twice (as a keyword and in {group}); give it once")
                options[key] = value
        max_length = options.get("max_length")
        if max_length is not None:
            if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 2:
                raise ValueError(f"max_length must be an integer >= 2 (room for [CLS] and [SEP]), got {max_length!r}")
            if max_length > self.max_text_length:
                raise ValueError(
                    f"max_length={max_length} is above the model's max_text_length={self.max_text_length} (the "
                    f"most tokens its position embeddings leave a text); pass max_length <= {self.max_text_length}"
                )
        truncation = options.get("truncation", True)
        if truncation not in TRUNCATE + NO_TRUNCATION:
            raise ValueError(
                f"truncation must be one of {TRUNCATE} (cut texts to max_length) or {NO_TRUNCATION} (refuse longer "
                f"texts), got {truncation!r}"
            )
        padding = options.get("padding", True)
        if padding in (False, "do_not_pad"):
            raise ValueError(
                f"padding={padding!r} is not supported: the processor returns tensors, one length per batch; use "
                "padding=True / 'longest' (the default) or 'max_length'"
            )
        if padding not in PAD_TO_LONGEST + ("max_length",):
            raise ValueError(f"padding must be True, 'longest' or 'max_length', got {padding!r}")
        return {"max_length": max_length, "truncate": truncation in TRUNCATE,
                "pad_to_max_length": padding == "max_length"}

    def _tokenize(
        self, texts: list[str], max_length: int | None = None, truncate: bool = True, pad_to_max_length: bool = False
    ) -> dict[str, torch.Tensor]:
        """Token ids and attention mask of `texts`, cut to / padded to `max_length` (else `max_text_length`)."""
        try:
            encoded = self.tokenizer(texts, add_special_tokens=True, truncation=False, padding=False)
        except (TypeError, ValueError):
            # Fast tokenizers refuse a whole batch for one lone surrogate ("\ud800", which json.loads gives
            # for an escaped half of a pair): name the input instead.
            for index, text in enumerate(texts):
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError as error:
                    raise ValueError(
                        f"input {index}: the text is not valid Unicode (a lone surrogate {text[error.start]!r} at "
                        f"position {error.start}); fix the data or replace it, e.g. "
                        "text.encode('utf-8', 'replace').decode('utf-8')"
                    ) from None
            raise
        limit = max_length if max_length is not None else self.max_text_length
        limit_name = f"{'max_length' if max_length is not None else 'max_text_length'}={limit}"
        ids = []
        for index, row in enumerate(encoded["input_ids"]):
            if len(row) > limit:
                if not truncate:
                    raise ValueError(
                        f"input {index} has {len(row)} tokens, more than {limit_name} and truncation=False; shorten "
                        "the text, or let the processor cut it (truncation=True, the default)"
                    )
                if not self._warned_truncation:
                    logger.warning(
                        f"input {index} has {len(row)} tokens; texts are truncated to {limit_name} "
                        "(this warning is shown once)"
                    )
                    self._warned_truncation = True
                row = row[: limit - 1] + row[-1:]  # keep the closing special token ([SEP] / </s>)
            ids.append(row)
        padding = {"padding": "max_length", "max_length": limit} if pad_to_max_length else {"padding": True}
        padded = self.tokenizer.pad({"input_ids": ids}, return_tensors="pt", **padding)
        return {"input_ids": padded["input_ids"], "attention_mask": padded["attention_mask"]}

    # ------------------------------------------------------------------ helpers
    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values", "image_mask"]

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`ProcessorMixin.save_pretrained`, plus this code file and an `auto_map` for `AutoProcessor`."""
        result = super().save_pretrained(save_directory, *args, **kwargs)
        _add_processor_auto_map(save_directory)
        shutil.copyfile(inspect.getfile(type(self)), os.path.join(save_directory, "processing_unica.py"))
        return result


def _add_processor_auto_map(save_directory) -> None:
    path = os.path.join(save_directory, "processor_config.json")
    data = {}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    data["auto_map"] = {"AutoProcessor": "processing_unica.UniCAProcessor"}
    data["processor_class"] = "UniCAProcessor"
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)


def eva_clip_settings(image_processor: Any) -> tuple[int, tuple[int, int], tuple[float, ...], tuple[float, ...]]:
    """`(resize_to, (crop_height, crop_width), mean, std)` for `eva_clip_pixel_values`, from an image processor's
    `size["shortest_edge"]`, `crop_size`, `image_mean` and `image_std` (a CLIP image processor's settings).

    Raises `ValueError` naming the missing or unusable setting.
    """
    settings = image_processor.to_dict()
    resize_to = (settings.get("size") or {}).get("shortest_edge")
    crop = settings.get("crop_size") or {}
    crop = (crop.get("height"), crop.get("width"))
    mean, std = settings.get("image_mean"), settings.get("image_std")
    name = type(image_processor).__name__
    if not isinstance(resize_to, int) or not all(isinstance(side, int) for side in crop) or mean is None or std is None:
        raise ValueError(
            f"image_transform='eva_clip' reads size['shortest_edge'], crop_size, image_mean and image_std from the image "
            f"processor, but {name} has size={settings.get('size')}, crop_size={settings.get('crop_size')}, "
            f"image_mean={mean}, image_std={std}; use a CLIPImageProcessorPil with all four"
        )
    if max(crop) > resize_to:
        raise ValueError(f"{name}: crop_size {crop} is larger than size['shortest_edge']={resize_to}; the crop must fit")
    return resize_to, crop, tuple(mean), tuple(std)


def eva_clip_pixel_values(
    image: Image.Image, resize_to: int, crop: tuple[int, int], mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
    """EVA-CLIP's (open_clip's) evaluation transform of an RGB image, VISTA's `preprocess_val`, with PIL and numpy.

    torchvision's `Resize(resize_to, BICUBIC)`: the short side becomes `resize_to`, the long side
    `int(resize_to * long / short)`, by PIL's bicubic resampling (which antialiases), skipped when the size is already
    right; `CenterCrop(crop)`: offsets `int(round((side - crop) / 2))`, Python's (half-to-even) rounding, where
    transformers' image processors floor; `ToTensor`: `/ 255` in float32; `Normalize(mean, std)` in float32. Every
    step is the same operation torchvision does, so the values are torchvision's bit for bit. Returns a
    `(3, crop_height, crop_width)` float32 array.

    Example:

    ```python
    >>> from PIL import Image
    >>> pixels = eva_clip_pixel_values(Image.new("RGB", (300, 200)), 224, (224, 224),
    ...                                (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
    >>> pixels.shape, pixels.dtype
    ((3, 224, 224), dtype('float32'))
    ```
    """
    width, height = image.size
    if width <= height:
        size = (resize_to, int(resize_to * height / width))
    else:
        size = (int(resize_to * width / height), resize_to)
    if size != (width, height):
        image = image.resize(size, Image.BICUBIC)
    crop_height, crop_width = crop
    top = int(round((size[1] - crop_height) / 2.0))
    left = int(round((size[0] - crop_width) / 2.0))
    image = image.crop((left, top, left + crop_width, top + crop_height)).convert("RGB")
    array = np.asarray(image, dtype=np.uint8).astype(np.float32) / np.float32(255)
    array = (array - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(array.transpose(2, 0, 1))


__all__ = ["UniCAProcessor", "load_image", "split_item", "eva_clip_pixel_values", "DEFAULT_MAX_IMAGE_PIXELS",
           "IMAGE_PROCESSOR_BACKEND", "IMAGE_TRANSFORMS"]
