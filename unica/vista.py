"""Start from VISTA's released weights: convert a Visualized-BGE state dict into a UniCA checkpoint.

VISTA (FlagEmbedding's ``Visualized_BGE``; ``Visualized_base_en_v1.5.pth`` is bge-base-en-v1.5 + EVA02-CLIP-B/16,
``Visualized_m3.pth`` bge-m3 + EVA02-CLIP-L/14) is UniCA with ``fusion="concat"``: its state dict maps onto a
UniCA model key by key, and the converted model computes what VISTA computes (text-only, image-only with VISTA's
empty text, and image + text), to float32 rounding. With ``fusion="bica"`` Bi-CA layers are added with zero gates,
so the converted Bi-CA model equals VISTA too until it is trained.

What the conversion needs besides the weights is the text encoder's config and tokenizer (``text``: a Hub id or a
local folder; its weights are not read, the ``.pth`` holds them). Every size of the EVA02-CLIP tower comes from the
weights' shapes. Images are preprocessed as VISTA's ``preprocess_val`` (the processor's ``image_transform="eva_clip"``).

The file is read with ``torch.load(weights_only=True)`` only (a pickle that needs more is refused: unpickling can
run code); keys that are neither mapped nor known to be unused, and weights the model needs that the file lacks,
are an error listing them.

Example:

```python
>>> from unica import convert_vista
>>> convert_vista("Visualized_base_en_v1.5.pth", "BAAI/bge-base-en-v1.5", "./vista-base")               # concat
>>> convert_vista("Visualized_base_en_v1.5.pth", "BAAI/bge-base-en-v1.5", "./unica-base", fusion="bica")
```
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from configuration_unica import FUSIONS, EvaClipVisionConfig, UniCAConfig
from modeling_unica import UniCAModel, UniCAProcessor
from modeling_unica.modeling_eva_clip import rotary_tables
from unica.checkpoint import fit_text_length, save_checkpoint, unresolvable_model_message

logger = logging.getLogger(__name__)

# VISTA state-dict prefix -> UniCA state-dict prefix.
KEY_PREFIXES = (
    ("bge_embeddings.", "text_model.embeddings."),
    ("bge_encoder.", "text_model.encoder."),
    ("model_visual.visual.", "vision_model."),
    ("visual_proj.", "visual_projection.proj."),
)
# VISTA entries UniCA has no place for, and why they are safe to leave out.
UNUSED_KEYS = {
    r"bge_pooler\..+": "BERT's pooler, which VISTA never applies (it takes the CLS token itself)",
    r"model_visual\.logit_scale": "EVA-CLIP's contrastive logit scale, not used for embedding",
    r"model_visual\.visual\.(blocks\.\d+\.attn\.)?rope\.freqs_(cos|sin)": "rotary tables: recomputed from the config "
                                                                        "(and checked against these)",
    r"bge_embeddings\.(position_ids|token_type_ids)": "index buffers older transformers saved",
}
# UniCA weights VISTA has no counterpart for: the Bi-CA layers (zero gates: the identity) and the contrastive
# temperature (initialised at VISTA's 0.02).
NEW_KEYS = (r"fusion_encoder\..+", r"logit_scale")
# What the tower's sizes are read from (relative to model_visual.visual.).
SHAPE_KEYS = ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.mlp.w1.weight", "head.weight",
              "rope.freqs_cos", "rope.freqs_sin")
VISION_PREFIX = "model_visual.visual."
# Wrappers training scripts put around a state dict (EVA-CLIP's loader accepts the same).
WRAPPER_KEYS = ("state_dict", "model", "module")
# VISTA's contrastive temperature (Visualized_BGE's default).
VISTA_TEMPERATURE = 0.02
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _listing(keys: list[str], limit: int = 6) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def _key_error(weights: str | os.PathLike, what: str, unexpected: list[str], missing: list[str], fix: str) -> ValueError:
    """One error naming the file, the keys it has that were not expected and those it lacks."""
    parts = []
    if unexpected:
        parts.append(f"unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
    if missing:
        parts.append(f"missing keys ({len(missing)}): {_listing(missing)}")
    return ValueError(f"{str(weights)!r} {what}: " + "; ".join(parts) + f"; {fix}")


# Where VISTA's released weights live, and their licence (the model card of BAAI/bge-visualized: MIT).
VISTA_HUB_ID = "BAAI/bge-visualized"
VISTA_LICENSE = "mit"


def load_vista_state_dict(weights: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a VISTA ``.pth`` (read with ``torch.load(weights_only=True)``) or ``.safetensors`` file.

    A ``{"state_dict": ...}`` / ``{"model": ...}`` / ``{"module": ...}`` wrapper and a ``module.`` prefix (what
    distributed training saves) are removed. Raises ``FileNotFoundError`` for a missing file and ``ValueError``
    naming the file for anything that is not a plain state dict of tensors (a pickle ``weights_only`` refuses
    included: it is never unpickled otherwise).
    """
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"VISTA weights {str(path)!r} do not exist (expected e.g. Visualized_base_en_v1.5.pth)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as error:  # safetensors raises several error types for damaged files
            raise ValueError(f"{str(path)!r} is not a readable safetensors file ({error})") from error
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        detail = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.? Please use|\n|$)", str(error))
        detail = detail.group(1).strip() if detail else _first_line(error)
        if "Unsupported global" not in str(error):
            raise ValueError(f"{str(path)!r} is not a PyTorch checkpoint torch.load can read ({detail})") from error
        raise ValueError(
            f"{str(path)!r} holds Python objects besides tensors, which torch.load(weights_only=True) refuses "
            f"({detail}); unica never unpickles such files (unpickling can run code). If you trust the file, re-save "
            "its tensors: torch.save(dict(torch.load(path, weights_only=False)), 'clean.pth')"
        ) from error
    except (RuntimeError, EOFError, ValueError, OSError) as error:
        raise ValueError(f"{str(path)!r} is not a PyTorch checkpoint torch.load can read ({_first_line(error)})") from error
    while isinstance(state, Mapping) and len(state) == 1 and next(iter(state)) in WRAPPER_KEYS:
        state = next(iter(state.values()))
    if not isinstance(state, Mapping) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items()
    ):
        raise ValueError(
            f"{str(path)!r} holds a {type(state).__name__}, not a state dict (a mapping of names to tensors) as "
            "VISTA's Visualized_*.pth files are"
        )
    if state and all(key.startswith("module.") for key in state):
        state = {key[len("module."):]: value for key, value in state.items()}
    return dict(state)


