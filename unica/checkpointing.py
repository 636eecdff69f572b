"""Training checkpoints of :class:`unica.trainer.UniCATrainer`: save, resume and best-model loading.

The one place that knows how a training model's weights map onto a checkpoint folder:

- ``model.safetensors`` + ``config.json`` (+ remote code, processor and sentence-transformers files):
  a plain UniCA checkpoint written by :func:`unica.checkpoint.save_checkpoint`. With LoRA the
  adapters are merged in (``merge_lora``, peft's ``merge_and_unload``) or left out (``unload``).
- ``lora_adapter/``: the adapters as ``PeftModel.save_pretrained`` writes them, so that
  ``PeftModel.from_pretrained(text_encoder, folder / "lora_adapter")`` loads them.
- ``unica_loss.safetensors``: the loss module's state (a learnable temperature); ``training_args.bin``.

Loading (:func:`load_training_checkpoint`, for resuming and for ``load_best_model_at_end``) goes through
``from_pretrained`` and refuses any weight that does not fit: transformers renames some towers' keys
on save and back on load (e.g. ViT), so a raw, non-strict state-dict load would silently skip them.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file, save_file
from torch import nn

from modeling_unica import UniCAModel
from unica.checkpoint import check_checkpoint_files, load_pretrained_strict, save_checkpoint
from unica.training_args import UniCATrainingArguments
from unica.tuning import has_lora

logger = logging.getLogger(__name__)

__all__ = [
    "LORA_ADAPTER_DIR",
    "LOSS_STATE_FILE",
    "STAGING_PREFIX",
    "export_model",
    "load_training_checkpoint",
    "write_training_checkpoint",
]

LORA_ADAPTER_DIR = "lora_adapter"
LOSS_STATE_FILE = "unica_loss.safetensors"
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


def write_training_checkpoint(
    target: Path, model: UniCAModel, processor: Any, args: UniCATrainingArguments, loss_module: nn.Module
) -> None:
    """Write a complete UniCA checkpoint folder of ``model`` (unwrapped) to ``target``.

    A new folder is written to a temporary sibling and renamed into place; into an existing folder
    (e.g. ``output_dir`` holding ``checkpoint-N`` folders) the files are moved in with ``config.json``
    last, so an interrupted save never looks like a complete checkpoint.
    """
    if processor is None:
        raise ValueError("cannot save a UniCA checkpoint without the processor: pass processing_class=processor")
    export = export_model(model, merge_lora=args.merge_lora)
    if args.learnable_temperature:
        export.config.contrastive_temperature = float(torch.as_tensor(loss_module.info_nce.temperature).detach())
    writers: list[Callable[[Path], None]] = [lambda folder: torch.save(args, folder / "training_args.bin")]
    if has_lora(model):
        writers.append(lambda folder: model.text_model.save_pretrained(str(folder / LORA_ADAPTER_DIR)))
    if any(True for _ in loss_module.parameters()):
        writers.append(lambda folder: _write_loss_state(loss_module, folder))
    if not target.exists():
        save_checkpoint(export, processor, target, extra_writers=writers)
        return
    # An existing folder may hold other things (checkpoint-N, logs): fill it without replacing it.
    # A save killed before its cleanup leaves its staging folder behind: remove those first.
    for entry in sorted(target.iterdir()):
        if entry.name.startswith(STAGING_PREFIX) and entry.is_dir() and not entry.is_symlink():
            logger.warning("removing %s, left behind by an interrupted save", entry)
            shutil.rmtree(entry, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=target))
    try:
        complete = save_checkpoint(export, processor, staging / "checkpoint", extra_writers=writers)
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


def _write_loss_state(loss_module: nn.Module, folder: Path) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in loss_module.state_dict().items()}
    save_file(state, str(folder / LOSS_STATE_FILE), metadata={"format": "pt"})


def load_training_checkpoint(model: UniCAModel, path: str | os.PathLike, loss_module: nn.Module) -> None:
    """Load the weights of a checkpoint folder written by :func:`write_training_checkpoint` into ``model``.

    Loaded through ``from_pretrained`` (not a raw state dict): transformers renames some towers' keys
    on save and back on load (e.g. ViT), so the file's names are not the live module's. Any weight
    that does not fit the checkpoint's own config is an error (:func:`load_pretrained_strict`). With LoRA,
    the adapters come from ``lora_adapter/`` (``PeftModel.load_adapter``) and the frozen base weights of
    LoRA layers stay those the model was built with (as peft resumes). ``loss_module`` gets its state back.
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
    loss_state = folder / LOSS_STATE_FILE
    if loss_state.is_file():
        loss_module.load_state_dict(load_file(str(loss_state)))
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
