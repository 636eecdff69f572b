"""Query latency of ``unica app``'s search API (``SearchIndex.search``) on the demo-size model.

The model is the demo's shape (``unica demo``: the embedded all-MiniLM-L6-v2, 6 layers of 384, and a micro ViT:
32 px images, 8 px patches, 2 layers; ``fusion="bica"``), untrained unless ``--checkpoint`` names a trained one
(training changes no cost). The corpus is the demo's scenes evaluation set (task2: text -> image,text; task7:
image,text -> image), built from 800 synthetic scenes (50 or more queries of each kind) unless ``--corpus``
names one.

Timed: one call of ``SearchIndex.search(text=..., image=..., k=10)`` per query, start to end: the query checks
(an image arrives as PNG bytes, as an upload does, and is checked and decoded), the query embedding, the FAISS
search and the hits' texts. Three kinds, ``--queries`` each (queries of the evaluation set): text (task2's
texts, over task2's corpus), image (task7's query images alone, over task7's corpus), image + text (task7's
queries as they are). After a warm-up of 3 queries; median and p95 in milliseconds, per number of torch threads
a query runs on (``--threads``; the app's default is 1: ``SearchModel(query_threads=1)``, ``unica app --threads N``
changes it).

Also recorded: loading the model, and building the index by encoding the corpus vs from the harness's cache.

    .venv/bin/python benchmarks/app_latency.py --out benchmarks/app_latency.json

Target: under 1 s per query on 2 CPU cores. The machine is shared with other work (the JSON records the load
average), which is what makes two threads much slower than one for a single query (see the JSON's note).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

DEMO_VISION = {"image_size": 32, "patch_size": 8, "num_hidden_layers": 2}
TARGET_MS = 1000.0


def _build(folder: Path, num_scenes: int) -> tuple[Path, Path]:
    """A demo-shaped checkpoint and the demo's scenes evaluation set under ``folder``."""
    from dataset_builders.evaluation import build_evaluation_sets
    from dataset_builders.scenes import generate_scenes
    from unica.checkpoint import default_text_encoder, init_model, save_checkpoint

    torch.manual_seed(0)
    model, processor = init_model(default_text_encoder(), "vit-micro", fusion="bica",
                                  vision_config_overrides=DEMO_VISION)
    checkpoint = save_checkpoint(model, processor, folder / "unica-mini")
    generate_scenes(folder / "scenes", num_scenes=num_scenes, seed=0, image_size=32, progress=False)
    corpus = folder / "scenes-eval"
    build_evaluation_sets(folder / "scenes", corpus, dataset="scenes", tasks=(2, 7))
    return Path(checkpoint), corpus


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _queries(index_text, index_image, count: int) -> dict[str, list[dict]]:
    """``count`` queries of each kind, as keyword arguments of ``SearchIndex.search``."""
    texts = []
    for item in index_text.task.query_items[:count]:
        texts.append({"text": item["text"] if isinstance(item, dict) else item})
    images, both = [], []
    for item in index_image.task.query_items[:count]:
        text, image = (item["text"], item["image"]) if isinstance(item, dict) else (None, item)
        images.append({"image": _png(image)})
        both.append({"text": text, "image": _png(image)})
    return {"text": texts, "image": images, "image+text": both}


