"""Fine-tuning UniCA with the Transformers ``Trainer``: InfoNCE + Positive Similarity Loss.

:class:`UniCATrainingArguments` adds the retrieval objective's settings to
``transformers.TrainingArguments``; :class:`UniCATrainer` computes the loss of
:mod:`unica.losses` (plainly, or GradCache-style with :mod:`unica.grad_cache` when
``cache_chunk_size`` is set), logs its parts, evaluates in-batch retrieval accuracy, and saves
complete UniCA checkpoint folders (remote code + sentence-transformers files) with
:func:`unica.checkpoint.save_checkpoint`. The Trainer's own ``checkpoint-N`` folders are such
folders plus the optimizer / scheduler / RNG state, so ``resume_from_checkpoint`` works unchanged.

Example:

```python
>>> from unica import UniCATrainer, UniCATrainingArguments, RetrievalCollator, init_model
>>> model, processor = init_model("./all-MiniLM-L6-v2", "vit-micro")
>>> args = UniCATrainingArguments(output_dir="out", psl_weight=0.1, temperature=0.02, hard_negatives=1)
>>> trainer = UniCATrainer(model=model, args=args, train_dataset=rows, data_collator=RetrievalCollator(processor))
>>> trainer.train()
>>> trainer.save_model()   # out/ is now a UniCA checkpoint folder
```
"""

from __future__ import annotations

import copy
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from transformers import Trainer, TrainingArguments

from modeling_unica import UniCAModel
from unica.checkpoint import check_checkpoint_files, load_pretrained_strict, save_checkpoint
from unica.collator import RetrievalCollator
from unica.distributed import is_distributed
from unica.grad_cache import cached_retrieval_loss
from unica.losses import RetrievalLoss, RetrievalLossOutput, retrieval_loss

logger = logging.getLogger(__name__)

__all__ = [
    "FREEZE_CHOICES",
    "UniCATrainer",
    "UniCATrainingArguments",
    "apply_freeze",
    "apply_lora",
    "concat_inputs",
    "prepare_dataset",
]

FREEZE_CHOICES = ("none", "vision", "text", "backbones")
PSL_VARIANTS = ("cosine", "hinge")
LORA_ADAPTER_DIR = "lora_adapter"
PEFT_KEY_PREFIX = "base_model.model."
LOSS_STATE_FILE = "unica_loss.safetensors"
IMAGE_COLUMNS = ("query_image", "pos_image", "neg_image")
# Prefix of the staging folder a save into an existing folder fills first (inside that folder).
STAGING_PREFIX = ".unica-save-"


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
        if not (_is_number(self.psl_weight) and self.psl_weight >= 0 and math.isfinite(self.psl_weight)):
            raise ValueError(f"psl_weight must be a finite number >= 0 (0 turns PSL off), got {self.psl_weight!r}")
        if self.psl_variant not in PSL_VARIANTS:
            raise ValueError(f"psl_variant must be one of {PSL_VARIANTS}, got {self.psl_variant!r}")
        if not (_is_number(self.psl_margin) and -1.0 <= self.psl_margin <= 1.0):
            raise ValueError(f"psl_margin is a target cosine and must be in [-1, 1], got {self.psl_margin!r}")
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