def map_vista_keys(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``(UniCA state dict, unexpected VISTA keys)``: every key renamed by ``KEY_PREFIXES``, ``UNUSED_KEYS`` left out."""
    mapped, unexpected = {}, []
    for key, value in state.items():
        if any(re.fullmatch(pattern, key) for pattern in UNUSED_KEYS):
            continue
        target = next((new + key[len(old):] for old, new in KEY_PREFIXES if key.startswith(old)), None)
        if target is None:
            unexpected.append(key)
        else:
            mapped[target] = value
    return mapped, unexpected


def eva_clip_config_from_weights(visual: Mapping[str, torch.Tensor]) -> EvaClipVisionConfig:
    """The EVA02-CLIP tower config whose weights ``visual`` (an EVA-CLIP ``visual.*`` state dict, prefix removed)
    holds, every size read from a shape (``ValueError`` for shapes no EVA02-CLIP tower has).

    Width from ``cls_token``; patch size and channels from ``patch_embed.proj.weight``; image size from
    ``pos_embed`` (a square grid of patches plus CLS); depth from the ``blocks.N`` present; SwiGLU width from
    ``w1``; head size from the rotary tables (and so the number of heads); the rotary reference grid (EVA's
    ``pt_hw_seq_len``) from the tables' angles, then every table is checked against the recomputed one.
    """
    width = visual["cls_token"].shape[-1]
    patch_weight = visual["patch_embed.proj.weight"]
    patch, channels = patch_weight.shape[-1], patch_weight.shape[1]
    positions = visual["pos_embed"].shape[1] - 1
    grid = math.isqrt(positions)
    cos, sin = visual["rope.freqs_cos"], visual["rope.freqs_sin"]
    head_dim = cos.shape[-1]
    problems = []
    if patch_weight.shape[-2] != patch or patch_weight.shape[0] != width:
        problems.append(f"patch_embed.proj.weight has shape {tuple(patch_weight.shape)}")
    if grid * grid != positions:
        problems.append(f"pos_embed holds {positions} patch positions, not a square grid")
    if cos.shape != (positions, head_dim) or head_dim % 4 or width % head_dim:
        problems.append(f"rope.freqs_cos has shape {tuple(cos.shape)} for {positions} patches of width {width}")
    if problems:
        raise ValueError("the EVA-CLIP tower's weights have shapes no EVA02-CLIP tower has: " + "; ".join(problems))
    depth = 1 + max(int(match.group(1)) for key in visual if (match := re.match(r"blocks\.(\d+)\.", key)))
    config = EvaClipVisionConfig(
        hidden_size=width,
        intermediate_size=visual["blocks.0.mlp.w1.weight"].shape[0],
        num_hidden_layers=depth,
        num_attention_heads=width // head_dim,
        image_size=grid * patch,
        patch_size=patch,
        num_channels=channels,
        projection_dim=visual["head.weight"].shape[0],
        qkv_bias="blocks.0.attn.q_bias" in visual,
        rope_reference_grid=_rope_reference_grid(cos, sin, grid),
    )
    expected = rotary_tables(grid, head_dim, config.rope_reference_grid, config.rope_theta)
    for name, table in visual.items():
        if name.endswith(("rope.freqs_cos", "rope.freqs_sin")):
            reference = expected[0] if name.endswith("cos") else expected[1]
            if table.shape != reference.shape or not torch.allclose(table.float(), reference, atol=1e-5):
                raise ValueError(
                    f"the rotary table {name} is not EVA02-CLIP's for a {grid}x{grid} grid, head size {head_dim} and "
                    f"reference grid {config.rope_reference_grid}: this is not an EVA02-CLIP tower UniCA can run"
                )
    return config


def _rope_reference_grid(cos: torch.Tensor, sin: torch.Tensor, grid: int, default: int = 16) -> int:
    """EVA's ``pt_hw_seq_len`` from its rotary tables: row 1 is patch (0, 1), whose last channel turns by
    ``reference / grid`` times the lowest frequency (small, so the angle is unambiguous). ``default`` for a 1x1 grid."""
    if grid < 2:
        return default
    head_dim = cos.shape[-1]
    axis_dim = head_dim // 2
    lowest = 1.0 / (10000.0 ** ((axis_dim - 2) / axis_dim))
    angle = math.atan2(float(sin[1, -1]), float(cos[1, -1]))
    return max(1, round(angle / lowest * grid))


def _text_parts(text: str | os.PathLike):
    """(config, tokenizer) of the text encoder ``text`` (its weights are not needed: the VISTA file holds them)."""
    from transformers import AutoConfig, AutoTokenizer

    try:
        return AutoConfig.from_pretrained(text), AutoTokenizer.from_pretrained(text)
    except OSError as error:  # transformers turns every Hub / file resolution failure into an OSError
        raise ValueError(unresolvable_model_message(text, "text encoder", error)) from error


def load_vista(
    weights: str | os.PathLike, text: str | os.PathLike, fusion: str = "concat", bica_layers: int = 1
) -> tuple[UniCAModel, UniCAProcessor]:
    """A UniCA model (eval mode) and processor holding VISTA's weights; see :func:`convert_vista`."""
    from transformers import CLIPImageProcessorPil

    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
    state = load_vista_state_dict(weights)
    mapped, unexpected = map_vista_keys(state)
    absent = [VISION_PREFIX + key for key in SHAPE_KEYS if VISION_PREFIX + key not in state]
    absent += [key for key in ("bge_embeddings.word_embeddings.weight", "visual_proj.weight") if key not in state]
    if absent:
        raise _key_error(weights, "is not a VISTA (Visualized-BGE) state dict", unexpected, absent,
                         "pass a Visualized_*.pth file as released by FlagEmbedding (e.g. Visualized_base_en_v1.5.pth)")
    visual = {key[len(VISION_PREFIX):]: value for key, value in state.items() if key.startswith(VISION_PREFIX)}
    vision_config = eva_clip_config_from_weights(visual)

    text_config, tokenizer = _text_parts(text)
    text_hidden = state["bge_embeddings.word_embeddings.weight"].shape[1]
    if getattr(text_config, "hidden_size", None) != text_hidden:
        raise ValueError(
            f"--text {str(text)!r} has hidden size {getattr(text_config, 'hidden_size', None)} but the text encoder in "
            f"{str(weights)!r} has {text_hidden}; pass the text encoder VISTA was trained with (BAAI/bge-base-en-v1.5 "
            "for Visualized_base_en_v1.5.pth, BAAI/bge-m3 for Visualized_m3.pth)"
        )
    config = UniCAConfig(
        text_config=text_config.to_dict(),
        vision_config=vision_config.to_dict(),
        fusion=fusion,
        bica_layers=bica_layers,
        pooling="cls",
        normalize=True,
        contrastive_temperature=VISTA_TEMPERATURE,
        empty_text_ids=list(tokenizer("")["input_ids"]),
        fused_position_start=0,  # VISTA: [CLS] at 0, image tokens 1..N, for BERT and XLM-R alike
        components={
            "text": {"name": str(text), "pretrained": True},
            "vision": {"name": f"EVA02-CLIP-B/16 from {Path(weights).name}", "pretrained": True},
            "origin": {"name": "VISTA / Visualized-BGE (BAAI/bge-visualized, arXiv 2406.04292)",
                       "weights": Path(weights).name, "hub_id": VISTA_HUB_ID, "license": VISTA_LICENSE},
        },
    )
    with torch.random.fork_rng(devices=[]):  # the Bi-CA layers' initialisation: the same for every conversion
        torch.manual_seed(0)
        model = UniCAModel(config)
    _load_mapped(model, mapped, unexpected, weights, text)
    fit_text_length(model, tokenizer)
    size = vision_config.image_size
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}, image_mean=list(OPENAI_CLIP_MEAN),
        image_std=list(OPENAI_CLIP_STD),
    )
    processor = UniCAProcessor(image_processor, tokenizer, max_text_length=model.config.max_text_length,
                               image_transform="eva_clip")
    return model.eval(), processor


