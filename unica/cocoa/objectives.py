"""The two CoCoA pre-training stages as losses of one processor batch, and the module the Trainer trains.

Stage 1, the bidirectional warm-up (joint reconstruction through the fused encoder): each item's text hides
``text_mask_ratio`` of its tokens behind ``[MASK]`` and its image ``image_mask_ratio`` of its patches (their
pixels set to the mean colour, SimMIM-style: Hugging Face towers cannot drop tokens as MAE does); the encoder's
output at a hidden token predicts the token (:class:`~unica.cocoa.heads.TokenPredictionHead`, cross-entropy)
and at a hidden patch predicts the patch's pixels (:class:`~unica.cocoa.heads.PatchPredictionHead`, mean
squared error). Text-only, image-only and image + text items all take the model's own paths.

*What image patches reconstruct, and why:* the image processor's normalised pixel values of the hidden
patches (per channel, with the processor's mean and std; not re-normalised per patch). Pixels are a fixed
target that the model cannot move: the tower's own patch features would be a target the tower itself
produces, which a tower trained on its own targets can collapse to a constant (BYOL / data2vec need an EMA
teacher to avoid that, which would double the vision tower). Pixels also need no particular tower and are the
same in both stages. Not per-patch normalised (MAE's ``norm_pix_loss``): a patch's mean colour is content
(the scenes' "red circle", clip art's palette), and flat patches would have no target left.

Stage 2, reconstruction through the summary token: the encoder embeds the unmasked item; a shallow decoder
(:class:`~unica.cocoa.heads.BridgeDecoder`) sees the encoder only through the pooled embedding (the [CLS]
output for ``pooling="cls"``; the token mean for ``pooling="mean"``: always what contrastive training will
compare) plus the item's own tokens and patches, ``decoder_text_mask_ratio`` / ``decoder_image_mask_ratio``
of them hidden, and predicts the hidden ones with the same heads. That is the truncated attention: the
decoder never attends to the encoder's other outputs, so the content it needs is forced into the summary.

Losses are normalised by the number of hidden tokens (and patch values) of the whole *global* batch: with
several processes each divides its sum by the all-reduced count, so the averaged gradient is that of one
process on the concatenated batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from modeling_unica import UniCAModel
from modeling_unica.modeling_unica import zero_touching
from unica.cocoa.heads import CoCoAHeads, check_decoder_fits
from unica.cocoa.masking import check_mask_ratio, item_generators, mask_pixels, patchify, sample_masks

__all__ = ["CoCoAOutput", "CoCoAPretrainingModel", "CoCoASettings", "Reconstruction", "reconstruction_loss",
           "stage1_reconstruction", "stage2_reconstruction"]


@dataclass
class CoCoASettings:
    """What ``unica pretrain``'s ``pretrain:`` section sets; checked when built (``ValueError`` naming the key).

    Args:
        stage1_steps / stage2_steps: optimiser steps of each stage (stage 1 first; 0 skips a stage).
        text_mask_ratio / image_mask_ratio: stage 1, the share of text tokens / image patches the encoder's input
            hides (in [0, 1)).
        decoder_text_mask_ratio / decoder_image_mask_ratio: stage 2, the share the decoder's input hides
            (heavy: what the decoder cannot see must come through the summary token).
        image_weight: weight of the patch loss beside the token loss.
        decoder_layers / decoder_heads / decoder_hidden_size: the stage-2 decoder (heads default to the encoder's;
            the width must be the encoder's hidden size).
        sides: the sides of a training row that become pre-training items (``query``, ``pos``, ``neg``).
    """

    stage1_steps: int = 0
    stage2_steps: int = 0
    text_mask_ratio: float = 0.3
    image_mask_ratio: float = 0.5
    decoder_text_mask_ratio: float = 0.6
    decoder_image_mask_ratio: float = 0.75
    image_weight: float = 1.0
    decoder_layers: int = 1
    decoder_heads: int | None = None
    decoder_hidden_size: int | None = None
    sides: Sequence[str] = ("query", "pos")

    def __post_init__(self) -> None:
        where = "pretrain"
        for name in ("stage1_steps", "stage2_steps", "decoder_layers"):
            value = getattr(self, name)
            least = 1 if name == "decoder_layers" else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{where}.{name}={value!r} must be an integer >= {least}")
        if self.stage1_steps + self.stage2_steps == 0:
            raise ValueError(f"{where}.stage1_steps and {where}.stage2_steps are both 0: nothing to pre-train; set "
                             "e.g. stage1_steps: 20 and stage2_steps: 20")
        for name in ("text_mask_ratio", "image_mask_ratio", "decoder_text_mask_ratio", "decoder_image_mask_ratio"):
            setattr(self, name, check_mask_ratio(getattr(self, name), f"{where}.{name}"))
        for stage, text, image in ((1, "text_mask_ratio", "image_mask_ratio"),
                                   (2, "decoder_text_mask_ratio", "decoder_image_mask_ratio")):
            if getattr(self, f"stage{stage}_steps") and getattr(self, text) == 0 and getattr(self, image) == 0:
                raise ValueError(f"{where}.{text} and {where}.{image} are both 0: stage {stage} hides nothing and has "
                                 f"nothing to predict; raise one of them or set stage{stage}_steps: 0")
        weight = self.image_weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
            raise ValueError(f"{where}.image_weight={weight!r} must be a number >= 0")
        if self.decoder_heads is not None and (isinstance(self.decoder_heads, bool)
                                               or not isinstance(self.decoder_heads, int)):
            raise ValueError(f"{where}.decoder_heads={self.decoder_heads!r} must be an integer (or left out)")
        if self.decoder_hidden_size is not None and (isinstance(self.decoder_hidden_size, bool)
                                                     or not isinstance(self.decoder_hidden_size, int)):
            raise ValueError(f"{where}.decoder_hidden_size={self.decoder_hidden_size!r} must be an integer "
                             "(or left out)")
        sides = [self.sides] if isinstance(self.sides, str) else list(self.sides)
        unknown = [side for side in sides if side not in ("query", "pos", "neg")]
        if not sides or unknown:
            raise ValueError(f"{where}.sides={self.sides!r}: use a list of query, pos and neg")
        self.sides = tuple(sides)

    @property
    def total_steps(self) -> int:
        return self.stage1_steps + self.stage2_steps

    @property
    def reconstructs_patches(self) -> bool:
        """Whether some stage that runs hides image patches (then the data must have images)."""
        return bool((self.stage1_steps and self.image_mask_ratio)
                    or (self.stage2_steps and self.decoder_image_mask_ratio))

    def stage_at(self, step: int) -> int:
        """The stage that optimiser step ``step`` (0-based: the Trainer's ``global_step`` before it) trains."""
        return 1 if step < self.stage1_steps else 2

    def ratios(self, stage: int) -> tuple[float, float]:
        """``(text, image)`` mask ratios of ``stage``."""
        if stage == 1:
            return self.text_mask_ratio, self.image_mask_ratio
        return self.decoder_text_mask_ratio, self.decoder_image_mask_ratio

    def check_fits(self, hidden_size: int) -> None:
        """``ValueError`` if the decoder does not fit an encoder of ``hidden_size`` (before the model is loaded)."""
        if self.stage2_steps:
            check_decoder_fits(hidden_size, self.decoder_hidden_size, self.decoder_heads)

    def build_heads(self, model: UniCAModel) -> CoCoAHeads:
        """The heads these settings need, for ``model``."""
        patches_in_decoder = bool(self.stage2_steps and self.decoder_image_mask_ratio)
        return CoCoAHeads.for_model(model, patches=self.reconstructs_patches, decoder=bool(self.stage2_steps),
                                    decoder_patches=patches_in_decoder, decoder_layers=self.decoder_layers,
                                    decoder_heads=self.decoder_heads, decoder_hidden_size=self.decoder_hidden_size)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "sides": list(self.sides)}


@dataclass
class Reconstruction:
    """Predictions at the hidden units of one batch: token logits ``(tokens, vocab)`` and their ids, patch pixel
    predictions ``(patches, patch_dim)`` and their pixels (zero rows when nothing of a kind was hidden)."""

    token_logits: Tensor
    token_targets: Tensor
    patch_predictions: Tensor
    patch_targets: Tensor


@dataclass
class CoCoAOutput:
    loss: Tensor
    text_loss: Tensor
    image_loss: Tensor
    token_accuracy: Tensor
    stage: int


def _image_rows(batch_size: int, image_mask: Tensor | None, device: torch.device) -> Tensor:
    if image_mask is None:
        return torch.zeros(batch_size, dtype=torch.bool, device=device)
    return image_mask.to(device=device, dtype=torch.bool)


def _patch_outputs(heads: CoCoAHeads, states: Tensor | None, pixel_values: Tensor | None, patch_mask: Tensor,
                   like: Tensor) -> tuple[Tensor, Tensor]:
    """Predictions and pixel targets of the hidden patches (``states``: ``(images, patches, H)``), or two empty
    ``(0, patch_dim)`` tensors when there are none."""
    if states is None or heads.patch_head is None or not bool(patch_mask.any()):
        dim = heads.patch_head.output.out_features if heads.patch_head is not None else 0
        empty = like.new_zeros(0, dim)
        return empty, empty
    targets = patchify(pixel_values, heads.patch_size)[patch_mask].to(like.dtype)
    return heads.patch_head(states[patch_mask]), targets


def stage1_reconstruction(model: UniCAModel, heads: CoCoAHeads, batch: dict[str, Tensor], text_mask: Tensor,
                          patch_mask: Tensor, mask_token_id: int) -> Reconstruction:
    """Stage 1: encode the batch with the hidden tokens replaced by ``[MASK]`` and the hidden patches blanked;
    predict them from the encoder's outputs at their own positions.

    ``text_mask`` is ``(B, L)`` bool over ``input_ids``; ``patch_mask`` ``(images, patches)`` over the items with
    an image (in batch order). ``last_hidden_state`` is ``[CLS] + image tokens + text tokens`` for those items
    and the text tokens for the others.
    """
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    pixel_values = batch.get("pixel_values")
    image_rows = _image_rows(input_ids.shape[0], batch.get("image_mask"), input_ids.device)
    if bool(patch_mask.any()):
        if heads.patch_head is None:
            raise ValueError("patch reconstruction was asked for (a patch mask) but these heads have no patch head; "
                             "build them with patches=True")
        encoder_pixels = mask_pixels(pixel_values, patch_mask, heads.patch_size)
    else:
        encoder_pixels = pixel_values
    output = model(input_ids=input_ids.masked_fill(text_mask, mask_token_id), attention_mask=attention_mask,
                   pixel_values=encoder_pixels, image_mask=image_rows if pixel_values is not None else None)
    states = output.last_hidden_state
    num_patches = model.config.num_image_tokens
    rows, columns = text_mask.nonzero(as_tuple=True)
    positions = columns + image_rows[rows].long() * num_patches  # text after the image tokens in fused rows
    token_logits = heads.token_head(states[rows, positions])
    image_states = states[image_rows][:, 1 : 1 + num_patches] if bool(image_rows.any()) else None
    patch_predictions, patch_targets = _patch_outputs(heads, image_states, pixel_values, patch_mask, states)
    return Reconstruction(token_logits, input_ids[rows, columns], patch_predictions, patch_targets)


def stage2_reconstruction(model: UniCAModel, heads: CoCoAHeads, batch: dict[str, Tensor], text_mask: Tensor,
                          patch_mask: Tensor) -> Reconstruction:
    """Stage 2: encode the unmasked batch; the decoder rebuilds the hidden tokens and patches from the pooled
    embedding (the bridge) and the visible rest of the item's own input, never from other encoder outputs."""
    if heads.decoder is None:
        raise ValueError("stage 2 needs the decoder: build the heads with decoder=True (pretrain.stage2_steps > 0)")
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    pixel_values = batch.get("pixel_values")
    image_rows = _image_rows(input_ids.shape[0], batch.get("image_mask"), input_ids.device)
    output = model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
                   image_mask=image_rows if pixel_values is not None else None)
    bridge = output.embeddings
    word_embeddings = model.text_model.get_input_embeddings()(input_ids)
    with_patches = heads.decoder.patch_embedding is not None and bool(image_rows.any())
    patches = patchify(pixel_values, heads.patch_size).to(bridge.dtype) if with_patches else None
    text_states, image_states = heads.decoder(
        bridge, word_embeddings, text_mask, ~attention_mask.bool(), patches,
        patch_mask if with_patches else None, image_rows if with_patches else None)
    token_logits = heads.token_head(text_states[text_mask])
    patch_predictions, patch_targets = _patch_outputs(heads, image_states[image_rows] if with_patches else None,
                                                      pixel_values, patch_mask, bridge)
    return Reconstruction(token_logits, input_ids[text_mask], patch_predictions, patch_targets)


