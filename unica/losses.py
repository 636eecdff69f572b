"""Retrieval losses: InfoNCE with in-batch, hard and cross-process negatives, plus UniCA's Positive
Similarity Loss (PSL).

The losses are plain functions of embeddings (as in open_clip's ``loss.py``); the ``nn.Module``
classes at the bottom are thin wrappers that hold the hyperparameters (and, optionally, a learnable
temperature). They know nothing about the model, so the Trainer, the GradCache-style cached loss
(:mod:`unica.grad_cache`) and tests can all call them on precomputed embeddings.

Shape conventions (``B`` queries in this process, embedding size ``D``):

- ``query``: ``(B, D)``; ``positives``: ``(B, D)``, row ``i`` is query ``i``'s positive.
- ``negatives`` (optional): ``(B, k, D)``, ``k`` hard negatives per query, or ``(M, D)``, a pool of
  extra candidates. Both are flattened to rows: InfoNCE puts every negative of the batch in every
  query's softmax, so which query a negative came with does not change the value. With
  ``gather_across_processes`` every process must pass the same shapes.
- Similarities are cosines: the embeddings are L2-normalised inside the losses. This is a no-op in
  value for UniCA's already normalised outputs, and makes the losses safe on raw embeddings.

With ``gather_across_processes=True`` positives and negatives (and, for the symmetric term, queries)
are gathered from all processes with :func:`unica.distributed.gather_with_grad`; the labels are
offset by ``rank * B``. Combined with DistributedDataParallel's gradient averaging, this gives the
gradients of the same loss computed in one process over the concatenated batch.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unica.distributed import gather_ids, gather_with_grad, rank_and_world_size

__all__ = [
    "InfoNCELoss",
    "PositiveSimilarityLoss",
    "RetrievalLoss",
    "RetrievalLossOutput",
    "check_psl_settings",
    "false_negative_mask",
    "known_positive_mask",
    "info_nce",
    "positive_similarity_loss",
    "retrieval_loss",
]

PSLVariant = Literal["cosine", "hinge"]
PSL_VARIANTS = ("cosine", "hinge")


def check_psl_settings(weight: Any = None, variant: Any = None, margin: Any = None, *, prefix: str = "psl_") -> None:
    """Raise ``ValueError`` for an invalid PSL setting, naming the argument (``prefix`` + its name).

    The one PSL check of the package: the loss functions, the loss modules and
    ``UniCATrainingArguments`` all call it. A setting left ``None`` is not checked (the loss functions
    skip ``margin`` unless the variant is ``"hinge"``, the only one that reads it).

    Args:
        weight: PSL weight, a finite number >= 0 (0 turns PSL off); named ``psl_weight`` everywhere.
        variant: one of :data:`PSL_VARIANTS`.
        margin: the hinge variant's target cosine, in ``[-1, 1]``.
        prefix: prepended to ``variant`` / ``margin`` in messages (``""`` where the arguments are
            called ``variant`` / ``margin``).

    Example:
        >>> check_psl_settings(weight=0.1, variant="hinge", margin=0.8)
        >>> check_psl_settings(variant="l2", prefix="")
        Traceback (most recent call last):
        ...
        ValueError: variant must be one of ('cosine', 'hinge'), got 'l2'
    """
    if weight is not None and not (_is_real(weight) and weight >= 0 and math.isfinite(weight)):
        raise ValueError(f"psl_weight must be a finite number >= 0 (0 turns PSL off), got {weight!r}")
    if variant is not None and variant not in PSL_VARIANTS:
        raise ValueError(f"{prefix}variant must be one of {PSL_VARIANTS}, got {variant!r}")
    if margin is not None and not (_is_real(margin) and -1.0 <= margin <= 1.0):
        raise ValueError(f"{prefix}margin is a target cosine and must be in [-1, 1], got {margin!r}")


def _is_real(value: Any) -> bool:
    # bool is an int subclass, but True is no weight or cosine.
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_temperature(temperature: float | Tensor) -> None:
    if isinstance(temperature, Tensor):
        if temperature.numel() != 1:
            raise ValueError(
                f"temperature must be a number or a one-element tensor, got a tensor of shape {tuple(temperature.shape)}"
            )
        # A learnable temperature (exp of a parameter) is positive by construction; checking it
        # would force a device sync every step.
        if temperature.requires_grad:
            return
        value = float(temperature)
    else:
        value = float(temperature)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"temperature must be a finite number > 0 (e.g. 0.05, i.e. scale 20), got {value}")


def _check_pairs(query: Tensor, positives: Tensor) -> None:
    if query.ndim != 2:
        raise ValueError(f"query must have shape (batch, dim), got {tuple(query.shape)}")
    if positives.shape != query.shape:
        raise ValueError(
            f"positives must have the same shape as query {tuple(query.shape)} (row i is query i's positive), "
            f"got {tuple(positives.shape)}"
        )


def _flatten_negatives(negatives: Tensor, query: Tensor) -> Tensor:
    batch_size, dim = query.shape
    if negatives.ndim == 3:
        if negatives.shape[0] != batch_size or negatives.shape[2] != dim:
            raise ValueError(
                f"negatives of shape (batch, k, dim) must match query's batch {batch_size} and dim {dim}, "
                f"got {tuple(negatives.shape)}"
            )
        return negatives.reshape(-1, dim)
    if negatives.ndim == 2:
        if negatives.shape[1] != dim:
            raise ValueError(f"negatives of shape (M, dim) must have dim {dim}, got {tuple(negatives.shape)}")
        return negatives
    raise ValueError(f"negatives must have shape (batch, k, dim) or (M, dim), got {tuple(negatives.shape)}")


def known_positive_mask(query_positive_ids: Tensor, candidate_ids: Tensor) -> Tensor:
    """``(Q, C)`` bool: candidate ``c``'s id is one of query ``q``'s known positives.

    ``query_positive_ids`` is ``(Q, P)`` (every known positive of each query, padded with ``-1``) or ``(Q,)``;
    ``candidate_ids`` is ``(C,)``. Negative ids mean "unknown" and never match.

    Example:
        >>> known_positive_mask(torch.tensor([[7, -1], [8, 9]]), torch.tensor([7, 9, -1])).tolist()
        [[True, False, False], [False, True, False]]
    """
    if query_positive_ids.ndim == 1:
        query_positive_ids = query_positive_ids[:, None]
    if query_positive_ids.ndim != 2 or candidate_ids.ndim != 1:
        raise ValueError(
            f"query_positive_ids must be (queries, positives) and candidate_ids (candidates,), got "
            f"{tuple(query_positive_ids.shape)} and {tuple(candidate_ids.shape)}"
        )
    same = query_positive_ids[:, :, None] == candidate_ids[None, None, :]
    return (same & (candidate_ids >= 0)[None, None, :]).any(dim=1)


def _false_negatives(known: Tensor, labels: Tensor) -> Tensor:
    """``known`` (a :func:`known_positive_mask`) without each row's label column: its in-batch false negatives."""
    known = known.clone()
    known[torch.arange(labels.shape[0], device=labels.device), labels] = False  # the label column stays
    return known


