"""Fine-tuning UniCA with the Transformers ``Trainer``: InfoNCE + Positive Similarity Loss.

:class:`UniCATrainer` wires the pieces together: the arguments (:mod:`unica.training_args`), freezing
and peft LoRA (:mod:`unica.tuning`), data checks and batching (:mod:`unica.training_data`), the loss of
:mod:`unica.losses` (plainly, or GradCache-style with :mod:`unica.grad_cache` when ``cache_chunk_size``
is set) and checkpoints (:mod:`unica.checkpointing`). It logs the loss parts, evaluates in-batch
retrieval accuracy, and saves complete UniCA checkpoint folders (remote code + sentence-transformers
files); the Trainer's own ``checkpoint-N`` folders are such folders plus the optimizer / scheduler /
RNG state, so ``resume_from_checkpoint`` and ``load_best_model_at_end`` work unchanged.

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

import logging
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from transformers import Trainer
from transformers.trainer_utils import TrainOutput

from modeling_unica import UniCAModel
from unica.checkpointing import completed_run, load_training_checkpoint, training_record, write_training_checkpoint
from unica.distributed import is_distributed
from unica.grad_cache import cached_retrieval_loss
from unica.losses import RetrievalLossOutput, false_negative_mask, retrieval_loss
from unica.training_args import FREEZE_CHOICES, UniCATrainingArguments
from unica.training_data import check_batch_fits_data, concat_inputs, prepare_dataset, prepare_training_data
from unica.tuning import apply_freeze, apply_lora, has_lora, split_fusion_groups

logger = logging.getLogger(__name__)

# Parameters kept out of weight decay besides transformers' own (biases, norms): the temperature, and the
# Bi-CA gates, whose decay would pull Bi-CA back toward the concat baseline and bias the ablation.
_NO_DECAY = re.compile(r"(^|\.)logit_scale$|_gate$")

# The arguments, freezing / LoRA and data helpers live in their own modules; importable from here as before.
__all__ = ["FREEZE_CHOICES", "UniCATrainer", "UniCATrainingArguments", "apply_freeze", "apply_lora", "concat_inputs",
           "prepare_dataset"]


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
    - the temperature is the model's ``logit_scale`` weight (CLIP's), set from ``args.temperature`` when the
      trainer is built and trained when ``args.learnable_temperature``; it and the Bi-CA gates get no
      weight decay.
    - rows that name their documents (``pos_did`` / ``pos_dids``) have in-batch false negatives masked.
    - ``training_data`` (e.g. a Hub dataset id) is recorded in ``training_record.json`` and the model card
      that every save writes.

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
        training_data: str | None = None,
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
        # Data problems fail here, before the model is changed.
        data_collator, train_dataset, eval_dataset = prepare_training_data(
            args.hard_negatives, processor, data_collator, train_dataset, eval_dataset
        )
        if args.lora_r and not has_lora(model):
            apply_lora(model, args.lora_r, args.lora_alpha, args.lora_dropout, args.lora_target_modules)
        apply_freeze(model, args.freeze)
        with torch.no_grad():
            model.logit_scale.fill_(math.log(1.0 / args.temperature))
        model.logit_scale.requires_grad_(args.learnable_temperature)
        self.training_data = training_data
        self.loss_module = args.loss_module()
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
    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        """``Trainer.train`` after checking that one batch fits in the training data.

        Resuming from a checkpoint of a run that already reached its end (``max_steps``, or every epoch)
        trains nothing and writes nothing: the model gets the checkpoint's weights, and the returned
        ``TrainOutput`` has ``metrics["run_complete"] = True``.
        """
        # A batch larger than the data would train smaller batches than configured (or none): refuse it.
        check_batch_fits_data(self.train_dataset, self._train_batch_size, self.args)
        if isinstance(resume_from_checkpoint, str):
            state = completed_run(resume_from_checkpoint, self.args)
            if state is not None:
                logger.warning(
                    "the run in %s is complete (step %d of max_steps=%d): nothing to train, nothing written; raise "
                    "max_steps (or num_train_epochs) to train further", resume_from_checkpoint, state.global_step,
                    state.max_steps)
                self._load_from_checkpoint(resume_from_checkpoint)
                self.state = state
                loss = next((entry["train_loss"] for entry in reversed(state.log_history) if "train_loss" in entry), 0.0)
                return TrainOutput(state.global_step, float(loss), {"run_complete": True})
        return super().train(resume_from_checkpoint, *args, **kwargs)

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

    def _temperature(self, model: nn.Module) -> float | Tensor:
        """The model's learnable temperature (a tensor in the graph), or ``args.temperature``."""
        if self.args.learnable_temperature:
            return self.accelerator.unwrap_model(model).temperature
        return self.args.temperature

    @staticmethod
    def _id_kwargs(inputs: Mapping[str, Any]) -> dict[str, Tensor]:
        """The loss's false-negative ids from a batch's ``"ids"`` group (:class:`RetrievalCollator`), if any."""
        ids = inputs.get("ids") or {}
        names = {"positive": "positive_ids", "negative": "negative_ids", "query_positives": "query_positive_ids"}
        return {names[key]: value for key, value in ids.items() if key in names}

    def _loss_outputs(self, model: nn.Module, inputs: Mapping[str, Any]) -> RetrievalLossOutput:
        query, positive, negative = inputs["query"], inputs["positive"], inputs.get("negative")
        loss_kwargs = {"temperature": self._temperature(model), **self._id_kwargs(inputs)}
        if self.args.cache_chunk_size and torch.is_grad_enabled():
            return cached_retrieval_loss(lambda batch: model(**batch).embeddings, query, positive, negative,
                                         chunk_size=self.args.cache_chunk_size, loss_fn=self.loss_module, model=model,
                                         **loss_kwargs)
        groups = [query, positive] + ([negative] if negative is not None else [])
        embeddings = self._embed_groups(model, groups)
        negatives = None
        if negative is not None:
            batch_size, dim = embeddings[0].shape
            negatives = embeddings[2].view(batch_size, -1, dim)
        return self.loss_module(embeddings[0], embeddings[1], negatives, **loss_kwargs)

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

    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        """transformers' choice (no decay on biases and norms), minus the temperature and the Bi-CA gates."""
        return [name for name in super().get_decay_parameter_names(model) if not _NO_DECAY.search(name)]

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        optimizer = super().create_optimizer(model)
        if self.args.fusion_learning_rate is not None:
            split_fusion_groups(optimizer, self.accelerator.unwrap_model(self.model), self.args.fusion_learning_rate)
        return optimizer

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
            # Not self.loss_module: evaluation never gathers other processes' candidates.
            ids = self._id_kwargs(inputs)
            output = retrieval_loss(query, positives, negatives, temperature=self._temperature(model),
                                    psl_weight=self.args.psl_weight, psl_variant=self.args.psl_variant,
                                    psl_margin=self.args.psl_margin, symmetric=self.args.symmetric_loss, **ids)
            labels = torch.arange(batch_size, device=query.device)
            candidates = positives if negatives is None else torch.cat([positives, negatives.reshape(-1, dim)])
            scores = query @ candidates.T
            if "positive_ids" in ids:  # another row's copy of this query's positive is not a wrong answer
                known = false_negative_mask(ids.get("query_positive_ids", ids["positive_ids"]), ids["positive_ids"],
                                            ids.get("negative_ids"), scores.shape[1] - batch_size or None)
                scores = scores.masked_fill(known, float("-inf"))
            correct = scores[:, :batch_size].argmax(dim=1).eq(labels).sum()
            correct_with_negatives = scores.argmax(dim=1).eq(labels).sum()
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
        """Write a complete UniCA checkpoint folder to ``output_dir`` (``args.output_dir`` by default), atomically.

        With LoRA the weights are merged (``merge_lora``) and the adapter is saved in ``lora_adapter/``
        as well; see :func:`unica.checkpointing.write_training_checkpoint`.
        """
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            logger.warning("DeepSpeed / FSDP: saving with the Trainer's own format, not a full UniCA checkpoint")
            super().save_model(output_dir, _internal_call=_internal_call)
            return
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if self.args.should_save:
            model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
            record = training_record(self.args, self.state, self.training_data, self.train_dataset)
            prompts = getattr(self.data_collator, "prompts", None)  # trained with them: the checkpoint keeps them
            write_training_checkpoint(Path(output_dir), model, self.processing_class, self.args, record,
                                      prompts=prompts or None)
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        """Resume the model (and a learnable temperature) from a ``checkpoint-N`` folder, strictly.

        See :func:`unica.checkpointing.load_training_checkpoint`: transformers renames some towers' keys on
        save (e.g. ViT), so only ``from_pretrained`` finds them; LoRA adapters come from ``lora_adapter/``.
        """
        unwrapped = self.accelerator.unwrap_model(model if model is not None else self.model)
        load_training_checkpoint(unwrapped, resume_from_checkpoint)

    def _load_best_model(self) -> None:
        """``load_best_model_at_end``: load the best checkpoint the way a resume does.

        Transformers' own loader reads ``model.safetensors`` into the live model with ``strict=False``;
        with the renamed vision keys it would silently keep the last step's vision weights.
        DeepSpeed / FSDP checkpoints are in the Trainer's own format: its loader reads those.
        """
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            super()._load_best_model()
            return
        best = self.state.best_model_checkpoint
        logger.info("loading the best model from %s (score: %s)", best, self.state.best_metric)
        self._load_from_checkpoint(best)