def _global_counts(counts: Tensor) -> tuple[Tensor, int]:
    """``counts`` summed over every process of a training step, and the number of processes."""
    if torch.is_grad_enabled() and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        counts = counts.clone()
        dist.all_reduce(counts)
        return counts, dist.get_world_size()
    return counts, 1


def reconstruction_loss(reconstruction: Reconstruction,
                        image_weight: float = 1.0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(loss, text_loss, image_loss, token_accuracy)``: cross-entropy per hidden token, squared error per hidden
    pixel value, each divided by its count over the global batch (see the module's docs)."""
    logits, targets = reconstruction.token_logits, reconstruction.token_targets
    predicted, pixels = reconstruction.patch_predictions, reconstruction.patch_targets
    like = logits if logits.numel() else predicted
    local = torch.tensor([targets.numel(), pixels.numel()], dtype=torch.float64, device=like.device)
    counts, world = _global_counts(local)
    text_sum = F.cross_entropy(logits.float(), targets, reduction="sum") if targets.numel() else logits.sum() * 0.0
    image_sum = (F.mse_loss(predicted.float(), pixels.float(), reduction="sum") if pixels.numel()
                 else predicted.sum() * 0.0)
    text_loss = text_sum * world / counts[0].clamp(min=1).to(text_sum.dtype)
    image_loss = image_sum * world / counts[1].clamp(min=1).to(image_sum.dtype)
    accuracy = (logits.argmax(-1) == targets).float().mean() if targets.numel() else text_loss.new_zeros(())
    return text_loss + image_weight * image_loss, text_loss, image_loss, accuracy.detach()


class CoCoAPretrainingModel(nn.Module):
    """A UniCA model and its :class:`~unica.cocoa.heads.CoCoAHeads` as one module: the one the Trainer trains.

    Being one module, data-parallel training (DDP) all-reduces the heads' and decoder's gradients with the
    model's, and ``max_grad_norm`` clips them together. Every trainable weight takes part in every step (those
    a step does not use, e.g. the decoder in stage 1, with an exactly-zero gradient), so DDP needs no search for
    unused parameters. The model's ``logit_scale`` (the contrastive temperature) is frozen: reconstruction
    never uses it.

    ``forward(**batch, stage=1 or 2, step=N, seed=S)`` returns the batch's :class:`CoCoAOutput`; masks are drawn
    from ``(seed, step, stage)`` and each item's content (:func:`unica.cocoa.masking.item_generators`).
    """

    def __init__(self, model: UniCAModel, heads: CoCoAHeads, settings: CoCoASettings, mask_token_id: int,
                 special_token_ids: Iterable[int]):
        super().__init__()
        if mask_token_id is None:
            raise ValueError("the text encoder's tokenizer has no [MASK] token (mask_token_id is None); masked-token "
                             "prediction needs one")
        self.model = model
        self.heads = heads
        self.settings = settings
        self.mask_token_id = int(mask_token_id)
        self.special_token_ids = sorted({int(i) for i in special_token_ids} - {self.mask_token_id})
        model.logit_scale.requires_grad_(False)

    def masks(self, batch: dict[str, Tensor], stage: int, step: int, seed: int) -> tuple[Tensor, Tensor]:
        """``(text_mask, patch_mask)`` the batch's items hide at ``stage`` / ``step``."""
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        image_rows = _image_rows(input_ids.shape[0], batch.get("image_mask"), input_ids.device)
        text_ratio, image_ratio = self.settings.ratios(stage)
        if stage == 2 and (self.heads.decoder is None or self.heads.decoder.patch_embedding is None):
            image_ratio = 0.0
        generators = item_generators(input_ids, attention_mask, batch.get("pixel_values"), image_rows, seed, step,
                                     stage)
        return sample_masks(input_ids, attention_mask, image_rows, generators, self.special_token_ids, text_ratio,
                            image_ratio, self.model.config.num_image_tokens)

    def reconstruct(self, batch: dict[str, Tensor], stage: int, step: int = 0, seed: int = 0) -> Reconstruction:
        """The stage's predictions at the hidden tokens and patches of ``batch``."""
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {stage!r}")
        text_mask, patch_mask = self.masks(batch, stage, step, seed)
        if stage == 1:
            return stage1_reconstruction(self.model, self.heads, batch, text_mask, patch_mask, self.mask_token_id)
        return stage2_reconstruction(self.model, self.heads, batch, text_mask, patch_mask)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, pixel_values: Tensor | None = None,
                image_mask: Tensor | None = None, stage: int = 1, step: int = 0, seed: int = 0,
                **unused: Any) -> CoCoAOutput:
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values,
                 "image_mask": image_mask}
        reconstruction = self.reconstruct(batch, stage, step, seed)
        loss, text_loss, image_loss, accuracy = reconstruction_loss(reconstruction, self.settings.image_weight)
        if self.training and torch.is_grad_enabled():
            loss = loss + zero_touching(self.parameters(), loss)  # weights this step does not use: exact zeros
        return CoCoAOutput(loss, text_loss.detach(), image_loss.detach(), accuracy, stage)

    def activation_checkpointing_enable(self, **kwargs: Any) -> None:
        """Activation (gradient) checkpointing of the UniCA model (the Trainer calls this for
        ``activation_checkpointing=True``); the shallow decoder and heads are not checkpointed."""
        self.model.activation_checkpointing_enable(**kwargs)
