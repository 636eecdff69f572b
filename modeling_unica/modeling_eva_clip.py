"""An EVA02-CLIP vision tower (EVA02-CLIP-B/16, -L/14) as a transformers model: VISTA's image encoder.

The computation is EVA-CLIP's ``EVAVisionTransformer`` as VISTA (FlagEmbedding's ``Visualized_BGE``) runs it:
patch embedding + CLS token + absolute position embeddings, then blocks of

    x = x + Attention(LN(x))      queries / keys of the patch tokens rotated by 2-D RoPE, sub-LayerNorm before
                                   the output projection
    x = x + SwiGLU(LN(x))         w3(LN(silu(w1 x) * w2 x))

``last_hidden_state`` is the last block's output, CLS token first and *without* the final LayerNorm (EVA-CLIP's
``return_all_features=True``, the tokens VISTA projects into BGE); ``pooler_output`` is the CLIP image embedding
``head(norm(x)[:, 0])``. Weight names are EVA-CLIP's own (``blocks.N.attn.q_proj``, ``blocks.N.mlp.w1``, ...), so
an EVA-CLIP ``visual.*`` state dict maps onto this model by dropping its prefix (the rotary tables are not
weights: they are computed from the config).

Importing this file registers the model with ``AutoModel``. This file is shipped to the Hub as remote code: it
imports only torch, transformers and the configuration file beside it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling

try:  # flat remote-code layout (a checkpoint folder): the config file sits beside this one
    from .configuration_eva_clip import EvaClipVisionConfig
except ImportError:  # installed package layout: configuration_unica/ and modeling_unica/
    from configuration_unica.configuration_eva_clip import EvaClipVisionConfig

try:
    from transformers import initialization as init
except ImportError:  # pragma: no cover - transformers < 5
    from torch.nn import init


def rotary_tables(grid: int, head_dim: int, reference_grid: float, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """EVA-CLIP's 2-D rotary tables (``VisionRotaryEmbeddingFast``) for a ``grid`` x ``grid`` patch grid.

    Returns ``(cos, sin)``, each ``(grid * grid, head_dim)`` float32 on the CPU, rows in the patch order (row-major).
    The first half of a row's channels rotates with the patch's row, the second half with its column; positions
    are ``i / grid * reference_grid`` (EVA's ``intp_freq``). Computed with EVA's own operations, in its order, so
    the tables equal VISTA's bit for bit.

    Example:

    ```python
    >>> cos, sin = rotary_tables(14, 64, 16, 10000.0)  # EVA02-CLIP-B/16 at 224 px
    >>> cos.shape
    torch.Size([196, 64])
    ```
    """
    axis_dim = head_dim // 2
    frequencies = 1.0 / (theta ** (torch.arange(0, axis_dim, 2)[: axis_dim // 2].float() / axis_dim))
    positions = torch.arange(grid) / grid * reference_grid
    angles = (positions[:, None] * frequencies[None, :]).repeat_interleave(2, dim=-1)  # (grid, axis_dim)
    rows = angles[:, None, :].expand(grid, grid, axis_dim)
    columns = angles[None, :, :].expand(grid, grid, axis_dim)
    angles = torch.cat([rows, columns], dim=-1).reshape(grid * grid, head_dim)
    return angles.cos(), angles.sin()


def rotate_pairs(states: torch.Tensor) -> torch.Tensor:
    """``(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...)``: the rotation by 90 degrees of each channel pair."""
    pairs = states.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


class EvaClipPatchEmbedding(nn.Module):
    """Non-overlapping ``patch_size`` patches, each linearly embedded (a strided convolution)."""

    def __init__(self, config: EvaClipVisionConfig):
        super().__init__()
        self.proj = nn.Conv2d(config.num_channels, config.hidden_size, kernel_size=config.patch_size,
                              stride=config.patch_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.proj(pixel_values).flatten(2).transpose(1, 2)


class EvaClipAttention(nn.Module):
    """EVA02 self-attention: separate q / k / v projections (biases on q and v only), RoPE on the patch tokens,
    and a sub-LayerNorm before the output projection."""

    def __init__(self, config: EvaClipVisionConfig):
        super().__init__()
        width = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.q_proj = nn.Linear(width, width, bias=False)
        self.k_proj = nn.Linear(width, width, bias=False)
        self.v_proj = nn.Linear(width, width, bias=False)
        if config.qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(width))
            self.v_bias = nn.Parameter(torch.zeros(width))
        else:
            self.q_bias = self.v_bias = None
        self.inner_attn_ln = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.proj = nn.Linear(width, width)

    def _heads(self, states: torch.Tensor) -> torch.Tensor:
        batch, length, _ = states.shape
        return states.view(batch, length, self.num_heads, -1).transpose(1, 2)

    def _project(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The query, key and value projections (one method, which an inference fast path may replace)."""
        return (F.linear(states, self.q_proj.weight, self.q_bias), F.linear(states, self.k_proj.weight),
                F.linear(states, self.v_proj.weight, self.v_bias))

    def forward(self, states: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        query, key, value = (self._heads(projected) for projected in self._project(states))
        cos, sin = rope  # one row per token (the CLS token's: cos 1, sin 0), sin signed per pair (-s, s): see _rope

        def rotate(tensor: torch.Tensor) -> torch.Tensor:  # x cos + rotate_pairs(x) sin, with no copy of x's halves
            swapped = tensor.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
            return torch.addcmul(tensor * cos, swapped, sin).type_as(value)

        attended = F.scaled_dot_product_attention(rotate(query), rotate(key), value)
        batch, _, length, _ = attended.shape
        return self.proj(self.inner_attn_ln(attended.transpose(1, 2).reshape(batch, length, -1)))


class EvaClipSwiGLU(nn.Module):
    """SwiGLU feed-forward with a sub-LayerNorm: ``w3(LN(silu(w1 x) * w2 x))``."""

    def __init__(self, config: EvaClipVisionConfig):
        super().__init__()
        self.w1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.w2 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.ffn_ln = nn.LayerNorm(config.intermediate_size, eps=config.layer_norm_eps)
        self.w3 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.w3(self.ffn_ln(F.silu(self.w1(states)) * self.w2(states)))


class EvaClipBlock(GradientCheckpointingLayer):
    """One pre-norm EVA02 block: attention and SwiGLU, each added back to the residual stream."""

    def __init__(self, config: EvaClipVisionConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = EvaClipAttention(config)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = EvaClipSwiGLU(config)

    def forward(self, states: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        states = states + self.attn(self.norm1(states), rope)
        return states + self.mlp(self.norm2(states))


class EvaClipVisionPreTrainedModel(PreTrainedModel):
    config_class = EvaClipVisionConfig
    config: EvaClipVisionConfig
    base_model_prefix = "eva_clip"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["EvaClipBlock"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """EVA-CLIP's initialisation: truncated normal weights, zero biases, unit LayerNorms."""
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, EvaClipAttention) and module.q_bias is not None:
            init.zeros_(module.q_bias)
            init.zeros_(module.v_bias)
        elif isinstance(module, EvaClipVisionModel):
            init.trunc_normal_(module.cls_token, std=std)
            init.trunc_normal_(module.pos_embed, std=std)


class EvaClipVisionModel(EvaClipVisionPreTrainedModel):
    r"""EVA02-CLIP vision tower. See the module docstring for what it computes and returns.

    Example:

    ```python
    >>> import torch
    >>> from configuration_unica import EvaClipVisionConfig
    >>> from modeling_unica import EvaClipVisionModel
    >>> config = EvaClipVisionConfig(hidden_size=64, intermediate_size=170, num_hidden_layers=2,
    ...                              num_attention_heads=1, image_size=32, patch_size=16, projection_dim=16)
    >>> output = EvaClipVisionModel(config)(pixel_values=torch.randn(2, 3, 32, 32))
    >>> output.last_hidden_state.shape, output.pooler_output.shape  # CLS + 2 x 2 patches
    (torch.Size([2, 5, 64]), torch.Size([2, 16]))
    ```
    """

    def __init__(self, config: EvaClipVisionConfig):
        super().__init__(config)
        grid = config.image_size // config.patch_size
        self.patch_embed = EvaClipPatchEmbedding(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, config.hidden_size))
        self.blocks = nn.ModuleList([EvaClipBlock(config) for _ in range(config.num_hidden_layers)])
        # Pooling only (CLIP image embedding); UniCA reads the patch tokens of last_hidden_state.
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.head = nn.Linear(config.hidden_size, config.projection_dim)
        self._rope_cache: dict = {}
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.patch_embed

    def _rope(self, grid: int, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The rotary tables for a ``grid`` x ``grid`` image, cached per grid, device and dtype (not weights: not
        saved, and recomputed on the CPU exactly as EVA-CLIP computes its buffers).

        Laid out for the whole sequence, so that rotating needs no split: a first row for the CLS token, which is
        not rotated (cos 1, sin 0), and the sines signed per channel pair, ``(-s, s)``, so that
        ``rotate_pairs(x) * sin == swap_pairs(x) * signed_sin``."""
        key = (grid, reference.device, reference.dtype)
        if key not in self._rope_cache:
            config = self.config
            cos, sin = rotary_tables(grid, config.hidden_size // config.num_attention_heads,
                                     config.rope_reference_grid, config.rope_theta)
            sign = torch.tensor([-1.0, 1.0]).repeat(sin.shape[1] // 2)
            cos = torch.cat([torch.ones(1, cos.shape[1]), cos])
            sin = torch.cat([torch.zeros(1, sin.shape[1]), sin * sign])
            self._rope_cache[key] = tuple(t.to(device=reference.device, dtype=reference.dtype) for t in (cos, sin))
        return self._rope_cache[key]

    def _position_embeddings(self, grid: int, interpolate: bool) -> torch.Tensor:
        """Absolute position embeddings for a ``grid`` x ``grid`` image (bicubically resized, as EVA-CLIP's
        ``resize_eva_pos_embed``, when ``interpolate`` and the grid is not the config's)."""
        own = self.config.image_size // self.config.patch_size
        if grid == own:
            return self.pos_embed
        if not interpolate:
            size = grid * self.config.patch_size
            raise ValueError(
                f"pixel_values are {size}x{size} pixels but this EVA-CLIP tower was made for {self.config.image_size}"
                f"x{self.config.image_size}; resize the images or pass interpolate_pos_encoding=True"
            )
        cls, patches = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        patches = patches.reshape(1, own, own, -1).permute(0, 3, 1, 2)
        patches = F.interpolate(patches.float(), size=(grid, grid), mode="bicubic", align_corners=False)
        patches = patches.to(self.pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, grid * grid, -1)
        return torch.cat([cls, patches], dim=1)

    def forward(
        self,
        pixel_values: torch.FloatTensor,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutputWithPooling | tuple:
        """Embed square images ``(batch, channels, size, size)``; ``size`` must be a multiple of ``patch_size``."""
        height, width = pixel_values.shape[-2:]
        patch = self.config.patch_size
        if height != width or height % patch:
            raise ValueError(
                f"pixel_values are {height}x{width} pixels; an EVA-CLIP tower takes square images whose side is a "
                f"multiple of patch_size={patch}"
            )
        grid = height // patch
        pixel_values = pixel_values.to(self.patch_embed.proj.weight.dtype)
        states = self.patch_embed(pixel_values)
        states = torch.cat([self.cls_token.expand(states.shape[0], -1, -1), states], dim=1)
        states = states + self._position_embeddings(grid, interpolate_pos_encoding)
        rope = self._rope(grid, states)
        if output_hidden_states is None:
            output_hidden_states = bool(getattr(self.config, "output_hidden_states", False))
        hidden_states = (states,) if output_hidden_states else None
        for block in self.blocks:
            states = block(states, rope)
            if output_hidden_states:
                hidden_states += (states,)
        pooled = self.head(self.norm(states[:, 0]))
        output = BaseModelOutputWithPooling(last_hidden_state=states, pooler_output=pooled,
                                            hidden_states=hidden_states)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return output if return_dict else output.to_tuple()


AutoModel.register(EvaClipVisionConfig, EvaClipVisionModel, exist_ok=True)

__all__ = ["EvaClipVisionModel", "EvaClipVisionPreTrainedModel", "rotary_tables"]
