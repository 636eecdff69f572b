"""Optional CoCoA-style content-reconstruction pre-training (arXiv 2603.01471), before contrastive training.

CoCoA makes a multimodal LLM compress its input into the ``<EOS>`` embedding by asking a decoder to
reconstruct the input from that embedding alone. UniCA is an encoder whose pooled embedding plays the
``<EOS>`` role, so our reading is (RetroMAE-like, an assumption, not CoCoA's exact recipe):

* encode an item (text, image or image + text) with `UniCAModel` -> embedding ``e``;
* a small bidirectional decoder sees only ``e`` plus position embeddings and ``[MASK]`` tokens, and
  predicts every text token of the item (cross-entropy, ignoring padding) and, for items with an image,
  the projected image patch tokens (``1 - cos`` to the detached targets);
* only the UniCA model is kept afterwards; the decoder is thrown away.

The Trainer trains one module, :class:`ReconstructionModel` (the UniCA model + the head): data-parallel
training all-reduces, and ``max_grad_norm`` clips, the head's gradients with the model's. Every trainable
weight takes part in every step (a text-only batch ties the image parts in with a zero gradient), so
``ddp_find_unused_parameters=False`` is safe. Periodic ``checkpoint-N`` folders are UniCA checkpoint folders
(:func:`unica.checkpointing.write_checkpoint_folder`) plus the head's weights, and resuming loads both strictly.

Example:

```python
>>> from unica.cocoa import ReconstructionHead, ReconstructionTrainer, ItemCollator
>>> head = ReconstructionHead.for_model(model)
>>> trainer = ReconstructionTrainer(model=model, head=head, args=TrainingArguments("out", max_steps=100,
...                                 remove_unused_columns=False), train_dataset=items_dataset,
...                                 data_collator=ItemCollator(processor), processing_class=processor)
>>> trainer.train(); trainer.save_model("./pretrained")    # a normal UniCA checkpoint, decoder dropped
```
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import Trainer, TrainingArguments

from dataset_builders.rows import multimodal_item
from modeling_unica import UniCAModel, UniCAProcessor
from modeling_unica.modeling_unica import zero_touching
from unica.checkpointing import load_training_checkpoint, write_checkpoint_folder

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
        if images is None and self.training and torch.is_grad_enabled():
            # No image to predict: the image output layer takes part with a zero gradient (data-parallel steps).
            tokens = tokens + zero_touching(self.image_output.parameters(), tokens)
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


class ReconstructionModel(nn.Module):
    """A UniCA model and its reconstruction head as one module, the one the Trainer trains.

    Being one module, data-parallel training (DDP) all-reduces the head's gradients with the model's, and
    ``max_grad_norm`` clips them together. ``forward(**batch)`` returns the batch's :class:`ReconstructionOutput`.
    The model's ``logit_scale`` (the contrastive temperature) is frozen: reconstruction never uses it.
    """

    def __init__(self, model: UniCAModel, head: ReconstructionHead, image_weight: float = 1.0):
        super().__init__()
        if image_weight < 0:
            raise ValueError(f"image_weight must be >= 0, got {image_weight}")
        self.model = model
        self.head = head
        self.image_weight = image_weight
        model.logit_scale.requires_grad_(False)

    def forward(self, **batch: Tensor) -> ReconstructionOutput:
        return reconstruction_loss(self.model, self.head, batch, image_weight=self.image_weight)

    def activation_checkpointing_enable(self, **kwargs: Any) -> None:
        """Activation (gradient) checkpointing of the UniCA model (the Trainer calls this for
        ``activation_checkpointing=True``); the one-layer head is not checkpointed."""
        self.model.activation_checkpointing_enable(**kwargs)

    def _tied_head_keys(self) -> set[str]:
        """Head weights that are the UniCA model's own: the output layer tied to its word embeddings."""
        embeddings = self.model.text_model.get_input_embeddings()
        return {"token_output.weight"} if self.head.token_output.weight is embeddings.weight else set()

    def save_head(self, path: str | Path) -> None:
        """Write the head's own weights (not those tied to the model) to a safetensors file."""
        tied = self._tied_head_keys()
        state = {k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items() if k not in tied}
        save_file(state, str(path), metadata={"format": "pt"})

    def load_head(self, path: str | Path) -> None:
        """Load head weights written by :meth:`save_head`; every weight must fit (names and shapes)."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path} is missing: this checkpoint was not written by ReconstructionTrainer")
        state = load_file(str(path))
        expected = set(self.head.state_dict()) - self._tied_head_keys()
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        advice = "build the head as the run that saved it did (num_layers, num_heads, the same model)"
        if missing or unexpected:
            raise ValueError(f"{path} does not fit this reconstruction head (missing {missing[:5]}, unexpected "
                             f"{unexpected[:5]}); {advice}")
        try:  # every name fits: strict=False only leaves the tied weight (the model's own) alone
            self.head.load_state_dict(state, strict=False)
        except RuntimeError as error:  # a shape mismatch
            raise ValueError(f"{path} does not fit this reconstruction head ({error}); {advice}") from error


class ReconstructionTrainer(Trainer):
    """`transformers.Trainer` for the reconstruction stage.

    The Trainer trains a :class:`ReconstructionModel` of ``model`` and ``head`` (``trainer.model``), so the
    head is data-parallel, clipped and optimised with the model. ``checkpoint-N`` folders are UniCA checkpoint
    folders plus the head (``HEAD_FILE``); resuming (and ``load_best_model_at_end``) loads the model through
    :func:`unica.checkpointing.load_training_checkpoint` and the head strictly. `save_model` writes a plain
    UniCA checkpoint (the head is dropped), filling ``output_dir`` without touching its ``checkpoint-N`` folders.
    """

    # compute_loss returns a per-batch mean: the Trainer divides it by the gradient accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, model: UniCAModel | None = None, args: TrainingArguments | None = None, *rest: Any,
                 head: ReconstructionHead, image_weight: float = 1.0, **kwargs: Any):
        if not isinstance(model, UniCAModel):
            raise ValueError(f"ReconstructionTrainer needs model=<the UniCAModel to pre-train>, got "
                             f"{type(model).__name__}")
        if args is not None and args.ddp_find_unused_parameters is None:
            # Every trainable weight takes part in every step: DDP needs no search for unused ones (transformers
            # turns it on for a model that is not a PreTrainedModel, and DDP then warns that it found none).
            args = dataclasses.replace(args, ddp_find_unused_parameters=False)
        self.head = head
        super().__init__(ReconstructionModel(model, head, image_weight), args, *rest, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = model(**inputs)
        if self.state.global_step % max(1, self.args.logging_steps) == 0 and model.training:
            self._recon_logs = {"text_loss": out.text_loss.item(), "image_loss": out.image_loss.item(),
                                "token_accuracy": out.token_accuracy.item()}
        return (out.loss, {"embeddings": None}) if return_outputs else out.loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        logs.update(getattr(self, "_recon_logs", {}))
        super().log(logs, start_time)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        """Resume the model (strictly, through ``from_pretrained``: some towers' keys are renamed on save) and
        the head (strictly) from a ``checkpoint-N`` folder."""
        wrapper = self.accelerator.unwrap_model(model if model is not None else self.model)
        load_training_checkpoint(wrapper.model, resume_from_checkpoint)
        wrapper.load_head(Path(resume_from_checkpoint) / HEAD_FILE)

    def _load_best_model(self) -> None:
        """``load_best_model_at_end``: load the best checkpoint the way a resume does."""
        self._load_from_checkpoint(self.state.best_model_checkpoint)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """A plain UniCA checkpoint folder (``args.output_dir`` by default); the Trainer's periodic checkpoints
        (``_internal_call``) also hold the head, to resume from."""
        if not self.args.should_save:
            return
        wrapper = self.accelerator.unwrap_model(self.model)
        folder = Path(output_dir or self.args.output_dir)
        writers = [lambda staging: wrapper.save_head(staging / HEAD_FILE)] if _internal_call else []
        write_checkpoint_folder(folder, wrapper.model, self.processing_class, extra_writers=writers)
