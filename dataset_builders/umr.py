"""UMR-S10: a stratified sample of M-BEIR-format training data that keeps every (source, task) represented.

Each stratum (source dataset, task id) keeps ``fraction`` of its queries (largest-remainder rounding so
the sample's shares match the full set's), at least ``min_per_stratum`` (or the whole stratum if smaller).
The sample is a function of the input files and ``seed`` only. Every positive and hard negative of a
kept query is kept (``candidates`` config). Rows follow :data:`dataset_builders.rows.TRAINING_FEATURES`.

Example::

    from dataset_builders.umr import build_umr_s10
    report = build_umr_s10("/data/M-BEIR", "./UMR-S10", fraction=0.10, seed=0)

    from datasets import load_dataset
    ds = load_dataset("./UMR-S10", split="train")              # query / positive / negative columns
    pool = load_dataset("./UMR-S10", "candidates", split="train")

The builder is also a ``datasets.GeneratorBasedBuilder``::

    builder = UMRS10(mbeir_root="/data/M-BEIR", fraction=0.1, seed=0, cache_dir="/tmp/cache")
    builder.download_and_prepare(); ds = builder.as_dataset(split="train")
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .atomic import atomic_directory
from .export import markdown_table, write_dataset_card, write_rows
from .mbeir import (
    MBEIRLayout,
    load_pool_subset,
    read_pool_modalities,
    read_queries,
    task_name,
)
from .rows import (
    CANDIDATE_FEATURES,
    TRAINING_FEATURES,
    MissingImages,
    candidate_rows,
    drop_missing_images,
    training_rows,
)

logger = logging.getLogger(__name__)

MBEIR_CITATION = """@article{wei2023uniir,
  title={UniIR: Training and Benchmarking Universal Multimodal Information Retrievers},
  author={Wei, Cong and Chen, Yang and Chen, Haonan and Hu, Hexiang and Zhang, Ge and Fu, Jie and Ritter, Alan and Chen, Wenhu},
  journal={arXiv preprint arXiv:2311.17136},
  year={2023}
}"""


def check_fraction(fraction: float) -> float:
    """``fraction`` must be in (0, 1]."""
    if not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}; e.g. --fraction 0.10 keeps 10%")
    return float(fraction)


def stratum_sizes(counts: np.ndarray, fraction: float, min_per_stratum: int) -> np.ndarray:
    """How many to keep per stratum: largest-remainder shares of ``round(fraction * total)``, then the minimum.

    >>> stratum_sizes(np.array([100, 50, 3]), 0.1, 2).tolist()
    [10, 5, 2]
    """
    fraction = check_fraction(fraction)
    counts = np.asarray(counts, dtype=np.int64)
    quotas = counts * fraction
    sizes = np.floor(quotas).astype(np.int64)
    target = int(round(counts.sum() * fraction))
    remainder = target - int(sizes.sum())
    if remainder > 0:
        # Stable sort on the negated fractional parts: ties go to the earlier stratum, deterministically.
        order = np.argsort(-(quotas - sizes), kind="stable")
        sizes[order[:remainder]] += 1
    sizes = np.maximum(sizes, np.minimum(counts, max(0, int(min_per_stratum))))
    return np.minimum(sizes, counts)


@dataclass
class StratifiedSample:
    """Indices of the kept rows (sorted) and the per-stratum report."""

    indices: np.ndarray
    report: list[dict] = field(default_factory=list)


def stratified_sample(
    sources: pa.Array | list[str], tasks: pa.Array | list[int], fraction: float, seed: int, min_per_stratum: int = 10
) -> StratifiedSample:
    """Sample row indices stratified by (source, task); deterministic for ``seed``.

    The report has one row per stratum: source, task_id, task, before, after, share_before and
    share_after (percent of all queries).
    """
    sources = pa.array(sources, pa.string()) if not isinstance(sources, (pa.Array, pa.ChunkedArray)) else sources
    tasks = np.asarray(tasks.to_numpy() if isinstance(tasks, (pa.Array, pa.ChunkedArray)) else tasks, dtype=np.int64)
    encoded = pc.dictionary_encode(sources)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    source_names = encoded.dictionary.to_pylist()
    keys = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64) * 16 + tasks
    unique_keys, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    # Strata in a canonical order (by source name, then task) so the sample does not depend on the
    # order in which sources were first seen.
    labels = [(source_names[k // 16], int(k % 16)) for k in unique_keys]
    canonical = sorted(range(len(labels)), key=lambda i: labels[i])
    sizes = stratum_sizes(counts[canonical], fraction, min_per_stratum)
    members = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)])
    rng = np.random.default_rng(seed)
    chosen, report = [], []
    total, kept_total = int(counts.sum()), int(sizes.sum())
    for size, stratum in zip(sizes, canonical):
        rows = members[starts[stratum] : starts[stratum + 1]]
        chosen.append(rng.choice(rows, size=int(size), replace=False) if size < len(rows) else rows)
        source, task = labels[stratum]
        report.append(
            {
                "source": source,
                "task_id": task,
                "task": task_name(task),
                "before": int(counts[stratum]),
                "after": int(size),
                "share_before": 100.0 * counts[stratum] / total,
                "share_after": 100.0 * size / kept_total if kept_total else 0.0,
            }
        )
    indices = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)
    return StratifiedSample(indices=indices, report=report)


@dataclass
class UMRSample:
    """The sampled queries and every candidate they refer to."""

    root: Path
    queries: list[dict]
    candidates: dict[str, dict]
    report: list[dict]
    total_queries: int
    pool_size: int
    missing: MissingImages
    seconds: float


def sample_umr(
    mbeir_root: str | Path,
    fraction: float = 0.10,
    seed: int = 0,
    min_per_stratum: int = 10,
    skip_missing: bool = False,
    query_files: list[str | Path] | None = None,
    pool_files: list[str | Path] | None = None,
    check_images: bool = True,
    split: str = "train",
) -> UMRSample:
    """Read, validate and sample an M-BEIR ``split`` (see module docstring).

    ``query_files`` default to ``query/<split>/*.jsonl``, ``pool_files`` to the split's pool
    (:meth:`MBEIRLayout.training_pools`); the pool file(s) used are logged.
    """
    started = time.perf_counter()
    check_fraction(fraction)
    layout = MBEIRLayout(mbeir_root)
    query_files = [Path(p) for p in query_files] if query_files else layout.query_files(split)
    if pool_files:
        pool_files = [Path(p) for p in pool_files]
        logger.info("candidate pool for %s: the given file(s) %s", split, ", ".join(str(p) for p in pool_files))
    else:
        pool_files = layout.training_pools(split)  # logs which file(s) and why
    try:
        table = read_queries(query_files)
    except ValueError as error:
        if "task_id is missing" not in str(error):
            raise
        table = read_queries(query_files, pool_modalities=read_pool_modalities(pool_files))
    logger.info("read %d queries from %d files", len(table), len(query_files))
    sample = stratified_sample(table.column("source"), table.column("task_id"), fraction, seed, min_per_stratum)
    kept = table.take(pa.array(sample.indices, pa.int64()))
    referenced = pc.list_flatten(pa.concat_arrays([
        table.column("pos_cand_list").combine_chunks(), table.column("neg_cand_list").combine_chunks()
    ]))
    wanted = pc.list_flatten(pa.concat_arrays([
        kept.column("pos_cand_list").combine_chunks(), kept.column("neg_cand_list").combine_chunks()
    ]))
    pool = load_pool_subset(pool_files, wanted=wanted, referenced=referenced)
    logger.info("pool: %d candidates, %d referenced by the sample", pool.pool_size, len(pool.table))
    queries = kept.to_pylist()
    candidates = pool.by_did()
    missing = MissingImages()
    if check_images:
        queries, candidates, missing = drop_missing_images(
            layout.root, queries, candidates, skip_missing, where=f"the sampled queries of {layout.root}"
        )
        if missing.dropped_queries:
            after: dict[tuple[str, int], int] = {}
            for query in queries:
                after[(query["source"], query["task_id"])] = after.get((query["source"], query["task_id"]), 0) + 1
            for row in sample.report:
                row["after"] = after.get((row["source"], row["task_id"]), 0)
            for row in sample.report:
                row["share_after"] = 100.0 * row["after"] / max(1, len(queries))
    return UMRSample(
        root=layout.root,
        queries=queries,
        candidates=candidates,
        report=sample.report,
        total_queries=len(table),
        pool_size=pool.pool_size,
        missing=missing,
        seconds=time.perf_counter() - started,
    )


def sampling_report_markdown(report: list[dict]) -> str:
    """The per-stratum report as a markdown table (percentages with two decimals)."""
    return markdown_table(report, ["source", "task_id", "task", "before", "after", "share_before", "share_after"])


class UMRS10Config(datasets.BuilderConfig):
    """Options of the UMR-S10 builder: where M-BEIR is, how much to keep, the seed."""

    def __init__(
        self,
        mbeir_root: str | None = None,
        fraction: float = 0.10,
        seed: int = 0,
        min_per_stratum: int = 10,
        skip_missing: bool = False,
        query_files: list[str] | None = None,
        pool_files: list[str] | None = None,
        **kwargs,
    ):
        kwargs.setdefault("name", "default")
        super().__init__(**kwargs)
        self.mbeir_root = mbeir_root
        self.fraction = check_fraction(fraction)
        self.seed = seed
        self.min_per_stratum = min_per_stratum
        self.skip_missing = skip_missing
        self.query_files = query_files
        self.pool_files = pool_files


class UMRS10(datasets.GeneratorBasedBuilder):
    """``datasets`` builder for UMR-S10 (training rows; images decoded from the M-BEIR image folder)."""

    BUILDER_CONFIG_CLASS = UMRS10Config
    BUILDER_CONFIGS = [UMRS10Config(name="default")]
    DEFAULT_CONFIG_NAME = "default"

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description="UMR-S10: stratified sample of M-BEIR training data (query / positive / hard negative).",
            features=TRAINING_FEATURES,
            citation=MBEIR_CITATION,
            license="other",
        )

    def _split_generators(self, dl_manager) -> list[datasets.SplitGenerator]:
        if not self.config.mbeir_root:
            raise ValueError("UMRS10 needs mbeir_root=<folder of M-BEIR-format data>")
        return [datasets.SplitGenerator(name=datasets.Split.TRAIN, gen_kwargs={})]

    def sample(self) -> UMRSample:
        """The (cached) sample this builder generates."""
        if getattr(self, "_sample", None) is None:
            config = self.config
            self._sample = sample_umr(
                config.mbeir_root, config.fraction, config.seed, config.min_per_stratum, config.skip_missing,
                config.query_files, config.pool_files,
            )
        return self._sample

    def _generate_examples(self):
        sample = self.sample()
        yield from enumerate(training_rows(sample.queries, sample.candidates, sample.root, embed_images=False))


def build_umr_s10(
    mbeir_root: str | Path,
    out: str | Path,
    fraction: float = 0.10,
    seed: int = 0,
    min_per_stratum: int = 10,
    skip_missing: bool = False,
    overwrite: bool = False,
    query_files: list[str | Path] | None = None,
    pool_files: list[str | Path] | None = None,
    title: str = "UMR-S10",
    check_images: bool = True,
) -> UMRSample:
    """Sample UMR-S10 from an M-BEIR root and export it (Parquet + card) to ``out``; returns the sample.

    Example::

        sample = build_umr_s10("/data/M-BEIR", "./UMR-S10", fraction=0.10, seed=0)
        print(sampling_report_markdown(sample.report))
    """
    check_fraction(fraction)
    out = Path(out)
    if out.exists() and not overwrite:  # fail before the (long) sampling
        raise FileExistsError(f"output folder {str(out)!r} already exists; choose another --out or pass --overwrite")
    sample = sample_umr(
        mbeir_root, fraction, seed, min_per_stratum, skip_missing, query_files, pool_files, check_images=check_images
    )
    with atomic_directory(out, overwrite=overwrite) as staging:
        train = write_rows(
            staging, "default", "train", TRAINING_FEATURES,
            training_rows(sample.queries, sample.candidates, sample.root, embed_images=True),
        )
        pool = write_rows(
            staging, "candidates", "train", CANDIDATE_FEATURES,
            candidate_rows(sorted(sample.candidates.values(), key=lambda c: c["did"]), sample.root, embed_images=True),
        )
        description = (
            f"A stratified {fraction:.0%} sample (seed {seed}, at least {min_per_stratum} queries per stratum) of "
            f"the M-BEIR-format training data in `{Path(mbeir_root).name}`: {sample.total_queries} queries -> "
            f"{len(sample.queries)} kept, stratified by (source dataset, task). Each row is a query with its first "
            "positive and first hard negative (text and image each); `pos_dids` / `neg_dids` list every positive and "
            "hard negative, all of which are in the `candidates` config. Images are embedded in the Parquet files."
        )
        sections = [
            ("Columns", _columns_doc()),
            ("Sampling report", sampling_report_markdown(sample.report)),
        ]
        if sample.missing.count:
            unreadable = f" and {len(sample.missing.unreadable)} unreadable ones" if sample.missing.unreadable else ""
            sections.append((
                "Skipped records",
                f"{len(sample.missing.paths)} missing image files{unreadable}: {sample.missing.dropped_queries} queries and "
                f"{sample.missing.dropped_candidates} candidates dropped.",
            ))
        sections.append(("License", "Each source dataset keeps its own license; see the M-BEIR card and the sources."))
        write_dataset_card(
            staging, [train, pool], title=title, description=description, license="other", citation=MBEIR_CITATION,
            sections=sections,
        )
    logger.info("UMR sample: %d of %d queries, %d candidates", len(sample.queries), sample.total_queries, len(sample.candidates))
    return sample


def _columns_doc() -> str:
    return "\n".join(f"- `{name}`: {feature}" for name, feature in TRAINING_FEATURES.items())


def load_training_rows(
    mbeir_root: str | Path,
    split: str = "train",
    query_files: list[str | Path] | None = None,
    pool_files: list[str | Path] | None = None,
    skip_missing: bool = False,
) -> datasets.Dataset:
    """Every query of an M-BEIR root's ``split`` as an in-memory ``datasets.Dataset`` of TRAINING_FEATURES.

    Images stay on disk (absolute paths, decoded on access). The pool is the global union pool of the
    split (``cand_pool/global/mbeir_union_<split>_cand_pool.jsonl``, else the only
    ``cand_pool/global/*_<split>_cand_pool.jsonl``), else every local pool: see
    :meth:`MBEIRLayout.training_pools`, which logs the file(s) it picked.

    Example::

        ds = load_training_rows("./scenes", split="train")
        ds[0]["query_text"], ds[0]["pos_image"].size
    """
    sample = sample_umr(
        mbeir_root, fraction=1.0, seed=0, min_per_stratum=0, skip_missing=skip_missing,
        query_files=query_files, pool_files=pool_files, split=split,
    )
    rows = list(training_rows(sample.queries, sample.candidates, sample.root, embed_images=False))
    columns = {name: [row[name] for row in rows] for name in TRAINING_FEATURES}
    return datasets.Dataset.from_dict(columns, features=TRAINING_FEATURES)