def _mask_known_positives(logits: Tensor, known: Tensor, labels: Tensor) -> Tensor:
    """Drop other columns that hold a query's known positive from its softmax (in-batch false negatives)."""
    return logits.masked_fill(_false_negatives(known, labels), float("-inf"))


def false_negative_mask(
    query_positive_ids: Tensor,
    positive_ids: Tensor,
    negative_ids: Tensor | None = None,
    num_negatives: int | None = None,
) -> Tensor:
    """``(B, B + num_negatives)`` bool, in one process: which candidate columns ``[positives; negatives]`` are
    in-batch false negatives of each query (a known positive other than its own column ``i``).

    Example:
        >>> false_negative_mask(torch.tensor([5, 5, 6]), torch.tensor([5, 5, 6])).tolist()
        [[False, True, False], [True, False, False], [False, False, False]]
    """
    columns = _candidate_ids(positive_ids, negative_ids, num_negatives, gather=False)
    known = known_positive_mask(query_positive_ids, columns)
    return _false_negatives(known, torch.arange(known.shape[0], device=known.device))


def _candidate_ids(positive_ids: Tensor, negative_ids: Tensor | None, num_negatives: int | None, gather: bool) -> Tensor:
    """Ids of the candidate columns ``[positives; negatives]`` in the order :func:`info_nce` builds them."""
    parts = [positive_ids.reshape(-1)]
    if num_negatives is not None:
        if negative_ids is None:  # negatives of unknown id: never masked
            negative_ids = positive_ids.new_full((num_negatives,), -1)
        negative_ids = negative_ids.reshape(-1)
        if negative_ids.shape[0] != num_negatives:
            raise ValueError(f"negative_ids has {negative_ids.shape[0]} ids for {num_negatives} negatives")
        parts.append(negative_ids)
    if gather:
        parts = [gather_ids(part) for part in parts]
    return torch.cat(parts)


