"""GradCache-style cached loss: contrastive batches far larger than what fits in memory at once.

Gao et al., "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup" (GradCache,
https://arxiv.org/abs/2101.06983), in three steps:

1. embed every group of inputs (queries, positives, negatives) chunk by chunk *without* a graph,
   snapshotting the RNG state before each chunk;
2. compute the loss on the full batch of embeddings (a small graph: embeddings -> loss);
3. when the loss is back-propagated, re-embed each chunk *with* a graph under its saved RNG state
   (so dropout draws the same masks) and back-propagate the cached gradient of its embeddings.

Only one chunk of activations is alive at a time, so peak memory depends on ``chunk_size``, not on
the batch size. Step 3 runs inside ``loss.backward()`` (a hook on the embeddings), which is what
lets a Transformers ``Trainer`` use it unchanged: ``compute_loss`` returns the loss, and the
Trainer's own ``accelerator.backward(loss / gradient_accumulation_steps)`` runs step 3 with that
scaling (and an fp16 grad scaler's) applied to every chunk. So:

- call ``backward`` exactly once on the returned loss (the Trainer does; in a plain loop, you do);
- do not call it inside ``compute_loss`` as well, and do not ``detach`` the loss you return.

Inputs are dicts of tensors, as a processor or collator returns them; :func:`split_inputs`
documents how they are cut into chunks. Under ``torch.no_grad()`` (evaluation) only step 1-2 run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from functools import partial
from typing import Any, TypeVar

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.checkpoint import get_device_states, set_device_states

from unica.losses import RetrievalLossOutput, retrieval_loss

__all__ = ["cached_loss", "cached_retrieval_loss", "split_inputs"]

LossT = TypeVar("LossT")
EncodeFn = Callable[[dict[str, Any]], Tensor]
SplitFn = Callable[[Mapping[str, Any], int], list[dict[str, Any]]]

_BATCH_SIZE_KEYS = ("image_mask", "input_ids", "attention_mask")


def _batch_size(inputs: Mapping[str, Any], image_keys: Sequence[str]) -> int:
    for key in _BATCH_SIZE_KEYS:
        value = inputs.get(key)
        if isinstance(value, Tensor) and value.ndim > 0:
            return value.shape[0]
    for key, value in inputs.items():
        if key not in image_keys and isinstance(value, Tensor) and value.ndim > 0:
            return value.shape[0]
    raise ValueError(
        f"cannot tell the batch size of inputs with keys {sorted(inputs)}: pass one of {_BATCH_SIZE_KEYS} "
        "or another tensor whose first dimension is the batch"
    )


def split_inputs(
    inputs: Mapping[str, Any],
    chunk_size: int,
    image_keys: Sequence[str] = ("pixel_values",),
    image_mask_key: str = "image_mask",
) -> list[dict[str, Any]]:
    """Cut a batch of processor outputs into chunks of at most ``chunk_size`` items.

    Convention:

    - the batch size ``B`` is the first dimension of ``image_mask``, else ``input_ids``, else
      ``attention_mask``, else of the first other tensor;
    - ``image_mask`` is a ``(B,)`` bool tensor, True for the items that have an image;
      ``pixel_values`` (every key in ``image_keys``) holds one row per *image*, in item order, so
      it is sliced by the cumulative count of ``image_mask`` (without ``image_mask`` it must have
      ``B`` rows). A chunk with no image gets no ``pixel_values`` key;
    - every other tensor must have ``B`` rows and is sliced along dim 0; 0-d tensors and
      non-tensors are passed to every chunk unchanged.

    Anything else (e.g. a flattened patch tensor with a grid) needs its own ``split_fn``.

    Example:
        >>> batch = {"input_ids": torch.arange(6).view(3, 2), "image_mask": torch.tensor([True, False, True]),
        ...          "pixel_values": torch.zeros(2, 3, 4, 4)}
        >>> [sorted((k, tuple(v.shape)) for k, v in c.items()) for c in split_inputs(batch, 2)]
        [[('image_mask', (2,)), ('input_ids', (2, 2)), ('pixel_values', (1, 3, 4, 4))], [('image_mask', (1,)), ('input_ids', (1, 2)), ('pixel_values', (1, 3, 4, 4))]]
    """
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    batch_size = _batch_size(inputs, image_keys)
    image_mask = inputs.get(image_mask_key)
    image_offsets: list[int] | None = None
    if image_mask is not None:
        if not isinstance(image_mask, Tensor) or image_mask.shape != (batch_size,):
            raise ValueError(
                f"{image_mask_key} must be a ({batch_size},) bool tensor, got {getattr(image_mask, 'shape', type(image_mask).__name__)}"
            )
        # image_offsets[i] = number of images among items [0, i)
        image_offsets = [0, *torch.cumsum(image_mask.long(), 0).tolist()]

    for key, value in inputs.items():
        if not isinstance(value, Tensor) or value.ndim == 0:
            continue
        per_image = key in image_keys and image_offsets is not None
        expected = image_offsets[-1] if per_image else batch_size
        if value.shape[0] != expected:
            what = (
                f"one per image ({image_mask_key}.sum() = {expected})" if per_image else f"one per item ({batch_size})"
            )
            raise ValueError(
                f"inputs[{key!r}] has {value.shape[0]} rows but must have {what} to be cut into chunks; "
                "fix the collator or pass a split_fn that knows how to slice it"
            )

    chunks = []
    for begin in range(0, batch_size, chunk_size):
        end = min(begin + chunk_size, batch_size)
        chunk: dict[str, Any] = {}
        for key, value in inputs.items():
            if not isinstance(value, Tensor) or value.ndim == 0:
                chunk[key] = value
            elif key in image_keys and image_offsets is not None:
                first, last = image_offsets[begin], image_offsets[end]
                if last > first:
                    chunk[key] = value[first:last]
            else:
                chunk[key] = value[begin:end]
        chunks.append(chunk)
    return chunks


class _RngState:
    """The CPU RNG state and that of the devices of ``tensors``, restorable later (as GradCache does)."""

    def __init__(self, tensors: Sequence[Tensor]) -> None:
        self.cpu_state = torch.get_rng_state()
        self.devices, self.device_states = get_device_states(*tensors)

    @contextmanager
    def restored(self) -> Iterator[None]:
        # fork_rng puts the outer RNG back on exit, so replaying does not disturb the training's RNG stream.
        with torch.random.fork_rng(devices=self.devices):
            torch.set_rng_state(self.cpu_state)
            set_device_states(self.devices, self.device_states)
            yield


def _tensors(inputs: Mapping[str, Any]) -> list[Tensor]:
    return [v for v in inputs.values() if isinstance(v, Tensor)]


def _check_embeddings(embeddings: Any, group: int) -> Tensor:
    if not isinstance(embeddings, Tensor) or embeddings.ndim != 2:
        raise ValueError(
            f"encode_fn must return a (chunk, dim) tensor of embeddings, got {type(embeddings).__name__} "
            f"{tuple(getattr(embeddings, 'shape', ()))} for input group {group}; wrap the model, e.g. "
            "encode_fn=lambda batch: model(**batch).embeddings"
        )
    return embeddings


class _Replay:
    """Step 3: called with the gradient of one group's full embeddings, during ``loss.backward()``."""

    def __init__(
        self,
        encode_fn: EncodeFn,
        chunks: list[list[dict[str, Any]]],
        rng_states: list[list[_RngState]],
        model: nn.Module | None,
    ) -> None:
        self.encode_fn = encode_fn
        self.chunks = chunks
        self.rng_states = rng_states
        self.model = model
        self.remaining = sum(len(group) for group in chunks)

    def __call__(self, group: int, grad: Tensor) -> None:
        offset = 0
        with torch.enable_grad():
            for chunk, rng_state in zip(self.chunks[group], self.rng_states[group]):
                self.remaining -= 1
                # DistributedDataParallel all-reduces on every backward; accumulate locally and
                # let only the very last chunk (of all groups) synchronise.
                is_ddp = isinstance(self.model, DistributedDataParallel)
                sync = nullcontext() if (self.remaining == 0 or not is_ddp) else self.model.no_sync()
                with sync, rng_state.restored():
                    embeddings = self.encode_fn(chunk)
                    rows = embeddings.shape[0]
                    if embeddings.requires_grad:
                        embeddings.backward(grad[offset : offset + rows].to(embeddings.dtype))
                offset += rows


