"""Retrieval ranking metrics as an ``evaluate`` module: recall@k, hit@k, MRR@k, nDCG@k, MAP@k, precision@k.

Load it by path: ``evaluate.load("eval/retrieval_metrics")``. The math is in ``ranking.py``
beside this file (imported relatively, so ``evaluate`` copies it into its module cache too).
"""

import datasets
import evaluate

from .ranking import METRIC_NAMES, compute_ranking_metrics

_CITATION = """\
@inproceedings{wei2024uniir,
  title={UniIR: Training and Benchmarking Universal Multimodal Information Retrievers},
  author={Wei, Cong and Chen, Yang and Chen, Haonan and Hu, Hexiang and Zhang, Ge and Fu, Jie and Ritter, Alan and Chen, Wenhu},
  booktitle={ECCV},
  year={2024}
}
"""

_DESCRIPTION = """\
Ranking metrics for retrieval. Each prediction is a ranking (document ids, best first); each
reference is the list of relevant document ids for that query. recall@k is the share of a
query's relevant documents found in the top k; hit@k is 1 when any relevant document is in the
top k (what M-BEIR / UniIR report as "Recall@k"); MRR@k, nDCG@k (graded relevance through
`reference_grades`, linear gain as trec_eval's ndcg_cut), MAP@k (trec_eval's map_cut: divided by
the number of relevant documents) and precision@k (divided by k). Queries without relevant
documents are skipped by default. See the module card for every convention.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `str`): one ranking per query, document ids best first.
    references (`list` of `list` of `str`): one list of relevant document ids per query.
    reference_grades (`list` of `list` of `float`, *optional*): graded relevance parallel to
        `references` (grade <= 0 means not relevant). A compute() argument in the "default"
        config; an input column (usable with add_batch) in the "graded" config.
    k_values (`list` of `int`, defaults to `[1, 5, 10]`): cutoffs.
    metrics (`list` of `str`, *optional*): subset of recall, hit, mrr, ndcg, map, precision.
    no_relevant (`str`, defaults to `"skip"`): a query without relevant ids is "skip"ped
        (NaN per query, left out of the means), scored "zero", or is an "error".
    return_per_query (`bool`, defaults to `False`): add "per_query" values (for bootstrap).
Returns:
    A dict with "<metric>@<k>" means, "num_queries" and "num_queries_without_relevant"
    (and "per_query" when asked).
Examples:
    >>> import evaluate
    >>> metric = evaluate.load("eval/retrieval_metrics")
    >>> out = metric.compute(predictions=[["d3", "d1"]], references=[["d1"]], k_values=[1, 2])
    >>> out["hit@1"], out["hit@2"], out["mrr@2"]
    (0.0, 1.0, 0.5)
"""

_BASE_FEATURES = {
    "predictions": datasets.Sequence(datasets.Value("string")),
    "references": datasets.Sequence(datasets.Value("string")),
}


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RetrievalMetrics(evaluate.Metric):
    """Retrieval metrics over ranked id lists; configs "default" and "graded" (grades as an input column)."""

    def _info(self):
        features = dict(_BASE_FEATURES)
        if self.config_name == "graded":
            features["reference_grades"] = datasets.Sequence(datasets.Value("float64"))
        elif self.config_name != "default":
            raise ValueError(f"unknown config {self.config_name!r} for retrieval_metrics; use 'default' or 'graded'")
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(features),
            reference_urls=[
                "https://github.com/TIGER-AI-Lab/UniIR/blob/main/src/common/mbeir_retriever.py",
                "https://github.com/usnistgov/trec_eval",
            ],
        )

    def _compute(
        self,
        predictions,
        references,
        reference_grades=None,
        k_values=(1, 5, 10),
        metrics=None,
        no_relevant="skip",
        return_per_query=False,
    ):
        return compute_ranking_metrics(
            predictions,
            references,
            k_values=k_values,  # checked there (an int, or a list of positive ints)
            reference_grades=reference_grades,
            metrics=metrics,
            no_relevant=no_relevant,
            return_per_query=return_per_query,
        )


__all__ = ["RetrievalMetrics", "METRIC_NAMES"]