def info_nce(
    query: Tensor,
    positives: Tensor,
    negatives: Tensor | None = None,
    temperature: float | Tensor = 0.05,
    symmetric: bool = False,
    gather_across_processes: bool = False,
    positive_ids: Tensor | None = None,
    negative_ids: Tensor | None = None,
    query_positive_ids: Tensor | None = None,
) -> Tensor:
    """InfoNCE (multiple-negatives ranking) loss with in-batch, hard and cross-process negatives.

    Query ``i`` is scored against the candidates ``[all positives; all negatives]`` (gathered from
    all processes when ``gather_across_processes``); its label is its own positive. The loss is the
    mean cross-entropy of ``cos(q, c) / temperature``. With ``symmetric=True`` the candidate→query
    term (each positive against all queries) is added and the two are averaged, as in CLIP.

    Args:
        query: ``(B, D)`` query embeddings.
        positives: ``(B, D)``, row ``i`` is the positive of query ``i``.
        negatives: ``(B, k, D)`` hard negatives per query, or an ``(M, D)`` pool; ``None`` for
            in-batch negatives only.
        temperature: softmax temperature (``scale = 1 / temperature``), a float or a one-element
            tensor (e.g. a learnable one, see :class:`InfoNCELoss`).
        symmetric: add the positive→query term.
        gather_across_processes: use the candidates of all processes (a no-op in one process).
        positive_ids: ``(B,)`` integer id of each positive (e.g. a hash of its ``did``; ``-1`` = unknown).
            With it, a candidate that is a *known positive* of a query (the same document reached
            through another row, common in M-BEIR) is left out of that query's softmax instead of being
            scored as a negative; the same holds for the symmetric term.
        negative_ids: ``(B, k)`` / ``(B * k,)`` ids of the hard negatives (``-1`` = unknown).
        query_positive_ids: ``(B, P)`` every known positive of each query (``-1`` padded); default
            ``positive_ids`` (each query's own positive).

    Returns:
        The scalar mean loss over this process's queries.

    Example:
        >>> q, p = torch.eye(2), torch.eye(2)
        >>> round(info_nce(q, p, temperature=1.0).item(), 4)  # -log(e / (e + 1))
        0.3133
    """
    _check_pairs(query, positives)
    _check_temperature(temperature)
    batch_size = query.shape[0]
    query = F.normalize(query, dim=-1)
    positives = F.normalize(positives, dim=-1)
    candidates = [positives]
    if negatives is not None:
        candidates.append(F.normalize(_flatten_negatives(negatives, query), dim=-1))

    local_negatives = candidates[1].shape[0] if negatives is not None else None
    rank = 0
    if gather_across_processes:
        rank, _ = rank_and_world_size()
        candidates = [gather_with_grad(c) for c in candidates]
    labels = torch.arange(batch_size, device=query.device) + rank * batch_size

    logits = query @ torch.cat(candidates, dim=0).T / temperature
    if query_positive_ids is None and positive_ids is not None:
        query_positive_ids = positive_ids
    if query_positive_ids is not None:
        if positive_ids is None:
            raise ValueError("query_positive_ids needs positive_ids (the id of each positive) to find false negatives")
        column_ids = _candidate_ids(positive_ids, negative_ids, local_negatives, gather_across_processes)
        logits = _mask_known_positives(logits, known_positive_mask(query_positive_ids, column_ids), labels)
    loss = F.cross_entropy(logits, labels)
    if symmetric:
        all_queries = gather_with_grad(query) if gather_across_processes else query
        reverse_logits = positives @ all_queries.T / temperature
        if query_positive_ids is not None:
            # Positive j against every query i: i is a false negative when j's document is a known positive of i.
            all_known = gather_ids(_as_matrix(query_positive_ids)) if gather_across_processes else query_positive_ids
            known = known_positive_mask(all_known, positive_ids.reshape(-1)).T
            reverse_logits = _mask_known_positives(reverse_logits, known, labels)
        loss = (loss + F.cross_entropy(reverse_logits, labels)) / 2
    return loss


