"""UniCA: a vision tower and a BERT-family text encoder fused by Bi-directional Cross-Attention.

Data flow (see DESIGN.md):

* text only        -> the text encoder alone (its output equals the backbone's own embedding);
* image (+ text)   -> vision patch tokens (CLS dropped) -> visual projection -> + text position
                      embeddings -> text embedding LayerNorm; with ``fusion="bica"`` text and image
                      tokens first exchange information in Bi-CA layers; then the VISTA sequence
                      ``[CLS] + image tokens + text tokens`` runs through the text encoder's layers;
* pooling          -> CLS or mean, then L2 normalisation.

A Bi-CA layer's output gates start at zero, so a fresh ``bica`` model computes exactly what the
``concat`` (VISTA) model with the same weights computes.

This file is shipped to the Hub as remote code: it imports only torch, transformers and the
configuration file beside it.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import re
import shutil
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput, cached_file, logging

try:  # flat remote-code layout (a checkpoint folder): the config file sits beside this one
    from .configuration_unica import UniCAConfig, check_vision_sizes
except ImportError:  # installed package layout: configuration_unica/ and modeling_unica/
    from configuration_unica.configuration_unica import UniCAConfig, check_vision_sizes
from .modeling_eva_clip import EvaClipVisionModel  # registers the EVA02-CLIP tower (VISTA's) with AutoModel

try:
    from transformers import initialization as init
except ImportError:  # pragma: no cover - transformers < 5
    from torch.nn import init

logger = logging.get_logger(__name__)

# Randomly initialised vision towers for training from scratch (sizes of DeiT tiny / small / base),
# plus a micro tower that the offline demo and tests can afford on two CPU cores.
VISION_PRESETS = {
    "vit-micro": {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 512,
                  "image_size": 64, "patch_size": 8},
    "vit-tiny": {"hidden_size": 192, "num_hidden_layers": 12, "num_attention_heads": 3, "intermediate_size": 768,
                 "image_size": 224, "patch_size": 16},
    "vit-small": {"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6, "intermediate_size": 1536,
                  "image_size": 224, "patch_size": 16},
    "vit-base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
                 "image_size": 224, "patch_size": 16},
}

# Weights of a vision tower that UniCA never uses, by vision ``model_type``: the modules or parameters of these
# names (at any depth) compute only the tower's pooled output or masked-image modelling, while UniCA reads the
# patch tokens of ``last_hidden_state``; they never get a gradient. They are frozen when the model is built or
# loaded (not removed: the tower keeps every weight of its checkpoint, so pretrained towers and UniCA
# checkpoints, older ones included, load strictly), and DistributedDataParallel leaves frozen weights out.
UNUSED_VISION_WEIGHTS = {
    "clip_vision_model": ("post_layernorm",),  # applied to the CLS token for pooler_output only
    "siglip_vision_model": ("head",),  # the attention-pooling head (SigLIP's post_layernorm feeds the patches)
    "eva02_clip_vision_model": ("norm", "head"),  # EVA-CLIP's final LayerNorm and projection, for the CLS token
    "dinov2": ("mask_token",),  # replaces masked patches, only with bool_masked_pos
}


@dataclass
class UniCAOutput(ModelOutput):
    """Output of [`UniCAModel`].

    Args:
        embeddings (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
            The pooled (and, if `config.normalize`, L2-normalised) embeddings.
        pooler_output (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
            The same tensor as `embeddings`, under the name transformers' `get_*_features` methods use.
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, sequence_length, hidden_size)`):
            Final token states. For items with an image the sequence is `[CLS] + image tokens + text tokens`.
        attention_mask (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
            Which positions of `last_hidden_state` are real tokens.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned with `output_hidden_states=True`):
            The text encoder's input sequence and the output of each of its layers, each of the shape of
            `last_hidden_state` (rows laid out the same way, `attention_mask` applies). For items with an image
            the input is the fused sequence, after the Bi-CA layers.
    """

    embeddings: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None
    attention_mask: torch.LongTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


class UniCAVisualProjection(nn.Module):
    """Maps vision-tower patch tokens into the text encoder's hidden space (VISTA's ``visual_proj``)."""

    def __init__(self, vision_hidden_size: int, text_hidden_size: int):
        super().__init__()
        self.proj = nn.Linear(vision_hidden_size, text_hidden_size)

    def forward(self, patch_tokens: torch.Tensor) -> torch.Tensor:
        return self.proj(patch_tokens)


class UniCACrossAttention(nn.Module):
    """Multi-head attention of one token sequence (queries) over another (keys / values), through SDPA."""

    def __init__(self, hidden_size: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.k_proj = nn.Linear(hidden_size, hidden_size)
        self.v_proj = nn.Linear(hidden_size, hidden_size)
        self.out_proj = nn.Linear(hidden_size, hidden_size)

    def _split_heads(self, states: torch.Tensor) -> torch.Tensor:
        batch, length, _ = states.shape
        return states.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``key_mask`` (batch, key_length): 1 for real tokens, 0 for padding (never attended)."""
        query = self._split_heads(self.q_proj(queries))
        key = self._split_heads(self.k_proj(keys))
        value = self._split_heads(self.v_proj(keys))
        mask = None
        if key_mask is not None and not bool(key_mask.all()):  # no mask when every key is real: SDPA's fast path
            mask = key_mask[:, None, None, :].to(torch.bool)
        attended = F.scaled_dot_product_attention(
            query, key, value, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )
        batch, _, length, _ = attended.shape
        return self.out_proj(attended.transpose(1, 2).reshape(batch, length, -1))


class UniCAFeedForward(nn.Module):
    """Position-wise feed-forward block (Linear -> GELU -> Linear)."""

    def __init__(self, hidden_size: int, intermediate_size: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.fc2 = nn.Linear(intermediate_size, hidden_size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(F.gelu(self.fc1(states))))


class UniCABiCALayer(GradientCheckpointingLayer):
    """One Bi-directional Cross-Attention layer.

    Text tokens attend to image tokens and image tokens attend to text tokens, both from the layer's
    input (the two exchanges are simultaneous), each followed by a feed-forward block. Every branch is
    pre-normalised and added back through a per-channel gate initialised at zero, so at initialisation
    the layer is the identity and a fresh Bi-CA model equals the concat baseline.
    """

    def __init__(self, config: UniCAConfig):
        super().__init__()
        hidden = config.text_config.hidden_size
        eps = getattr(config.text_config, "layer_norm_eps", 1e-12)
        heads, width, dropout = config.bica_heads, config.bica_intermediate_size, config.bica_dropout
        self.text_attention_norm = nn.LayerNorm(hidden, eps=eps)
        self.image_attention_norm = nn.LayerNorm(hidden, eps=eps)
        self.text_to_image = UniCACrossAttention(hidden, heads, dropout)
        self.image_to_text = UniCACrossAttention(hidden, heads, dropout)
        self.text_ffn_norm = nn.LayerNorm(hidden, eps=eps)
        self.image_ffn_norm = nn.LayerNorm(hidden, eps=eps)
        self.text_ffn = UniCAFeedForward(hidden, width, dropout)
        self.image_ffn = UniCAFeedForward(hidden, width, dropout)
        self.text_attention_gate = nn.Parameter(torch.zeros(hidden))
        self.image_attention_gate = nn.Parameter(torch.zeros(hidden))
        self.text_ffn_gate = nn.Parameter(torch.zeros(hidden))
        self.image_ffn_gate = nn.Parameter(torch.zeros(hidden))

    def forward(
        self,
        text_states: torch.Tensor,
        image_states: torch.Tensor,
        text_mask: torch.Tensor,
        image_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        text_normed = self.text_attention_norm(text_states)
        image_normed = self.image_attention_norm(image_states)
        text_update = self.text_to_image(text_normed, image_normed, key_mask=image_mask)
        image_update = self.image_to_text(image_normed, text_normed, key_mask=text_mask)
        text_states = text_states + self.text_attention_gate * text_update
        image_states = image_states + self.image_attention_gate * image_update
        text_states = text_states + self.text_ffn_gate * self.text_ffn(self.text_ffn_norm(text_states))
        image_states = image_states + self.image_ffn_gate * self.image_ffn(self.image_ffn_norm(image_states))
        return text_states, image_states


class UniCAFusionEncoder(nn.Module):
    """Builds the fused input sequence: optional Bi-CA layers, then VISTA's concatenation.

    The output sequence is ``[CLS] + image tokens + text tokens after CLS``; image tokens are always
    attended, text padding keeps its mask (and stays at the end of the sequence).
    """

    def __init__(self, config: UniCAConfig):
        super().__init__()
        num_layers = config.bica_layers if config.fusion == "bica" else 0
        self.layers = nn.ModuleList([UniCABiCALayer(config) for _ in range(num_layers)])

    def forward(
        self, text_states: torch.Tensor, text_mask: torch.Tensor, image_states: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        image_mask = torch.ones(image_states.shape[:2], dtype=text_mask.dtype, device=text_mask.device)
        for layer in self.layers:
            text_states, image_states = layer(text_states, image_states, text_mask, image_mask)
        fused = torch.cat([text_states[:, :1], image_states, text_states[:, 1:]], dim=1)
        fused_mask = torch.cat([text_mask[:, :1], image_mask, text_mask[:, 1:]], dim=1)
        return fused, fused_mask


class UniCAPreTrainedModel(PreTrainedModel):
    config_class = UniCAConfig
    config: UniCAConfig
    base_model_prefix = "unica"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["UniCABiCALayer"]
    # Pooling heads of the towers (built without them) in a checkpoint's weights are skipped, without a report.
    _keys_to_ignore_on_load_unexpected = [r"(text|vision)_model\.pooler\."]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = getattr(self.config.text_config, "initializer_range", 0.02)
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        if isinstance(module, UniCABiCALayer):
            # Zero gates make a fresh Bi-CA layer the identity (Bi-CA on == concat baseline at step 0).
            for gate in (module.text_attention_gate, module.image_attention_gate, module.text_ffn_gate,
                         module.image_ffn_gate):
                init.zeros_(gate)
        if isinstance(module, UniCAModel):
            init.constant_(module.logit_scale, math.log(1.0 / self.config.contrastive_temperature))


def zero_touching(parameters, like: torch.Tensor) -> torch.Tensor:
    """An exact zero (``like``'s dtype and device) whose graph reaches one element of each trainable parameter.

    Adding it to an output makes every trainable weight of ``parameters`` take part in the backward with an
    exactly-zero gradient (the true gradient of a loss they do not affect). DistributedDataParallel without
    unused-parameter search (``find_unused_parameters=False``, what transformers picks with activation
    checkpointing) needs that: a weight without a gradient fails the next step. One indexing op per weight.
    """
    elements = [p[(0,) * p.dim()].to(device=like.device, dtype=like.dtype) for p in parameters if p.requires_grad]
    if not elements:
        return like.new_zeros(())
    return torch.stack(elements).sum() * 0.0


def _build_submodel(config, **kwargs) -> PreTrainedModel:
    """``AutoModel.from_config`` without the pooling head where the architecture has one (we pool ourselves).

    The EVA02-CLIP tower is built directly: loaded as remote code, transformers imports the configuration files once
    for the config and again beside the modeling file, so its config may be another copy of the class than the one
    registered with ``AutoModel``.
    """
    if config.model_type == EvaClipVisionModel.config_class.model_type:
        return EvaClipVisionModel(config, **kwargs)
    try:
        return AutoModel.from_config(config, add_pooling_layer=False, **kwargs)
    except TypeError:
        return AutoModel.from_config(config, **kwargs)


class UniCAModel(UniCAPreTrainedModel):
    r"""UniCA multimodal embedding model.

    Inputs come from [`UniCAProcessor`]: `input_ids` / `attention_mask` for every item, `pixel_values`
    for the items that have an image and `image_mask` saying which items those are. One batch may mix
    text-only, image-only and image + text items.

    Example:

    ```python
    >>> from transformers import AutoModel, AutoProcessor
    >>> model = AutoModel.from_pretrained("./unica-mini", trust_remote_code=True)
    >>> processor = AutoProcessor.from_pretrained("./unica-mini", trust_remote_code=True)
    >>> batch = processor(text=["a red circle", None], images=[None, "scene.png"])
    >>> model(**batch).embeddings.shape
    torch.Size([2, 384])
    ```
    """

    def __init__(self, config: UniCAConfig):
        super().__init__(config)
        self.text_model = _build_submodel(config.text_config)
        self.vision_model = _build_submodel(config.vision_config)
        self._freeze_unused_vision_weights()
        self._check_text_encoder(self.text_model)
        self.visual_projection = UniCAVisualProjection(
            config.vision_config.hidden_size, config.text_config.hidden_size
        )
        # Built without touching the global RNG, and initialised last by post_init: with the same seed a
        # fresh "bica" model has exactly the "concat" model's weights (the ablation changes one thing).
        with torch.random.fork_rng(devices=[]):
            self.fusion_encoder = UniCAFusionEncoder(config)
        # CLIP's logit scale, log(1 / temperature): the contrastive temperature is a weight of the model, so a
        # learned one is saved and loaded with the checkpoint and averaged by DDP like any other parameter.
        # Embedding never reads it; the trainer's loss does (it stays frozen unless learnable_temperature).
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.contrastive_temperature)))
        self.post_init()

    @property
    def temperature(self) -> torch.Tensor:
        """The contrastive temperature ``exp(-logit_scale)``, clamped at >= 0.01 (CLIP's scale <= 100)."""
        return torch.exp(-self.logit_scale.clamp(max=math.log(100.0)))

    def _freeze_unused_vision_weights(self) -> None:
        """Freeze the vision tower's weights UniCA never uses (``UNUSED_VISION_WEIGHTS``)."""
        names = set(UNUSED_VISION_WEIGHTS.get(self.config.vision_config.model_type, ()))
        for name, parameter in self.vision_model.named_parameters():
            if names.intersection(name.split(".")):  # any depth: older transformers nest CLIP's in vision_model.
                parameter.requires_grad_(False)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, with the unused vision weights frozen again: transformers puts every
        loaded weight into a new, trainable `nn.Parameter`."""
        loaded = super().from_pretrained(*args, **kwargs)
        (loaded[0] if isinstance(loaded, tuple) else loaded)._freeze_unused_vision_weights()
        return loaded

    @staticmethod
    def _check_text_encoder(text_model: nn.Module) -> None:
        embeddings = getattr(text_model, "embeddings", None)
        missing = [
            name
            for name, present in (
                ("embeddings", embeddings is not None),
                ("embeddings.position_embeddings", hasattr(embeddings, "position_embeddings")),
                ("embeddings.LayerNorm", hasattr(embeddings, "LayerNorm")),
                ("encoder", hasattr(text_model, "encoder")),
            )
            if not present
        ]
        if missing:
            raise ValueError(
                f"text_config.model_type={text_model.config.model_type!r} is not a BERT-family encoder: its model "
                f"lacks {missing}. Use a BERT, RoBERTa, XLM-R or ELECTRA-style encoder."
            )

    # ------------------------------------------------------------------ building from components
    @classmethod
    def from_components(
        cls,
        text: str | os.PathLike,
        vision: str | os.PathLike = "vit-micro",
        **config_overrides,
    ) -> UniCAModel:
        """Build a UniCA model from a pretrained text encoder and a vision tower.

        Args:
            text: Hub id or local folder of a BERT-family encoder (weights are loaded). If it is a
                sentence-transformers model (folder or Hub id: its `modules.json` / pooling config are resolved
                like its weights, offline from the HF cache), its pooling (CLS or mean) becomes the default
                `pooling`; another pooling mode raises `ValueError` unless `pooling=` is given.
            vision: Hub id or local folder of a CLIP / SigLIP / ViT model (its vision weights are loaded),
                or a preset (``vit-micro``, ``vit-tiny``, ``vit-small``, ``vit-base``) initialised at random.
            **config_overrides: any [`UniCAConfig`] field, e.g. ``fusion="concat"``, ``bica_layers=2``, or
                ``image_size=224`` for a tower whose native resolution makes more patch tokens than the text
                encoder has positions (the tower then interpolates its position embeddings).
                ``vision_config_overrides`` (a dict) changes fields of a preset vision config.

        Example:

        ```python
        >>> model = UniCAModel.from_components("BAAI/bge-base-en-v1.5", "openai/clip-vit-base-patch16")
        >>> model = UniCAModel.from_components("./all-MiniLM-L6-v2", "vit-micro", fusion="concat")
        ```
        """
        text_model = _load_text_encoder(text)
        vision_model = _load_vision_tower(vision, config_overrides.pop("vision_config_overrides", None))
        if "pooling" not in config_overrides:  # an explicit pooling wins over the sentence-transformers one
            config_overrides["pooling"] = _sentence_transformers_pooling(text) or "cls"
        config_overrides.setdefault("empty_text_ids", _empty_text_ids(text))
        config = UniCAConfig(
            text_config=text_model.config.to_dict(), vision_config=vision_model.config.to_dict(), **config_overrides
        )
        model = cls(config)
        model.text_model.load_state_dict(text_model.state_dict())
        model.vision_model.load_state_dict(vision_model.state_dict())
        return model

    # ------------------------------------------------------------------ pieces of the forward pass
    def _position_base(self, fused: bool = False) -> int:
        # RoBERTa-style embeddings number real positions from padding_idx + 1; BERT-style from 0. A sequence with an
        # image starts at config.fused_position_start where set (VISTA numbers it from 0 for every encoder).
        if fused and self.config.fused_position_start is not None:
            return self.config.fused_position_start
        padding_idx = getattr(self.text_model.embeddings, "padding_idx", None)
        return padding_idx + 1 if padding_idx is not None else 0

    def _patch_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Vision tower patch tokens with the CLS (and any register) tokens dropped.

        Images are `config.input_image_size` pixels square; at a `config.image_size` other than the tower's own
        `vision_config.image_size` the tower interpolates its position embeddings (CLIP, SigLIP and ViT take
        `interpolate_pos_encoding=True`; DINOv2 always interpolates and has no such argument).
        """
        size = self.config.input_image_size
        if tuple(pixel_values.shape[-2:]) != (size, size):
            height, width = pixel_values.shape[-2:]
            raise ValueError(
                f"pixel_values are {height}x{width} pixels but the model takes {size}x{size} images "
                "(config.image_size, else vision_config.image_size); resize images to that size (the processor does this)"
            )
        vision_kwargs = {}
        if size != self.config.vision_config.image_size and (
            "interpolate_pos_encoding" in inspect.signature(self.vision_model.forward).parameters
        ):
            vision_kwargs["interpolate_pos_encoding"] = True
        pixel_values = pixel_values.to(dtype=self.visual_projection.proj.weight.dtype)
        hidden = self.vision_model(pixel_values=pixel_values, **vision_kwargs).last_hidden_state
        return hidden[:, hidden.shape[1] - self.config.num_image_tokens :]

    def _image_token_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """VISTA: projected patch tokens + text position embeddings 1..N, then the text embedding LayerNorm."""
        tokens = self.visual_projection(self._patch_tokens(pixel_values))
        embeddings = self.text_model.embeddings
        base = self._position_base(fused=True)
        positions = torch.arange(base + 1, base + 1 + tokens.shape[1], device=tokens.device)
        tokens = tokens + embeddings.position_embeddings(positions)[None]
        return embeddings.LayerNorm(tokens)

    def _text_token_embeddings(self, input_ids: torch.Tensor, num_image_tokens: int) -> torch.Tensor:
        """Text embeddings for the fused sequence: CLS keeps position 0, the rest continue after the image."""
        base = self._position_base(fused=True)
        length = input_ids.shape[1]
        positions = torch.arange(length, device=input_ids.device) + base
        positions[1:] += num_image_tokens
        positions = positions[None].expand(input_ids.shape[0], -1)
        token_types = torch.zeros_like(input_ids)
        return self.text_model.embeddings(input_ids=input_ids, position_ids=positions, token_type_ids=token_types)

    def _run_text_layers(
        self, states: torch.Tensor, mask: torch.Tensor, output_hidden_states: bool = False
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """The text encoder's layers over an embedded sequence: (last states, hidden states or None)."""
        encoder_mask = create_bidirectional_mask(
            config=self.text_model.config, inputs_embeds=states, attention_mask=mask
        )
        with _EncoderStatesRecorder(self.text_model, output_hidden_states) as recorder:
            last = self.text_model.encoder(states, attention_mask=encoder_mask).last_hidden_state
        return last, recorder.states

    def _pool(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # Pooling and the L2 norm run in float32 whatever the weights' dtype (bf16): embeddings are float32.
        if self.config.pooling == "cls":
            pooled = states[:, 0].float()
        else:
            weights = mask.to(torch.float32).unsqueeze(-1)
            pooled = (states.float() * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        if self.config.normalize:
            pooled = F.normalize(pooled, p=2, dim=-1)
        return pooled

    def _encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, output_hidden_states: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """Texts alone, through the text encoder itself: (states, mask, hidden states or None)."""
        with _EncoderStatesRecorder(self.text_model, output_hidden_states) as recorder:
            states = self.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return states, attention_mask, recorder.states

    def _encode_fused(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor,
        output_hidden_states: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """Items with an image: (fused states, fused mask, hidden states or None)."""
        image_states = self._image_token_embeddings(pixel_values)
        text_states = self._text_token_embeddings(input_ids, image_states.shape[1])
        fused, fused_mask = self.fusion_encoder(text_states, attention_mask, image_states)
        states, hidden_states = self._run_text_layers(fused, fused_mask, output_hidden_states)
        return states, fused_mask, hidden_states

    def _empty_text(self, batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.tensor(self.config.empty_text_ids, dtype=torch.long, device=device)
        ids = ids[None].expand(batch_size, -1)
        return ids, torch.ones_like(ids)

    # ------------------------------------------------------------------ public entry points
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_mask: torch.BoolTensor | None = None,
        return_dict: bool | None = None,
        output_hidden_states: bool | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> UniCAOutput | tuple:
        """Embed a batch; the path per item (text, image, image + text) follows from the inputs.

        Args:
            input_ids, attention_mask: `(batch, length)` token ids (image-only items carry the empty text).
                If omitted, every item is image-only.
            pixel_values: `(num_images, 3, H, W)` for the items that have an image, in batch order.
            image_mask: `(batch,)` bool, which items have an image. If omitted with `pixel_values` given,
                every item has one.
            output_hidden_states: also return the text encoder's input and per-layer states
                (`UniCAOutput.hidden_states`); defaults to `config.output_hidden_states`.
            token_type_ids: accepted for tokenizers that add them, if all 0 (UniCA embeds every text as segment 0).
            position_ids, output_attentions: accepted only as None / False: UniCA assigns positions itself and
                its attention (SDPA) computes no weights. Anything else raises, naming the input.
        """
        _refuse_unhonoured_inputs(kwargs, token_type_ids, position_ids, output_attentions)
        if output_hidden_states is None:
            output_hidden_states = bool(getattr(self.config, "output_hidden_states", False))
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if input_ids is None and pixel_values is None:
            raise ValueError("UniCAModel needs input_ids, pixel_values or both; got neither")
        if input_ids is None:
            input_ids, attention_mask = self._empty_text(pixel_values.shape[0], pixel_values.device)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        batch_size = input_ids.shape[0]
        if batch_size == 0 or (pixel_values is not None and pixel_values.shape[0] == 0 and image_mask is None):
            raise ValueError("UniCAModel got an empty batch (0 items); pass at least one text or image")
        if image_mask is None:
            image_mask = torch.full((batch_size,), pixel_values is not None, dtype=torch.bool, device=input_ids.device)
        image_mask = image_mask.to(device=input_ids.device, dtype=torch.bool)
        num_images = int(image_mask.sum())
        given_images = 0 if pixel_values is None else pixel_values.shape[0]
        if image_mask.shape != (batch_size,) or num_images != given_images:
            raise ValueError(
                f"image_mask marks {num_images} of {batch_size} items as having an image but pixel_values holds "
                f"{given_images} images; pass one pixel_values row per True in image_mask (the processor does this)"
            )

        self._check_sequence_length(input_ids.shape[1], with_images=num_images > 0)

        if num_images == batch_size:  # all items have images: one fused pass, no scatter needed
            states, mask, hidden_states = self._encode_fused(input_ids, attention_mask, pixel_values,
                                                             output_hidden_states)
            embeddings = self._pool(states, mask)
        elif num_images == 0:
            states, mask, hidden_states = self._encode_text(input_ids, attention_mask, output_hidden_states)
            embeddings = self._pool(states, mask)
            if self.training and torch.is_grad_enabled():
                # No image: the image path's weights take part with a zero gradient (see zero_touching), so
                # data-parallel training needs no unused-parameter search on text-only batches.
                image_path = (self.vision_model, self.visual_projection, self.fusion_encoder)
                embeddings = embeddings + zero_touching((p for m in image_path for p in m.parameters()), embeddings)
        else:
            states, mask, embeddings, hidden_states = self._encode_mixed(
                input_ids, attention_mask, pixel_values, image_mask, output_hidden_states
            )
        output = UniCAOutput(embeddings=embeddings, pooler_output=embeddings, last_hidden_state=states,
                             attention_mask=mask, hidden_states=hidden_states)
        return output if return_dict else output.to_tuple()

    def _check_sequence_length(self, text_length: int, with_images: bool) -> None:
        """Refuse inputs that need more position embeddings than the text encoder has (an IndexError otherwise)."""
        limit = getattr(self.config.text_config, "max_position_embeddings", None)
        if limit is None:
            return
        image_tokens = self.config.num_image_tokens if with_images else 0
        base = self._position_base(fused=with_images)
        needed = base + text_length + image_tokens
        if needed > limit:
            raise ValueError(
                f"input_ids has {text_length} tokens{f' plus {image_tokens} image tokens' if image_tokens else ''}, "
                f"more than the text encoder's {limit} positions allow; truncate the text to at most "
                f"{limit - base - image_tokens} tokens (the processor truncates to max_text_length)"
            )

    def _encode_mixed(self, input_ids, attention_mask, pixel_values, image_mask, output_hidden_states=False):
        """A batch where some items have an image: each group takes its own path, results go back in order.

        Returns (states, mask, embeddings, hidden states or None); text-only rows are right-padded (mask 0) to
        the fused sequence length.
        """
        with_image = image_mask.nonzero(as_tuple=True)[0]
        text_only = (~image_mask).nonzero(as_tuple=True)[0]
        fused_states, fused_mask, fused_hidden = self._encode_fused(
            input_ids[with_image], attention_mask[with_image], pixel_values, output_hidden_states
        )
        text_states, text_mask, text_hidden = self._encode_text(
            input_ids[text_only], attention_mask[text_only], output_hidden_states
        )
        fused_embeddings = self._pool(fused_states, fused_mask)
        text_embeddings = self._pool(text_states, text_mask)

        embeddings = fused_embeddings.new_zeros(input_ids.shape[0], fused_embeddings.shape[-1])
        embeddings = embeddings.index_copy(0, with_image, fused_embeddings).index_copy(0, text_only, text_embeddings)

        def merge(fused: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
            """Fused rows and (zero-padded) text-only rows of a `(rows, length, ...)` tensor, in batch order."""
            padding = [0, 0] * (text.dim() - 2) + [0, fused.shape[1] - text.shape[1]]
            merged = fused.new_zeros((input_ids.shape[0], *fused.shape[1:]))
            merged = merged.index_copy(0, with_image, fused)
            return merged.index_copy(0, text_only, F.pad(text.to(fused.dtype), padding))

        hidden_states = None
        if output_hidden_states:
            hidden_states = tuple(merge(fused, text) for fused, text in zip(fused_hidden, text_hidden))
        return merge(fused_states, text_states), merge(fused_mask, text_mask), embeddings, hidden_states

    def get_text_features(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.LongTensor | None = None,
        image_mask: torch.BoolTensor | None = None,
        **kwargs,
    ) -> UniCAOutput:
        """Embeddings of texts alone (the text encoder's own embedding); see `pooler_output`.

        `**kwargs` are `forward`'s other options (e.g. `output_hidden_states`), not images.
        """
        _refuse_other_modality(kwargs, ("pixel_values",), "get_text_features", "texts")
        if image_mask is not None and bool(image_mask.any()):
            raise ValueError("get_text_features got items with images; use get_multimodal_features or forward")
        return self.forward(input_ids=input_ids, attention_mask=attention_mask, return_dict=True, **kwargs)

    def get_image_features(self, pixel_values: torch.FloatTensor, **kwargs) -> UniCAOutput:
        """Embeddings of images alone (image tokens with an empty text, VISTA's convention).

        `**kwargs` are `forward`'s other options (e.g. `output_hidden_states`), not texts.
        """
        _refuse_other_modality(kwargs, ("input_ids", "attention_mask", "image_mask"), "get_image_features", "images")
        return self.forward(pixel_values=pixel_values, return_dict=True, **kwargs)

    def get_multimodal_features(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_mask: torch.BoolTensor | None = None,
        **kwargs,
    ) -> UniCAOutput:
        """Embeddings of image + text items (or any mix, as `forward`, which takes `**kwargs`)."""
        return self.forward(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
                            image_mask=image_mask, return_dict=True, **kwargs)

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        """`PreTrainedModel.save_pretrained`, plus the three remote-code files and the `auto_map`.

        transformers copies only the files beside the model class's own file; our configuration lives
        in another package, so this step writes the flat remote-code layout itself.
        """
        # The config states the temperature the weights hold (a learned one included).
        self.config.contrastive_temperature = round(float(self.temperature.detach()), 6)
        self.config.auto_map = {
            "AutoConfig": "configuration_unica.UniCAConfig",
            "AutoModel": "modeling_unica.UniCAModel",
            "AutoProcessor": "processing_unica.UniCAProcessor",
        }
        super().save_pretrained(save_directory, *args, **kwargs)
        write_remote_code(save_directory)


def _refuse_unhonoured_inputs(unknown: dict, token_type_ids, position_ids, output_attentions) -> None:
    """Raise for an input `UniCAModel.forward` cannot honour, instead of dropping it silently.

    `token_type_ids` pass when all 0 (what a BERT tokenizer gives for one text; UniCA embeds segment 0 only);
    `position_ids` only as None (UniCA numbers positions itself: image tokens take those after [CLS]);
    `output_attentions` only as None / False (attention runs through SDPA, which computes no weights).
    """
    if unknown:
        raise TypeError(f"UniCAModel got unexpected inputs {sorted(unknown)}")
    if output_attentions:
        raise TypeError(
            "output_attentions=True is not supported: UniCA's attention runs through SDPA, which computes no "
            "attention weights; drop output_attentions (output_hidden_states=True is supported)"
        )
    if position_ids is not None:
        raise TypeError(
            "position_ids are not accepted: UniCA assigns positions itself (image tokens take the positions after "
            "[CLS], the text continues after them); drop position_ids"
        )
    if token_type_ids is not None and bool(torch.as_tensor(token_type_ids).ne(0).any()):
        raise ValueError(
            "token_type_ids must be all 0: UniCA embeds every text as segment 0 (a text pair is not one input); "
            "drop token_type_ids or pass zeros"
        )


def _refuse_other_modality(kwargs: dict, names: tuple[str, ...], method: str, what: str) -> None:
    """`get_text_features` / `get_image_features` embed one modality: refuse the other's inputs."""
    given = sorted(set(kwargs) & set(names))
    if given:
        raise TypeError(f"{method} embeds {what} alone but got {given}; use get_multimodal_features or forward")


class _EncoderStatesRecorder:
    """Context manager collecting, during one call, the text encoder's input and each of its layers' outputs.

    transformers >= 5 BERT-family encoders return no hidden states themselves (their model class records them
    with hooks), and the fused path calls the encoder directly; forward hooks on ``encoder`` and
    ``encoder.layer[i]`` serve both paths. The hooks are removed on exit, so a gradient-checkpointing recompute
    records nothing. With ``enabled=False`` nothing is hooked and ``states`` stays None.
    """

    def __init__(self, text_model: nn.Module, enabled: bool):
        self.text_model = text_model
        self.enabled = enabled
        self.states: tuple[torch.Tensor, ...] | None = None
        self._collected: list[torch.Tensor] = []
        self._handles: list = []

    def __enter__(self) -> _EncoderStatesRecorder:
        if not self.enabled:
            return self
        encoder = self.text_model.encoder
        layers = getattr(encoder, "layer", None)
        if not isinstance(layers, nn.ModuleList):
            raise TypeError(
                f"output_hidden_states=True needs the text encoder's layers at encoder.layer, which "
                f"{type(self.text_model).__name__} lacks; drop output_hidden_states"
            )

        def on_input(module, args, kwargs):
            self._collected.append(args[0] if args else kwargs["hidden_states"])

        def on_layer(module, args, output):
            self._collected.append(output[0] if isinstance(output, tuple) else output)

        self._handles = [encoder.register_forward_pre_hook(on_input, with_kwargs=True)]
        self._handles += [layer.register_forward_hook(on_layer) for layer in layers]
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self._handles:
            handle.remove()
        if self.enabled:
            self.states = tuple(self._collected)


def write_remote_code(save_directory: str | os.PathLike) -> None:
    """Copy the configuration and modeling code files into a checkpoint folder.

    The files are taken from wherever these classes were imported from (the installed packages, or a
    checkpoint's own copies when loaded as remote code); the processor copies its own file.
    """
    for name, cls in (("configuration_unica.py", UniCAConfig), ("modeling_unica.py", UniCAModel),
                      ("configuration_eva_clip.py", EvaClipVisionModel.config_class),
                      ("modeling_eva_clip.py", EvaClipVisionModel)):
        source = inspect.getfile(cls)
        if not os.path.isfile(source):
            raise FileNotFoundError(f"remote-code file {source!r} is missing; reinstall the unica package")
        shutil.copyfile(source, os.path.join(save_directory, name))


# ---------------------------------------------------------------------- component loading
def _first_line(error: BaseException) -> str:
    """An exception's first line: transformers' loading errors run over several lines, our errors are one."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


# A pooling head's weights (BERT's ``pooler.dense``, ViT's ``pooler``): UniCA pools itself, so the head is never built.
_POOLER_KEY = re.compile(r"(^|\.)pooler\.")


def _from_pretrained_without_pooler(model_class, name: str | os.PathLike) -> PreTrainedModel:
    """``model_class.from_pretrained(name)`` without its pooling head, whose weights the checkpoint may hold.

    transformers warns about those weights with a "LOAD REPORT" table ("pooler.dense.weight | UNEXPECTED"), although
    the head is left out on purpose. The report is held back and shown only if the load had another problem
    (missing, unexpected or mismatched weights besides the pooler's), or raised.
    """
    report_logger = logging.get_logger("transformers.modeling_utils")
    held = []

    def hold(record) -> bool:
        if "LOAD REPORT" in record.getMessage():
            held.append(record)
            return False
        return True

    def release() -> None:
        for record in held:
            report_logger.handle(record)

    report_logger.addFilter(hold)
    try:
        try:
            model, info = model_class.from_pretrained(name, add_pooling_layer=False, output_loading_info=True)
        except TypeError:  # an architecture without a pooling head to leave out
            held.clear()
            model, info = model_class.from_pretrained(name, output_loading_info=True)
    except BaseException:
        report_logger.removeFilter(hold)
        release()
        raise
    report_logger.removeFilter(hold)
    problems = [key for kind in ("missing_keys", "unexpected_keys", "mismatched_keys") for key in info.get(kind) or ()
                if not _POOLER_KEY.search(str(key[0] if isinstance(key, tuple) else key))]
    if problems:
        release()
    return model


def _load_text_encoder(text: str | os.PathLike) -> PreTrainedModel:
    try:
        return _from_pretrained_without_pooler(AutoModel, text)
    except OSError as error:
        raise ValueError(
            f"text={str(text)!r} is neither a local model folder nor a Hub id that could be loaded "
            f"({_first_line(error)}); pass the folder of a BERT-family encoder, e.g. an all-MiniLM-L6-v2 download"
        ) from error


def _load_vision_tower(vision: str | os.PathLike, overrides: dict | None) -> PreTrainedModel:
    if str(vision) in VISION_PRESETS:
        settings = {**VISION_PRESETS[str(vision)], **(overrides or {})}
        check_vision_sizes(settings)  # before the tower is built (a zero patch size divides by zero there)
        return _build_submodel(AutoConfig.for_model("vit", **settings))
    if overrides:
        raise ValueError("vision_config_overrides only applies to presets " + ", ".join(VISION_PRESETS))
    try:
        config = AutoConfig.from_pretrained(vision)
    except OSError as error:
        raise ValueError(
            f"vision={str(vision)!r} is not a preset ({', '.join(VISION_PRESETS)}), a local folder or a loadable "
            f"Hub id ({_first_line(error)})"
        ) from error
    # A full CLIP / SigLIP checkpoint holds a text tower too: take its vision model class only.
    vision_config = getattr(config, "vision_config", config)
    model_class = AutoModel._model_mapping[type(vision_config)]
    return _from_pretrained_without_pooler(model_class, vision)


def _empty_text_ids(text: str | os.PathLike) -> list[int]:
    from transformers import AutoTokenizer

    return list(AutoTokenizer.from_pretrained(text)("")["input_ids"])


# sentence-transformers' Pooling config before version 6: one boolean flag per mode.
_ST_POOLING_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


def _model_file(text: str | os.PathLike, filename: str) -> dict | list | None:
    """A JSON file of a local model folder or Hub repo (offline: from the HF cache), None where there is none.

    Resolved by transformers' own ``cached_file``, as the model's weights and tokenizer are.
    """
    path = cached_file(str(text), filename, _raise_exceptions_for_missing_entries=False,
                       _raise_exceptions_for_connection_errors=False)
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{filename} of {str(text)!r} is not valid JSON ({error})") from error


def _sentence_transformers_pooling(text: str | os.PathLike) -> str | None:
    """The pooling ("cls" or "mean") of a sentence-transformers model, local folder or Hub id; None if not one.

    The Pooling module's folder is the one ``modules.json`` names (``1_Pooling`` without a ``modules.json``);
    its ``config.json`` gives the mode as ``pooling_mode`` (sentence-transformers >= 6) or as
    ``pooling_mode_*`` flags. A mode UniCA does not have (max, weighted mean, ...) raises ``ValueError``.
    """
    folder = "1_Pooling"
    modules = _model_file(text, "modules.json")
    if isinstance(modules, list):
        folders = [
            module.get("path") for module in modules
            if isinstance(module, dict) and str(module.get("type", "")).rsplit(".", 1)[-1] == "Pooling"
        ]
        if not folders or not folders[0]:
            return None
        folder = str(folders[0]).strip("/")
    pooling = _model_file(text, f"{folder}/config.json")
    if not isinstance(pooling, dict):
        return None
    modes = pooling.get("pooling_mode")
    if modes is None:
        modes = [mode for flag, mode in _ST_POOLING_FLAGS.items() if pooling.get(flag)]
    modes = [modes] if isinstance(modes, str) else list(modes)
    if not modes:
        return None
    if modes in (["cls"], ["mean"]):
        return modes[0]
    raise ValueError(
        f"the sentence-transformers model {str(text)!r} pools with {' + '.join(map(repr, modes))} "
        f"({folder}/config.json); UniCA pools with 'cls' or 'mean': pass pooling='cls' or pooling='mean' to choose"
    )


__all__ = [
    "UNUSED_VISION_WEIGHTS",
    "UniCABiCALayer",
    "UniCACrossAttention",
    "UniCAFeedForward",
    "UniCAFusionEncoder",
    "UniCAModel",
    "UniCAOutput",
    "UniCAPreTrainedModel",
    "UniCAVisualProjection",
    "VISION_PRESETS",
    "write_remote_code",
    "zero_touching",
]