def _load_mapped(model: UniCAModel, mapped: dict[str, torch.Tensor], unexpected: list[str],
                 weights: str | os.PathLike, text: str | os.PathLike) -> None:
    """Load the renamed VISTA weights into ``model``; every key and shape must fit (``ValueError`` listing those
    that do not, by their VISTA names)."""
    own = model.state_dict()
    reverse = {new: old for old, new in KEY_PREFIXES}

    def vista_name(key: str) -> str:
        return next((reverse[new] + key[len(new):] for new in reverse if key.startswith(new)), key)

    unexpected = unexpected + [vista_name(key) for key in mapped if key not in own]
    missing = [vista_name(key) for key in own
               if key not in mapped and not any(re.fullmatch(pattern, key) for pattern in NEW_KEYS)]
    if unexpected or missing:
        raise _key_error(weights, f"does not fit a VISTA model with the text encoder {str(text)!r}", unexpected,
                         missing, "pass a Visualized_*.pth file and the text encoder it was trained with")
    mismatched = [f"{vista_name(key)} {tuple(value.shape)} (the model: {tuple(own[key].shape)})"
                  for key, value in mapped.items() if value.shape != own[key].shape]
    if mismatched:
        raise ValueError(
            f"weights of {str(weights)!r} have other shapes than a model with the text encoder {str(text)!r}: "
            f"{_listing(mismatched, 4)}; pass the text encoder VISTA was trained with"
        )
    model.load_state_dict(mapped, strict=False)