def _as_matrix(ids: Tensor) -> Tensor:
    return ids[:, None] if ids.ndim == 1 else ids


def positive_similarity_loss(
    query: Tensor,
    positives: Tensor,
    variant: PSLVariant = "cosine",
    margin: float = 0.8,
) -> Tensor:
    """UniCA's Positive Similarity Loss (PSL): pull the absolute query-positive cosine up.

    The paper describes PSL as optimising the *absolute* query-positive proximity (InfoNCE only
    constrains it relative to the negatives). Our reading, in two variants:

    - ``"cosine"`` (default): ``mean(1 - cos(q_i, p_i))``.
    - ``"hinge"``: ``mean(relu(margin - cos(q_i, p_i)))``, no pull once a pair reaches ``margin``
      (``margin=1`` equals the cosine variant). The default margin 0.8 is our choice, not the paper's.

    The loss is local (each query with its own positive), so it needs no cross-process gathering.

    Args:
        query: ``(B, D)`` query embeddings.
        positives: ``(B, D)``, row ``i`` is the positive of query ``i``.
        variant: ``"cosine"`` or ``"hinge"``.
        margin: target cosine of the hinge variant, in ``[-1, 1]``; ignored by ``"cosine"``.

    Example:
        >>> q = torch.tensor([[1.0, 0.0]]); p = torch.tensor([[0.0, 2.0]])
        >>> positive_similarity_loss(q, p).item()  # 1 - cos(90 degrees)
        1.0
        >>> positive_similarity_loss(q, q, variant="hinge", margin=0.5).item()
        0.0
    """
    _check_pairs(query, positives)
    check_psl_settings(variant=variant, margin=margin if variant == "hinge" else None, prefix="")
    cosine = (F.normalize(query, dim=-1) * F.normalize(positives, dim=-1)).sum(dim=-1)
    if variant == "cosine":
        return (1 - cosine).mean()
    return F.relu(margin - cosine).mean()


@dataclass
class RetrievalLossOutput:
    """The total training loss and its parts, for the Trainer to back-propagate and log.

    Attributes:
        loss: ``info_nce + psl_weight * psl``, the scalar to back-propagate.
        info_nce: the InfoNCE part.
        psl: the PSL part, unweighted (computed and logged even when ``psl_weight == 0``).
        temperature: the temperature used (detached; useful to log a learnable one).
    """

    loss: Tensor
    info_nce: Tensor
    psl: Tensor
    temperature: Tensor

    def as_dict(self) -> dict[str, float]:
        """Python floats for logging, e.g. ``{"loss": 1.2, "info_nce": 1.1, "psl": 0.9, "temperature": 0.05}``."""
        return {
            "loss": self.loss.item(),
            "info_nce": self.info_nce.item(),
            "psl": self.psl.item(),
            "temperature": self.temperature.item(),
        }


