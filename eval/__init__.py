"""Evaluation for UniCA: retrieval metrics, FAISS search, statistics, reports, embedding cache.

Import the submodules you need (``from eval.metrics import compute_ranking_metrics``); this file
imports nothing so that ``from eval import ...`` of one part does not pull FAISS or matplotlib.
"""
