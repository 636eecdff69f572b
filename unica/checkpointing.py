"""Training checkpoints of :class:`unica.trainer.UniCATrainer` (and, through :func:`write_checkpoint_folder` and
:func:`load_training_checkpoint`, of :class:`unica.cocoa.CoCoATrainer`): save, resume and best-model loading.

The one place that knows how a training model's weights map onto a checkpoint folder:

- ``model.safetensors`` + ``config.json`` (+ remote code, processor and sentence-transformers files):
  a plain UniCA checkpoint written by :func:`unica.checkpoint.save_checkpoint`. With LoRA the
  adapters are merged in (``merge_lora``, peft's ``merge_and_unload``) or left out (``unload``).
- ``lora_adapter/``: the adapters as ``PeftModel.save_pretrained`` writes them, so that
  ``PeftModel.from_pretrained(text_encoder, folder / "lora_adapter")`` loads them.
- ``training_args.json`` (the arguments as JSON, tokens redacted: no pickle, so the folder can be published),
  ``training_record.json`` (objective, temperature, PSL weight, steps, data: :func:`training_record`) and
  ``README.md``, the model card rendered from them (:func:`unica.card.render_model_card`), as
  sentence-transformers writes a card on save. The learnable temperature is the model's ``logit_scale`` weight.

Loading (:func:`load_training_checkpoint`, for resuming and for ``load_best_model_at_end``) goes through
``from_pretrained`` and refuses any weight that does not fit: transformers renames some towers' keys
on save and back on load (e.g. ViT), so a raw, non-strict state-dict load would silently skip them.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from transformers.trainer_callback import TrainerState

from modeling_unica import UniCAModel
from unica.checkpoint import check_checkpoint_files, load_pretrained_strict, save_checkpoint
from unica.training_args import UniCATrainingArguments
from unica.tuning import has_lora

logger = logging.getLogger(__name__)

__all__ = [
    "LORA_ADAPTER_DIR",
    "STAGING_PREFIX",
    "TRAINING_ARGS_FILE",
    "TRAINING_RECORD_FILE",
    "completed_run",
    "export_model",
    "load_training_checkpoint",
    "training_record",
    "write_checkpoint_folder",
    "write_training_checkpoint",
]

LORA_ADAPTER_DIR = "lora_adapter"
TRAINING_ARGS_FILE = "training_args.json"
TRAINING_RECORD_FILE = "training_record.json"
# Prefix of the staging folder a save into an existing folder fills first (inside that folder).
STAGING_PREFIX = ".unica-save-"


def export_model(model: UniCAModel, merge_lora: bool) -> UniCAModel:
    """``model`` as a plain UniCA model: without LoRA the model itself, with LoRA a copy whose text
    encoder has the adapters merged into its weights (``merge_lora``) or removed (the base weights)."""
    if not has_lora(model):
        return model
    plain = copy.deepcopy(model)  # the live model keeps training with its adapters
    plain.text_model = plain.text_model.merge_and_unload() if merge_lora else plain.text_model.unload()
    return plain


def training_record(args: UniCATrainingArguments, state: TrainerState | None = None, data: str | None = None,
                    train_dataset: Any = None) -> dict[str, Any]:
    """What a trained checkpoint's card states about its training (``training_record.json``).

    Example:
        >>> training_record(UniCATrainingArguments(output_dir="out", psl_weight=0.1))["objective"]
        'InfoNCE + 0.1 * PSL (cosine)'
    """
    objective = "InfoNCE" + (f" + {args.psl_weight:g} * PSL ({args.psl_variant})" if args.psl_weight else "")
    record: dict[str, Any] = {
        "objective": objective,
        "temperature": args.temperature,
        "learnable_temperature": args.learnable_temperature,
        "psl_weight": args.psl_weight,
        "psl_variant": args.psl_variant,
        "hard_negatives": args.hard_negatives,
        "symmetric_loss": args.symmetric_loss,
        "learning_rate": args.learning_rate,
        "fusion_learning_rate": args.fusion_learning_rate,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "world_size": args.world_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "freeze": args.freeze,
        "lora_r": args.lora_r,
        "seed": args.seed,
        "data": data,
        "train_rows": len(train_dataset) if hasattr(train_dataset, "__len__") else None,
    }
    if state is not None:
        record.update(steps=state.global_step, epochs=round(float(state.epoch or 0.0), 4))
    return record


def write_training_checkpoint(
    target: Path, model: UniCAModel, processor: Any, args: UniCATrainingArguments, record: dict[str, Any] | None = None,
    prompts: dict[str, str] | None = None,
) -> None:
    """Write a complete UniCA checkpoint folder of ``model`` (unwrapped) to ``target``: weights, processor,
    remote code, ``training_args.json``, ``training_record.json`` (``record``, default
    :func:`training_record` of ``args``) and the rendered ``README.md`` model card: publishable as it stands.

    Written by :func:`write_checkpoint_folder` (LoRA as ``args.merge_lora`` says), so never half-complete.
    """
    from unica.card import render_model_card

    record = dict(record if record is not None else training_record(args))
    record["temperature"] = round(float(model.temperature.detach()), 6)  # a learned one, or args.temperature

    def write_record_and_card(folder: Path) -> None:
        (folder / TRAINING_ARGS_FILE).write_text(args.to_json_string(), encoding="utf-8")
        (folder / TRAINING_RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        card = render_model_card(folder, name_or_path=str(target), training_data=record.get("data"))
        (folder / "README.md").write_text(card, encoding="utf-8")

    write_checkpoint_folder(target, model, processor, merge_lora=args.merge_lora, extra_writers=[write_record_and_card],
                            prompts=prompts)


def write_checkpoint_folder(
    target: Path,
    model: UniCAModel,
    processor: Any,
    merge_lora: bool = True,
    extra_writers: Sequence[Callable[[Path], None]] = (),
    prompts: dict[str, str] | None = None,
) -> None:
    """Write a UniCA checkpoint folder of a training ``model`` (unwrapped) to ``target``, plus ``extra_writers``'
    files (each is called with the folder being written, before it is complete).

    The weights are :func:`export_model`'s (with LoRA: merged if ``merge_lora``, else the base weights, and the
    adapters in ``lora_adapter/`` as well), so :func:`load_training_checkpoint` resumes from the folder. A new
    folder is written to a temporary sibling and renamed into place; into an existing folder (e.g. ``output_dir``
    holding ``checkpoint-N`` folders) the files are moved in with ``config.json`` last, so an interrupted save
    never looks like a complete checkpoint. ``prompts`` are the sentence-transformers prompts the folder keeps
    (those the model was trained with).
    """
    if processor is None:
        raise ValueError("cannot save a UniCA checkpoint without the processor: pass processing_class=processor")
    export = export_model(model, merge_lora=merge_lora)
    writers: list[Callable[[Path], None]] = []
    if has_lora(model):
        writers.append(lambda folder: model.text_model.save_pretrained(str(folder / LORA_ADAPTER_DIR)))
    writers += extra_writers
    if not target.exists():
        save_checkpoint(export, processor, target, prompts=prompts, extra_writers=writers)
        return
    # An existing folder may hold other things (checkpoint-N, logs): fill it without replacing it.
    # A save killed before its cleanup leaves its staging folder behind: remove those first.
    for entry in sorted(target.iterdir()):
        if entry.name.startswith(STAGING_PREFIX) and entry.is_dir() and not entry.is_symlink():
            logger.warning("removing %s, left behind by an interrupted save", entry)
            shutil.rmtree(entry, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=target))
    try:
        complete = save_checkpoint(export, processor, staging / "checkpoint", prompts=prompts, extra_writers=writers,
                                   quiet=True)  # a temporary folder: the line below names the final one
        (target / "config.json").unlink(missing_ok=True)
        names = sorted(os.listdir(complete), key=lambda name: name == "config.json")
        for name in names:
            destination = target / name
            if destination.is_dir() and not destination.is_symlink():
                shutil.rmtree(destination)
            os.replace(complete / name, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("saved UniCA checkpoint to %s", target)


def completed_run(path: str | os.PathLike, args: UniCATrainingArguments) -> TrainerState | None:
    """The Trainer state of checkpoint ``path`` if resuming it under ``args`` would train nothing, else None.

    A run is complete when the checkpoint reached ``args.max_steps`` (when set) or, for an epoch-based run
    (``max_steps=-1``) with the same ``num_train_epochs``, the number of steps it planned. transformers would
    otherwise train one more step past the end and overwrite the final model.
    """
    state_file = Path(path) / "trainer_state.json"
    if not state_file.is_file():
        return None
    state = TrainerState.load_from_json(str(state_file))
    if args.max_steps > 0:
        target = args.max_steps
    elif state.num_train_epochs == args.num_train_epochs and state.max_steps:
        target = state.max_steps
    else:
        return None
    return state if state.global_step >= target else None


def load_training_checkpoint(model: UniCAModel, path: str | os.PathLike) -> None:
    """Load the weights of a checkpoint folder written by :func:`write_training_checkpoint` into ``model``.

    Loaded through ``from_pretrained`` (not a raw state dict): transformers renames some towers' keys
    on save and back on load (e.g. ViT), so the file's names are not the live module's. Any weight
    that does not fit the checkpoint's own config is an error (:func:`load_pretrained_strict`). With LoRA,
    the adapters come from ``lora_adapter/`` (``PeftModel.load_adapter``) and the frozen base weights of
    LoRA layers stay those the model was built with (as peft resumes). The temperature (``logit_scale``) is a
    weight like the others.
    """
    folder = Path(path)
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        raise ValueError(f"{str(folder)!r} is not a UniCA training checkpoint (needs config.json and model.safetensors)")
    check_checkpoint_files(folder)
    saved = load_pretrained_strict(type(model), folder).state_dict()
    lora = has_lora(model)
    if lora:
        adapter = folder / LORA_ADAPTER_DIR
        if not (adapter / "adapter_model.safetensors").is_file():
            raise ValueError(f"{str(folder)!r} has no {LORA_ADAPTER_DIR}/adapter_model.safetensors to resume LoRA from")
        text = model.text_model
        result = text.load_adapter(str(adapter), adapter_name=text.active_adapter, is_trainable=True)
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"the LoRA adapter in {str(folder)!r} does not fit this model: {result.unexpected_keys[:5]}")
    _load_plain_weights(model, saved, folder)
    logger.info("loaded model weights from %s", folder)


def _load_plain_weights(model: UniCAModel, saved: dict[str, torch.Tensor], folder: Path) -> None:
    """Copy ``saved`` (a plain checkpoint's state dict) into ``model``, except into LoRA layers.

    With LoRA the text encoder is a ``PeftModel``; for the copy it is swapped for its base model
    (``get_base_model``), whose module names are the checkpoint's. The LoRA layers (peft's
    ``BaseTunerLayer``) are skipped: a merged checkpoint's weight there is base + adapter, not the base.
    """
    text = model.text_model
    lora = has_lora(model)
    if lora:
        model.text_model = text.get_base_model()
    try:
        adapted = tuple(f"{name}." for name, module in model.named_modules() if isinstance(module, BaseTunerLayer))
        wanted = [key for key in model.state_dict() if not key.startswith(adapted)]
        missing = [key for key in wanted if key not in saved]
        if missing:
            raise ValueError(f"checkpoint {str(folder)!r} lacks weights {missing[:5]}; it was saved from another model")
        model.load_state_dict({key: saved[key] for key in wanted}, strict=not lora)
    finally:
        model.text_model = text
