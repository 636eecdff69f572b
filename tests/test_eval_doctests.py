"""The examples in the eval modules' docstrings run and print what they say."""

import doctest
import importlib

import pytest


@pytest.mark.parametrize(
    "module_name",
    ["eval.metrics", "eval.retrieval_metrics.ranking", "eval.stats", "eval.report", "eval.cache", "eval.index",
     "dataset_builders.rows"],
)
def test_docstring_examples(module_name):
    module = importlib.import_module(module_name)
    failures, tried = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert tried > 0 and failures == 0