def retrieval_loss(
    query: Tensor,
    positives: Tensor,
    negatives: Tensor | None = None,
    *,
    temperature: float | Tensor = 0.05,
    psl_weight: float = 0.1,
    psl_variant: PSLVariant = "cosine",
    psl_margin: float = 0.8,
    symmetric: bool = False,
    gather_across_processes: bool = False,
    positive_ids: Tensor | None = None,
    negative_ids: Tensor | None = None,
    query_positive_ids: Tensor | None = None,
) -> RetrievalLossOutput:
    """UniCA's training objective: ``info_nce + psl_weight * positive_similarity_loss``.

    ``psl_weight=0`` is the "PSL off" ablation (PSL is then still reported, detached). Shapes and
    the other arguments are those of :func:`info_nce` (the ids mask in-batch false negatives) and
    :func:`positive_similarity_loss`.

    Example:
        >>> q = torch.tensor([[1.0, 0.0], [0.0, 1.0]]); p = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
        >>> out = retrieval_loss(q, p, temperature=0.05, psl_weight=0.5)
        >>> round(out.psl.item(), 4)  # (1 - cos 45deg + 0) / 2
        0.1464
        >>> bool(torch.isclose(out.loss, out.info_nce + 0.5 * out.psl))
        True
    """
    check_psl_settings(weight=psl_weight)
    contrastive = info_nce(
        query,
        positives,
        negatives,
        temperature=temperature,
        symmetric=symmetric,
        gather_across_processes=gather_across_processes,
        positive_ids=positive_ids,
        negative_ids=negative_ids,
        query_positive_ids=query_positive_ids,
    )
    if psl_weight == 0:
        with torch.no_grad():
            psl = positive_similarity_loss(query, positives, variant=psl_variant, margin=psl_margin)
        total = contrastive
    else:
        psl = positive_similarity_loss(query, positives, variant=psl_variant, margin=psl_margin)
        total = contrastive + psl_weight * psl
    temperature_value = torch.as_tensor(temperature).detach().to(dtype=contrastive.dtype, device=contrastive.device)
    return RetrievalLossOutput(loss=total, info_nce=contrastive, psl=psl.detach(), temperature=temperature_value)


class InfoNCELoss(nn.Module):
    """:func:`info_nce` as a module, with a fixed or learnable temperature.

    A learnable temperature is stored as ``log_scale = log(1 / temperature)`` (CLIP's logit scale)
    and the scale is clamped at ``max_scale`` (CLIP's 100, i.e. temperature >= 0.01). Its parameter
    must reach the optimizer: register the loss module on the model, or add its parameters.

    Example:
        >>> loss_fn = InfoNCELoss(temperature=0.05, learnable_temperature=True)
        >>> q, p = torch.randn(4, 8), torch.randn(4, 8)
        >>> loss_fn(q, p, torch.randn(4, 2, 8)).backward()
        >>> loss_fn.log_scale.grad is not None
        True
    """

    def __init__(
        self,
        temperature: float = 0.05,
        learnable_temperature: bool = False,
        symmetric: bool = False,
        gather_across_processes: bool = False,
        max_scale: float = 100.0,
    ) -> None:
        super().__init__()
        _check_temperature(temperature)
        if learnable_temperature and 1.0 / temperature > max_scale:
            raise ValueError(
                f"temperature {temperature} is below 1 / max_scale = {1.0 / max_scale}: the clamped learnable "
                "scale would get no gradient; raise temperature or max_scale"
            )
        self.symmetric = symmetric
        self.gather_across_processes = gather_across_processes
        self.max_scale = max_scale
        self.learnable_temperature = learnable_temperature
        if learnable_temperature:
            self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))
        else:
            self.fixed_temperature = float(temperature)

    @property
    def temperature(self) -> float | Tensor:
        """The current temperature: a float, or a tensor in the autograd graph when learnable."""
        if self.learnable_temperature:
            return torch.exp(-self.log_scale.clamp(max=math.log(self.max_scale)))
        return self.fixed_temperature

    def forward(self, query: Tensor, positives: Tensor, negatives: Tensor | None = None) -> Tensor:
        return info_nce(
            query,
            positives,
            negatives,
            temperature=self.temperature,
            symmetric=self.symmetric,
            gather_across_processes=self.gather_across_processes,
        )

    def extra_repr(self) -> str:
        kind = "learnable" if self.learnable_temperature else "fixed"
        return f"{kind} temperature, symmetric={self.symmetric}, gather_across_processes={self.gather_across_processes}"


