"""UniCA toolkit: checkpoints, encoding, training, sentence-transformers glue and the ``unica`` CLI.

The model itself lives in ``modeling_unica`` / ``configuration_unica`` (the code shipped to the Hub);
importing ``unica`` registers it with the transformers Auto classes.

Example:

```python
>>> from unica import init_model, save_checkpoint
>>> model, processor = init_model("sentence-transformers/all-MiniLM-L6-v2", "vit-micro", fusion="bica")
>>> save_checkpoint(model, processor, "./unica-mini")
```
"""

from __future__ import annotations

import importlib

from configuration_unica import UniCAConfig
from modeling_unica import UniCAModel, UniCAProcessor

from .checkpoint import init_model, save_checkpoint
from .encoding import UniCAEncoder, encode_items
from .vista import convert_vista

__version__ = "0.1.0"

# Training names pull in datasets / peft; import them only when asked for.
_LAZY = {
    "UniCATrainer": "unica.trainer",
    "UniCATrainingArguments": "unica.training_args",
    "RetrievalCollator": "unica.collator",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'unica' has no attribute {name!r}")


__all__ = ["UniCAConfig", "UniCAEncoder", "UniCAModel", "UniCAProcessor", "convert_vista", "encode_items", "init_model",
           "save_checkpoint",
           *_LAZY]
