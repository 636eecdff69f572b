"""``unica app``: interactive multimodal search over an evaluation folder, in the browser (Gradio).

* :mod:`.search` — the search API, usable without Gradio: :class:`~.search.SearchIndex`
  (``SearchIndex.from_eval_folder(checkpoint, corpus, task).search(text=..., image=..., k=10)`` returns a
  list of :class:`~.search.Hit`), :class:`~.search.SearchSession` (one or two models over every task of an
  evaluation folder, each index built on first use) and the query checks (:func:`~.search.load_query_image`).
  Candidate embeddings come from the evaluation harness's cache (``eval.cache``) when it holds them.
* :mod:`.ui` — the Gradio page (gradio is imported only when a page is built).
* :mod:`.space` — ``--export``: a Space-ready folder, and what its ``app.py`` runs.
* :mod:`.cli` — the ``unica app`` sub-command (imports neither gradio nor torch when the parser is built).

Names are imported lazily: importing this package loads nothing heavy.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Hit": "search",
    "SearchIndex": "search",
    "SearchModel": "search",
    "SearchSession": "search",
    "load_query_image": "search",
    "build_app": "ui",
    "export_space": "space",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'unica.apps.app' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
