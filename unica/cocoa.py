"""Optional CoCoA-style content-reconstruction pre-training (arXiv 2603.01471), before contrastive training.

CoCoA makes a multimodal LLM compress its input into the ``<EOS>`` embedding by asking a decoder to
reconstruct the input from that embedding alone. UniCA is an encoder whose pooled embedding plays the
``<EOS>`` role, so our reading is (RetroMAE-like, an assumption, not CoCoA's exact recipe):

* encode an item (text, image or image + text) with `UniCAModel` -> embedding ``e``;
* a small bidirectional decoder sees only ``e`` plus position embeddings and ``[MASK]`` tokens, and
  predicts every text token of the item (cross-entropy, ignoring padding) and, for items with an image,
  the projected image patch tokens (``1 - cos`` to the detached targets);
* only the UniCA model is kept afterwards; the decoder is thrown away.

Example:

```python
>>> from unica.cocoa import ReconstructionHead, ReconstructionTrainer, ItemCollator
>>> head = ReconstructionHead.for_model(model)
>>> trainer = ReconstructionTrainer(model=model, head=head, args=TrainingArguments("out", max_steps=100,
...                                 remove_unused_columns=False), train_dataset=items_dataset,
...                                 data_collator=ItemCollator(processor))
>>> trainer.train(); trainer.save_model("./pretrained")    # a normal UniCA checkpoint, decoder dropped
```
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import Trainer

from dataset_builders.rows import multimodal_item
from modeling_unica import UniCAModel, UniCAProcessor

HEAD_FILE = "reconstruction_head.safetensors"


class ReconstructionHead(nn.Module):
    """Decoder that rebuilds an item's text tokens (and image patch tokens) from its embedding alone.

    Args:
        hidden_size: the UniCA embedding size.
        vocab_size: the text vocabulary (the output layer is tied to ``word_embeddings`` when given).
        max_positions: longest text (+ image) sequence reconstructed.
        num_layers / num_heads: decoder size (CoCoA / RetroMAE use a shallow decoder: 1 layer by default).
    """

    def __init__(self, hidden_size: int, vocab_size: int, max_positions: int, num_image_tokens: int = 0,
                 num_layers: int = 1, num_heads: int = 4, word_embeddings: nn.Embedding | None = None):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide hidden_size={hidden_size}")
        self.mask_token = nn.Parameter(torch.zeros(hidden_size))
        self.positions = nn.Embedding(max_positions + num_image_tokens, hidden_size)
        layer = nn.TransformerEncoderLayer(hidden_size, num_heads, 4 * hidden_size, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.decoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden_size)
        self.token_output = nn.Linear(hidden_size, vocab_size)
        if word_embeddings is not None:
            self.token_output.weight = word_embeddings.weight  # tie to the encoder's vocabulary
        self.image_output = nn.Linear(hidden_size, hidden_size)
        self.max_positions = max_positions
        self.num_image_tokens = num_image_tokens
        nn.init.normal_(self.mask_token, std=0.02)

    @classmethod
    def for_model(cls, model: UniCAModel, num_layers: int = 1, num_heads: int | None = None) -> ReconstructionHead:
        text = model.config.text_config
        return cls(text.hidden_size, text.vocab_size, model.config.max_text_length, model.config.num_image_tokens,
                   num_layers=num_layers, num_heads=num_heads or text.num_attention_heads,
                   word_embeddings=model.text_model.get_input_embeddings())

    def forward(self, embeddings: Tensor, text_length: int, image_tokens: int) -> tuple[Tensor, Tensor | None]:
        """Token logits ``(B, text_length, vocab)`` and image predictions ``(B, image_tokens, H)`` (or None)."""
        batch = embeddings.shape[0]
        length = text_length + image_tokens
        if text_length > self.max_positions or image_tokens > self.num_image_tokens:
            raise ValueError(f"cannot reconstruct {text_length} text / {image_tokens} image tokens; the head was built "
                             f"for {self.max_positions} / {self.num_image_tokens}")
        positions = torch.arange(length, device=embeddings.device)
        queries = self.mask_token + self.positions(positions)[None].expand(batch, -1, -1)
        hidden = self.decoder(torch.cat([embeddings[:, None], queries], dim=1))[:, 1:]
        hidden = self.norm(hidden)
        tokens = self.token_output(hidden[:, :text_length])
        images = self.image_output(hidden[:, text_length:]) if image_tokens else None
        return tokens, images


@dataclass
class ReconstructionOutput:
    loss: Tensor
    text_loss: Tensor
    image_loss: Tensor
    token_accuracy: Tensor


def reconstruction_loss(model: UniCAModel, head: ReconstructionHead, batch: Mapping[str, Tensor],
                        image_weight: float = 1.0) -> ReconstructionOutput:
    """CoCoA-style loss of one processor batch: rebuild its text (CE) and image tokens (1 - cos) from ``e``."""
    output = model(**batch)
    input_ids, mask = batch["input_ids"], batch["attention_mask"].bool()
    image_mask = batch.get("image_mask")
    has_images = image_mask is not None and bool(image_mask.any())
    image_tokens = model.config.num_image_tokens if has_images else 0
    logits, predicted = head(output.embeddings, input_ids.shape[1], image_tokens)
    targets = input_ids.masked_fill(~mask, -100)
    text_loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
    accuracy = ((logits.argmax(-1) == input_ids) & mask).sum() / mask.sum().clamp(min=1)
    image_loss = text_loss.new_zeros(())
    if has_images:
        with torch.no_grad():  # targets: the (detached) projected patch tokens of the items' own images
            target_patches = model.visual_projection(model._patch_tokens(batch["pixel_values"]))
        rows = image_mask.nonzero(as_tuple=True)[0]
        image_loss = (1 - F.cosine_similarity(predicted[rows], target_patches, dim=-1)).mean()
    return ReconstructionOutput(text_loss + image_weight * image_loss, text_loss, image_loss, accuracy)


class ItemCollator:
    """Rows with ``text`` and/or ``image`` columns (or the training schema's query/positive sides) -> one
    processor batch of items."""

    def __init__(self, processor: UniCAProcessor, sides: Sequence[str] = ("query", "pos")):
        self.processor = processor
        self.sides = tuple(sides)

    def _items(self, row: Mapping[str, Any]) -> list[Any]:
        if "text" in row or "image" in row:
            pairs = [(row.get("text"), row.get("image"))]
        else:
            pairs = [(row.get(f"{side}_text"), row.get(f"{side}_image")) for side in self.sides]
        items = []
        for text, image in pairs:
            try:
                items.append(multimodal_item(text, image))
            except ValueError:  # neither text nor image: nothing of this side to reconstruct
                continue
        return items

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Tensor]:
        items = [item for row in rows for item in self._items(row)]
        if not items:
            raise ValueError("no row of this batch has text or an image to reconstruct")
        return dict(self.processor.process_items(items))


class ReconstructionTrainer(Trainer):
    """`transformers.Trainer` for the reconstruction stage; the head trains with the model, and
    `save_model` writes a plain UniCA checkpoint (the head is dropped)."""

    def __init__(self, *args, head: ReconstructionHead, image_weight: float = 1.0, **kwargs):
        if image_weight < 0:
            raise ValueError(f"image_weight must be >= 0, got {image_weight}")
        self.head = head
        self.image_weight = image_weight
        super().__init__(*args, **kwargs)
        self.head.to(self.args.device)

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        # The decoder is not part of the model: give it its own parameter group (tied weights excluded).
        seen = {id(p) for group in optimizer.param_groups for p in group["params"]}
        extra = [p for p in self.head.parameters() if id(p) not in seen and p.requires_grad]
        if extra:
            optimizer.add_param_group({"params": extra, "weight_decay": 0.0})
        return optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = reconstruction_loss(model, self.head, inputs, image_weight=self.image_weight)
        if self.state.global_step % max(1, self.args.logging_steps) == 0 and model.training:
            self._recon_logs = {"text_loss": out.text_loss.item(), "image_loss": out.image_loss.item(),
                                "token_accuracy": out.token_accuracy.item()}
        return (out.loss, {"embeddings": None}) if return_outputs else out.loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        logs.update(getattr(self, "_recon_logs", {}))
        super().log(logs, start_time)

    def _head_state(self) -> dict[str, Tensor]:
        tied = self.head.token_output.weight is self.accelerator.unwrap_model(self.model).text_model.get_input_embeddings().weight
        return {k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()
                if not (tied and k == "token_output.weight")}

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = os.path.join(resume_from_checkpoint, HEAD_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} is missing: this checkpoint was not written by ReconstructionTrainer")
        self.head.load_state_dict(load_file(path), strict=False)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        from unica.checkpoint import save_checkpoint

        output_dir = output_dir or self.args.output_dir
        if not self.args.should_save:
            return
        model = self.accelerator.unwrap_model(self.model)
        if _internal_call:  # the Trainer's own periodic checkpoints (resume): its usual files + the head
            super().save_model(output_dir, _internal_call=True)
            save_file(self._head_state(), f"{output_dir}/{HEAD_FILE}", metadata={"format": "pt"})
            return
        save_checkpoint(model, self.processing_class, output_dir, overwrite=True)
