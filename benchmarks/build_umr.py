"""Benchmark: build UMR-S10 from a generated M-BEIR-shaped training set (text only); wall time and peak RSS.

The generated set has ``--queries`` queries over 10 sources with an M-BEIR-like mix of tasks (16
(source, task) strata of very different sizes), each query with one positive and 0-2 hard negatives,
and a global pool of ``--candidates`` text candidates. The build (``unica build-dataset umr-s10``)
runs in a child process so that its peak RSS is measured alone. Target: peak RSS <= 2 GB at 1M / 5M.

    python benchmarks/build_umr.py --queries 1000000 --candidates 5000000 --out benchmarks/build_umr.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from dataset_builders.export import read_card_metadata  # noqa: E402

# (source id, task id, share of queries): roughly M-BEIR's training mix, text only here.
STRATA = [
    (0, 0, 0.07), (0, 3, 0.07), (1, 0, 0.02), (1, 3, 0.02), (2, 1, 0.02), (2, 2, 0.01), (3, 2, 0.02),
    (4, 4, 0.01), (5, 6, 0.13), (5, 8, 0.03), (6, 6, 0.05), (6, 8, 0.11), (7, 7, 0.01), (8, 7, 0.02),
    (9, 0, 0.09), (9, 3, 0.32),
]
WORDS = np.array(
    "red green blue small large photo of a the man woman dog cat city river news fashion shirt dress "
    "image picture street car tree house old new wiki question answer bird flower museum painting".split()
)


def generate(root: Path, num_queries: int, num_candidates: int, seed: int = 0, chunk: int = 200_000) -> None:
    """Write query/train/mbeir_bench_train.jsonl and cand_pool/global/mbeir_union_train_cand_pool.jsonl."""
    rng = np.random.default_rng(seed)
    (root / "query" / "train").mkdir(parents=True)
    (root / "cand_pool" / "global").mkdir(parents=True)
    per_source = num_candidates // 10
    with open(root / "cand_pool" / "global" / "mbeir_union_train_cand_pool.jsonl", "w") as pool:
        for start in range(0, num_candidates, chunk):
            stop = min(num_candidates, start + chunk)
            words = WORDS[rng.integers(0, len(WORDS), size=(stop - start, 8))]
            lines = []
            for offset, row in enumerate(words):
                index = start + offset
                did = f"{index // per_source}:{index % per_source + 1}"
                lines.append(json.dumps({"did": did, "txt": " ".join(row), "img_path": None, "modality": "text"}))
            pool.write("\n".join(lines) + "\n")
    shares = np.array([s for _, _, s in STRATA])
    strata = rng.choice(len(STRATA), size=num_queries, p=shares / shares.sum())
    with open(root / "query" / "train" / "mbeir_bench_train.jsonl", "w") as queries:
        for start in range(0, num_queries, chunk):
            stop = min(num_queries, start + chunk)
            words = WORDS[rng.integers(0, len(WORDS), size=(stop - start, 10))]
            positives = rng.integers(1, per_source + 1, size=stop - start)
            negatives = rng.integers(1, per_source + 1, size=(stop - start, 2))
            num_negatives = rng.integers(0, 3, size=stop - start)
            lines = []
            for offset in range(stop - start):
                source, task, _ = STRATA[strata[start + offset]]
                lines.append(json.dumps({
                    "qid": f"{source}:{start + offset + 1}",
                    "query_txt": " ".join(words[offset]),
                    "query_img_path": None,
                    "query_modality": "text",
                    "pos_cand_list": [f"{source}:{positives[offset]}"],
                    "neg_cand_list": [f"{source}:{n}" for n in negatives[offset, : num_negatives[offset]]],
                    "task_id": int(task),
                }))
            queries.write("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=1_000_000)
    parser.add_argument("--candidates", type=int, default=5_000_000)
    parser.add_argument("--fraction", type=float, default=0.10)
    parser.add_argument("--workdir", type=Path, default=None, help="where to generate (default: a temp folder)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="build_umr_", dir=args.workdir))
    try:
        root = workdir / "mbeir"
        started = time.perf_counter()
        generate(root, args.queries, args.candidates)
        generate_seconds = time.perf_counter() - started
        input_bytes = sum(p.stat().st_size for p in root.rglob("*.jsonl"))
        # The builder alone (what `unica build-dataset umr-s10` runs, without the CLI importing every
        # area of the toolkit, torch included).
        code = (
            "import logging, sys; logging.basicConfig(level=logging.INFO);"
            "from dataset_builders.umr import build_umr_s10;"
            "build_umr_s10(sys.argv[1], sys.argv[2], fraction=float(sys.argv[3]), seed=0)"
        )
        command = [sys.executable, "-c", code, str(root), str(workdir / "UMR-S10"), str(args.fraction)]
        started = time.perf_counter()
        subprocess.run(command, check=True, cwd=Path(__file__).resolve().parents[1])
        build_seconds = time.perf_counter() - started
        peak_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
        output_bytes = sum(p.stat().st_size for p in (workdir / "UMR-S10").rglob("*") if p.is_file())
        info = read_card_metadata(workdir / "UMR-S10")["dataset_info"]
        kept = {c["config_name"]: c["splits"][0]["num_examples"] for c in info}
        result = {
            "benchmark": "build_umr",
            "queries": args.queries,
            "candidates": args.candidates,
            "fraction": args.fraction,
            "kept_queries": kept.get("default"),
            "kept_candidates": kept.get("candidates"),
            "input_jsonl_mb": round(input_bytes / 2**20, 1),
            "output_parquet_mb": round(output_bytes / 2**20, 1),
            "generate_seconds": round(generate_seconds, 1),
            "build_wall_seconds": round(build_seconds, 1),
            "build_peak_rss_mb": round(peak_rss_mb, 1),
            "target_peak_rss_mb": 2048,
            "meets_target": peak_rss_mb <= 2048,
            "command": " ".join(["python", "benchmarks/build_umr.py", f"--queries {args.queries}", f"--candidates {args.candidates}"]),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        }
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