# ---------------------------------------------------------------------- model preparation
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
    """Add peft LoRA adapters to the text encoder's ``target_modules`` in place; its other weights freeze.

    Example:
        >>> apply_lora(model, r=8, alpha=16, dropout=0.0, target_modules=["query", "value"])
        >>> sorted({n.split(".")[-2] for n, p in model.text_model.named_parameters() if p.requires_grad})
        ['lora_A', 'lora_B']
    """
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules), bias="none")
    try:
        inject_adapter_in_model(config, model.text_model)
    except ValueError as error:
        linear = sorted({name.rsplit(".", 1)[-1] for name, m in model.text_model.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(
            f"lora_target_modules={list(target_modules)} matches no layer of the text encoder ({error}); its linear "
            f"layers are named {linear}"
        ) from error
    for name, parameter in model.text_model.named_parameters():
        parameter.requires_grad_("lora_" in name)


def _has_lora(model: nn.Module) -> bool:
    return any("lora_" in name for name, _ in model.named_parameters())


def _lora_free_copy(model: UniCAModel, merge: bool) -> UniCAModel:
    """A copy of ``model`` without LoRA layers: merged into the weights (``merge``) or the base weights only."""
    from peft.tuners.lora import LoraLayer

    plain = copy.deepcopy(model)
    for name, module in list(plain.named_modules()):
        if isinstance(module, LoraLayer):
            if merge:
                module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(plain.get_submodule(parent_name), child, module.get_base_layer())
    return plain


def prepare_dataset(dataset: Any) -> Any:
    """Let the collator decode images (so errors name the row): ``Image()`` columns -> ``Image(decode=False)``.

    Anything that is not a ``datasets.Dataset`` is returned unchanged.
    """
    import datasets

    if not isinstance(dataset, datasets.Dataset):
        return dataset
    for column in IMAGE_COLUMNS:
        feature = dataset.features.get(column)
        if isinstance(feature, datasets.Image) and feature.decode:
            dataset = dataset.cast_column(column, datasets.Image(decode=False))
    return dataset


def concat_inputs(groups: Sequence[Mapping[str, Tensor]], pad_token_id: int = 0) -> dict[str, Tensor]:
    """Concatenate processor batches (query, positive, negative groups) into one batch, for one forward pass.

    Texts are right-padded to the longest group (padding is masked, so embeddings do not change);
    ``pixel_values`` stay in item order. One forward per step is what DistributedDataParallel expects.

    Example:
        >>> a = {"input_ids": torch.ones(2, 3, dtype=torch.long), "attention_mask": torch.ones(2, 3, dtype=torch.long),
        ...      "image_mask": torch.zeros(2, dtype=torch.bool)}
        >>> b = {"input_ids": torch.ones(1, 5, dtype=torch.long), "attention_mask": torch.ones(1, 5, dtype=torch.long),
        ...      "image_mask": torch.ones(1, dtype=torch.bool), "pixel_values": torch.zeros(1, 3, 8, 8)}
        >>> merged = concat_inputs([a, b])
        >>> merged["input_ids"].shape, merged["attention_mask"][0].tolist(), merged["pixel_values"].shape[0]
        (torch.Size([3, 5]), [1, 1, 1, 0, 0], 1)
    """
    length = max(group["input_ids"].shape[1] for group in groups)
    ids, masks, image_masks, pixels = [], [], [], []
    for group in groups:
        pad = length - group["input_ids"].shape[1]
        ids.append(nn.functional.pad(group["input_ids"], (0, pad), value=pad_token_id))
        masks.append(nn.functional.pad(group["attention_mask"], (0, pad), value=0))
        image_masks.append(group["image_mask"])
        if group.get("pixel_values") is not None:
            pixels.append(group["pixel_values"])
    merged = {"input_ids": torch.cat(ids), "attention_mask": torch.cat(masks), "image_mask": torch.cat(image_masks)}
    if pixels:
        merged["pixel_values"] = torch.cat(pixels)
    return merged


# ---------------------------------------------------------------------- trainer
class UniCATrainer(Trainer):
    """``transformers.Trainer`` for UniCA retrieval fine-tuning.

    - ``compute_loss``: InfoNCE (in-batch, hard and, across processes, gathered negatives) +
      ``psl_weight`` * PSL; GradCache-style when ``args.cache_chunk_size`` is set. ``info_nce``,
      ``psl`` and ``temperature`` are logged beside ``loss``.
    - evaluation: ``eval_loss`` plus ``eval_accuracy`` (top-1 of each query among the batch's
      positives) and, with hard negatives, ``eval_accuracy_with_negatives``.
    - ``save_model``: a complete UniCA checkpoint folder, written atomically; with LoRA the weights
      are merged (``merge_lora``) and the adapter is saved in ``lora_adapter/`` as well.
    - ``args.freeze`` and ``args.lora_r`` are applied to the model when the trainer is built.

    ``data_collator`` defaults to :class:`RetrievalCollator` on ``processing_class`` (the processor);
    a ``RetrievalCollator`` built with the default ``hard_negatives=0`` takes ``args.hard_negatives``.
    Training and evaluation datasets are checked (columns, negatives per row) before training.
    """

    def __init__(
        self,
        model: UniCAModel | None = None,
        args: UniCATrainingArguments | None = None,
        data_collator: Any = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        **kwargs: Any,
    ) -> None:
        if model is None:
            raise ValueError("UniCATrainer needs a model (e.g. from unica.init_model or load_checkpoint)")
        if args is None:
            args = UniCATrainingArguments(output_dir="unica-output")
        if not isinstance(args, UniCATrainingArguments):
            raise ValueError(
                f"args must be UniCATrainingArguments (it holds the loss settings), got {type(args).__name__}"
            )
        processor = processing_class if processing_class is not None else getattr(data_collator, "processor", None)
        if data_collator is None:
            if processor is None:
                raise ValueError("pass data_collator=RetrievalCollator(processor) or processing_class=processor")
            data_collator = RetrievalCollator(processor, hard_negatives=args.hard_negatives)
        if isinstance(data_collator, RetrievalCollator) and data_collator.hard_negatives != args.hard_negatives:
            if data_collator.hard_negatives:
                raise ValueError(
                    f"the collator takes hard_negatives={data_collator.hard_negatives} but the arguments say "
                    f"{args.hard_negatives}; make them agree"
                )
            data_collator.hard_negatives = args.hard_negatives

        if args.lora_r and not _has_lora(model):
            apply_lora(model, args.lora_r, args.lora_alpha, args.lora_dropout, args.lora_target_modules)
        apply_freeze(model, args.freeze)
        self.loss_module = args.loss_module()

        if isinstance(data_collator, RetrievalCollator):
            if train_dataset is not None:
                data_collator.check_dataset(train_dataset, "train_dataset")
            evals = eval_dataset if isinstance(eval_dataset, dict) else {"eval_dataset": eval_dataset}
            for name, dataset in evals.items():
                if dataset is not None:
                    data_collator.check_dataset(dataset, name)
        train_dataset = prepare_dataset(train_dataset)
        if isinstance(eval_dataset, dict):
            eval_dataset = {name: prepare_dataset(dataset) for name, dataset in eval_dataset.items()}
        else:
            eval_dataset = prepare_dataset(eval_dataset)

        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processor,
            **kwargs,
        )
        # The loss is a per-batch mean: let the Trainer divide it by the accumulation steps.
        self.model_accepts_loss_kwargs = False
        self.loss_is_scaled_for_ga = False
        self.loss_module.to(self.args.device)
        self._train_parts: list[Tensor] = []
        self._eval_stats: Tensor | None = None
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        logger.info(
            "UniCA training: %.2fM of %.2fM parameters trainable (freeze=%s, lora_r=%d)",
            trainable / 1e6, sum(p.numel() for p in model.parameters()) / 1e6, args.freeze, args.lora_r,
        )

    # ------------------------------------------------------------------ training
    def train(self, *args: Any, **kwargs: Any) -> Any:
        """``Trainer.train`` after checking that one batch fits in the training data."""
        self._check_batch_fits_data()
        return super().train(*args, **kwargs)

    def _check_batch_fits_data(self) -> None:
        """Refuse a batch (per device x processes) larger than the training data.

        The dataloader keeps partial batches (``dataloader_drop_last=False``, the default), so such a run
        would train on smaller batches than configured (fewer in-batch negatives; with several processes
        the sampler repeats rows, which become false negatives); with ``dataloader_drop_last`` every batch
        is dropped and nothing trains. Either way the configuration is wrong.
        """
        from transformers.trainer_utils import has_length

        dataset = self.train_dataset
        if dataset is None or not has_length(dataset):
            return
        rows, world = len(dataset), max(1, self.args.world_size)
        per_process = self._train_batch_size
        if per_process * world <= rows:
            return
        processes = f" x {world} processes" if world > 1 else ""
        consequence = (
            "with dataloader_drop_last=True every batch is dropped and nothing would train"
            if self.args.dataloader_drop_last
            else "every batch would be smaller than configured (fewer in-batch negatives)"
        )
        fix = f"set it to at most {rows // world}" if rows // world else "use fewer processes"
        raise ValueError(
            f"per_device_train_batch_size={self.args.per_device_train_batch_size}{processes} asks for "
            f"{per_process * world} rows per batch, but there are only {rows} training rows: {consequence}; "
            f"{fix} or add training rows"
        )

    # ------------------------------------------------------------------ loss
    def _pad_token_id(self) -> int:
        tokenizer = getattr(self.processing_class, "tokenizer", None)
        pad = getattr(tokenizer, "pad_token_id", None)
        return int(pad) if pad is not None else 0

    def _embed_groups(self, model: nn.Module, groups: Sequence[Mapping[str, Tensor]]) -> list[Tensor]:
        merged = concat_inputs(groups, self._pad_token_id())
        embeddings = model(**merged).embeddings
        sizes = [group["image_mask"].shape[0] for group in groups]
        return list(torch.split(embeddings, sizes))

    def _loss_outputs(self, model: nn.Module, inputs: Mapping[str, Any]) -> RetrievalLossOutput:
        query, positive, negative = inputs["query"], inputs["positive"], inputs.get("negative")
        if self.args.cache_chunk_size and torch.is_grad_enabled():
            return cached_retrieval_loss(
                lambda batch: model(**batch).embeddings,
                query,
                positive,
                negative,
                chunk_size=self.args.cache_chunk_size,
                loss_fn=self.loss_module,
                model=model,
            )
        groups = [query, positive] + ([negative] if negative is not None else [])
        embeddings = self._embed_groups(model, groups)
        negatives = None
        if negative is not None:
            batch_size, dim = embeddings[0].shape
            negatives = embeddings[2].view(batch_size, -1, dim)
        return self.loss_module(embeddings[0], embeddings[1], negatives)

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Tensor | int | None = None,
    ) -> Tensor | tuple[Tensor, RetrievalLossOutput]:
        """InfoNCE + ``psl_weight`` * PSL on a ``{"query", "positive"[, "negative"]}`` batch."""
        if "query" not in inputs or "positive" not in inputs:
            raise ValueError(
                f"UniCATrainer expects batches with 'query' and 'positive' groups (RetrievalCollator), got {sorted(inputs)}"
            )
        output = self._loss_outputs(model, inputs)
        if model.training:
            self._train_parts.append(torch.stack([output.info_nce.detach(), output.psl, output.temperature.float()]))
        return (output.loss, output) if return_outputs else output.loss

    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)
        # The learnable temperature lives outside the DDP-wrapped model: average its gradient ourselves.
        if is_distributed() and self.args.learnable_temperature:
            for parameter in self.loss_module.parameters():
                if parameter.grad is not None:
                    dist.all_reduce(parameter.grad)
                    parameter.grad /= dist.get_world_size()
        return loss

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        optimizer = super().create_optimizer(model)
        if self.args.fusion_learning_rate is not None:
            self._split_fusion_groups(optimizer)
        extra = [p for p in self.loss_module.parameters() if p.requires_grad]
        known = {id(p) for group in optimizer.param_groups for p in group["params"]}
        if extra and not any(id(p) in known for p in extra):
            optimizer.add_param_group({"params": extra, "weight_decay": 0.0})
        return optimizer

    def _split_fusion_groups(self, optimizer: torch.optim.Optimizer) -> None:
        """Move the Bi-CA and visual-projection parameters into groups at ``fusion_learning_rate``."""
        unwrapped = self.accelerator.unwrap_model(self.model)
        fusion = {id(p) for part in (unwrapped.fusion_encoder, unwrapped.visual_projection) for p in part.parameters()}
        moved_groups = []
        for group in optimizer.param_groups:
            moved = [p for p in group["params"] if id(p) in fusion]
            if moved:
                group["params"] = [p for p in group["params"] if id(p) not in fusion]
                settings = {k: v for k, v in group.items() if k not in ("params", "initial_lr")}
                moved_groups.append({**settings, "params": moved, "lr": self.args.fusion_learning_rate})
        for group in moved_groups:
            optimizer.add_param_group(group)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._train_parts:
            means = torch.stack(self._train_parts).mean(dim=0)
            if is_distributed():  # every process logs at the same steps
                dist.all_reduce(means)
                means /= dist.get_world_size()
            logs["info_nce"], logs["psl"], logs["temperature"] = (round(float(v), 6) for v in means)
            self._train_parts = []
        super().log(logs, start_time)

    # ------------------------------------------------------------------ evaluation
    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """Evaluation loss and in-batch retrieval accuracy (accumulated; reported by ``evaluate``)."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            groups = [inputs["query"], inputs["positive"]] + ([inputs["negative"]] if "negative" in inputs else [])
            embeddings = self._embed_groups(model, groups)
            query, positives = embeddings[0], embeddings[1]
            batch_size, dim = query.shape
            negatives = embeddings[2].view(batch_size, -1, dim) if len(embeddings) == 3 else None
            output = retrieval_loss(
                query,
                positives,
                negatives,
                temperature=self.loss_module.info_nce.temperature,
                psl_weight=self.args.psl_weight,
                psl_variant=self.args.psl_variant,
                psl_margin=self.args.psl_margin,
                symmetric=self.args.symmetric_loss,
            )
            labels = torch.arange(batch_size, device=query.device)
            correct = (query @ positives.T).argmax(dim=1).eq(labels).sum()
            candidates = positives if negatives is None else torch.cat([positives, negatives.reshape(-1, dim)])
            correct_with_negatives = (query @ candidates.T).argmax(dim=1).eq(labels).sum()
            stats = torch.stack(
                [
                    correct.double(),
                    correct_with_negatives.double(),
                    torch.tensor(float(batch_size), dtype=torch.float64, device=query.device),
                    output.info_nce.double() * batch_size,
                    output.psl.double() * batch_size,
                ]
            )
        self._eval_stats = stats if self._eval_stats is None else self._eval_stats + stats
        return output.loss.detach(), None, None

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"):
        self._eval_stats = None
        output = super().evaluation_loop(
            dataloader, description, prediction_loss_only=prediction_loss_only, ignore_keys=ignore_keys,
            metric_key_prefix=metric_key_prefix,
        )
        stats = self._eval_stats
        if stats is None:
            stats = torch.zeros(5, dtype=torch.float64, device=self.args.device)
        if is_distributed():
            dist.all_reduce(stats)
        count = float(stats[2])
        if count:
            output.metrics[f"{metric_key_prefix}_accuracy"] = float(stats[0]) / count
            if self.args.hard_negatives:
                output.metrics[f"{metric_key_prefix}_accuracy_with_negatives"] = float(stats[1]) / count
            output.metrics[f"{metric_key_prefix}_info_nce"] = float(stats[3]) / count
            output.metrics[f"{metric_key_prefix}_psl"] = float(stats[4]) / count
        self._eval_stats = None
        return output

    # ------------------------------------------------------------------ saving and loading
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Write a complete UniCA checkpoint folder to ``output_dir`` (``args.output_dir`` by default).

        The folder is written to a temporary sibling and renamed into place; into an existing folder
        (e.g. ``output_dir`` holding ``checkpoint-N`` folders) the files are moved in with
        ``config.json`` last, so an interrupted save never looks like a complete checkpoint.
        """
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            logger.warning("DeepSpeed / FSDP: saving with the Trainer's own format, not a full UniCA checkpoint")
            super().save_model(output_dir, _internal_call=_internal_call)
            return
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if self.args.should_save:
            self._write_checkpoint(Path(output_dir))
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

    def _write_checkpoint(self, target: Path) -> None:
        processor = self.processing_class
        if processor is None:
            raise ValueError("cannot save a UniCA checkpoint without the processor: pass processing_class=processor")
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        lora = _has_lora(model)
        export = _lora_free_copy(model, merge=self.args.merge_lora) if lora else model
        if self.args.learnable_temperature:
            export.config.contrastive_temperature = float(torch.as_tensor(self.loss_module.info_nce.temperature).detach())
        writers = [lambda folder: torch.save(self.args, folder / "training_args.bin")]
        if lora:
            writers.append(lambda folder: self._write_lora_adapter(model, folder / LORA_ADAPTER_DIR))
        if any(True for _ in self.loss_module.parameters()):
            writers.append(self._write_loss_state)
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

    def _write_lora_adapter(self, model: UniCAModel, folder: Path) -> None:
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        # PeftModel.save_pretrained's key layout ("base_model.model." + module path), so that
        # PeftModel.from_pretrained(text_encoder, folder) finds the weights.
        state = {PEFT_KEY_PREFIX + k: v.detach().cpu().contiguous()
                 for k, v in get_peft_model_state_dict(model.text_model).items()}
        save_file(state, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
        model.text_model.peft_config["default"].save_pretrained(str(folder))

    def _write_loss_state(self, folder: Path) -> None:
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in self.loss_module.state_dict().items()}
        save_file(state, str(folder / LOSS_STATE_FILE), metadata={"format": "pt"})

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        """Load the weights of a ``checkpoint-N`` folder into the model being trained.

        Loaded through ``from_pretrained`` (not a raw state dict): transformers renames some towers' keys
        on save and back on load (e.g. ViT), so the file's names are not the live module's. Any weight
        that does not fit the checkpoint's own config is an error (:func:`load_pretrained_strict`). With LoRA,
        the adapters come from ``lora_adapter/`` and the frozen base weights of LoRA layers stay those
        the model was built with (as peft resumes).
        """
        folder = Path(resume_from_checkpoint)
        unwrapped = self.accelerator.unwrap_model(model if model is not None else self.model)
        if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
            raise ValueError(f"{str(folder)!r} is not a UniCA training checkpoint (needs config.json and model.safetensors)")
        check_checkpoint_files(folder)
        saved = load_pretrained_strict(type(unwrapped), folder).state_dict()
        live = unwrapped.state_dict()
        lora = _has_lora(unwrapped)
        if lora:
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            adapter = folder / LORA_ADAPTER_DIR / "adapter_model.safetensors"
            if not adapter.is_file():
                raise ValueError(f"{str(folder)!r} has no {LORA_ADAPTER_DIR}/adapter_model.safetensors to resume LoRA from")
            weights = {k.removeprefix(PEFT_KEY_PREFIX): v for k, v in load_file(str(adapter)).items()}
            result = set_peft_model_state_dict(unwrapped.text_model, weights)
            if getattr(result, "unexpected_keys", None):
                raise ValueError(f"the LoRA adapter in {str(folder)!r} does not fit this model: {result.unexpected_keys[:5]}")
        wanted = [k for k in live if not (lora and ("lora_" in k or ".base_layer." in k))]
        missing = [k for k in wanted if k not in saved]
        if missing:
            raise ValueError(f"checkpoint {str(folder)!r} lacks weights {missing[:5]}; it was saved from another model")
        unwrapped.load_state_dict({k: saved[k] for k in wanted}, strict=not lora)
        loss_state = folder / LOSS_STATE_FILE
        if loss_state.is_file():
            from safetensors.torch import load_file

            self.loss_module.load_state_dict(load_file(str(loss_state)))
        logger.info("resumed model weights from %s", folder)
