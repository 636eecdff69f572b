"""UniCA configuration (shipped to the Hub as ``configuration_unica.py``)."""

from .configuration_unica import FUSIONS, POOLINGS, UniCAConfig

__all__ = ["FUSIONS", "POOLINGS", "UniCAConfig"]
