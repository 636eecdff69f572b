"""Training-step benchmark at BGE-base + ViT-B/16 shapes: seconds per example and peak RSS.

Random initialisation, no download: a ``BertConfig()`` text encoder (768 hidden, 12 layers, BGE-base's
shapes, with the offline MiniLM tokenizer: same 30522-token vocabulary) and the ``vit-base`` preset
(224 px, 16 px patches -> 196 image tokens), Bi-CA fusion. Each example is a hybrid (image + text)
query with an image + text positive; in-batch negatives only. One optimizer step is
``UniCATrainer.training_step`` (loss + backward) + AdamW.

Configurations (each in its own subprocess, so peak RSS values do not mix):

- batch 16: plain, gradient checkpointing, cached loss (chunk 4), LoRA (r 8 on query/value);
- cached loss (chunk 4) at effective batch 16, 32, 64: peak RSS should stay nearly flat.

Usage::

    python benchmarks/train_step.py --out benchmarks/train_step.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

logger = logging.getLogger("benchmarks.train_step")

CONFIGS = {
    "plain_b16": {"batch": 16},
    "gradient_checkpointing_b16": {"batch": 16, "gradient_checkpointing": True},
    "cached_chunk4_b16": {"batch": 16, "cache_chunk_size": 4},
    "lora_r8_b16": {"batch": 16, "lora_r": 8},
    "cached_chunk4_b32": {"batch": 32, "cache_chunk_size": 4},
    "cached_chunk4_b64": {"batch": 64, "cache_chunk_size": 4},
}


def build_checkpoint(folder: Path) -> Path:
    """Save a random BGE-base-shaped text encoder and a UniCA checkpoint (text + vit-base) under ``folder``."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from unica.checkpoint import default_text_encoder, init_model, save_checkpoint

    torch.manual_seed(0)
    text = folder / "bert-base-random"
    BertModel(BertConfig(), add_pooling_layer=False).save_pretrained(text)
    AutoTokenizer.from_pretrained(default_text_encoder()).save_pretrained(text)
    model, processor = init_model(text, "vit-base", fusion="bica", max_text_length=64)
    return save_checkpoint(model, processor, folder / "unica-base")