def convert_vista(
    weights: str | os.PathLike,
    text: str | os.PathLike,
    out: str | os.PathLike,
    fusion: str = "concat",
    bica_layers: int = 1,
    overwrite: bool = False,
) -> Path:
    """Convert VISTA weights into a UniCA checkpoint folder at ``out`` (written atomically) and return its path.

    Args:
        weights: a VISTA state dict, ``Visualized_base_en_v1.5.pth`` / ``Visualized_m3.pth`` (or a ``.safetensors``
            copy); read with ``torch.load(weights_only=True)``.
        text: the text encoder VISTA was trained with: a Hub id (``BAAI/bge-base-en-v1.5``, ``BAAI/bge-m3``) or a
            local folder with its ``config.json`` and tokenizer (offline; its weights are not read).
        out: the checkpoint folder to write; an existing one is an error unless ``overwrite``.
        fusion: ``"concat"`` (VISTA itself) or ``"bica"`` (zero-gated Bi-CA layers on top: equal to VISTA until
            trained).
        bica_layers: Bi-CA layers with ``fusion="bica"``.

    The checkpoint pools the CLS token, embeds an image alone with the empty text (VISTA's convention) and
    preprocesses images as VISTA (``image_transform="eva_clip"``).

    Example:

    ```python
    >>> convert_vista("Visualized_base_en_v1.5.pth", "BAAI/bge-base-en-v1.5", "./vista-base")
    PosixPath('vista-base')
    >>> model = AutoModel.from_pretrained("./vista-base", trust_remote_code=True)
    ```
    """
    if Path(out).exists() and not overwrite:  # before reading a file of gigabytes
        raise FileExistsError(f"{str(out)!r} already exists; choose another --out or pass --overwrite to replace it")
    model, processor = load_vista(weights, text, fusion=fusion, bica_layers=bica_layers)
    path = save_checkpoint(model, processor, out, overwrite=overwrite)
    logger.info("converted %s into %s (fusion=%s, EVA02-CLIP %d layers x %d, %d image tokens of %d px images)",
                weights, path, fusion, model.config.vision_config.num_hidden_layers,
                model.config.vision_config.hidden_size, model.config.num_image_tokens,
                model.config.vision_config.image_size)
    return path


__all__ = ["convert_vista", "eva_clip_config_from_weights", "load_vista", "load_vista_state_dict", "map_vista_keys"]
