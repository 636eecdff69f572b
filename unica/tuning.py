"""What trains, and how fast: freezing parts of a UniCA model, LoRA adapters on its text encoder, and the
learning rate of the parts new to the pretrained towers.

LoRA goes through peft's own API: :func:`apply_lora` wraps the text encoder with
``peft.get_peft_model``, so ``model.text_model`` becomes a ``PeftModel`` (attribute access still
reaches the encoder, e.g. ``model.text_model.encoder``). Saving, merging and loading those adapters
is :mod:`unica.checkpointing`'s job.

Example:

```python
>>> apply_lora(model, r=8, alpha=16, dropout=0.0, target_modules=["query", "value"])
>>> apply_freeze(model, "vision")
>>> has_lora(model)
True
```
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from modeling_unica import UniCAModel
from unica.training_args import FREEZE_CHOICES

__all__ = ["apply_freeze", "apply_lora", "has_lora", "split_fusion_groups"]


def has_lora(model: nn.Module) -> bool:
    """Whether ``model``'s text encoder carries peft adapters (see :func:`apply_lora`)."""
    return isinstance(getattr(model, "text_model", None), PeftModel)


def apply_freeze(model: UniCAModel, freeze: str) -> None:
    """Freeze parts of ``model`` in place: ``vision``, ``text``, ``backbones`` (both) or ``none``.

    With ``backbones`` only the Bi-CA layers and the visual projection train. LoRA adapters (if any)
    stay trainable whatever ``freeze`` says.

    Example:
        >>> apply_freeze(model, "backbones")
        >>> any(p.requires_grad for p in model.text_model.parameters())
        False
    """
    if freeze not in FREEZE_CHOICES:
        raise ValueError(f"freeze must be one of {FREEZE_CHOICES}, got {freeze!r}")
    frozen = {"none": (), "vision": ("vision_model",), "text": ("text_model",), "backbones": ("vision_model", "text_model")}
    for part in frozen[freeze]:
        for name, parameter in getattr(model, part).named_parameters():
            if "lora_" not in name:
                parameter.requires_grad_(False)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(
            f"freeze={freeze!r} leaves no trainable parameter (fusion={model.config.fusion!r}); choose another freeze"
        )


def apply_lora(model: UniCAModel, r: int, alpha: float, dropout: float, target_modules: Sequence[str]) -> None:
    """Wrap the text encoder in a peft ``PeftModel`` with LoRA on ``target_modules``; its other weights freeze.

    Example:
        >>> apply_lora(model, r=8, alpha=16, dropout=0.0, target_modules=["query", "value"])
        >>> sorted({n.split(".")[-2] for n, p in model.text_model.named_parameters() if p.requires_grad})
        ['lora_A', 'lora_B']
    """
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules), bias="none")
    try:
        # get_peft_model leaves only the adapters trainable in the text encoder (bias="none").
        model.text_model = get_peft_model(model.text_model, config)
    except ValueError as error:
        linear = sorted({name.rsplit(".", 1)[-1] for name, m in model.text_model.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(
            f"lora_target_modules={list(target_modules)} matches no layer of the text encoder ({error}); its linear "
            f"layers are named {linear}"
        ) from error


def split_fusion_groups(optimizer: torch.optim.Optimizer, model: UniCAModel, learning_rate: float) -> None:
    """Move the Bi-CA and visual-projection parameters into optimizer groups at ``learning_rate``.

    Zero-initialised Bi-CA gates move about one learning rate per Adam step, so they may want a larger
    one than the pretrained towers (``fusion_learning_rate``). Each moved group keeps its other settings
    (e.g. weight decay).
    """
    fusion = {id(p) for part in (model.fusion_encoder, model.visual_projection) for p in part.parameters()}
    moved_groups = []
    for group in optimizer.param_groups:
        moved = [p for p in group["params"] if id(p) in fusion]
        if moved:
            group["params"] = [p for p in group["params"] if id(p) not in fusion]
            settings = {k: v for k, v in group.items() if k not in ("params", "initial_lr")}
            moved_groups.append({**settings, "params": moved, "lr": learning_rate})
    for group in moved_groups:
        optimizer.add_param_group(group)
