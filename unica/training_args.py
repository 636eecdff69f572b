"""``UniCATrainingArguments``: ``transformers.TrainingArguments`` plus UniCA's objective, freezing and LoRA
options, and every check of them.

Invalid settings fail when the arguments are built (before any data or model is loaded), with a
``ValueError`` naming the field; ``unica train --config`` reports it in one line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

from unica.losses import RetrievalLoss, check_psl_settings

__all__ = ["FREEZE_CHOICES", "UniCATrainingArguments"]

# What ``freeze`` may name: nothing, one tower, or both towers (then only Bi-CA + the visual projection train).
FREEZE_CHOICES = ("none", "vision", "text", "backbones")


@dataclass
class UniCATrainingArguments(TrainingArguments):
    """``TrainingArguments`` plus UniCA's retrieval objective, freezing and LoRA options.

    Every field can be set from a YAML / JSON config (``unica train --config``).

    Example:
        >>> args = UniCATrainingArguments(output_dir="out", temperature=0.02, psl_weight=0.1, hard_negatives=1)
        >>> args.remove_unused_columns  # rows are not model keyword arguments
        False
        >>> UniCATrainingArguments(output_dir="out", psl_weight=-1)
        Traceback (most recent call last):
        ...
        ValueError: psl_weight must be a finite number >= 0 (0 turns PSL off), got -1
    """

    temperature: float = field(default=0.02, metadata={"help": "InfoNCE softmax temperature (> 0); scale = 1 / T."})
    learnable_temperature: bool = field(
        default=False, metadata={"help": "Learn the temperature (CLIP's logit scale, clamped at T >= 0.01)."}
    )
    symmetric_loss: bool = field(default=False, metadata={"help": "Add the positive->query InfoNCE term."})
    psl_weight: float = field(default=0.1, metadata={"help": "Weight of the Positive Similarity Loss; 0 = PSL off."})
    psl_variant: str = field(default="cosine", metadata={"help": "PSL variant: 'cosine' or 'hinge'."})
    psl_margin: float = field(default=0.8, metadata={"help": "Target cosine of the hinge PSL variant, in [-1, 1]."})
    hard_negatives: int = field(default=0, metadata={"help": "Hard negatives per query taken from each row."})
    cache_chunk_size: int | None = field(
        default=None,
        metadata={"help": "GradCache-style cached loss: encode at most this many items at once (None = plain)."},
    )
    gather_across_processes: bool = field(
        default=True, metadata={"help": "Use other processes' candidates as negatives (a no-op in one process)."}
    )
    freeze: str = field(
        default="none",
        metadata={"help": "'none', 'vision', 'text' or 'backbones' (train only Bi-CA + visual projection)."},
    )
    lora_r: int = field(default=0, metadata={"help": "LoRA rank on the text encoder's attention; 0 = no LoRA."})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA branch."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["query", "value"],
        metadata={"help": "Linear layers of the text encoder that get LoRA adapters (module name suffixes)."},
    )
    fusion_learning_rate: float | None = field(
        default=None,
        metadata={"help": "Learning rate of the parts new to the pretrained towers: the Bi-CA layers and the visual "
                  "projection (both fusions have the projection, so an ablation stays fair). Default: learning_rate. "
                  "Zero-initialised Bi-CA gates move about one learning rate per Adam step, so short runs need more."},
    )
    merge_lora: bool = field(
        default=True,
        metadata={"help": "Saved checkpoints hold LoRA merged into the weights (else: base weights + lora_adapter/)."},
    )
    # Rows are (query, positive, negative) columns, not model keyword arguments: keep every column.
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Must stay False: the collator needs the rows' columns."}
    )
    # Every trainable weight of a UniCA model gets a gradient in every training step (vision-tower weights it never
    # uses are frozen, see UNUSED_VISION_WEIGHTS; a batch without images ties the image path in with a zero
    # gradient), so DistributedDataParallel runs without its unused-parameter search, with activation checkpointing
    # or without (transformers' default, None, searches without checkpointing: one more graph traversal per step).
    ddp_find_unused_parameters: bool | None = field(
        default=False,
        metadata={"help": "find_unused_parameters of DistributedDataParallel. False: every trainable UniCA weight "
                  "takes part in every step. True only for weights of your own that some steps do not use."},
    )

    def __post_init__(self) -> None:
        self.validate_unica()
        super().__post_init__()
        if self.gradient_checkpointing and self.gradient_checkpointing_kwargs is None:
            # Non-reentrant checkpointing works with frozen embeddings, LoRA and DDP without extra hooks.
            self.gradient_checkpointing_kwargs = {"use_reentrant": False}

    def validate_unica(self) -> None:
        """Raise ``ValueError`` naming the field for any invalid UniCA setting."""
        if not (_is_number(self.temperature) and self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a finite number > 0 (e.g. 0.02), got {self.temperature!r}")
        if self.learnable_temperature and self.temperature < 0.01:
            raise ValueError(
                f"a learnable temperature is clamped at >= 0.01; start it at or above 0.01, got {self.temperature}"
            )
        # The margin is checked whatever the variant: out of range it is a config mistake even where cosine ignores it.
        check_psl_settings(self.psl_weight, self.psl_variant, self.psl_margin)
        self._validate_steps()
        if not _is_int(self.hard_negatives) or self.hard_negatives < 0:
            raise ValueError(f"hard_negatives must be an integer >= 0, got {self.hard_negatives!r}")
        if self.cache_chunk_size is not None and (not _is_int(self.cache_chunk_size) or self.cache_chunk_size < 1):
            raise ValueError(
                f"cache_chunk_size must be a positive integer (items encoded at once) or None, got {self.cache_chunk_size!r}"
            )
        if self.freeze not in FREEZE_CHOICES:
            raise ValueError(f"freeze must be one of {FREEZE_CHOICES}, got {self.freeze!r}")
        if not _is_int(self.lora_r) or self.lora_r < 0:
            raise ValueError(f"lora_r must be an integer >= 0 (0 = no LoRA), got {self.lora_r!r}")
        if self.lora_r and not (_is_number(self.lora_alpha) and self.lora_alpha > 0):
            raise ValueError(f"lora_alpha must be a number > 0, got {self.lora_alpha!r}")
        if not (_is_number(self.lora_dropout) and 0.0 <= self.lora_dropout < 1.0):
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        if isinstance(self.lora_target_modules, str):
            self.lora_target_modules = [self.lora_target_modules]
        if self.lora_r and not self.lora_target_modules:
            raise ValueError("lora_target_modules is empty; name the text encoder's linear layers, e.g. ['query', 'value']")
        if self.fusion_learning_rate is not None and not (
            _is_number(self.fusion_learning_rate) and self.fusion_learning_rate > 0
        ):
            raise ValueError(f"fusion_learning_rate must be a number > 0 or None, got {self.fusion_learning_rate!r}")
        if self.remove_unused_columns:
            raise ValueError(
                "remove_unused_columns=True would drop every column of the training rows (they are not model "
                "arguments); leave it False"
            )

    def _validate_steps(self) -> None:
        """Refuse settings that would train zero steps (transformers would "train" them and exit cleanly).

        ``max_steps`` > 0 trains that many steps; -1 trains ``num_train_epochs`` epochs (transformers reads
        every negative value so, but only -1 is documented); 0 trains none.
        """
        steps, epochs = self.max_steps, self.num_train_epochs
        if not _is_number(epochs):
            raise ValueError(f"num_train_epochs must be a number, got {epochs!r}")
        if not _is_int(steps) or steps < -1:
            raise ValueError(
                f"max_steps={steps!r} is not a number of steps: set max_steps to a positive number of optimizer "
                f"steps, or to -1 to train for num_train_epochs (now {epochs!r})"
            )
        if steps == 0:
            raise ValueError(
                f"max_steps=0 trains zero steps: set max_steps to a positive number of optimizer steps, or to -1 "
                f"to train for num_train_epochs (now {epochs!r})"
            )
        if steps == -1 and not epochs > 0:
            raise ValueError(
                f"num_train_epochs={epochs!r} with max_steps=-1 (train for num_train_epochs) trains zero steps: "
                "set num_train_epochs > 0, or max_steps to a positive number of optimizer steps"
            )

    def loss_module(self) -> RetrievalLoss:
        """The :class:`RetrievalLoss` these arguments describe."""
        return RetrievalLoss(
            temperature=self.temperature,
            learnable_temperature=self.learnable_temperature,
            psl_weight=self.psl_weight,
            psl_variant=self.psl_variant,
            psl_margin=self.psl_margin,
            symmetric=self.symmetric_loss,
            gather_across_processes=self.gather_across_processes,
        )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
