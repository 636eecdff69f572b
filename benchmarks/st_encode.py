"""SentenceTransformer.encode vs calling UniCAModel directly, on the same items and batches.

Both paths run the same processor and model with the same kernels (``encode_items(..., fast_kernels=False)``:
the checkpoint's own code, as sentence-transformers runs it); the ratio shows what the sentence-transformers glue
costs. Also timed: ``encode_items``'s fast path (``unica.encoding.use_fast_kernels``), which sentence-transformers
does not get. Runs are interleaved (direct, st, fast, direct, ...) so machine noise hits all alike.
Target: st / direct throughput >= 0.95.

    .venv/bin/python benchmarks/st_encode.py --out benchmarks/st_encode.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402


def _items(n: int) -> list:
    colours = ["red", "green", "blue", "yellow", "purple", "orange"]
    items = []
    for i in range(n):
        image = Image.new("RGB", (64, 64), "white")
        ImageDraw.Draw(image).ellipse((8 + i % 9, 8, 50, 50 - i % 7), fill=colours[i % len(colours)])
        text = f"a {colours[i % len(colours)]} shape painted in {1950 + i % 70} near place {i % 13}"
        items.append({"text": text, "image": image} if i % 2 == 0 else text)
    return items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/st_encode.json")
    args = parser.parse_args()

    from sentence_transformers import SentenceTransformer

    from unica.checkpoint import default_text_encoder, init_model, save_checkpoint
    from unica.encoding import encode_items

    torch.manual_seed(0)
    model, processor = init_model(default_text_encoder(), "vit-micro", fusion="bica")
    folder = os.path.join(tempfile.mkdtemp(), "unica-bench")
    save_checkpoint(model, processor, folder)
    st_model = SentenceTransformer(folder, trust_remote_code=True, device="cpu")
    model.eval()
    items = _items(args.items)

    def direct(fast_kernels: bool = False) -> float:
        start = time.perf_counter()
        encode_items(model, processor, items, batch_size=args.batch_size, show_progress=False,
                     fast_kernels=fast_kernels)
        return time.perf_counter() - start

    def st() -> float:
        start = time.perf_counter()
        st_model.encode(items, batch_size=args.batch_size)
        return time.perf_counter() - start

    direct(), st(), direct(True)  # warm-up
    times = {"direct": [], "sentence_transformers": [], "direct_fast_kernels": []}
    for _ in range(args.repeats):
        times["direct"].append(direct())
        times["sentence_transformers"].append(st())
        times["direct_fast_kernels"].append(direct(True))
    medians = {name: statistics.median(values) for name, values in times.items()}
    result = {
        "benchmark": "SentenceTransformer.encode vs UniCAModel direct",
        "model": "all-MiniLM-L6-v2 + vit-micro (64 px, 64 image tokens), fusion=bica",
        "items": args.items, "mix": "half image+text, half text", "batch_size": args.batch_size,
        "repeats": args.repeats, "torch_threads": torch.get_num_threads(), "machine": platform.processor() or
        platform.machine(),
        "seconds": times,
        "items_per_second": {name: args.items / value for name, value in medians.items()},
        "throughput_ratio_st_over_direct": medians["direct"] / medians["sentence_transformers"],
        "throughput_ratio_fast_kernels_over_st": medians["sentence_transformers"] / medians["direct_fast_kernels"],
        "target_ratio": 0.95,
    }
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2)
    print(json.dumps({k: result[k] for k in ("items_per_second", "throughput_ratio_st_over_direct")}, indent=2))


if __name__ == "__main__":
    main()
