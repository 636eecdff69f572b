"""Masks for CoCoA pre-training: which text tokens and image patches an item hides, and the pixel patches.

A mask is drawn per item from ``(seed, step, stage, the item's content)`` (:func:`item_generators`), not
from the process's random state: an item is masked the same way whichever process, batch position or batch
size handles it, so two data-parallel processes make the same update as one process on the concatenated
batch, and a resumed run masks as the uninterrupted one did.

Each masked item hides exactly ``round(ratio * n)`` of its ``n`` maskable units (at least one when
``ratio > 0``), as MAE does, rather than a Bernoulli draw per unit: short captions always lose something.
Text units are the real tokens other than the tokenizer's special tokens ([CLS], [SEP], [PAD]); image units
are the vision tower's patches (its ``patch_size`` grid over the ``input_image_size`` square).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import torch
from torch import Tensor

__all__ = ["check_mask_ratio", "item_generators", "mask_pixels", "patch_grid", "patchify", "sample_masks"]


def check_mask_ratio(value: object, key: str) -> float:
    """``value`` as a mask ratio in [0, 1); ``ValueError`` naming ``key`` and the fix otherwise.

    Example:
        >>> check_mask_ratio(0.5, "pretrain.text_mask_ratio")
        0.5
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= float(value) < 1:
        raise ValueError(f"{key}={value!r} is not a mask ratio: use a number in [0, 1) (0 hides nothing; 1 would "
                         f"hide every token, leaving nothing to predict from), e.g. {key.rsplit('.', 1)[-1]}: 0.5")
    return float(value)


def patch_grid(config) -> tuple[int, int]:
    """``(patch_size, patches per side)`` of a UniCA config's vision tower, checked against its image tokens.

    ``ValueError`` if the tower's tokens are not a square grid of ``patch_size`` pixel patches over the
    ``input_image_size`` image (then its patches cannot be matched to pixels for patch reconstruction).
    """
    patch = getattr(config.vision_config, "patch_size", None)
    size = config.input_image_size
    if isinstance(patch, (tuple, list)):
        patch = patch[0] if len(set(patch)) == 1 else None
    if not isinstance(patch, int) or patch < 1 or size % patch or (size // patch) ** 2 != config.num_image_tokens:
        raise ValueError(
            f"patch reconstruction needs the vision tower's image tokens to be a grid of square pixel patches, but "
            f"{config.vision_config.model_type} has patch_size={patch!r}, {size} px images and "
            f"{config.num_image_tokens} image tokens; set pretrain.image_mask_ratio and "
            "pretrain.decoder_image_mask_ratio to 0 (text reconstruction only)")
    return patch, size // patch


def patchify(pixel_values: Tensor, patch: int) -> Tensor:
    """``(B, C, H, W)`` pixels -> ``(B, patches, C * patch * patch)``, patches in the tower's row-major order."""
    if pixel_values is None or pixel_values.dim() != 4:
        raise ValueError("patch reconstruction needs pixel_values of shape (images, channels, height, width); "
                         "this batch has no images")
    batch, channels, height, width = pixel_values.shape
    rows, columns = height // patch, width // patch
    grid = pixel_values.reshape(batch, channels, rows, patch, columns, patch)
    return grid.permute(0, 2, 4, 1, 3, 5).reshape(batch, rows * columns, channels * patch * patch)


def mask_pixels(pixel_values: Tensor, patch_mask: Tensor, patch: int) -> Tensor:
    """``pixel_values`` with the pixels of masked patches (``patch_mask``: ``(B, patches)`` bool) set to 0.

    Pixel values are the image processor's normalised ones, so 0 is the data set's mean colour: the tower's
    patch embedding of a blank patch is its bias plus the position, which plays SimMIM's mask token.
    """
    batch, _, height, width = pixel_values.shape
    rows, columns = height // patch, width // patch
    keep = (~patch_mask).reshape(batch, 1, rows, 1, columns, 1).to(pixel_values.dtype)
    grid = pixel_values.reshape(batch, -1, rows, patch, columns, patch) * keep
    return grid.reshape(pixel_values.shape)


def item_generators(input_ids: Tensor, attention_mask: Tensor, pixel_values: Tensor | None, image_mask: Tensor,
                    seed: int, step: int, stage: int) -> list[torch.Generator]:
    """One CPU ``torch.Generator`` per item, seeded from ``(seed, step, stage)`` and the item's content (its
    real token ids and, if it has one, its pixels): padding and batch position do not change it."""
    generators = []
    image_rows = torch.cumsum(image_mask.long(), 0) - 1
    for row in range(input_ids.shape[0]):
        digest = hashlib.blake2b(digest_size=8)
        digest.update(f"{seed}:{step}:{stage}".encode())
        digest.update(input_ids[row][attention_mask[row].bool()].cpu().numpy().tobytes())
        if bool(image_mask[row]):
            digest.update(pixel_values[int(image_rows[row])].detach().float().cpu().numpy().tobytes())
        generator = torch.Generator()
        generator.manual_seed(int.from_bytes(digest.digest(), "little") & 0x7FFF_FFFF_FFFF_FFFF)
        generators.append(generator)
    return generators


def _choose(maskable: Tensor, ratio: float, generator: torch.Generator) -> Tensor:
    """A bool mask over ``maskable``'s length hiding ``round(ratio * n)`` (>= 1 if ratio > 0) of its n True units."""
    positions = maskable.nonzero(as_tuple=True)[0]
    chosen = torch.zeros_like(maskable)
    count = len(positions)
    if ratio <= 0 or count == 0:
        return chosen
    hidden = min(count, max(1, round(ratio * count)))
    order = torch.randperm(count, generator=generator)[:hidden]
    chosen[positions[order]] = True
    return chosen


def sample_masks(input_ids: Tensor, attention_mask: Tensor, image_mask: Tensor, generators: list[torch.Generator],
                 special_ids: Iterable[int], text_ratio: float, image_ratio: float,
                 num_patches: int) -> tuple[Tensor, Tensor]:
    """``(text_mask (B, L), patch_mask (images, patches))``: the tokens and patches each item hides.

    Draws the text mask first, then the patch mask, from each item's generator (:func:`item_generators`).
    """
    special = torch.tensor(sorted(set(special_ids)), dtype=input_ids.dtype)
    ids, valid = input_ids.cpu(), attention_mask.cpu().bool()
    maskable = valid & ~torch.isin(ids, special)
    text_rows, patch_rows = [], []
    for row, generator in enumerate(generators):
        text_rows.append(_choose(maskable[row], text_ratio, generator))
        if bool(image_mask[row]):
            patch_rows.append(_choose(torch.ones(num_patches, dtype=torch.bool), image_ratio, generator))
    text_mask = torch.stack(text_rows).to(input_ids.device)
    patch_mask = (torch.stack(patch_rows) if patch_rows else torch.zeros(0, num_patches, dtype=torch.bool))
    return text_mask, patch_mask.to(input_ids.device)
