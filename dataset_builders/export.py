"""Parquet export with a dataset card, written to a staging folder and renamed when complete.

An exported folder looks like::

    README.md                                  dataset card: YAML configs + features, report, citation
    data/<config>/<split>-00000-of-00002.parquet

and ``datasets.load_dataset(folder, "<config>", split=...)`` reads it with the declared features
(``Image()`` columns hold the image bytes, so the folder is self-contained and can be pushed as is).

Example::

    with atomic_directory("./out", overwrite=False) as tmp:     # dataset_builders.atomic
        with ParquetShardWriter(tmp, "default", "train", features) as writer:
            writer.write({"text": "a red circle", "image": "/path/to/scene.png"})
        write_dataset_card(tmp, [writer.summary()], title="My set", description="...")
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from .atomic import atomic_directory

# The name builders used before the atomic module existed; the one implementation is atomic_directory.
staging_folder = atomic_directory

logger = logging.getLogger(__name__)

# A marker written last: a folder without it was not finished.
COMPLETE_MARKER = "README.md"


def image_value(path: str | Path | None, embed: bool = True) -> dict | None:
    """An ``Image()`` cell for a file: its bytes (embedded) or its absolute path; ``None`` for no image."""
    if path is None or path == "":
        return None
    path = Path(path)
    if embed:
        return {"bytes": path.read_bytes(), "path": path.name}
    return {"bytes": None, "path": str(path.absolute())}


def _embedded_image(feature: datasets.Image, value) -> dict | None:
    """An ``Image()`` cell that always holds the bytes (see ``ParquetShardWriter._encode``)."""
    if value is None:
        return None
    if isinstance(value, (str, os.PathLike)):
        value = {"bytes": None, "path": os.fspath(value)}
    if isinstance(value, dict):
        if value.get("bytes") is None:
            if not value.get("path"):
                raise ValueError(f"image value {value!r} has neither 'bytes' nor 'path'")
            path = Path(value["path"])
            return {"bytes": path.read_bytes(), "path": path.name}
        return {"bytes": value["bytes"], "path": value.get("path")}
    return feature.encode_example(value)  # PIL images, arrays, raw bytes: encoded to bytes by datasets


@dataclass
class SplitSummary:
    """What a writer wrote: used for the card's ``configs`` and ``dataset_info``."""

    config: str
    split: str
    features: datasets.Features
    files: list[str] = field(default_factory=list)
    num_examples: int = 0
    num_bytes: int = 0


class ParquetShardWriter:
    """Writes rows of ``features`` to ``data/<config>/<split>-XXXXX-of-YYYYY.parquet`` in shards.

    Rows are plain dicts (images as paths, bytes, PIL images or ``{"bytes", "path"}`` dicts); they are
    encoded with ``features`` in batches, so memory stays at one batch plus one row group.
    """

    def __init__(
        self,
        folder: str | Path,
        config: str,
        split: str,
        features: datasets.Features,
        rows_per_shard: int = 200_000,
        batch_size: int = 1000,
    ):
        self.folder = Path(folder)
        self.directory = self.folder / "data" / config
        self.directory.mkdir(parents=True, exist_ok=True)
        self.features = features
        self.schema = features.arrow_schema
        self.rows_per_shard = rows_per_shard
        self.batch_size = batch_size
        self._summary = SplitSummary(config=config, split=split, features=features)
        self._pending: list[dict] = []
        self._writer: pq.ParquetWriter | None = None
        self._rows_in_shard = 0
        self._shard_paths: list[Path] = []

    def __enter__(self) -> ParquetShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self._writer is not None:
            self._writer.close()

    def write(self, row: dict) -> None:
        self._pending.append(row)
        if len(self._pending) >= self.batch_size:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        table = pa.Table.from_pydict(self._encode(self._pending), schema=self.schema)
        self._pending = []
        offset = 0
        while offset < len(table):
            if self._writer is None:
                path = self.directory / f"{self._summary.split}-{len(self._shard_paths):05d}.parquet"
                self._shard_paths.append(path)
                self._writer = pq.ParquetWriter(path, self.schema)
                self._rows_in_shard = 0
            take = min(len(table) - offset, self.rows_per_shard - self._rows_in_shard)
            self._writer.write_table(table.slice(offset, take))
            self._rows_in_shard += take
            self._summary.num_examples += take
            offset += take
            if self._rows_in_shard >= self.rows_per_shard:
                self._writer.close()
                self._writer = None

    def _encode(self, rows: list[dict]) -> dict[str, list]:
        """Encode rows with ``features``, embedding every top-level image's bytes.

        ``datasets.Image.encode_example`` keeps only the path of a ``{"bytes", "path"}`` value whose path
        names a file in the *current working folder* (and of any ``str`` path), so a build run from inside
        an images folder would export images without their bytes. Image cells are therefore encoded here:
        paths are read, bytes are always stored.
        """
        columns = {name: [row.get(name) for row in rows] for name in self.features}
        images = {name for name, feature in self.features.items() if isinstance(feature, datasets.Image)}
        encoded = datasets.Features({n: f for n, f in self.features.items() if n not in images}).encode_batch(
            {n: values for n, values in columns.items() if n not in images}
        )
        for name in images:
            encoded[name] = [_embedded_image(self.features[name], value) for value in columns[name]]
        return {name: encoded[name] for name in self.features}

    def close(self) -> SplitSummary:
        self._flush()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if not self._shard_paths:  # an empty split still gets one (empty) file so that it loads
            path = self.directory / f"{self._summary.split}-00000.parquet"
            pq.write_table(self.schema.empty_table(), path)
            self._shard_paths.append(path)
        total = len(self._shard_paths)
        final = []
        for index, path in enumerate(self._shard_paths):
            target = path.with_name(f"{self._summary.split}-{index:05d}-of-{total:05d}.parquet")
            if path.exists():
                path.rename(target)
                self._shard_paths[index] = target
            final.append(str(target.relative_to(self.folder)))
            self._summary.num_bytes += target.stat().st_size
        self._summary.files = final
        return self._summary

    def summary(self) -> SplitSummary:
        return self._summary


