"""sentence-transformers input module for UniCA checkpoints (shipped in the checkpoint as ``st_unica.py``).

sentence-transformers 6's own ``Transformer`` module encodes one modality per batch and needs a chat
template to take a list that mixes texts, images and image + text dicts. UniCA's processor and model
take any mix in one batch, so this small module hands the inputs to them directly:

* ``str``                      -> text (or an image, when it is the path of an existing image file,
                                  as sentence-transformers detects it);
* ``PIL.Image`` / ``bytes`` /
  ``pathlib.Path``             -> image;
* ``{"text": ..., "image": ...}`` -> image + text (either key may be missing).

Prompts (``encode_query`` / ``encode_document``, ``prompt_name``) are prepended to the text of every
item that has text. The module's output is the model's (already normalised) ``sentence_embedding``.

This file imports only torch, transformers, sentence-transformers and PIL; it is loaded from the
checkpoint folder with ``SentenceTransformer(path, trust_remote_code=True)``.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence
from typing import Any

import torch
from sentence_transformers.base.modality import is_image_url_or_path
from sentence_transformers.base.modules.input_module import InputModule
from transformers import AutoModel, AutoProcessor

MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "pixel_values", "image_mask")
ITEM_KEYS = {"text", "image"}


def _is_data_uri(value: str) -> bool:
    return value[:5].lower() == "data:"


def _as_item(value: Any, index: int) -> Any:
    """Turn one sentence-transformers input into a UniCA processor item, with an error naming the index."""
    if isinstance(value, str):
        if _is_data_uri(value):  # an inline image: the processor decodes it
            return {"image": value}
        if is_image_url_or_path(value):
            if os.path.isfile(value):
                return pathlib.Path(value)
            raise ValueError(f"input {index}: {value!r} looks like an image URL; download it and pass the file or a "
                             "PIL.Image (UniCA never downloads at run time)")
        return value
    if isinstance(value, dict):
        unknown = set(value) - ITEM_KEYS
        if unknown or not value:
            raise ValueError(f"input {index}: dict inputs take 'text' and/or 'image', got keys {sorted(value)}")
        item = dict(value)
        if isinstance(item.get("image"), str) and not _is_data_uri(item["image"]):
            if not os.path.isfile(item["image"]):
                raise FileNotFoundError(f"input {index}: image file {item['image']!r} does not exist")
            item["image"] = pathlib.Path(item["image"])
        return item
    if isinstance(value, (tuple, list)):
        raise ValueError(f"input {index}: pairs/lists are not UniCA inputs; pass a str, an image or a "
                         "{'text', 'image'} dict")
    return value


class UniCAEmbedder(InputModule):
    """Wraps a UniCA model and processor as the single module of a `SentenceTransformer`.

    Example:

    ```python
    >>> from sentence_transformers import SentenceTransformer
    >>> model = SentenceTransformer("./unica-mini", trust_remote_code=True)
    >>> q = model.encode_query(["the red circle painted in 1990"])
    >>> d = model.encode_document([{"text": "Red Circle, painted in 1990.", "image": "scene.png"}, "a passage"])
    >>> model.similarity(q, d).shape
    torch.Size([1, 2])
    ```
    """

    config_file_name = "unica_st_config.json"
    config_keys: list[str] = []
    save_in_root = True

    def __init__(self, model_name_or_path: str | None = None, *, model=None, processor=None,
                 trust_remote_code: bool = False, model_kwargs: dict | None = None):
        super().__init__()
        if model is None or processor is None:
            if model_name_or_path is None:
                raise ValueError("UniCAEmbedder needs model_name_or_path or both model= and processor=")
            kwargs = {"trust_remote_code": trust_remote_code}
            model = AutoModel.from_pretrained(model_name_or_path, **kwargs, **(model_kwargs or {}))
            processor = AutoProcessor.from_pretrained(model_name_or_path, **kwargs)
        self.model = model
        self.processor = processor

    @property
    def modalities(self) -> list:
        # "message" tells sentence-transformers that mixed batches are fine: preprocess takes any mix.
        return ["text", "image", ("image", "text"), "message"]

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def max_seq_length(self) -> int:
        return self.processor.max_text_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        self.processor.max_text_length = int(value)

    def preprocess(self, inputs: Sequence[Any], prompt: str | None = None, **kwargs) -> dict[str, torch.Tensor]:
        items = [_as_item(value, index) for index, value in enumerate(inputs)]
        return dict(self.processor.process_items(items, prompt=prompt or None))

    def forward(self, features: dict[str, Any], **kwargs) -> dict[str, Any]:
        output = self.model(**{key: features[key] for key in MODEL_INPUT_KEYS if key in features})
        features["sentence_embedding"] = output.embeddings
        features["token_embeddings"] = output.last_hidden_state
        features["attention_mask"] = output.attention_mask
        return features

    def get_embedding_dimension(self) -> int:
        return self.model.config.text_config.hidden_size

    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        self.model.save_pretrained(output_path, safe_serialization=safe_serialization)
        self.processor.save_pretrained(output_path)
        self.save_config(output_path)

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", trust_remote_code: bool = False,
             model_kwargs: dict | None = None, **kwargs) -> UniCAEmbedder:
        path = os.path.join(model_name_or_path, subfolder) if subfolder else model_name_or_path
        model_kwargs = {k: v for k, v in (model_kwargs or {}).items() if k in ("dtype", "torch_dtype")}
        return cls(path, trust_remote_code=trust_remote_code, model_kwargs=model_kwargs)
