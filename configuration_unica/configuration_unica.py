"""Configuration of UniCA: a vision tower and a BERT-family text encoder fused by Bi-directional
Cross-Attention (Bi-CA), with VISTA's concatenation fusion as the switchable baseline.

This file is shipped to the Hub as remote code: it imports only transformers.
"""

from __future__ import annotations

import math

from transformers import AutoConfig, PretrainedConfig

try:  # transformers >= 5 describes composite sub-configs with SubConfigSpec
    from transformers.configuration_utils import SubConfigSpec
except ImportError:  # pragma: no cover - older transformers
    SubConfigSpec = None

# Registers the EVA02-CLIP vision config (VISTA's tower) with AutoConfig, so vision_config can name it.
from .configuration_eva_clip import EvaClipVisionConfig  # noqa: E402,F401

FUSIONS = ("bica", "concat")
POOLINGS = ("cls", "mean")
# Vision towers whose output is a sequence of patch tokens (with or without a CLS token).
VISION_MODEL_TYPES = ("clip_vision_model", "siglip_vision_model", "vit", "dinov2", EvaClipVisionConfig.model_type)

_DEFAULT_TEXT = {
    "model_type": "bert",
    "hidden_size": 384,
    "num_hidden_layers": 6,
    "num_attention_heads": 12,
    "intermediate_size": 1536,
}
_DEFAULT_VISION = {
    "model_type": "vit",
    "hidden_size": 192,
    "num_hidden_layers": 2,
    "num_attention_heads": 3,
    "intermediate_size": 768,
    "image_size": 64,
    "patch_size": 16,
}


def check_vision_sizes(vision_config) -> None:
    """Raise ``ValueError`` unless ``image_size`` and ``patch_size`` (a config or a dict) make at least one patch."""
    get = vision_config.get if isinstance(vision_config, dict) else lambda name: getattr(vision_config, name, None)
    for name in ("image_size", "patch_size"):
        value = get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"vision_config.{name} must be a positive integer, got {value!r}")
    if get("patch_size") > get("image_size"):
        raise ValueError(
            f"vision_config.patch_size ({get('patch_size')}) is larger than vision_config.image_size "
            f"({get('image_size')}): an image would make no patch token"
        )


def _as_config(value, name: str, default: dict) -> PretrainedConfig:
    """Turn ``None`` / a dict / a config into a config instance, naming ``name`` on error."""
    if value is None:
        value = dict(default)
    if isinstance(value, PretrainedConfig):
        return value
    if isinstance(value, dict):
        value = dict(value)
        model_type = value.pop("model_type", None)
        if model_type is None:
            raise ValueError(f"{name} needs a 'model_type' key (e.g. {default['model_type']!r}); got keys {sorted(value)}")
        return AutoConfig.for_model(model_type, **value)
    raise ValueError(f"{name} must be a dict, a transformers config or None, got {type(value).__name__}")


