"""Evaluation sets from M-BEIR test files: queries, the task's local candidate pool and qrels per task.

WebQA is the paper's evaluation: task 1 (text -> text) and task 2 (text -> image,text, the hybrid task).
The same builder exports any M-BEIR-format source (e.g. the synthetic scenes' tasks 0, 2, 3, 7).

For each task N the export has three configs, each with one split (``test`` by default):

- ``task{N}_queries``: rows.QUERY_FEATURES (qid, task_id, query_modality, query_text, query_image, pos_dids)
- ``task{N}_corpus``: rows.CANDIDATE_FEATURES (did, modality, text, image)
- ``task{N}_qrels``: rows.QRELS_FEATURES (qid, did, relevance, task_id)

Example::

    build_evaluation_sets("/data/M-BEIR", "./webqa-eval", dataset="webqa", tasks=(1, 2))
    queries = load_dataset("./webqa-eval", "task2_queries", split="test")
    corpus = load_dataset("./webqa-eval", "task2_corpus", split="test")
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from .atomic import atomic_directory
from .export import markdown_table, write_dataset_card, write_rows
from .mbeir import MBEIR_TASKS, MBEIRLayout, load_pool_subset, read_qrels, read_queries, task_name
from .rows import CANDIDATE_FEATURES, QRELS_FEATURES, QUERY_FEATURES, candidate_rows, drop_missing_images, query_rows
from .umr import MBEIR_CITATION

logger = logging.getLogger(__name__)

WEBQA_CITATION = """@inproceedings{chang2022webqa,
  title={WebQA: Multihop and Multimodal QA},
  author={Chang, Yingshan and Narang, Mridu and Suzuki, Hisami and Cao, Guihong and Gao, Jianfeng and Bisk, Yonatan},
  booktitle={CVPR},
  year={2022}
}"""


def build_evaluation_sets(
    mbeir_root: str | Path,
    out: str | Path,
    dataset: str = "webqa",
    tasks: Sequence[int] = (1, 2),
    split: str = "test",
    skip_missing: bool = False,
    overwrite: bool = False,
) -> list[dict]:
    """Export the ``tasks`` of ``dataset`` (queries, local pool, qrels) to ``out``; returns per-task counts."""
    layout = MBEIRLayout(mbeir_root)
    unknown = [t for t in tasks if t not in MBEIR_TASKS]
    if unknown:
        raise ValueError(f"unknown task ids {unknown}; M-BEIR tasks are {sorted(MBEIR_TASKS)}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"output folder {str(out)!r} already exists; choose another --out or pass --overwrite")
    prepared = []
    for task in tasks:
        query_file = layout.task_query_file(dataset, task, split)
        pool_file = layout.local_pool(dataset, task)
        qrels_file = layout.qrels_file(dataset, task, split)
        table = read_queries([query_file])
        wrong = sorted(set(pc.unique(table.column("task_id")).to_pylist()) - {task})
        if wrong:
            raise ValueError(f"{query_file}: holds task ids {wrong}, expected only {task}; check the file name")
        referenced = pc.list_flatten(table.column("pos_cand_list").combine_chunks())
        if qrels_file.is_file():
            qrels = read_qrels(qrels_file)
            known = set(table.column("qid").to_pylist())
            unknown = sorted({row[0] for row in qrels} - known)
            if unknown:
                raise ValueError(
                    f"{len(unknown)} qrels name query ids not in {query_file} ({qrels_file}), e.g. {unknown[:5]}; "
                    "use the qrels file made with these queries"
                )
            referenced = pa.concat_arrays([referenced, pa.array([row[1] for row in qrels], pa.string())])
        else:
            logger.warning("%s not found: qrels derived from the queries' positives", qrels_file)
            qrels = [(q, d, 1, task) for q, ds in zip(table.column("qid").to_pylist(), table.column("pos_cand_list").to_pylist()) for d in ds]
        pool = load_pool_subset([pool_file], wanted=None, referenced=referenced)
        queries, candidates, missing = drop_missing_images(
            layout.root, table.to_pylist(), pool.by_did(), skip_missing, where=f"{query_file.name} / {pool_file.name}"
        )
        kept_qids = {q["qid"] for q in queries}
        qrels = [row for row in qrels if row[0] in kept_qids and row[1] in candidates]
        prepared.append((task, queries, candidates, qrels, missing))
    summaries, report = [], []
    with atomic_directory(out, overwrite=overwrite) as staging:
        for task, queries, candidates, qrels, missing in prepared:
            summaries.append(write_rows(staging, f"task{task}_queries", split, QUERY_FEATURES, query_rows(queries, layout.root)))
            summaries.append(write_rows(
                staging, f"task{task}_corpus", split, CANDIDATE_FEATURES, candidate_rows(candidates.values(), layout.root)
            ))
            summaries.append(write_rows(
                staging, f"task{task}_qrels", split, QRELS_FEATURES,
                ({"qid": q, "did": d, "relevance": r, "task_id": t} for q, d, r, t in qrels),
            ))
            report.append({
                "task_id": task, "task": task_name(task), "queries": len(queries), "candidates": len(candidates),
                "qrels": len(qrels), "skipped_images": missing.count,
            })
        is_webqa = dataset.lower() == "webqa"
        description = (
            f"Evaluation sets of `{dataset}` ({split} split) in M-BEIR's formulation: for each task its queries, "
            "its local candidate pool (the corpus to rank) and qrels. Images are embedded in the Parquet files."
        )
        if is_webqa:
            description += " Task 1 is text -> text; task 2 is text -> image,text, the hybrid task of UniCA's evaluation."
        write_dataset_card(
            staging, summaries, title=f"{dataset} evaluation sets", description=description,
            license="other", citation=MBEIR_CITATION + ("\n\n" + WEBQA_CITATION if is_webqa else ""),
            sections=[("Tasks", markdown_table(report, ["task_id", "task", "queries", "candidates", "qrels", "skipped_images"]))],
        )
    return report
