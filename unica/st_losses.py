"""sentence-transformers losses for UniCA's objective, usable with `SentenceTransformerTrainer`.

Both wrap the plain functions in :mod:`unica.losses`, so the Transformers-Trainer path and the
sentence-transformers path optimise the same numbers.

Example:

```python
>>> from datasets import Dataset
>>> from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
>>> from unica.st_losses import InfoNCEWithPSLLoss
>>> model = SentenceTransformer("./unica-mini", trust_remote_code=True)
>>> train = Dataset.from_dict({"anchor": ["a red circle", "a blue square"],
...                            "positive": ["Red Circle, painted in 1990.", "Blue Square, Lyon, 2004."]})
>>> loss = InfoNCEWithPSLLoss(model, temperature=0.02, psl_weight=0.1)
>>> SentenceTransformerTrainer(model=model, train_dataset=train, loss=loss).train()
```
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from sentence_transformers.base.losses.merged_forward import embed_columns
from torch import Tensor, nn

from unica.losses import PSLVariant, positive_similarity_loss, retrieval_loss


class PositiveSimilarityLoss(nn.Module):
    """UniCA's Positive Similarity Loss on (anchor, positive) columns: ``mean(1 - cos(a, p))``
    (or the hinge variant). Usually combined with a contrastive loss; see `InfoNCEWithPSLLoss`.

    Args:
        model: the `SentenceTransformer`.
        variant: ``"cosine"`` or ``"hinge"``; ``margin`` is the hinge's target cosine.
    """

    def __init__(self, model, variant: PSLVariant = "cosine", margin: float = 0.8) -> None:
        super().__init__()
        self.model = model
        self.variant = variant
        self.margin = margin
        positive_similarity_loss(torch.ones(1, 2), torch.ones(1, 2), variant=variant, margin=margin)  # validates

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None) -> Tensor:
        embeddings = embed_columns(self.model, sentence_features)
        if len(embeddings) < 2:
            raise ValueError("PositiveSimilarityLoss needs (anchor, positive) columns")
        return positive_similarity_loss(embeddings[0], embeddings[1], variant=self.variant, margin=self.margin)

    def get_config_dict(self) -> dict[str, Any]:
        return {"variant": self.variant, "margin": self.margin}


class InfoNCEWithPSLLoss(nn.Module):
    """InfoNCE with in-batch and hard negatives + ``psl_weight`` * PSL (UniCA's objective).

    Columns: (anchor, positive, negative_1, ..., negative_k). With ``psl_weight=0`` this equals
    sentence-transformers' `MultipleNegativesRankingLoss` at ``scale = 1 / temperature``.

    Args:
        model: the `SentenceTransformer`.
        temperature: softmax temperature (UniCA's default 0.02, i.e. scale 50).
        psl_weight: weight of the PSL term (0 turns it off).
        psl_variant, psl_margin: see `unica.losses.positive_similarity_loss`.
        gather_across_devices: use the negatives of all processes.
    """

    def __init__(self, model, temperature: float = 0.02, psl_weight: float = 0.1, psl_variant: PSLVariant = "cosine",
                 psl_margin: float = 0.8, gather_across_devices: bool = False) -> None:
        super().__init__()
        self.model = model
        self.temperature = temperature
        self.psl_weight = psl_weight
        self.psl_variant = psl_variant
        self.psl_margin = psl_margin
        self.gather_across_devices = gather_across_devices
        retrieval_loss(torch.ones(1, 2), torch.ones(1, 2), temperature=temperature, psl_weight=psl_weight,
                       psl_variant=psl_variant, psl_margin=psl_margin)  # validates the settings early

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None) -> Tensor:
        embeddings = embed_columns(self.model, sentence_features)
        if len(embeddings) < 2:
            raise ValueError("InfoNCEWithPSLLoss needs (anchor, positive[, negatives...]) columns")
        negatives = torch.stack(embeddings[2:], dim=1) if len(embeddings) > 2 else None
        return retrieval_loss(
            embeddings[0], embeddings[1], negatives, temperature=self.temperature, psl_weight=self.psl_weight,
            psl_variant=self.psl_variant, psl_margin=self.psl_margin, gather_across_processes=self.gather_across_devices,
        ).loss

    def get_config_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "psl_weight": self.psl_weight, "psl_variant": self.psl_variant,
                "psl_margin": self.psl_margin}
