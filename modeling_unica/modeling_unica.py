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
import shutil
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput, logging

try:  # flat remote-code layout (a checkpoint folder): the config file sits beside this one
    from .configuration_unica import UniCAConfig, check_vision_sizes
except ImportError:  # installed package layout: configuration_unica/ and modeling_unica/
    from configuration_unica.configuration_unica import UniCAConfig, check_vision_sizes

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
    """

    embeddings: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None
    attention_mask: torch.LongTensor | None = None


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
        if key_mask is not None:
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


def _build_submodel(config, **kwargs) -> PreTrainedModel:
    """``AutoModel.from_config`` without the pooling head where the architecture has one (we pool ourselves)."""
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
            text: Hub id or local folder of a BERT-family encoder (weights are loaded). If the folder is
                a sentence-transformers model, its pooling (CLS or mean) becomes the default `pooling`.
            vision: Hub id or local folder of a CLIP / SigLIP / ViT model (its vision weights are loaded),
                or a preset (``vit-micro``, ``vit-tiny``, ``vit-small``, ``vit-base``) initialised at random.
            **config_overrides: any [`UniCAConfig`] field, e.g. ``fusion="concat"``, ``bica_layers=2``.
                ``vision_config_overrides`` (a dict) changes fields of a preset vision config.

        Example:

        ```python
        >>> model = UniCAModel.from_components("BAAI/bge-base-en-v1.5", "openai/clip-vit-base-patch16")
        >>> model = UniCAModel.from_components("./all-MiniLM-L6-v2", "vit-micro", fusion="concat")
        ```
        """
        text_model = _load_text_encoder(text)
        vision_model = _load_vision_tower(vision, config_overrides.pop("vision_config_overrides", None))
        config_overrides.setdefault("pooling", _sentence_transformers_pooling(text) or "cls")
        config_overrides.setdefault("empty_text_ids", _empty_text_ids(text))
        config = UniCAConfig(
            text_config=text_model.config.to_dict(), vision_config=vision_model.config.to_dict(), **config_overrides
        )
        model = cls(config)
        model.text_model.load_state_dict(text_model.state_dict())
        model.vision_model.load_state_dict(vision_model.state_dict())
        return model

    # ------------------------------------------------------------------ pieces of the forward pass
    def _position_base(self) -> int:
        # RoBERTa-style embeddings number real positions from padding_idx + 1; BERT-style from 0.
        padding_idx = getattr(self.text_model.embeddings, "padding_idx", None)
        return padding_idx + 1 if padding_idx is not None else 0

    def _patch_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Vision tower patch tokens with the CLS (and any register) tokens dropped."""
        pixel_values = pixel_values.to(dtype=self.visual_projection.proj.weight.dtype)
        hidden = self.vision_model(pixel_values=pixel_values).last_hidden_state
        num_patches = self.config.num_image_tokens
        if hidden.shape[1] < num_patches:
            raise ValueError(
                f"pixel_values of shape {tuple(pixel_values.shape)} gave {hidden.shape[1]} tokens, fewer than the "
                f"{num_patches} patches vision_config expects; resize images to {self.config.vision_config.image_size}px "
                "(the processor does this)"
            )
        return hidden[:, hidden.shape[1] - num_patches :]

    def _image_token_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """VISTA: projected patch tokens + text position embeddings 1..N, then the text embedding LayerNorm."""
        tokens = self.visual_projection(self._patch_tokens(pixel_values))
        embeddings = self.text_model.embeddings
        base = self._position_base()
        positions = torch.arange(base + 1, base + 1 + tokens.shape[1], device=tokens.device)
        tokens = tokens + embeddings.position_embeddings(positions)[None]
        return embeddings.LayerNorm(tokens)

    def _text_token_embeddings(self, input_ids: torch.Tensor, num_image_tokens: int) -> torch.Tensor:
        """Text embeddings for the fused sequence: CLS keeps position 0, the rest continue after the image."""
        base = self._position_base()
        length = input_ids.shape[1]
        positions = torch.arange(length, device=input_ids.device) + base
        positions[1:] += num_image_tokens
        positions = positions[None].expand(input_ids.shape[0], -1)
        token_types = torch.zeros_like(input_ids)
        return self.text_model.embeddings(input_ids=input_ids, position_ids=positions, token_type_ids=token_types)

    def _run_text_layers(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        encoder_mask = create_bidirectional_mask(
            config=self.text_model.config, inputs_embeds=states, attention_mask=mask
        )
        return self.text_model.encoder(states, attention_mask=encoder_mask).last_hidden_state

    def _pool(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.config.pooling == "cls":
            pooled = states[:, 0]
        else:
            weights = mask.to(states.dtype).unsqueeze(-1)
            pooled = (states * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        if self.config.normalize:
            pooled = F.normalize(pooled, p=2, dim=-1)
        return pooled

    def _encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        states = self.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return states, attention_mask

    def _encode_fused(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        image_states = self._image_token_embeddings(pixel_values)
        text_states = self._text_token_embeddings(input_ids, image_states.shape[1])
        fused, fused_mask = self.fusion_encoder(text_states, attention_mask, image_states)
        return self._run_text_layers(fused, fused_mask), fused_mask

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
        **kwargs,
    ) -> UniCAOutput | tuple:
        """Embed a batch; the path per item (text, image, image + text) follows from the inputs.

        Args:
            input_ids, attention_mask: `(batch, length)` token ids (image-only items carry the empty text).
                If omitted, every item is image-only.
            pixel_values: `(num_images, 3, H, W)` for the items that have an image, in batch order.
            image_mask: `(batch,)` bool, which items have an image. If omitted with `pixel_values` given,
                every item has one.
        """
        _ignore_processor_extras(kwargs)
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
            states, mask = self._encode_fused(input_ids, attention_mask, pixel_values)
            embeddings = self._pool(states, mask)
        elif num_images == 0:
            states, mask = self._encode_text(input_ids, attention_mask)
            embeddings = self._pool(states, mask)
        else:
            states, mask, embeddings = self._encode_mixed(input_ids, attention_mask, pixel_values, image_mask)
        output = UniCAOutput(embeddings=embeddings, pooler_output=embeddings, last_hidden_state=states,
                             attention_mask=mask)
        return output if return_dict else output.to_tuple()

    def _check_sequence_length(self, text_length: int, with_images: bool) -> None:
        """Refuse inputs that need more position embeddings than the text encoder has (an IndexError otherwise)."""
        limit = getattr(self.config.text_config, "max_position_embeddings", None)
        if limit is None:
            return
        image_tokens = self.config.num_image_tokens if with_images else 0
        needed = self._position_base() + text_length + image_tokens
        if needed > limit:
            raise ValueError(
                f"input_ids has {text_length} tokens{f' plus {image_tokens} image tokens' if image_tokens else ''}, "
                f"more than the text encoder's {limit} positions allow; truncate the text to at most "
                f"{limit - self._position_base() - image_tokens} tokens (the processor truncates to max_text_length)"
            )

    def _encode_mixed(self, input_ids, attention_mask, pixel_values, image_mask):
        """A batch where some items have an image: each group takes its own path, results go back in order."""
        with_image = image_mask.nonzero(as_tuple=True)[0]
        text_only = (~image_mask).nonzero(as_tuple=True)[0]
        fused_states, fused_mask = self._encode_fused(input_ids[with_image], attention_mask[with_image], pixel_values)
        text_states, text_mask = self._encode_text(input_ids[text_only], attention_mask[text_only])
        fused_embeddings = self._pool(fused_states, fused_mask)
        text_embeddings = self._pool(text_states, text_mask)

        batch_size, length = input_ids.shape[0], fused_states.shape[1]
        embeddings = fused_embeddings.new_zeros(batch_size, fused_embeddings.shape[-1])
        embeddings = embeddings.index_copy(0, with_image, fused_embeddings).index_copy(0, text_only, text_embeddings)
        states = fused_states.new_zeros(batch_size, length, fused_states.shape[-1])
        states = states.index_copy(0, with_image, fused_states)
        states = states.index_copy(0, text_only, F.pad(text_states, (0, 0, 0, length - text_states.shape[1])))
        mask = fused_mask.new_zeros(batch_size, length)
        mask = mask.index_copy(0, with_image, fused_mask)
        mask = mask.index_copy(0, text_only, F.pad(text_mask.to(mask.dtype), (0, length - text_mask.shape[1])))
        return states, mask, embeddings

    def get_text_features(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.LongTensor | None = None,
        image_mask: torch.BoolTensor | None = None,
        **kwargs,
    ) -> UniCAOutput:
        """Embeddings of texts alone (the text encoder's own embedding); see `pooler_output`."""
        _ignore_processor_extras(kwargs)
        if image_mask is not None and bool(image_mask.any()):
            raise ValueError("get_text_features got items with images; use get_multimodal_features or forward")
        return self.forward(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)

    def get_image_features(self, pixel_values: torch.FloatTensor, **kwargs) -> UniCAOutput:
        """Embeddings of images alone (image tokens with an empty text, VISTA's convention)."""
        _ignore_processor_extras(kwargs)
        return self.forward(pixel_values=pixel_values, return_dict=True)

    def get_multimodal_features(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_mask: torch.BoolTensor | None = None,
        **kwargs,
    ) -> UniCAOutput:
        """Embeddings of image + text items (or any mix, as `forward`)."""
        _ignore_processor_extras(kwargs)
        return self.forward(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
                            image_mask=image_mask, return_dict=True)

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


def _ignore_processor_extras(kwargs: dict) -> None:
    """Accept keys processors and sentence-transformers add (e.g. token_type_ids), refuse anything else."""
    unknown = set(kwargs) - {"token_type_ids", "output_attentions", "output_hidden_states", "position_ids"}
    if unknown:
        raise TypeError(f"UniCAModel got unexpected inputs {sorted(unknown)}")


def write_remote_code(save_directory: str | os.PathLike) -> None:
    """Copy the configuration and modeling code files into a checkpoint folder.

    The files are taken from wherever these classes were imported from (the installed packages, or a
    checkpoint's own copies when loaded as remote code); the processor copies its own file.
    """
    for name, cls in (("configuration_unica.py", UniCAConfig), ("modeling_unica.py", UniCAModel)):
        source = inspect.getfile(cls)
        if not os.path.isfile(source):
            raise FileNotFoundError(f"remote-code file {source!r} is missing; reinstall the unica package")
        shutil.copyfile(source, os.path.join(save_directory, name))


# ---------------------------------------------------------------------- component loading
def _first_line(error: BaseException) -> str:
    """An exception's first line: transformers' loading errors run over several lines, our errors are one."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _load_text_encoder(text: str | os.PathLike) -> PreTrainedModel:
    try:
        return AutoModel.from_pretrained(text, add_pooling_layer=False)
    except TypeError:
        return AutoModel.from_pretrained(text)
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
    try:
        return model_class.from_pretrained(vision, add_pooling_layer=False)
    except TypeError:
        return model_class.from_pretrained(vision)


def _empty_text_ids(text: str | os.PathLike) -> list[int]:
    from transformers import AutoTokenizer

    return list(AutoTokenizer.from_pretrained(text)("")["input_ids"])


def _sentence_transformers_pooling(text: str | os.PathLike) -> str | None:
    """Pooling mode from a sentence-transformers folder's ``1_Pooling/config.json`` (None if not one)."""
    path = os.path.join(str(text), "1_Pooling", "config.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        pooling = json.load(handle)
    if pooling.get("pooling_mode_cls_token"):
        return "cls"
    if pooling.get("pooling_mode_mean_tokens"):
        return "mean"
    return None


__all__ = [
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
]
