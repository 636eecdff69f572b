"""Reader for M-BEIR-format retrieval data (UniIR's layout).

An M-BEIR root holds::

    query/{train,val,test}/mbeir_<dataset>[_task<N>]_<split>.jsonl   query records
    cand_pool/global/mbeir_union_<split>_cand_pool.jsonl             global candidate pools
    cand_pool/local/mbeir_<dataset>_task<N>_cand_pool.jsonl           per-task local pools
    qrels/<split>/mbeir_<dataset>_task<N>_<split>_qrels.txt           "qid 0 did relevance task_id"
    mbeir_images/...                                                  images, paths relative to the root

A query record has ``qid`` ("<dataset id>:<n>"), ``query_txt``, ``query_img_path``, ``query_modality``
("text", "image" or "image,text"), ``pos_cand_list`` and ``neg_cand_list`` (candidate ``did`` lists) and,
in the released files, ``task_id``; UniIR derives the task from (query modality, positive modality), and
so do we when ``task_id`` is missing. A candidate has ``did``, ``txt``, ``img_path`` and ``modality``.

Files are parsed by Arrow's JSON reader (multi-threaded, no per-record Python objects); on a parse
error the file is scanned again line by line so the error names the file and line. Candidate pools are
streamed: only the ``did`` column of the whole pool and the rows a caller asks for are held in memory.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from .jsonl import check_object_lines, iter_json_objects

logger = logging.getLogger(__name__)

# UniIR's dataset ids (qid / did prefix), plus the two offline sources of this project.
DATASET_IDS: dict[str, int] = {
    "VisualNews": 0,
    "Fashion200K": 1,
    "WebQA": 2,
    "EDIS": 3,
    "NIGHTS": 4,
    "OVEN": 5,
    "INFOSEEK": 6,
    "FashionIQ": 7,
    "CIRR": 8,
    "MSCOCO": 9,
    "Scenes": 10,
    "OpenClipart": 11,
}
DATASET_NAMES: dict[int, str] = {value: key for key, value in DATASET_IDS.items()}

# UniIR's task numbering: "query modality -> candidate modality". Task 5 (image -> text,image) is not a
# valid M-BEIR task.
MBEIR_TASKS: dict[int, tuple[str, str]] = {
    0: ("text", "image"),
    1: ("text", "text"),
    2: ("text", "image,text"),
    3: ("image", "text"),
    4: ("image", "image"),
    6: ("image,text", "text"),
    7: ("image,text", "image"),
    8: ("image,text", "image,text"),
}
TASK_BY_MODALITIES: dict[tuple[str, str], int] = {value: key for key, value in MBEIR_TASKS.items()}
MODALITIES = ("text", "image", "image,text")

# int() also takes other scripts' digits ("²" passes str.isdigit and fails int): ids and numbers are ASCII here.
_ASCII_DIGITS = re.compile(r"^[0-9]+$")
_ASCII_INTEGER = re.compile(r"^-?[0-9]+$")

QUERY_SCHEMA = pa.schema(
    [
        ("qid", pa.string()),
        ("query_txt", pa.string()),
        ("query_img_path", pa.string()),
        ("query_modality", pa.string()),
        ("pos_cand_list", pa.list_(pa.string())),
        ("neg_cand_list", pa.list_(pa.string())),
        ("task_id", pa.int64()),
    ]
)
CANDIDATE_SCHEMA = pa.schema(
    [("did", pa.string()), ("txt", pa.string()), ("img_path", pa.string()), ("modality", pa.string())]
)


def task_name(task_id: int) -> str:
    """``task_name(2) == "text -> image,text"``."""
    query_modality, candidate_modality = MBEIR_TASKS[task_id]
    return f"{query_modality} -> {candidate_modality}"


def source_name(record_id: str) -> str:
    """The source dataset of a qid / did: ``source_name("2:15") == "WebQA"``; unknown prefixes stay numeric."""
    prefix = record_id.split(":", 1)[0]
    return DATASET_NAMES.get(int(prefix), f"dataset{prefix}") if _ASCII_DIGITS.match(prefix) else prefix


# --------------------------------------------------------------------------------------------- JSONL


def _line_of_row(path: Path, row_index: int) -> int:
    """1-based line number of the ``row_index``-th non-blank line (Arrow's reader skips blank lines)."""
    seen = -1
    with open(path, "rb") as handle:  # bytes: a line that is not UTF-8 is still counted, not an error here
        for line_number, line in enumerate(handle, start=1):
            if line.strip():
                seen += 1
                if seen == row_index:
                    return line_number
    return -1


def _explain_parse_error(path: Path, schema: pa.Schema, arrow_error: Exception) -> ValueError:
    """Scan ``path`` line by line to turn Arrow's parse error into one naming the file and line."""
    try:
        for line_number, record in iter_json_objects(path):
            for field in schema:
                value = record.get(field.name)
                if value is None:
                    continue
                bad = (
                    (pa.types.is_string(field.type) and not isinstance(value, str))
                    or (pa.types.is_integer(field.type) and (not isinstance(value, int) or isinstance(value, bool)))
                    or (pa.types.is_list(field.type) and not (isinstance(value, list) and all(isinstance(v, str) for v in value)))
                )
                if bad:
                    return ValueError(
                        f"{path}:{line_number}: field {field.name!r} has {value!r}, expected {field.type}; fix that line"
                    )
    except ValueError as error:  # malformed JSON or a non-object line, already naming file:line
        return error
    return ValueError(f"{path}: could not be read as JSON lines ({arrow_error})")


def read_jsonl_table(path: str | Path, schema: pa.Schema, required: Iterable[str] = ()) -> pa.Table:
    """Read a JSONL file into an Arrow table with ``schema`` (other fields are ignored).

    Errors name the file and line: malformed JSON, a field of the wrong type, a missing ``required`` field.

    Example::

        table = read_jsonl_table("cand_pool/local/mbeir_webqa_task1_cand_pool.jsonl", CANDIDATE_SCHEMA, ["did"])
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; check the M-BEIR root and file name")
    if path.stat().st_size == 0:
        return schema.empty_table()
    check_object_lines(path)
    try:
        table = pa_json.read_json(
            path,
            read_options=pa_json.ReadOptions(block_size=8 << 20),
            parse_options=pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"),
        )
        table.validate(full=True)  # Arrow's JSON reader keeps invalid UTF-8 in strings; this finds it
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise _explain_parse_error(path, schema, error) from error
    table = table.select(schema.names)
    for name in required:
        nulls = table.column(name).null_count
        if nulls:
            row = pc.index(pc.is_null(table.column(name)), True).as_py()
            raise ValueError(f"{path}:{_line_of_row(path, row)}: required field {name!r} is missing or null ({nulls} records)")
    return table


def iter_jsonl_batches(path: str | Path, schema: pa.Schema, block_size: int = 16 << 20) -> Iterator[pa.RecordBatch]:
    """Stream a JSONL file as Arrow record batches of ``schema`` (for pools too large to hold whole)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; check the M-BEIR root and file name")
    if path.stat().st_size == 0:
        return
    check_object_lines(path)
    try:
        reader = pa_json.open_json(
            path,
            read_options=pa_json.ReadOptions(block_size=block_size),
            parse_options=pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"),
        )
        for batch in reader:
            batch.validate(full=True)  # invalid UTF-8 in strings (see read_jsonl_table)
            yield batch.select(schema.names) if hasattr(batch, "select") else batch
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise _explain_parse_error(path, schema, error) from error


def write_jsonl(path: str | Path, records: Iterable[dict]) -> int:
    """Write records as JSON lines; returns how many were written."""
    count = 0
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count


# --------------------------------------------------------------------------------------------- queries


def check_unique(ids: pa.ChunkedArray | pa.Array, what: str, where: str) -> None:
    """Raise ``ValueError`` naming the first duplicated ids."""
    counts = pc.value_counts(ids)
    duplicated = counts.filter(pc.greater(counts.field("counts"), 1))
    if len(duplicated):
        examples = [item["values"] for item in duplicated.to_pylist()[:5]]
        raise ValueError(f"{len(duplicated)} duplicate {what} in {where}, e.g. {examples}; each id must appear once")


def read_queries(paths: Iterable[str | Path], pool_modalities: dict[str, str] | None = None) -> pa.Table:
    """Read query JSONL files into one table with a checked ``task_id`` column and a ``source`` column.

    ``task_id`` comes from the record; where missing it is derived from (query modality, modality of the
    first positive), which needs ``pool_modalities`` (did -> modality). Duplicate qids, unknown task ids,
    unknown modalities and queries without positives are errors naming the file.
    """
    tables = []
    for path in paths:
        table = read_jsonl_table(path, QUERY_SCHEMA, required=("qid",))
        table = _complete_tasks(table, Path(path), pool_modalities)
        tables.append(table)
    if not tables:
        raise FileNotFoundError("no query files given; check the M-BEIR root (query/<split>/*.jsonl)")
    table = pa.concat_tables(tables)
    check_unique(table.column("qid"), "query ids (qid)", ", ".join(str(p) for p in paths))
    prefixes = pc.list_element(pc.split_pattern(table.column("qid"), ":", max_splits=1), 0).combine_chunks()
    encoded = prefixes.dictionary_encode()
    names = pa.array([source_name(p + ":") for p in encoded.dictionary.to_pylist()], pa.string())
    source_column = pa.DictionaryArray.from_arrays(encoded.indices, names).cast(pa.string())
    return table.append_column("source", source_column)


def _complete_tasks(table: pa.Table, path: Path, pool_modalities: dict[str, str] | None) -> pa.Table:
    modalities = pc.unique(table.column("query_modality").drop_null()).to_pylist()
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown:
        raise ValueError(f"{path}: unknown query_modality {unknown}; expected one of {list(MODALITIES)}")
    positives = pc.list_value_length(table.column("pos_cand_list")).fill_null(0)
    if pc.any(pc.equal(positives, 0)).as_py():
        row = pc.index(pc.equal(positives, 0), True).as_py()
        raise ValueError(f"{path}:{_line_of_row(path, row)}: query has no positive candidate (pos_cand_list is empty)")
    tasks = table.column("task_id")
    if tasks.null_count:
        if pool_modalities is None:
            row = pc.index(pc.is_null(tasks), True).as_py()
            raise ValueError(f"{path}:{_line_of_row(path, row)}: task_id is missing; add it or give the candidate pool")
        derived = []
        for task, query_modality, pos in zip(
            tasks.to_pylist(), table.column("query_modality").to_pylist(), table.column("pos_cand_list").to_pylist()
        ):
            if task is None:
                task = TASK_BY_MODALITIES.get((query_modality, pool_modalities.get(pos[0], "?")), -1)
            derived.append(task)
        table = table.set_column(table.schema.get_field_index("task_id"), "task_id", pa.array(derived, pa.int64()))
    unknown_tasks = sorted(set(pc.unique(table.column("task_id")).to_pylist()) - set(MBEIR_TASKS))
    if unknown_tasks:
        row = pc.index(pc.is_in(table.column("task_id"), pa.array(unknown_tasks, pa.int64())), True).as_py()
        raise ValueError(
            f"{path}:{_line_of_row(path, row)}: unknown task_id {unknown_tasks}; M-BEIR tasks are "
            + ", ".join(f"{k} ({task_name(k)})" for k in MBEIR_TASKS)
        )
    return table


# --------------------------------------------------------------------------------------------- pools


@dataclass
class PoolSubset:
    """The rows of a candidate pool that a build needs, plus the size of the whole pool."""

    table: pa.Table  # did, txt, img_path, modality; only the requested rows, one per did
    pool_size: int  # distinct candidate ids in the pool files
    merged_duplicates: int = 0  # extra copies of identical records (same did and content) that were merged

    def by_did(self) -> dict[str, dict]:
        """did -> candidate record (only the requested rows, so small)."""
        return {row["did"]: row for row in self.table.to_pylist()}


def _same_content(record: dict) -> tuple:
    """What makes two candidate records with one did the same: txt, img_path, modality (None == "")."""
    return tuple(record.get(name) or "" for name in ("txt", "img_path", "modality"))


def _merge_duplicates(paths: list[Path], duplicated: pa.Array) -> tuple[int, list[Path]]:
    """Check the records of ``duplicated`` dids (a second pass over the pool files, reading only those rows).

    Identical records (same did, txt, img_path and modality; a missing text or image equals an empty one)
    are one candidate listed in several pools (M-BEIR's local pools share records): they are merged.
    Records that share a did but differ raise ``ValueError`` naming the did, both files and lines, and the
    fields that differ. Returns (extra copies merged, the files that hold duplicated dids).
    """
    first: dict[str, tuple[dict, Path, int]] = {}
    conflicts: list[tuple[str, dict, Path, int, dict, Path, int]] = []
    files: set[Path] = set()
    extra = 0
    value_set = pc.unique(duplicated)
    for path in paths:
        row = 0
        for batch in iter_jsonl_batches(path, CANDIDATE_SCHEMA):
            mask = pc.is_in(batch.column("did"), value_set=value_set)
            if pc.any(mask).as_py():
                positions = pc.indices_nonzero(mask).to_pylist()
                for position, record in zip(positions, batch.filter(mask).to_pylist()):
                    did = record["did"]
                    files.add(path)
                    if did not in first:
                        first[did] = (record, path, row + position)
                        continue
                    extra += 1
                    seen, seen_path, seen_row = first[did]
                    if _same_content(seen) != _same_content(record):
                        conflicts.append((did, seen, seen_path, seen_row, record, path, row + position))
            row += batch.num_rows
    if conflicts:
        did, a, path_a, row_a, b, path_b, row_b = conflicts[0]
        differences = "; ".join(
            f"{name} {a.get(name)!r} vs {b.get(name)!r}"
            for name in ("txt", "img_path", "modality")
            if (a.get(name) or "") != (b.get(name) or "")
        )
        dids = sorted({conflict[0] for conflict in conflicts})
        raise ValueError(
            f"{len(dids)} duplicate candidate ids (did) name different records, e.g. {did!r} in "
            f"{path_a}:{_line_of_row(path_a, row_a)} and {path_b}:{_line_of_row(path_b, row_b)} ({differences})"
            + (f"; also {dids[:5]}" if len(dids) > 1 else "")
            + "; a did must name one record: fix or drop one of them, or pass only the pools that agree"
        )
    return extra, [path for path in paths if path in files]


def load_pool_subset(
    paths: Iterable[str | Path], wanted: pa.Array | None = None, referenced: pa.Array | None = None
) -> PoolSubset:
    """Stream candidate pools, check their ids, and keep only the candidates in ``wanted``.

    ``wanted=None`` keeps every row. ``referenced`` (all candidate ids the queries point at) is checked
    against the pool: ids not in it are an error with the count and first examples. A did listed more
    than once (in one file or in several) is merged if the records are identical (logged, and counted in
    ``merged_duplicates``) and an error naming the did, files and difference if they are not.
    Memory: the did column of the pool plus the kept rows.
    """
    paths = [Path(p) for p in paths]
    did_chunks: list[pa.Array] = []
    kept: list[pa.RecordBatch] = []
    wanted_set = pc.unique(wanted) if wanted is not None else None
    for path in paths:
        for batch in iter_jsonl_batches(path, CANDIDATE_SCHEMA):
            dids = batch.column("did")
            if dids.null_count:
                raise ValueError(f"{path}: {dids.null_count} candidates have no 'did'; every candidate needs an id")
            did_chunks.append(dids)
            if wanted_set is None:
                kept.append(batch)
            else:
                mask = pc.is_in(dids, value_set=wanted_set)
                if pc.any(mask).as_py():
                    kept.append(batch.filter(mask))
    if not paths:
        raise FileNotFoundError("no candidate pool files given; check the M-BEIR root (cand_pool/...)")
    all_dids = pa.chunked_array(did_chunks, pa.string())
    where = ", ".join(str(p) for p in paths)
    counts = pc.value_counts(all_dids)
    duplicated = counts.filter(pc.greater(counts.field("counts"), 1)).field("values")
    merged = 0
    if len(duplicated):
        merged, files = _merge_duplicates(paths, duplicated)
        logger.info(
            "merged %d identical duplicate candidate record(s) (%d dids listed more than once, e.g. %r) in %s",
            merged, len(duplicated), duplicated[0].as_py(), ", ".join(str(f) for f in files),
        )
    modalities = [m for m in pc.unique(pa.chunked_array([b.column("modality") for b in kept], pa.string())).to_pylist()]
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown:
        raise ValueError(f"{where}: unknown candidate modality {unknown}; expected one of {list(MODALITIES)}")
    if referenced is not None:
        missing = pc.filter(referenced, pc.invert(pc.is_in(referenced, value_set=counts.field("values"))))
        if len(missing):
            missing = pc.unique(missing)
            raise ValueError(
                f"{len(missing)} candidate ids referenced by queries are not in the pool ({where}), "
                f"e.g. {missing.to_pylist()[:5]}; use the pool the queries were made with"
            )
    table = pa.Table.from_batches(kept, CANDIDATE_SCHEMA) if kept else CANDIDATE_SCHEMA.empty_table()
    if merged and len(table):  # keep the first copy of each did, in pool order
        _, first_rows = np.unique(table.column("did").to_numpy(zero_copy_only=False), return_index=True)
        table = table.take(pa.array(np.sort(first_rows), pa.int64()))
    return PoolSubset(table=table, pool_size=len(counts), merged_duplicates=merged)


def read_pool_modalities(paths: Iterable[str | Path]) -> dict[str, str]:
    """did -> modality for small pools (used only when query files lack ``task_id``)."""
    table = load_pool_subset(paths).table
    return dict(zip(table.column("did").to_pylist(), table.column("modality").to_pylist()))


# --------------------------------------------------------------------------------------------- qrels


def read_qrels(path: str | Path) -> list[tuple[str, str, int, int]]:
    """Read an M-BEIR qrels file: one ``qid 0 did relevance task_id`` per line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; check the M-BEIR root and file name")
    rows = []
    with open(path, "rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(f"{path}:{line_number}: not UTF-8 text ({error.reason}); qrels must be UTF-8") from None
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 5 or not _ASCII_INTEGER.match(parts[3]) or not _ASCII_DIGITS.match(parts[4]):
                raise ValueError(f"{path}:{line_number}: expected 'qid 0 did relevance task_id', got {line.strip()!r}")
            rows.append((parts[0], parts[2], int(parts[3]), int(parts[4])))
    return rows


def write_qrels(path: str | Path, rows: Iterable[tuple[str, str, int, int]]) -> None:
    """Write ``(qid, did, relevance, task_id)`` rows in M-BEIR's qrels format."""
    with open(path, "w", encoding="utf-8") as handle:
        for qid, did, relevance, task in rows:
            handle.write(f"{qid} 0 {did} {relevance} {task}\n")


def write_mbeir_source(root: Path, dataset: str, queries: dict[str, list[dict]], candidates: dict[str, list[dict]]) -> dict:
    """Write a generated source's queries, pools and qrels in M-BEIR's layout; returns counts.

    ``queries`` / ``candidates`` map "train" / "test" to M-BEIR records. Train queries go to one file
    (as in M-BEIR); test queries, local pools and qrels are written per task.
    """
    counts: dict = {"queries": {}, "candidates": {}}
    for directory in ("query/train", "query/test", "cand_pool/global", "cand_pool/local", "qrels/train", "qrels/test"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    modality_of = {c["did"]: c["modality"] for split in candidates for c in candidates[split]}
    for split in ("train", "test"):
        write_jsonl(root / f"cand_pool/global/mbeir_union_{split}_cand_pool.jsonl", candidates[split])
        counts["candidates"][split] = len(candidates[split])
        per_task: dict[int, list[dict]] = {}
        for query in queries[split]:
            per_task.setdefault(query["task_id"], []).append(query)
        counts["queries"][split] = {str(t): len(per_task[t]) for t in sorted(per_task)}
        if split == "train":
            write_jsonl(root / f"query/train/mbeir_{dataset}_train.jsonl", queries[split])
            write_qrels(root / f"qrels/train/mbeir_{dataset}_train_qrels.txt", _qrels(queries[split]))
            continue
        for task, task_queries in sorted(per_task.items()):
            write_jsonl(root / f"query/test/mbeir_{dataset}_task{task}_test.jsonl", task_queries)
            write_qrels(root / f"qrels/test/mbeir_{dataset}_task{task}_test_qrels.txt", _qrels(task_queries))
            # The local pool: every test candidate of the modality this task retrieves.
            wanted = modality_of[task_queries[0]["pos_cand_list"][0]]
            write_jsonl(
                root / f"cand_pool/local/mbeir_{dataset}_task{task}_cand_pool.jsonl",
                [c for c in candidates["test"] if c["modality"] == wanted],
            )
    return counts


def _qrels(queries: list[dict]):
    for query in queries:
        for did in query["pos_cand_list"]:
            yield query["qid"], did, 1, query["task_id"]


# --------------------------------------------------------------------------------------------- layout


class MBEIRLayout:
    """Finds the files of an M-BEIR root.

    Example::

        layout = MBEIRLayout("/data/M-BEIR")
        layout.query_files("train")                  # query/train/*.jsonl
        layout.local_pool("webqa", 1)                # cand_pool/local/mbeir_webqa_task1_cand_pool.jsonl
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"M-BEIR root {str(self.root)!r} is not a folder; pass --mbeir-root <folder>")

    def query_files(self, split: str) -> list[Path]:
        files = sorted((self.root / "query" / split).glob("*.jsonl"))
        if not files:
            raise FileNotFoundError(f"no query files in {self.root / 'query' / split}; is {self.root} an M-BEIR root?")
        return files

    def task_query_file(self, dataset: str, task_id: int, split: str = "test") -> Path:
        return self.root / "query" / split / f"mbeir_{dataset.lower()}_task{task_id}_{split}.jsonl"

    def global_pool(self, split: str) -> Path:
        return self.root / "cand_pool" / "global" / f"mbeir_union_{split}_cand_pool.jsonl"

    def local_pool(self, dataset: str, task_id: int) -> Path:
        return self.root / "cand_pool" / "local" / f"mbeir_{dataset.lower()}_task{task_id}_cand_pool.jsonl"

    def qrels_file(self, dataset: str, task_id: int, split: str = "test") -> Path:
        return self.root / "qrels" / split / f"mbeir_{dataset.lower()}_task{task_id}_{split}_qrels.txt"

    def training_pools(self, split: str = "train") -> list[Path]:
        """The candidate pool the ``split`` queries refer to, logged (INFO) with the reason it was chosen.

        1. the union pool ``cand_pool/global/mbeir_union_<split>_cand_pool.jsonl``;
        2. else the only ``cand_pool/global/*_<split>_cand_pool.jsonl``: a union pool named otherwise
           (several such files are an error listing them: pass the pool files to use);
        3. else every local pool ``cand_pool/local/*.jsonl`` (records they share are merged if identical).
        """
        union = self.global_pool(split)
        if union.is_file():
            logger.info("candidate pool for %s: %s (the union pool)", split, union)
            return [union]
        others = sorted((self.root / "cand_pool" / "global").glob(f"*_{split}_cand_pool.jsonl"))
        if len(others) == 1:
            logger.info(
                "candidate pool for %s: %s (no %s; it is the only cand_pool/global/*_%s_cand_pool.jsonl)",
                split, others[0], union.name, split,
            )
            return others
        if others:
            raise ValueError(
                f"no {union.name} in {union.parent}, and several pools could be the {split} union pool: "
                f"{[p.name for p in others]}; pass the one(s) to use (--pool-files / pool_files=)"
            )
        local = sorted((self.root / "cand_pool" / "local").glob("*.jsonl"))
        if not local:
            raise FileNotFoundError(f"no candidate pool under {self.root / 'cand_pool'}; expected {union}")
        logger.info(
            "candidate pool for %s: the %d local pools in %s (no cand_pool/global/*_%s_cand_pool.jsonl): %s",
            split, len(local), local[0].parent, split, ", ".join(p.name for p in local),
        )
        return local

    def image_path(self, relative: str, record: str = "a record") -> Path:
        """The file ``relative`` names, checked to lie inside the root (see :func:`resolve_image_path`)."""
        return resolve_image_path(self.root, relative, record)


def resolve_image_path(root: str | Path, relative: str, record: str = "a record") -> Path:
    """Resolve an image path of an M-BEIR record against ``root``; refuse one that leaves the root.

    Data never comes from outside the folder the user named: an absolute path, a ``..`` that climbs out
    of the root, or a symlink inside the root that leads out of it raises ``ValueError`` naming the record
    (e.g. ``"candidate '2:15'"``) and the path. ``..`` that stays inside the root is fine. The result is
    the resolved absolute path (symlinks inside the root are followed), whether or not the file exists.

    Example::

        resolve_image_path("/data/M-BEIR", "mbeir_images/webqa_images/1.jpg", "candidate '2:1'")
    """
    real_root = Path(os.path.realpath(root))
    if not isinstance(relative, str) or not relative or "\0" in relative:
        raise ValueError(f"{record}: image path {relative!r} is not a file name (empty, or holds a NUL)")
    if os.path.isabs(relative) or PureWindowsPath(relative).drive:
        raise ValueError(
            f"{record}: image path {relative!r} is absolute, outside the dataset root {str(real_root)!r}; "
            "image paths must be relative to the root"
        )
    resolved = Path(os.path.realpath(real_root / relative))
    if not resolved.is_relative_to(real_root):
        raise ValueError(
            f"{record}: image path {relative!r} leads to {str(resolved)!r}, outside the dataset root "
            f"{str(real_root)!r}; only files inside the root are read (copy the images into it)"
        )
    return resolved
