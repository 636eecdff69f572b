"""UniCA configuration (shipped to the Hub as ``configuration_unica.py``, with ``configuration_eva_clip.py``)."""

from .configuration_eva_clip import EvaClipVisionConfig
from .configuration_unica import FUSIONS, POOLINGS, UniCAConfig

__all__ = ["FUSIONS", "POOLINGS", "EvaClipVisionConfig", "UniCAConfig"]
