"""Training CoCoA's two stages with the Transformers ``Trainer``: :class:`CoCoATrainer` and its data.

One Trainer run trains ``stage1_steps`` steps of stage 1, then ``stage2_steps`` of stage 2 (one optimiser and
one learning-rate schedule over both): the step decides the stage, so resuming from any ``checkpoint-N``
continues the right stage. ``checkpoint-N`` folders are UniCA checkpoint folders
(:func:`unica.checkpointing.write_checkpoint_folder`) plus the heads' weights (``HEADS_FILE``), and resuming
loads both strictly. ``save_model`` writes a plain UniCA checkpoint: the heads and decoder are dropped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import TrainOutput

from dataset_builders.rows import multimodal_item
from modeling_unica import UniCAModel, UniCAProcessor
from unica.checkpointing import completed_run, load_training_checkpoint, write_checkpoint_folder
from unica.cocoa.objectives import CoCoAPretrainingModel, CoCoASettings
from unica.distributed import is_distributed

logger = logging.getLogger(__name__)

__all__ = ["HEADS_FILE", "PRETRAINING_RECORD_FILE", "CoCoATrainer", "ItemCollator", "check_images_for_patches",
           "dataset_has_images"]

HEADS_FILE = "cocoa_heads.safetensors"
PRETRAINING_RECORD_FILE = "pretraining_record.json"


class ItemCollator:
    """Rows with ``text`` and/or ``image`` columns (or the training schema's ``<side>_text`` / ``<side>_image``
    columns of ``sides``) -> one processor batch of items. A side with neither text nor image is skipped;
    relative image paths are resolved against ``image_root``."""

    def __init__(self, processor: UniCAProcessor, sides: Sequence[str] = ("query", "pos"),
                 image_root: str | Path | None = None):
        self.processor = processor
        self.sides = tuple(sides)
        self.image_root = Path(image_root) if image_root is not None else None

    def _resolve(self, image: Any) -> Any:
        if isinstance(image, str):
            image = pathlib.Path(image)
        if isinstance(image, pathlib.Path) and not image.is_absolute() and self.image_root is not None:
            image = self.image_root / image
        return image

    def _items(self, row: Mapping[str, Any]) -> list[Any]:
        if "text" in row or "image" in row:
            pairs = [(row.get("text"), row.get("image"))]
        else:
            pairs = [(row.get(f"{side}_text"), row.get(f"{side}_image")) for side in self.sides]
        items = []
        for text, image in pairs:
            try:
                items.append(multimodal_item(text, self._resolve(image) if image is not None else None))
            except ValueError:  # neither text nor image: nothing of this side to reconstruct
                continue
        return items

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Tensor]:
        items = [item for row in rows for item in self._items(row)]
        if not items:
            raise ValueError("no row of this batch has text or an image to reconstruct")
        batch = dict(self.processor.process_items(items))
        batch.pop("token_type_ids", None)  # all zero: UniCA embeds every text as segment 0
        return batch


def dataset_has_images(dataset: Any, sides: Sequence[str] = ("query", "pos")) -> bool:
    """Whether any row of ``dataset`` has an image in ``image`` or ``<side>_image`` (stops at the first one).

    A ``datasets.Dataset`` is read as Arrow, its images undecoded."""
    columns = ["image", *(f"{side}_image" for side in sides)]
    names = getattr(dataset, "column_names", None)
    if names is not None and hasattr(dataset, "select_columns"):
        present = [name for name in columns if name in names]
        if not present:
            return False
        table = dataset.select_columns(present).with_format("arrow")
        for chunk in table.iter(batch_size=4096):
            if any(chunk.column(name).null_count < len(chunk) for name in present):
                return True
        return False
    return any(row.get(name) is not None for row in dataset for name in columns)


def check_images_for_patches(dataset: Any, settings: CoCoASettings) -> None:
    """``ValueError`` if ``settings`` reconstruct image patches but no row of ``dataset`` has an image on its sides
    (:func:`dataset_has_images`)."""
    if settings.reconstructs_patches and not dataset_has_images(dataset, settings.sides):
        raise ValueError(
            "pretrain asks for patch reconstruction (image_mask_ratio / decoder_image_mask_ratio > 0) but no training "
            f"row has an image on the sides {list(settings.sides)}; set pretrain.image_mask_ratio: 0 and "
            "pretrain.decoder_image_mask_ratio: 0, or use data with images")


class CoCoATrainer(Trainer):
    """``transformers.Trainer`` for CoCoA pre-training of a :class:`~modeling_unica.UniCAModel`.

    The Trainer trains a :class:`~unica.cocoa.objectives.CoCoAPretrainingModel` of ``model`` and the heads that
    ``settings`` need (``trainer.model``, ``trainer.heads``): heads and decoder are data-parallel, clipped and
    optimised with the model. ``args.max_steps`` is ``settings.total_steps`` (left unset, it is set so).
    Checked when built: the processor's tokenizer has a ``[MASK]`` token, and the data has images when a stage
    reconstructs patches.

    Example:

    ```python
    >>> trainer = CoCoATrainer(model=model, args=TrainingArguments("out", remove_unused_columns=False),
    ...                        settings=CoCoASettings(stage1_steps=20, stage2_steps=20),
    ...                        train_dataset=rows, processing_class=processor)
    >>> trainer.train(); trainer.save_model()      # out/: a plain UniCA checkpoint
    ```
    """

    # compute_loss returns a per-batch mean: the Trainer divides it by the gradient accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, model: UniCAModel | None = None, args: TrainingArguments | None = None, *,
                 settings: CoCoASettings, processing_class: UniCAProcessor | None = None, train_dataset: Any = None,
                 data_collator: Any = None, training_data: str | None = None, **kwargs: Any):
        if not isinstance(model, UniCAModel):
            raise ValueError(f"CoCoATrainer needs model=<the UniCAModel to pre-train>, got {type(model).__name__}")
        if processing_class is None:
            raise ValueError("CoCoATrainer needs processing_class=<the model's UniCAProcessor> (its tokenizer's "
                             "[MASK] token, and to save the checkpoint)")
        args = args if args is not None else TrainingArguments("unica-pretrain", remove_unused_columns=False)
        args = self._fit_arguments(args, settings)
        if train_dataset is not None:
            check_images_for_patches(train_dataset, settings)
        tokenizer = processing_class.tokenizer
        self.settings = settings
        self.heads = settings.build_heads(model)
        self.training_data = training_data
        self._parts: list[Tensor] = []
        wrapper = CoCoAPretrainingModel(model, self.heads, settings, tokenizer.mask_token_id,
                                        tokenizer.all_special_ids)
        if data_collator is None:
            data_collator = ItemCollator(processing_class, sides=settings.sides)
        super().__init__(wrapper, args, data_collator=data_collator, train_dataset=train_dataset,
                         processing_class=processing_class, **kwargs)

    @staticmethod
    def _fit_arguments(args: TrainingArguments, settings: CoCoASettings) -> TrainingArguments:
        changes: dict[str, Any] = {}
        if args.max_steps is None or args.max_steps <= 0:
            changes["max_steps"] = settings.total_steps
        elif args.max_steps != settings.total_steps:
            raise ValueError(f"training.max_steps={args.max_steps} differs from pretrain.stage1_steps + stage2_steps = "
                             f"{settings.total_steps}; leave max_steps out (the stages set it)")
        if args.ddp_find_unused_parameters is None:
            # Every trainable weight takes part in every step: DDP needs no search for unused ones.
            changes["ddp_find_unused_parameters"] = False
        if args.remove_unused_columns:
            changes["remove_unused_columns"] = False  # the collator reads the rows' text / image columns
        return dataclasses.replace(args, **changes) if changes else args

    # ------------------------------------------------------------------ training
    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        """``Trainer.train``; resuming a checkpoint of a finished run trains and writes nothing (the model gets the
        checkpoint's weights; ``metrics["run_complete"]`` is True)."""
        if isinstance(resume_from_checkpoint, str):
            state = completed_run(resume_from_checkpoint, self.args)
            if state is not None:
                logger.warning("the pre-training run in %s is complete (step %d): nothing to train",
                               resume_from_checkpoint, state.global_step)
                self._load_from_checkpoint(resume_from_checkpoint)
                self.state = state
                loss = next((e["train_loss"] for e in reversed(state.log_history) if "train_loss" in e), 0.0)
                return TrainOutput(state.global_step, float(loss), {"run_complete": True})
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        step = self.state.global_step
        out = model(**inputs, stage=self.settings.stage_at(step), step=step, seed=self.args.seed)
        if model.training:
            self._parts.append(torch.stack([out.text_loss.float(), out.image_loss.float(), out.token_accuracy.float(),
                                            torch.tensor(float(out.stage), device=out.loss.device)]))
        return (out.loss, {"stage": out.stage}) if return_outputs else out.loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._parts:
            means = torch.stack(self._parts).mean(dim=0)
            if is_distributed():  # every process logs at the same steps
                dist.all_reduce(means)
                means /= dist.get_world_size()
            logs["text_loss"], logs["image_loss"], logs["token_accuracy"], logs["stage"] = (
                round(float(v), 6) for v in means)
            self._parts = []
        super().log(logs, start_time)

    # ------------------------------------------------------------------ checkpoints
    def save_heads(self, path: str | Path) -> None:
        """Write the heads' and decoder's weights (not the word embeddings they share with the model)."""
        state = {k: v.detach().cpu().contiguous() for k, v in self.heads.state_dict().items()}
        save_file(state, str(path), metadata={"format": "pt"})

    def load_heads(self, path: str | Path) -> None:
        """Load weights written by :meth:`save_heads`; every weight must fit (names and shapes)."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path} is missing: this checkpoint was not written by `unica pretrain` "
                                    "(CoCoATrainer); resume from one of its checkpoint-N folders")
        state = load_file(str(path))
        expected = set(self.heads.state_dict())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        advice = "resume with the pretrain settings of the run that saved it (stages, mask ratios, decoder_*)"
        if missing or unexpected:
            raise ValueError(f"{path} does not fit these CoCoA heads (missing {missing[:5]}, unexpected "
                             f"{unexpected[:5]}); {advice}")
        try:
            self.heads.load_state_dict(state, strict=True)
        except RuntimeError as error:  # a shape mismatch
            raise ValueError(f"{path} does not fit these CoCoA heads ({error}); {advice}") from error

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        """Resume the model (strictly, through ``from_pretrained``: some towers' keys are renamed on save) and
        the heads (strictly) from a ``checkpoint-N`` folder."""
        wrapper = self.accelerator.unwrap_model(model if model is not None else self.model)
        load_training_checkpoint(wrapper.model, resume_from_checkpoint)
        self.load_heads(Path(resume_from_checkpoint) / HEADS_FILE)

    def _load_best_model(self) -> None:
        self._load_from_checkpoint(self.state.best_model_checkpoint)

    def pretraining_record(self) -> dict[str, Any]:
        """What the saved checkpoint states about its pre-training (``pretraining_record.json``)."""
        return {"objective": "CoCoA content-reconstruction pre-training (arXiv 2603.01471)",
                "settings": self.settings.to_dict(), "steps": self.state.global_step,
                "learning_rate": self.args.learning_rate,
                "per_device_train_batch_size": self.args.per_device_train_batch_size,
                "world_size": self.args.world_size,
                "gradient_accumulation_steps": self.args.gradient_accumulation_steps, "seed": self.args.seed,
                "data": self.training_data}

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """A plain UniCA checkpoint folder (``args.output_dir`` by default) with ``pretraining_record.json``; the
        Trainer's periodic checkpoints (``_internal_call``) also hold the heads, to resume from."""
        if not self.args.should_save:
            return
        wrapper = self.accelerator.unwrap_model(self.model)
        folder = Path(output_dir or self.args.output_dir)
        record = self.pretraining_record()

        def write_record(staging: Path) -> None:
            (staging / PRETRAINING_RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")

        writers = [write_record]
        if _internal_call:
            writers.append(lambda staging: self.save_heads(staging / HEADS_FILE))
        write_checkpoint_folder(folder, wrapper.model, self.processing_class, extra_writers=writers)
