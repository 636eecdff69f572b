"""Benchmark: the build-time image check (every image decoded by the processor's safe loader).

``unica build-dataset umr-s10 | webqa | mbeir-eval`` decodes each distinct image once before exporting, so a
non-image, truncated or oversized file is refused naming its record instead of failing later inside
``datasets``. This measures what that costs: images per second for 1 thread and for every core, next to
just reading the bytes (which the export does anyway). Images are WebQA-like JPEGs (``--size`` px, default
512 on the long side, smooth content so the files are realistic in size).

    python benchmarks/check_images.py --images 2000 --out benchmarks/check_images.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from dataset_builders.rows import drop_missing_images  # noqa: E402


def make_images(folder: Path, count: int, size: int, seed: int = 0) -> list[dict]:
    """``count`` JPEGs under ``folder/mbeir_images`` and the M-BEIR candidates that use them."""
    rng = np.random.default_rng(seed)
    (folder / "mbeir_images").mkdir(parents=True)
    candidates = []
    for index in range(count):
        low = rng.integers(0, 256, size=(8, 6, 3), dtype=np.uint8)
        image = Image.fromarray(low).resize((size, size * 3 // 4), Image.BICUBIC)
        relative = f"mbeir_images/{index:06d}.jpg"
        image.save(folder / relative, quality=90)
        candidates.append({"did": f"2:{index}", "txt": None, "img_path": relative, "modality": "image"})
    return candidates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/check_images.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        candidates = {c["did"]: c for c in make_images(root, args.images, args.size)}
        mb = sum((root / c["img_path"]).stat().st_size for c in candidates.values()) / 1e6
        timings: dict[str, list[float]] = {"read_bytes": [], "check_1_thread": [], "check_all_cores": []}
        for _ in range(args.repeats):  # interleaved, so load on a shared machine hits all three alike
            started = time.perf_counter()
            for candidate in candidates.values():
                (root / candidate["img_path"]).read_bytes()
            timings["read_bytes"].append(time.perf_counter() - started)
            for name, workers in (("check_1_thread", 1), ("check_all_cores", os.cpu_count())):
                started = time.perf_counter()
                drop_missing_images(root, [], candidates, skip_missing=False, where="bench", workers=workers,
                                    progress=False)
                timings[name].append(time.perf_counter() - started)
    median = {name: float(np.median(values)) for name, values in timings.items()}
    result = {
        "benchmark": "check_images",
        "images": args.images,
        "image_size": [args.size, args.size * 3 // 4],
        "total_mb": round(mb, 1),
        "seconds_median": {k: round(v, 3) for k, v in median.items()},
        "images_per_second": {k: round(args.images / v, 1) for k, v in median.items()},
        "check_all_cores_vs_1_thread_speedup": round(median["check_1_thread"] / median["check_all_cores"], 2),
        "hours_for_400k_images_all_cores": round(400_000 / (args.images / median["check_all_cores"]) / 3600, 2),
        "command": "python benchmarks/check_images.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