class PositiveSimilarityLoss(nn.Module):
    """:func:`positive_similarity_loss` as a module.

    Example:
        >>> PositiveSimilarityLoss("hinge", margin=0.5)(torch.eye(2), torch.eye(2)).item()
        0.0
    """

    def __init__(self, variant: PSLVariant = "cosine", margin: float = 0.8) -> None:
        super().__init__()
        check_psl_settings(variant=variant, margin=margin if variant == "hinge" else None, prefix="")
        self.variant = variant
        self.margin = margin

    def forward(self, query: Tensor, positives: Tensor) -> Tensor:
        return positive_similarity_loss(query, positives, variant=self.variant, margin=self.margin)

    def extra_repr(self) -> str:
        return f"variant={self.variant!r}, margin={self.margin}"


class RetrievalLoss(nn.Module):
    """:func:`retrieval_loss` (InfoNCE + ``psl_weight`` * PSL) as a module; returns a :class:`RetrievalLossOutput`.

    Example:
        >>> loss_fn = RetrievalLoss(temperature=0.02, psl_weight=0.1)
        >>> out = loss_fn(torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 1, 8))
        >>> sorted(out.as_dict())
        ['info_nce', 'loss', 'psl', 'temperature']
    """

    def __init__(
        self,
        temperature: float = 0.05,
        learnable_temperature: bool = False,
        psl_weight: float = 0.1,
        psl_variant: PSLVariant = "cosine",
        psl_margin: float = 0.8,
        symmetric: bool = False,
        gather_across_processes: bool = False,
        max_scale: float = 100.0,
    ) -> None:
        super().__init__()
        check_psl_settings(weight=psl_weight)
        self.info_nce = InfoNCELoss(
            temperature=temperature,
            learnable_temperature=learnable_temperature,
            symmetric=symmetric,
            gather_across_processes=gather_across_processes,
            max_scale=max_scale,
        )
        self.psl = PositiveSimilarityLoss(variant=psl_variant, margin=psl_margin)
        self.psl_weight = psl_weight

    def forward(
        self,
        query: Tensor,
        positives: Tensor,
        negatives: Tensor | None = None,
        *,
        temperature: float | Tensor | None = None,
        positive_ids: Tensor | None = None,
        negative_ids: Tensor | None = None,
        query_positive_ids: Tensor | None = None,
    ) -> RetrievalLossOutput:
        """``temperature`` overrides the module's (e.g. a model's learnable ``UniCAModel.temperature``); the
        ids mask in-batch false negatives (:func:`info_nce`)."""
        return retrieval_loss(
            query,
            positives,
            negatives,
            temperature=self.info_nce.temperature if temperature is None else temperature,
            positive_ids=positive_ids,
            negative_ids=negative_ids,
            query_positive_ids=query_positive_ids,
            psl_weight=self.psl_weight,
            psl_variant=self.psl.variant,
            psl_margin=self.psl.margin,
            symmetric=self.info_nce.symmetric,
            gather_across_processes=self.info_nce.gather_across_processes,
        )

    def extra_repr(self) -> str:
        return f"psl_weight={self.psl_weight}"