def cached_loss(
    encode_fn: EncodeFn,
    input_groups: Sequence[Mapping[str, Any]],
    loss_fn: Callable[[list[Tensor]], LossT],
    chunk_size: int,
    *,
    split_fn: SplitFn | None = None,
    model: nn.Module | None = None,
) -> LossT:
    """Compute ``loss_fn`` on the embeddings of large input groups with memory bounded by ``chunk_size``.

    Args:
        encode_fn: maps one chunk (a dict of tensors) to its ``(chunk, dim)`` embeddings, e.g.
            ``lambda batch: model(**batch).embeddings``. Must be deterministic given the RNG state.
        input_groups: dicts of tensors (e.g. queries, positives, negatives), each cut by ``split_fn``.
        loss_fn: maps the list of full embeddings, one ``(rows, dim)`` tensor per group, to the
            loss: a scalar tensor or any object holding one (e.g. :class:`RetrievalLossOutput`).
        chunk_size: the most items encoded at once.
        split_fn: ``split_fn(inputs, chunk_size) -> list of chunk dicts``; :func:`split_inputs` by default.
        model: the module ``encode_fn`` calls, when it is wrapped in ``DistributedDataParallel``:
            gradients are then all-reduced once, after the last chunk, instead of once per chunk.
            (loss_fn must then use every group, or the last chunk never replays.)

    Returns:
        What ``loss_fn`` returned. Its loss is connected to the model through a hook: calling
        ``backward()`` on it once re-encodes the chunks and fills the parameters' gradients.

    Example:
        >>> encoder = torch.nn.Linear(4, 3)
        >>> encode = lambda batch: encoder(batch["x"])
        >>> queries, docs = {"x": torch.randn(8, 4)}, {"x": torch.randn(8, 4)}
        >>> loss = cached_loss(encode, [queries, docs], lambda e: (e[0] * e[1]).sum(), chunk_size=3)
        >>> loss.backward()  # the Trainer does this for you
        >>> encoder.weight.grad.shape
        torch.Size([3, 4])
    """
    split = split_fn if split_fn is not None else split_inputs
    chunks = [split(group, chunk_size) for group in input_groups]
    grad_enabled = torch.is_grad_enabled()

    embeddings: list[Tensor] = []
    rng_states: list[list[_RngState]] = []
    for index, group_chunks in enumerate(chunks):
        parts, states = [], []
        for chunk in group_chunks:
            if grad_enabled:
                states.append(_RngState(_tensors(chunk)))
            with torch.no_grad():
                parts.append(_check_embeddings(encode_fn(chunk), index))
        full = torch.cat(parts, dim=0)
        if grad_enabled:
            full.requires_grad_(True)
        embeddings.append(full)
        rng_states.append(states)

    result = loss_fn(embeddings)
    if grad_enabled:
        replay = _Replay(encode_fn, chunks, rng_states, model)
        for index, full in enumerate(embeddings):
            full.register_hook(partial(replay, index))
    return result


