"""UniCA toolkit: checkpoints, encoding, training, sentence-transformers glue and the ``unica`` CLI.

The model itself lives in ``modeling_unica`` / ``configuration_unica`` (the code shipped to the Hub).
The names below are imported on first use (``import unica`` alone loads no torch, so ``unica --help``
answers at once); using ``UniCAModel``, ``UniCAProcessor``, ``init_model`` or any other model name, or
building / loading a model through ``unica``, imports ``modeling_unica``, which registers UniCA with the
transformers Auto classes.

Example:

```python
>>> from unica import init_model, save_checkpoint
>>> model, processor = init_model("sentence-transformers/all-MiniLM-L6-v2", "vit-micro", fusion="bica")
>>> save_checkpoint(model, processor, "./unica-mini")
```
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> the module that defines it, imported when the name is first used.
_LAZY = {
    "UniCAConfig": "configuration_unica",
    "UniCAModel": "modeling_unica",
    "UniCAProcessor": "modeling_unica",
    "init_model": "unica.checkpoint",
    "save_checkpoint": "unica.checkpoint",
    "UniCAEncoder": "unica.encoding",
    "encode_items": "unica.encoding",
    "convert_vista": "unica.vista",
    # Training names pull in datasets / peft.
    "UniCATrainer": "unica.trainer",
    "UniCATrainingArguments": "unica.training_args",
    "RetrievalCollator": "unica.collator",
}

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from configuration_unica import UniCAConfig
    from modeling_unica import UniCAModel, UniCAProcessor

    from .checkpoint import init_model, save_checkpoint
    from .collator import RetrievalCollator
    from .encoding import UniCAEncoder, encode_items
    from .trainer import UniCATrainer
    from .training_args import UniCATrainingArguments
    from .vista import convert_vista


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        if _LAZY[name] != "modeling_unica":
            importlib.import_module("modeling_unica")  # the Auto-class registration comes with every model name
        value = getattr(module, name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'unica' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = ["RetrievalCollator", "UniCAConfig", "UniCAEncoder", "UniCAModel", "UniCAProcessor", "UniCATrainer",
           "UniCATrainingArguments", "convert_vista", "encode_items", "init_model", "save_checkpoint"]