class UniCAConfig(PretrainedConfig):
    r"""Configuration for [`UniCAModel`].

    Args:
        text_config (`dict` or `PretrainedConfig`, *optional*):
            Config of the BERT-family text encoder (BERT, RoBERTa, XLM-R, ...). Its embedding layer and
            encoder layers are reused for the fused sequence.
        vision_config (`dict` or `PretrainedConfig`, *optional*):
            Config of the vision tower: CLIP-vision, SigLIP-vision, ViT, DINOv2 or EVA02-CLIP
            (`EvaClipVisionConfig`, VISTA's tower).
        fusion (`str`, *optional*, defaults to `"bica"`):
            `"bica"` (UniCA: Bi-directional Cross-Attention layers before the concatenation) or `"concat"`
            (VISTA / Visualized-BGE: image tokens concatenated into the text encoder's input).
        bica_layers (`int`, *optional*, defaults to 1): number of Bi-CA layers (used when `fusion="bica"`).
        bica_heads (`int`, *optional*): attention heads in a Bi-CA layer; defaults to the text encoder's.
        bica_intermediate_size (`int`, *optional*): Bi-CA feed-forward width; defaults to the text encoder's.
        bica_dropout (`float`, *optional*, defaults to 0.0): dropout inside Bi-CA attention and feed-forward.
        pooling (`str`, *optional*, defaults to `"cls"`): `"cls"` (VISTA, BGE) or `"mean"` over attended tokens
            (what all-MiniLM-L6-v2 was trained with).
        normalize (`bool`, *optional*, defaults to `True`): L2-normalise the embeddings.
        contrastive_temperature (`float`, *optional*, defaults to 0.02): InfoNCE temperature used by the training
            toolkit; it initialises the model's `logit_scale` weight (`log(1 / temperature)`, as CLIP's), and a
            saved checkpoint records the temperature that weight holds. (Not named `temperature`: transformers reserves that name for generation and refuses to save
            it in a model config. `temperature=` is accepted as an alias.)
        max_text_length (`int`, *optional*, defaults to 512): tokens kept per text (longer texts are truncated).
        image_size (`int`, *optional*): side in pixels of the images the model takes, when not the vision tower's own
            `vision_config.image_size`: the processor resizes images to it and the tower interpolates its position
            embeddings. Every patch token takes one of the text encoder's positions, so a tower whose native
            resolution makes more tokens than those positions (DINOv2 at 518 px, CLIP-L/14-336,
            SigLIP-so400m-384 with a 512-position BERT) needs a smaller `image_size`.
        empty_text_ids (`list[int]`, *optional*, defaults to `[101, 102]`): the tokenizer's ids for an empty text
            (`[CLS] [SEP]` for BERT vocabularies), used when a batch has images and no text at all.
        fused_position_start (`int`, *optional*): position id of [CLS] in a sequence with an image (image tokens take
            the next ones, the text continues after them). `None` (the default): the text encoder's own first position
            (`padding_idx + 1` for RoBERTa-style encoders, 0 for BERT). VISTA numbers from 0 for every encoder, so a
            converted Visualized_m3 (XLM-RoBERTa) checkpoint sets 0.
        components (`dict`, *optional*): where the text encoder and the vision tower came from, for the model card
            (informational, never read by the model): `{"text": {"name": ..., "pretrained": bool}, "vision": {...}}`,
            plus `"origin"` / `"license"` for a converted model. Written by `unica`'s `init_model` and
            `convert_vista`.

    Example:

    ```python
    >>> from configuration_unica import UniCAConfig
    >>> config = UniCAConfig(fusion="concat")
    >>> config.text_config.model_type, config.vision_config.model_type
    ('bert', 'vit')
    >>> UniCAConfig(fusion="late")
    Traceback (most recent call last):
    ...
    ValueError: fusion must be one of ('bica', 'concat'), got 'late'
    ```
    """

    model_type = "unica"
    if SubConfigSpec is not None:
        sub_configs_defaults = {
            "text_config": SubConfigSpec(config_class=AutoConfig, model_type="bert", init_kwargs=_DEFAULT_TEXT),
            "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="vit", init_kwargs=_DEFAULT_VISION),
        }
    else:  # pragma: no cover
        sub_configs = {"text_config": AutoConfig, "vision_config": AutoConfig}

    def __init__(
        self,
        text_config=None,
        vision_config=None,
        fusion: str = "bica",
        bica_layers: int = 1,
        bica_heads: int | None = None,
        bica_intermediate_size: int | None = None,
        bica_dropout: float = 0.0,
        pooling: str = "cls",
        normalize: bool = True,
        contrastive_temperature: float = 0.02,
        max_text_length: int = 512,
        empty_text_ids: list[int] | None = None,
        image_size: int | None = None,
        fused_position_start: int | None = None,
        components: dict | None = None,
        **kwargs,
    ):
        if "temperature" in kwargs:
            contrastive_temperature = kwargs.pop("temperature")
        self.text_config = _as_config(text_config, "text_config", _DEFAULT_TEXT)
        self.vision_config = _as_config(vision_config, "vision_config", _DEFAULT_VISION)
        self.fusion = fusion
        self.bica_layers = bica_layers
        self.bica_heads = bica_heads if bica_heads is not None else self.text_config.num_attention_heads
        self.bica_intermediate_size = (
            bica_intermediate_size if bica_intermediate_size is not None else self.text_config.intermediate_size
        )
        self.bica_dropout = bica_dropout
        self.pooling = pooling
        self.normalize = normalize
        self.contrastive_temperature = contrastive_temperature
        self.max_text_length = max_text_length
        self.empty_text_ids = list(empty_text_ids) if empty_text_ids is not None else [101, 102]
        self.image_size = image_size
        self.fused_position_start = fused_position_start
        self.components = dict(components) if components is not None else None
        super().__init__(**kwargs)
        self.validate_unica()

    def validate_unica(self) -> None:
        """Raise ``ValueError`` naming the field and its allowed values for any invalid setting."""
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if not isinstance(self.bica_layers, int) or self.bica_layers < 0:
            raise ValueError(f"bica_layers must be an integer >= 0, got {self.bica_layers!r}")
        if self.fusion == "bica" and self.bica_layers == 0:
            raise ValueError("bica_layers must be >= 1 when fusion='bica' (use fusion='concat' for no Bi-CA)")
        hidden = self.text_config.hidden_size
        if not isinstance(self.bica_heads, int) or self.bica_heads < 1 or hidden % self.bica_heads:
            raise ValueError(
                f"bica_heads must be a positive divisor of the text hidden size {hidden}, got {self.bica_heads!r}"
            )
        if not isinstance(self.bica_intermediate_size, int) or self.bica_intermediate_size < 1:
            raise ValueError(f"bica_intermediate_size must be a positive integer, got {self.bica_intermediate_size!r}")
        if not 0.0 <= float(self.bica_dropout) < 1.0:
            raise ValueError(f"bica_dropout must be in [0, 1), got {self.bica_dropout!r}")
        if not isinstance(self.normalize, bool):
            raise ValueError(f"normalize must be True or False, got {self.normalize!r}")
        if not float(self.contrastive_temperature) > 0:
            raise ValueError(f"contrastive_temperature must be > 0, got {self.contrastive_temperature!r}")
        max_positions = getattr(self.text_config, "max_position_embeddings", None)
        if not isinstance(self.max_text_length, int) or self.max_text_length < 2:
            raise ValueError(f"max_text_length must be an integer >= 2, got {self.max_text_length!r}")
        if not self.empty_text_ids or not all(isinstance(i, int) for i in self.empty_text_ids):
            raise ValueError(f"empty_text_ids must be a non-empty list of token ids, got {self.empty_text_ids!r}")
        if self.vision_config.model_type not in VISION_MODEL_TYPES:
            raise ValueError(
                f"vision_config.model_type must be one of {VISION_MODEL_TYPES}, got {self.vision_config.model_type!r}"
            )
        check_vision_sizes(self.vision_config)
        start = self.fused_position_start
        if start is not None and (not isinstance(start, int) or isinstance(start, bool) or start < 0):
            raise ValueError(f"fused_position_start must be an integer >= 0 or None, got {start!r}")
        patch = self.vision_config.patch_size
        if self.image_size is not None and (
            not isinstance(self.image_size, int) or isinstance(self.image_size, bool) or self.image_size < patch
        ):
            raise ValueError(
                f"image_size must be an integer >= vision_config.patch_size ({patch}), got {self.image_size!r} "
                "(or None for the vision tower's own vision_config.image_size)"
            )
        if max_positions is not None and self.num_image_tokens + 2 > max_positions:
            fit = math.isqrt(max_positions - 2) * patch if max_positions > 2 else 0
            fix = (
                f"pass image_size={fit} or smaller (UniCAConfig / from_components / init_model; unica init "
                f"--image-size {fit}): images are then resized to it and the vision tower's position embeddings "
                "interpolated; smaller sizes leave more positions to the text. A tower trained from scratch may "
                "instead take a larger patch_size or a smaller image_size in vision_config"
                if fit else "use a text encoder with more position embeddings"
            )
            raise ValueError(
                f"the vision tower makes {self.num_image_tokens} image tokens ({self.input_image_size} px images in "
                f"{patch} px patches) but the text encoder has only {max_positions} position embeddings (each image "
                f"token takes one, [CLS] and [SEP] take two); {fix}"
            )

    @property
    def input_image_size(self) -> int:
        """Side in pixels of the images the model takes: `image_size` if set, else `vision_config.image_size`."""
        return self.image_size if self.image_size is not None else self.vision_config.image_size

    @property
    def num_image_tokens(self) -> int:
        """Patch tokens per image (the vision tower's CLS token, if any, is not counted)."""
        return (self.input_image_size // self.vision_config.patch_size) ** 2
