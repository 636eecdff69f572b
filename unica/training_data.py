"""Data preparation for :class:`unica.trainer.UniCATrainer`: the collator, dataset checks and batching.

Everything here runs before the first step (:func:`prepare_training_data`, :func:`check_batch_fits_data`)
or on each batch (:func:`concat_inputs`), so that a data problem fails early with a message naming it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from transformers import TrainingArguments

from unica.collator import RetrievalCollator

__all__ = ["IMAGE_COLUMNS", "check_batch_fits_data", "concat_inputs", "prepare_dataset", "prepare_training_data"]

IMAGE_COLUMNS = ("query_image", "pos_image", "neg_image")


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


def prepare_training_data(
    hard_negatives: int, processor: Any, data_collator: Any, train_dataset: Any, eval_dataset: Any
) -> tuple[Any, Any, Any]:
    """``(data_collator, train_dataset, eval_dataset)`` ready for the Trainer, checked against each other.

    ``data_collator`` defaults to a :class:`RetrievalCollator` on ``processor``; a ``RetrievalCollator``
    built with the default ``hard_negatives=0`` takes ``hard_negatives`` (another value must agree).
    The datasets are checked by the collator (columns, negatives per row) and get lazily decoded images.
    """
    if data_collator is None:
        if processor is None:
            raise ValueError("pass data_collator=RetrievalCollator(processor) or processing_class=processor")
        data_collator = RetrievalCollator(processor, hard_negatives=hard_negatives)
    if isinstance(data_collator, RetrievalCollator) and data_collator.hard_negatives != hard_negatives:
        if data_collator.hard_negatives:
            raise ValueError(
                f"the collator takes hard_negatives={data_collator.hard_negatives} but the arguments say "
                f"{hard_negatives}; make them agree"
            )
        data_collator.hard_negatives = hard_negatives

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
    return data_collator, train_dataset, eval_dataset


def check_batch_fits_data(dataset: Any, per_process: int, args: TrainingArguments) -> None:
    """Refuse a batch (``per_process`` rows x ``args.world_size`` processes) larger than the training data.

    The dataloader keeps partial batches (``dataloader_drop_last=False``, the default), so such a run
    would train on smaller batches than configured (fewer in-batch negatives; with several processes
    the sampler repeats rows, which become false negatives); with ``dataloader_drop_last`` every batch is dropped
    and nothing trains. Either way the configuration is wrong. Datasets without a length pass.
    """
    from transformers.trainer_utils import has_length

    if dataset is None or not has_length(dataset):
        return
    rows, world = len(dataset), max(1, args.world_size)
    if per_process * world <= rows:
        return
    processes = f" x {world} processes" if world > 1 else ""
    consequence = (
        "with dataloader_drop_last=True every batch is dropped and nothing would train"
        if args.dataloader_drop_last
        else "every batch would be smaller than configured (fewer in-batch negatives)"
    )
    fix = f"set it to at most {rows // world}" if rows // world else "use fewer processes"
    raise ValueError(
        f"per_device_train_batch_size={args.per_device_train_batch_size}{processes} asks for "
        f"{per_process * world} rows per batch, but there are only {rows} training rows: {consequence}; "
        f"{fix} or add training rows"
    )


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
