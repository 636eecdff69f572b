"""Switching a UniCA model's fusion: add zero-gated Bi-CA layers to a concat (VISTA) model, or drop them.

A converted VISTA checkpoint is ``fusion="concat"``; fine-tuning it as UniCA needs Bi-CA layers. Added with zero
gates, they are the identity, so the model computes exactly what it did before until training moves the gates.
Dropping them (``"concat"``) keeps every other weight; a trained Bi-CA model then computes something else.

Example:

```python
>>> from unica.checkpoint import load_checkpoint
>>> model, processor = load_checkpoint("./vista-base")          # fusion="concat"
>>> set_fusion(model, "bica", bica_layers=2).config.fusion
'bica'
```
"""

from __future__ import annotations

import logging

import torch

from configuration_unica import FUSIONS
from modeling_unica import UniCAFusionEncoder, UniCAModel

logger = logging.getLogger(__name__)


def set_fusion(model: UniCAModel, fusion: str, bica_layers: int | None = None, seed: int = 0) -> UniCAModel:
    """Give ``model`` (in place) the fusion ``fusion``, with ``bica_layers`` Bi-CA layers for ``"bica"`` (default:
    the config's ``bica_layers``); returns ``model``.

    ``concat -> bica``: new Bi-CA layers, initialised as a fresh model's (seeded by ``seed``, without touching the
    global RNG) with zero gates; the model's outputs do not change. ``bica -> concat``: the Bi-CA layers are removed
    (a warning says so when their gates are not all zero). The same fusion (and layer count) is a no-op; changing the
    number of Bi-CA layers of a Bi-CA model is refused (``ValueError``): its trained layers would be thrown away.
    """
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
    config = model.config
    layers = config.bica_layers if bica_layers is None else bica_layers
    if fusion == config.fusion and (fusion == "concat" or layers == config.bica_layers):
        return model
    if fusion == config.fusion:
        raise ValueError(
            f"the model already has fusion='bica' with {config.bica_layers} trained Bi-CA layers; changing it to "
            f"{layers} would discard them: keep bica_layers={config.bica_layers}, or convert to concat first"
        )
    previous = (config.fusion, config.bica_layers)
    config.fusion, config.bica_layers = fusion, layers
    try:
        config.validate_unica()
    except ValueError:
        config.fusion, config.bica_layers = previous
        raise
    if fusion == "concat" and any(bool(p.ne(0).any()) for n, p in model.fusion_encoder.named_parameters()
                                  if n.endswith("_gate")):
        logger.warning("dropping %d trained Bi-CA layers: the concat model computes other embeddings", previous[1])
    reference = model.visual_projection.proj.weight
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = UniCAFusionEncoder(config)
        encoder.apply(model._init_weights)  # the model's own initialisation (transformers' hook): zero gates
    model.fusion_encoder = encoder.to(device=reference.device, dtype=reference.dtype).train(model.training)
    return model


__all__ = ["set_fusion"]