def write_rows(folder: Path, config: str, split: str, features: datasets.Features, rows) -> SplitSummary:
    """Write an iterable of rows as one config/split; returns its summary."""
    with ParquetShardWriter(folder, config, split, features) as writer:
        for row in rows:
            writer.write(row)
    return writer.summary()


def markdown_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """A GitHub-markdown table of ``rows`` (dicts) restricted to ``columns``."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_format_cell(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def _format_cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value).replace("|", "\\|")


def write_dataset_card(
    folder: str | Path,
    splits: Sequence[SplitSummary],
    title: str,
    description: str,
    license: str = "other",
    citation: str = "",
    sections: Sequence[tuple[str, str]] = (),
    task_categories: Sequence[str] = ("text-retrieval", "text-to-image", "image-to-text"),
    default_config: str | None = None,
) -> Path:
    """Write ``README.md`` with YAML ``configs`` (Parquet paths), ``dataset_info`` (features) and the text.

    Written last: a folder whose card exists is complete.
    """
    folder = Path(folder)
    by_config: dict[str, list[SplitSummary]] = {}
    for summary in splits:
        by_config.setdefault(summary.config, []).append(summary)
    default_config = default_config or next(iter(by_config))
    configs, infos = [], []
    for name, summaries in by_config.items():
        entry = {
            "config_name": name,
            "data_files": [{"split": s.split, "path": f"data/{name}/{s.split}-*.parquet"} for s in summaries],
        }
        if name == default_config:
            entry["default"] = True
        configs.append(entry)
        infos.append(
            {
                "config_name": name,
                "features": summaries[0].features._to_yaml_list(),
                "splits": [{"name": s.split, "num_bytes": s.num_bytes, "num_examples": s.num_examples} for s in summaries],
            }
        )
    metadata = {
        "license": license,
        "pretty_name": title,
        "language": ["en"],
        "task_categories": list(task_categories),
        "configs": configs,
        "dataset_info": infos,
    }
    body = [f"# {title}", "", description.strip(), ""]
    body += ["## Configurations", "", markdown_table(
        [{"config": s.config, "split": s.split, "rows": s.num_examples, "files": len(s.files)} for s in splits],
        ["config", "split", "rows", "files"],
    ), ""]
    body += ["```python", "from datasets import load_dataset", ""]
    for s in splits[:3]:
        body.append(f'ds = load_dataset("<this folder or repo id>", "{s.config}", split="{s.split}")')
    body += ["```", ""]
    for heading, text in sections:
        body += [f"## {heading}", "", text.strip(), ""]
    if citation:
        body += ["## Citation", "", "```bibtex", citation.strip(), "```", ""]
    text = "---\n" + yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True) + "---\n\n" + "\n".join(body)
    path = folder / COMPLETE_MARKER
    path.write_text(text, encoding="utf-8")
    return path


def read_card_metadata(folder: str | Path) -> dict:
    """The YAML header of a folder's ``README.md`` (empty dict when there is none)."""
    path = Path(folder) / COMPLETE_MARKER
    if not path.is_file():
        return {}
    text = path.read_text(encoding="utf-8")
    if not text.startswith("---\n"):
        return {}
    header = text[4 : text.index("\n---", 4)]
    return yaml.safe_load(header) or {}


def validate_export(folder: str | Path) -> list[str]:
    """Check that ``folder`` is a complete export; return the files an upload would send (sorted, relative).

    Complete: a ``README.md`` whose YAML ``configs`` point at Parquet files that exist, and no leftover
    staging folders or stray files.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{str(folder)!r} is not a folder; pass the --out folder of build-dataset")
    if folder.name.startswith(".") and ".partial-" in folder.name:
        raise ValueError(f"{folder} is an unfinished export (a staging folder); build it again")
    metadata = read_card_metadata(folder)
    if not metadata.get("configs"):
        raise ValueError(
            f"{folder / COMPLETE_MARKER} is missing or has no YAML 'configs'; is {folder} a build-dataset output "
            "(an M-BEIR root must be exported first, e.g. build-dataset umr-s10)?"
        )
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    for config in metadata["configs"]:
        for data_file in config.get("data_files", []):
            pattern = data_file["path"]
            if not list(folder.glob(pattern)):
                raise ValueError(f"{folder}: config {config['config_name']!r} names {pattern!r} but no file matches it")
    stray = [f for f in files if f != COMPLETE_MARKER and not (f.startswith("data/") and f.endswith(".parquet"))]
    if stray:
        raise ValueError(f"{folder} holds files that are not part of the export, e.g. {stray[:3]}; remove them")
    return files