def make_rows(count: int) -> list[dict]:
    """Hybrid queries (image + a question) with image + text positives, images at 224 px."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = []
    for i in range(count):
        query_image = Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8))
        pos_image = Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8))
        rows.append({
            "qid": f"q{i}",
            "query_text": f"What colour is the large shape in the left half of picture number {i}?",
            "query_image": query_image,
            "pos_text": f"Picture {i}: a red circle over a blue square, painted in 1990 in Lisbon.",
            "pos_image": pos_image,
        })
    return rows


def run_config(name: str, checkpoint: str, steps: int) -> dict:
    """Run ``steps`` optimizer steps of one configuration in this process; returns its measurements."""
    import datasets
    import torch

    from unica.checkpoint import load_checkpoint
    from unica.collator import RetrievalCollator
    from unica.trainer import UniCATrainer, UniCATrainingArguments

    settings = CONFIGS[name]
    batch_size = settings["batch"]
    model, processor = load_checkpoint(checkpoint)
    rows = make_rows(batch_size)
    with tempfile.TemporaryDirectory() as output_dir:
        args = UniCATrainingArguments(
            output_dir=output_dir, per_device_train_batch_size=batch_size, report_to="none", disable_tqdm=True,
            dataloader_pin_memory=False, temperature=0.02, psl_weight=0.1, learning_rate=1e-5,
            gradient_checkpointing=settings.get("gradient_checkpointing", False),
            cache_chunk_size=settings.get("cache_chunk_size"), lora_r=settings.get("lora_r", 0),
        )
        trainer = UniCATrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows[:1]),
                               data_collator=RetrievalCollator(processor), processing_class=processor)
        if args.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs)
        optimizer = trainer.create_optimizer()
        trainer.current_gradient_accumulation_steps = 1  # set by train(); we drive the steps ourselves
        batch = trainer.data_collator(rows)
        model.train()
        # Allocate AdamW's state before measuring (a zero-gradient step changes nothing with weight decay 0),
        # so even a one-step run sees the steady-state memory: weights + optimizer state + gradients + activations.
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.grad = torch.zeros_like(parameter)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times, losses = [], []
        for _ in range(steps):
            start = time.perf_counter()
            loss = trainer.training_step(model, batch)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - start)
            losses.append(float(loss))
    measured = times[1:] if len(times) > 1 else times  # the first step warms up allocators and kernels
    seconds = sum(measured) / len(measured)
    return {
        "batch_size": batch_size,
        **{k: v for k, v in settings.items() if k != "batch"},
        "steps": steps,
        "measured_steps": len(measured),
        "seconds_per_step": round(seconds, 3),
        "seconds_per_example": round(seconds / batch_size, 4),
        "step_seconds": [round(t, 3) for t in times],
        "losses": [round(v, 4) for v in losses],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "trainable_parameters_m": round(sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "train_step.json"))
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--steps-b16", type=int, default=2, help="steps at batch 16 (the first is a warm-up)")
    parser.add_argument("--steps-large", type=int, default=1, help="steps at batch 32 / 64")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per configuration")
    parser.add_argument("--merge", help="a previous JSON whose results are kept for configurations not run now")
    parser.add_argument("--worker", nargs=2, metavar=("CONFIG", "CHECKPOINT"), help=argparse.SUPPRESS)
    parser.add_argument("--worker-steps", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    if args.worker:
        logging.getLogger().setLevel(logging.WARNING)
        print(json.dumps(run_config(args.worker[0], args.worker[1], args.worker_steps)))
        return 0

    import torch

    results: dict[str, dict] = {}
    previous_seconds = 0.0
    if args.merge:
        previous = json.loads(Path(args.merge).read_text(encoding="utf-8"))
        results.update({k: v for k, v in previous.get("results", {}).items() if k not in args.configs})
        previous_seconds = float(previous.get("total_seconds", 0.0))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = build_checkpoint(Path(folder))
        for name in args.configs:
            steps = args.steps_b16 if CONFIGS[name]["batch"] <= 16 else args.steps_large
            logger.info("running %s (%d steps)", name, steps)
            command = [sys.executable, __file__, "--worker", name, str(checkpoint), "--worker-steps", str(steps)]
            try:
                run = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
            except subprocess.TimeoutExpired:
                results[name] = {"error": f"timed out after {args.timeout} s"}
                logger.warning("%s timed out", name)
                continue
            if run.returncode != 0:
                results[name] = {"error": f"exit code {run.returncode}", "stderr_tail": run.stderr[-1500:]}
                logger.warning("%s failed: %s", name, run.stderr[-500:])
                continue
            results[name] = json.loads(run.stdout.strip().splitlines()[-1])
            logger.info("%s: %s", name, results[name])

    cached = [results.get(f"cached_chunk4_b{b}", {}).get("peak_rss_mb") for b in (16, 32, 64)]
    summary = {}
    if all(cached):
        summary = {
            "cached_peak_rss_mb_b16_b32_b64": cached,
            "cached_rss_growth_16_to_64": round(cached[2] / cached[0] - 1, 4),
            "cached_rss_target_met": cached[2] / cached[0] - 1 <= 0.10 and cached[2] < 8192,
        }
    report = {
        "benchmark": "train_step",
        "description": __doc__.split("\n\n")[0],
        "shapes": {"text": "BertConfig() random (768 hidden, 12 layers; BGE-base shapes)",
                   "vision": "vit-base preset (224 px, patch 16, 196 tokens)", "fusion": "bica, 1 layer",
                   "query": "image + text", "positive": "image + text", "hard_negatives": 0},
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
                    "torch": torch.__version__},
        "total_seconds": round(previous_seconds + time.perf_counter() - started, 1),
        "results": results,
        "summary": summary,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    logger.info("wrote %s: %s", args.out, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
