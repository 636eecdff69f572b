"""Applications: the ``unica`` command line and what only it needs, above every library layer.

``cli`` (the entry point, ``python -m unica``), ``commands`` (init, encode, card, push, demo),
``train_cli`` (``unica train``: YAML configs, data loading, resume), ``dataset_cli`` (``build-dataset``,
``push-dataset``), ``eval_cli`` (``evaluate``, ``ablate``), ``evaluate`` (a checkpoint folder through the model-agnostic
harness), ``ablation`` (trains and evaluates a grid),
``demo``, ``app`` (``unica app``: search in the browser) and ``hub`` (uploads), ``options`` (what the parsers need, importing nothing heavy) and ``logs`` (what
a run prints). Library code never imports this package.
"""

__all__ = ["ablation", "app", "cli", "commands", "dataset_cli", "demo", "eval_cli", "evaluate", "hub", "logs", "options",
           "train_cli"]