def _time(index, queries: list[dict], k: int) -> dict[str, float]:
    for query in queries[:3]:  # warm-up
        index.search(**query, k=k)
    times = []
    for query in queries:
        start = time.perf_counter()
        hits = index.search(**query, k=k)
        times.append((time.perf_counter() - start) * 1000)
        assert len(hits) == k
    return {"queries": len(times), "median_ms": round(statistics.median(times), 2),
            "p95_ms": round(float(np.percentile(times, 95)), 2), "max_ms": round(max(times), 2),
            "mean_ms": round(statistics.fmean(times), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a UniCA checkpoint (default: a demo-shaped one, built)")
    parser.add_argument("--corpus", help="an evaluation folder with task2 and task7 (default: the demo's, built)")
    parser.add_argument("--num-scenes", type=int, default=800, help="scenes generated when the corpus is built")
    parser.add_argument("--queries", type=int, default=50, help="queries of each kind")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", default="1,2", help="torch threads per query to time, comma-separated "
                        "(1: the app's default)")
    parser.add_argument("--out", default="benchmarks/app_latency.json")
    args = parser.parse_args()

    from eval.harness import load_retrieval_tasks
    from unica.apps.app.search import SearchIndex, SearchModel

    load_start = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="app-latency-"))
    if (args.checkpoint is None) != (args.corpus is None):
        parser.error("pass both --checkpoint and --corpus, or neither (both are then built)")
    if args.checkpoint is None:
        start = time.perf_counter()
        checkpoint, corpus = _build(work, args.num_scenes)
        print(f"built the demo-shaped model and corpus in {time.perf_counter() - start:.1f} s", flush=True)
    else:
        checkpoint, corpus = Path(args.checkpoint), Path(args.corpus)
    default_threads = torch.get_num_threads()

    start = time.perf_counter()
    model = SearchModel(checkpoint)
    load_s = time.perf_counter() - start
    tasks = {task.name: task for task in load_retrieval_tasks(corpus, ["task2", "task7"])}
    cache = work / "embedding-cache"
    startup = {"load_model_s (libraries imported, files in the page cache)": round(load_s, 2)}
    indexes = {}
    for name, task in tasks.items():
        start = time.perf_counter()
        SearchIndex.build(model, task, cache=cache, show_progress=False)  # encodes the corpus, fills the cache
        startup[f"{name}_index_encoding_the_corpus_s"] = round(time.perf_counter() - start, 2)
        start = time.perf_counter()
        indexes[name] = SearchIndex.build(model, task, cache=cache, show_progress=False)
        startup[f"{name}_index_from_the_cache_s"] = round(time.perf_counter() - start, 2)
        assert indexes[name].from_cache

    queries = _queries(indexes["task2"], indexes["task7"], args.queries)
    latency = {}
    for threads in [int(part) for part in args.threads.split(",") if part.strip()]:
        model.query_threads = threads
        label = f"query_threads={threads}" + (" (the app's default)" if threads == 1 else "")
        latency[label] = {
            "text": _time(indexes["task2"], queries["text"], args.k),
            "image": _time(indexes["task7"], queries["image"], args.k),
            "image+text": _time(indexes["task7"], queries["image+text"], args.k),
        }
        print(label, json.dumps(latency[label]), flush=True)
    model.query_threads = 1

    config = model.encoder.model.config
    default = next((values for label, values in latency.items() if label.startswith("query_threads=1 ")), None)
    worst_p95 = max(kind["p95_ms"] for kind in default.values()) if default else None
    result = {
        "benchmark": "benchmarks/app_latency.py",
        "command": "python benchmarks/app_latency.py " + " ".join(sys.argv[1:]),
        "machine": {
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "torch_threads_default": default_threads,
            "load_average_1_5_15_min_at_start": [round(v, 2) for v in load_start],
            "load_average_1_5_15_min_at_end": [round(v, 2) for v in os.getloadavg()],
        },
        "model": {
            "checkpoint": str(checkpoint) if args.checkpoint else "demo-shaped, untrained (built)",
            "fusion": config.fusion, "text_hidden_size": config.text_config.hidden_size,
            "text_layers": config.text_config.num_hidden_layers,
            "vision": {key: getattr(config.vision_config, key) for key in DEMO_VISION},
            "parameters_millions": round(sum(p.numel() for p in model.encoder.model.parameters()) / 1e6, 1),
        },
        "corpus": {"path": str(corpus) if args.corpus else f"demo scenes ({args.num_scenes} scenes, built)",
                   **{f"{name}_documents": len(index) for name, index in indexes.items()},
                   **{f"{name}_queries": len(index.task.query_ids) for name, index in indexes.items()}},
        "timed": f"SearchIndex.search(text=..., image=<PNG bytes>, k={args.k}): checks, decoding, embedding, FAISS "
                 "flat search, hits' texts; one query at a time after 3 warm-up queries",
        "startup": startup,
        "latency": latency,
        "target_ms": TARGET_MS,
        "worst_p95_ms_with_the_apps_default": worst_p95,
        "meets_target": None if worst_p95 is None else worst_p95 < TARGET_MS,
        "note": "2 CPU cores shared with other processes: with 2 threads a single query's small matrix products "
                "wait for a core another process holds, so one thread per query (the app's default) is faster; "
                "the corpus is encoded with torch's default.",
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({"latency": latency, "meets_target": result["meets_target"]}, indent=2))


if __name__ == "__main__":
    main()