def cached_retrieval_loss(
    encode_fn: EncodeFn,
    query_inputs: Mapping[str, Any],
    positive_inputs: Mapping[str, Any],
    negative_inputs: Mapping[str, Any] | None = None,
    *,
    chunk_size: int,
    loss_fn: Callable[..., RetrievalLossOutput] = retrieval_loss,
    split_fn: SplitFn | None = None,
    model: nn.Module | None = None,
    **loss_kwargs: Any,
) -> RetrievalLossOutput:
    """:func:`retrieval_loss` (or ``loss_fn``) over a large batch, GradCache-style; see :func:`cached_loss`.

    ``negative_inputs`` holds ``B * k`` items, query-major (item ``i * k + j`` is query ``i``'s
    ``j``-th hard negative); their embeddings reach ``loss_fn`` as ``(B, k, D)``. ``loss_fn`` is
    called as ``loss_fn(query, positives, negatives, **loss_kwargs)``, e.g. a
    :class:`unica.losses.RetrievalLoss` module (learnable temperature) or :func:`retrieval_loss`
    with ``temperature=...``, ``psl_weight=...``, ``gather_across_processes=...``.

    In a Trainer::

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = cached_retrieval_loss(lambda b: model(**b).embeddings, inputs["query"], inputs["positive"],
                                        inputs.get("negative"), chunk_size=self.args.cache_chunk_size,
                                        loss_fn=self.loss_module, model=model)
            return out.loss  # the Trainer's backward runs the cached chunks; never call backward here

    Example:
        >>> encoder = torch.nn.Linear(4, 3)
        >>> encode = lambda batch: encoder(batch["x"])
        >>> out = cached_retrieval_loss(encode, {"x": torch.randn(4, 4)}, {"x": torch.randn(4, 4)},
        ...                             {"x": torch.randn(8, 4)}, chunk_size=2, psl_weight=0.1)
        >>> out.loss.backward()
        >>> encoder.weight.grad is not None
        True
    """

    def full_batch_loss(embeddings: list[Tensor]) -> RetrievalLossOutput:
        query, positives = embeddings[0], embeddings[1]
        negatives = None
        if len(embeddings) == 3:
            batch_size, dim = query.shape
            if embeddings[2].shape[0] % batch_size:
                raise ValueError(
                    f"negative_inputs has {embeddings[2].shape[0]} items, not a multiple of the {batch_size} queries; "
                    "give every query the same number k of hard negatives (B * k items, query-major)"
                )
            negatives = embeddings[2].view(batch_size, -1, dim)
        return loss_fn(query, positives, negatives, **loss_kwargs)

    groups = [query_inputs, positive_inputs] + ([negative_inputs] if negative_inputs is not None else [])
    return cached_loss(encode_fn, groups, full_batch_loss, chunk_size, split_fn=split_fn, model=model)
