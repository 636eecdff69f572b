"""Configuration of an EVA02-CLIP vision tower (EVA02-CLIP-B/16, -L/14 and their shapes), usable as UniCA's
``vision_config``: the tower VISTA (Visualized-BGE) embeds images with.

EVA02 differs from CLIP's ViT in three ways, all fixed here: 2-D rotary position embeddings on the patch tokens'
queries and keys (on top of learned absolute ones), a SwiGLU feed-forward, and sub-LayerNorms (one before the
attention output projection, one before the feed-forward output projection). Every size is a field; a converted
checkpoint takes them from the weights' shapes.

Importing this file registers the config with ``AutoConfig`` (model type ``eva02_clip_vision_model``), so a UniCA
config can name it in ``vision_config``. This file is shipped to the Hub as remote code: it imports only
transformers.
"""

from __future__ import annotations

from transformers import AutoConfig, PretrainedConfig


class EvaClipVisionConfig(PretrainedConfig):
    r"""Configuration for [`EvaClipVisionModel`]. Defaults are EVA02-CLIP-B/16's.

    Args:
        hidden_size (`int`, defaults to 768): token width (EVA-CLIP's `width`).
        intermediate_size (`int`, defaults to 2048): SwiGLU hidden width (`int(width * mlp_ratio)`).
        num_hidden_layers (`int`, defaults to 12): transformer blocks.
        num_attention_heads (`int`, defaults to 12): attention heads (`width // head_width`); the head size must be
            a multiple of 4 (rotary embeddings rotate pairs of channels along two axes).
        image_size (`int`, defaults to 224): image side in pixels the absolute position embeddings were made for.
        patch_size (`int`, defaults to 16): patch side in pixels.
        num_channels (`int`, defaults to 3): image channels.
        projection_dim (`int`, defaults to 512): output size of `head`, the CLIP image-embedding projection (used for
            `pooler_output` only; UniCA reads the patch tokens).
        layer_norm_eps (`float`, defaults to 1e-6): epsilon of every LayerNorm.
        qkv_bias (`bool`, defaults to `True`): learned query and value biases (keys have none, as in EVA).
        rope_theta (`float`, defaults to 10000.0): base of the rotary frequencies.
        rope_reference_grid (`int`, defaults to 16): the patch-grid side the rotary frequencies were defined for
            (EVA-CLIP's `pt_hw_seq_len`); on a grid of another side, rotary positions are rescaled to it
            (EVA-CLIP's `intp_freq`), which is how the 14 x 14 grid of B/16 at 224 px is handled.
        initializer_range (`float`, defaults to 0.02): standard deviation of the (truncated normal) initialisation.

    Example:

    ```python
    >>> from configuration_unica import EvaClipVisionConfig, UniCAConfig
    >>> large = EvaClipVisionConfig(hidden_size=1024, intermediate_size=2730, num_hidden_layers=24,
    ...                             num_attention_heads=16, patch_size=14, projection_dim=768)
    >>> UniCAConfig(vision_config=large.to_dict(), fusion="concat").num_image_tokens
    256
    ```
    """

    model_type = "eva02_clip_vision_model"
    base_config_key = "vision_config"

    def __init__(
        self,
        hidden_size: int = 768,
        intermediate_size: int = 2048,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        image_size: int = 224,
        patch_size: int = 16,
        num_channels: int = 3,
        projection_dim: int = 512,
        layer_norm_eps: float = 1e-6,
        qkv_bias: bool = True,
        rope_theta: float = 10000.0,
        rope_reference_grid: int = 16,
        initializer_range: float = 0.02,
        **kwargs,
    ):
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.projection_dim = projection_dim
        self.layer_norm_eps = layer_norm_eps
        self.qkv_bias = qkv_bias
        self.rope_theta = rope_theta
        self.rope_reference_grid = rope_reference_grid
        self.initializer_range = initializer_range
        super().__init__(**kwargs)
        self.validate_eva_clip()

    def validate_eva_clip(self) -> None:
        """Raise ``ValueError`` naming the field for sizes no EVA02-CLIP tower can have."""
        for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_channels",
                     "projection_dim", "rope_reference_grid"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"EvaClipVisionConfig.{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads or (self.hidden_size // self.num_attention_heads) % 4:
            raise ValueError(
                f"EvaClipVisionConfig: hidden_size {self.hidden_size} / num_attention_heads "
                f"{self.num_attention_heads} must give a head size that is a multiple of 4 (2-D rotary embeddings "
                "rotate channel pairs along two axes)"
            )


AutoConfig.register(EvaClipVisionConfig.model_type, EvaClipVisionConfig, exist_ok=True)

__all__ = ["EvaClipVisionConfig"]
