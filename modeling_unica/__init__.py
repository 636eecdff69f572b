"""UniCA model and processor (shipped to the Hub as ``modeling_unica.py`` and ``processing_unica.py``).

Importing this package registers UniCA with the transformers Auto classes, so a checkpoint folder
loads with ``AutoModel.from_pretrained(path)`` without ``trust_remote_code`` where this package is
installed (elsewhere the folder's own code files are used, with ``trust_remote_code=True``).
"""

from transformers import AutoConfig, AutoModel, AutoProcessor

from configuration_unica import EvaClipVisionConfig, UniCAConfig

from .modeling_eva_clip import EvaClipVisionModel
from .modeling_unica import (
    VISION_PRESETS,
    UniCABiCALayer,
    UniCACrossAttention,
    UniCAFeedForward,
    UniCAFusionEncoder,
    UniCAModel,
    UniCAOutput,
    UniCAPreTrainedModel,
    UniCAVisualProjection,
)
from .processing_unica import UniCAProcessor, load_image

AutoConfig.register("unica", UniCAConfig, exist_ok=True)
AutoModel.register(UniCAConfig, UniCAModel, exist_ok=True)
AutoProcessor.register(UniCAConfig, UniCAProcessor, exist_ok=True)

__all__ = [
    "VISION_PRESETS",
    "EvaClipVisionConfig",
    "EvaClipVisionModel",
    "UniCABiCALayer",
    "UniCAConfig",
    "UniCACrossAttention",
    "UniCAFeedForward",
    "UniCAFusionEncoder",
    "UniCAModel",
    "UniCAOutput",
    "UniCAPreTrainedModel",
    "UniCAProcessor",
    "UniCAVisualProjection",
    "load_image",
]
