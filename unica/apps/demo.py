"""The offline demo (``make demo`` / ``unica demo``): does Bi-CA help, here, against VISTA's concatenation?

1. generate synthetic scenes (M-BEIR format) and the evaluation sets of task 2 (text -> image + text)
   and task 7 (image + text -> image: a scene and an edit such as "Make the red circle blue." retrieve
   the edited scene, an answer that needs both the image and the text);
2. build one initial model from the embedded all-MiniLM-L6-v2 and a micro ViT, and score it untrained
   (the floor);
3. fine-tune ``concat`` (VISTA) and ``bica`` (UniCA) from those same weights, on the same data for the
   same steps (InfoNCE + PSL), through the ablation runner, and evaluate both;
4. print one table: R@1 / R@5 / R@10 / MRR@1 per task for the floor and each cell, each cell's delta
   against ``concat`` and against the floor with a paired-bootstrap 95% CI, and what they say;
5. keep the ``bica`` model as ``unica-mini`` (model card, remote code, sentence-transformers files), reload
   it through ``SentenceTransformer``, search with three example queries (text, image, image + text) and
   write their hits as ``results/examples.json`` and a contact sheet ``results/examples.png``.

About 5 minutes on two CPU cores; ``--quick`` runs the same path on tiny settings in under a minute (what
``make test`` runs). Everything lands under ``--out`` (default ``demo-output/``); a second run reuses the
cells it already trained with the same settings.

Example::

    unica demo --out demo-output                  # one seed
    unica demo --out demo-3seeds --seeds 0,1,2    # mean ± std over seeds, CIs over queries
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger("unica.demo")

TASKS = ("task2", "task7")
METRICS = ("hit@1", "hit@5", "hit@10", "mrr@1")
LABELS = {"hit@1": "R@1", "hit@5": "R@5", "hit@10": "R@10", "mrr@1": "MRR@1"}
BASELINE = "concat"
PSL_WEIGHT = 0.1
# Task 7 is the task where fusion matters: every scene gets one; the other tasks teach the words for colours,
# shapes and places (task 0 and 3) and the hybrid documents (task 2).
TASK_PROBABILITY = {0: 0.5, 2: 0.5, 3: 0.3, 7: 1.0}
FULL = {"num_scenes": 800, "max_steps": 120, "batch_size": 16}
QUICK = {"num_scenes": 120, "max_steps": 4, "batch_size": 8}


def demo_config(out: Path, quick: bool = False, seeds: Sequence[int] = (0,), max_steps: int | None = None,
                psl_ablation: bool = False) -> dict[str, Any]:
    """The demo's ablation config (the format of ``unica ablate --config``): concat vs bica, same start."""
    size = QUICK if quick else FULL
    train = {
        "init": {"text": "default", "vision": "vit-micro", "fusion": "bica", "bica_layers": 1,
                 "vision_config_overrides": {"image_size": 32, "patch_size": 8, "num_hidden_layers": 2}},
        "data": {"builder": "scenes", "root": str(out / "scenes"), "num_scenes": size["num_scenes"], "image_size": 32,
                 "seed": 0, "task_probability": TASK_PROBABILITY},
        "training": {"output_dir": str(out / "runs"), "max_steps": max_steps or size["max_steps"],
                     "per_device_train_batch_size": size["batch_size"], "learning_rate": 1e-4,
                     "fusion_learning_rate": 1e-3, "warmup_steps": 5, "temperature": 0.05, "hard_negatives": 1,
                     "logging_steps": 50, "dataloader_pin_memory": False},
    }
    return {
        "train": train,
        "grid": {"fusion": ["concat", "bica"], "psl_weight": [0.0, PSL_WEIGHT] if psl_ablation else [PSL_WEIGHT],
                 "seed": [int(s) for s in seeds]},
        "baseline": {"fusion": BASELINE, "psl_weight": 0.0 if psl_ablation else PSL_WEIGHT},
        "evaluation": {"dataset": str(out / "scenes-eval"), "tasks": list(TASKS), "metrics": list(METRICS),
                       "num_resamples": 2000 if quick else 10_000},
    }


def prepare_data(config: Mapping[str, Any], out: Path) -> Path:
    """The scenes root and its task 2 / task 7 evaluation sets (built once, reused by later runs)."""
    from dataset_builders.evaluation import build_evaluation_sets
    from unica.apps.train_cli import scenes_root

    try:
        root = scenes_root(config["train"]["data"], str(out))
    except ValueError as error:  # the data of a demo run with other settings (an older version, or --quick)
        raise ValueError(f"--out {str(out)!r} holds the data of a demo run with other settings ({error}); pass "
                         "another --out or delete that folder") from None
    eval_dir = Path(config["evaluation"]["dataset"])
    if not (eval_dir / "README.md").is_file():
        build_evaluation_sets(root, eval_dir, dataset="scenes", tasks=(2, 7), overwrite=True)
    return eval_dir


def evaluate_floor(config: Mapping[str, Any], out: Path) -> dict[int, dict[str, Any]]:
    """Per seed: the metrics of the untrained initial model (the same weights every cell starts from)."""
    from eval.report import write_results_json
    from unica.apps.evaluate import evaluate_checkpoint
    from unica.apps.train_cli import load_model
    from unica.checkpoint import save_checkpoint

    floors = {}
    for seed in config["grid"]["seed"]:
        record = out / "floor" / f"seed{seed}.json"
        if record.is_file():
            floors[seed] = json.loads(record.read_text(encoding="utf-8"))
            continue
        train = {**config["train"], "init": {**config["train"]["init"], "seed": seed}}
        model, processor = load_model(train)
        folder = out / "floor" / f"seed{seed}-model"
        save_checkpoint(model, processor, folder, overwrite=True, quiet=True)  # evaluated, then removed
        results = evaluate_checkpoint(folder, config["evaluation"]["dataset"], tasks=list(TASKS),
                                      show_progress=False)
        floors[seed] = {"tasks": results["tasks"], "per_query": results["per_query"]}
        write_results_json(floors[seed], record)
        shutil.rmtree(folder)
    return floors


def comparison(summary: Mapping[str, Any], floors: Mapping[int, Mapping[str, Any]], runs_dir: Path,
               config: Mapping[str, Any]) -> dict[str, Any]:
    """Per task and cell: mean (± std over seeds) of each metric, Δ vs concat and Δ vs the floor with CIs."""
    from eval.stats import paired_bootstrap, summarize_seeds

    seeds = config["grid"]["seed"]
    resamples = int(config["evaluation"]["num_resamples"])
    table: dict[str, Any] = {}
    for task, data in summary["tasks"].items():
        floor_values = {m: np.array([floors[s]["per_query"][task][m] for s in seeds]) for m in METRICS}
        rows = {"untrained (floor)": {m: {"mean": summarize_seeds([floors[s]["tasks"][task][m] for s in seeds])
                                          .to_dict()} for m in METRICS}}
        for cell, values in data["cells"].items():
            per_query = _cell_per_query(runs_dir, cell, seeds, task)
            row = {}
            for metric in METRICS:
                row[metric] = {
                    "mean": values[metric].to_dict(),
                    "vs_floor": paired_bootstrap(floor_values[metric], per_query[metric],
                                                 num_resamples=resamples).to_dict(),
                }
                if cell in data["deltas"]:
                    row[metric]["vs_baseline"] = data["deltas"][cell][metric].to_dict()
            rows[cell] = row
        table[task] = rows
    return {task: {_label(cell): row for cell, row in rows.items()} for task, rows in table.items()}


def _label(cell: str) -> str:
    """``"bica psl=0.1 lr=0.0001"`` -> ``"bica (UniCA) + PSL"``: the demo's rows differ only by fusion and PSL."""
    if " psl=" not in cell:
        return cell
    fusion, rest = cell.split(" psl=", 1)
    name = {"concat": "concat (VISTA)", "bica": "bica (UniCA)"}.get(fusion, fusion)
    return name + (" + PSL" if float(rest.split(" ", 1)[0]) > 0 else ", no PSL")


def _cell_per_query(runs_dir: Path, cell: str, seeds: Sequence[int], task: str) -> dict[str, np.ndarray]:
    from unica.apps.ablation import cell_run_dir

    records = [json.loads((cell_run_dir(runs_dir, cell, seed) / "evaluation.json").read_text()) for seed in seeds]
    return {m: np.array([r["per_query"][task][m] for r in records]) for m in METRICS}


def comparison_markdown(table: Mapping[str, Any], baseline_cell: str, num_seeds: int) -> str:
    """One table: rows (task, cell); per metric the value, and for trained cells Δ vs the baseline cell."""
    header = "| task | model | " + " | ".join(LABELS[m] for m in METRICS) + " |"
    lines = [header, "|---|---|" + "---|" * len(METRICS)]
    for task, rows in table.items():
        for cell, row in rows.items():
            cells = []
            for metric in METRICS:
                mean = row[metric]["mean"]
                text = f"{mean['mean']:.3f}" + (f" ± {mean['std']:.3f}" if num_seeds > 1 and mean["std"] else "")
                if "vs_baseline" in row[metric]:
                    d = row[metric]["vs_baseline"]
                    text += f" ({d['delta']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}])"
                cells.append(text)
            lines.append(f"| {task} | {cell} | " + " | ".join(cells) + " |")
    note = (f"Values: mean over {num_seeds} seed(s){' ± std' if num_seeds > 1 else ''}. In brackets: the delta "
            f"against `{baseline_cell}` with a paired-bootstrap 95% CI over queries. R@k = hit@k (a relevant "
            "document in the top k, what M-BEIR and the UniCA paper call Recall@k); MRR@1 equals R@1 with one "
            "relevant document per query.")
    return "\n".join(lines) + "\n\n" + note


def verdicts(table: Mapping[str, Any], baseline_cell: str, metric: str = "hit@5") -> list[str]:
    """Plain sentences: is every trained cell above the floor, and does each cell beat the baseline?"""
    lines = []
    for task, rows in table.items():
        for cell, row in rows.items():
            if "vs_floor" not in row[metric]:
                continue
            d = row[metric]["vs_floor"]
            above = "above" if d["ci_low"] > 0 else "NOT clearly above"
            lines.append(f"{task}, {cell}: {LABELS[metric]} {above} the untrained floor "
                         f"({d['delta']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}])")
    for task, rows in table.items():
        for cell, row in rows.items():
            if "vs_baseline" not in row[metric]:
                continue
            d = row[metric]["vs_baseline"]
            if d["ci_low"] > 0:
                word = "better than"
            elif d["ci_high"] < 0:
                word = "worse than"
            else:
                word = "not distinguishable from"
            lines.append(f"{task}: {cell} is {word} {baseline_cell} on {LABELS[metric]} here "
                         f"({d['delta']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}])")
    return lines


def example_queries(eval_dir: Path) -> list[dict[str, Any]]:
    """Three queries from the test split: text (task 2), image (task 7's scene alone), image + text (task 7)."""
    from eval.harness import load_retrieval_tasks

    tasks = {task.name: task for task in load_retrieval_tasks(eval_dir, list(TASKS))}
    hybrid, edit = tasks["task2"], tasks["task7"]
    text_query, edit_query = hybrid.query_items[0], edit.query_items[0]
    return [
        {"kind": "text", "qid": hybrid.query_ids[0], "item": text_query, "task": hybrid, "relevant": hybrid.relevant[0]},
        # The scene alone against the hybrid documents: its own image + snippet document is the answer.
        {"kind": "image", "qid": edit.query_ids[0] + " (image only)", "item": edit_query["image"], "task": hybrid,
         "relevant": None},
        {"kind": "image + text", "qid": edit.query_ids[0], "item": edit_query, "task": edit,
         "relevant": edit.relevant[0]},
    ]


def check_reload(checkpoint: Path, model: Any, text: str) -> None:
    """The checkpoint works without this package's classes: its remote code through ``AutoModel`` embeds ``text``
    as the ``SentenceTransformer`` ``model`` loaded from it does."""
    import torch
    from transformers import AutoModel, AutoProcessor

    auto = AutoModel.from_pretrained(checkpoint, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(checkpoint, trust_remote_code=True)
    with torch.inference_mode():
        direct = auto(**processor(text=[text])).embeddings.numpy()
    np.testing.assert_allclose(model.encode([text]), direct, atol=1e-5)


def search_examples(model: Any, eval_dir: Path, k: int = 5) -> list[dict[str, Any]]:
    """Encode the three example queries and their task's corpus with the SentenceTransformer ``model``; the top
    ``k`` hits of each."""
    corpora: dict[str, np.ndarray] = {}
    results = []
    for example in example_queries(eval_dir):
        task = example["task"]
        if task.name not in corpora:
            corpora[task.name] = model.encode_document(list(task.corpus_items), batch_size=64)
        query = model.encode_query([example["item"]])
        scores = (corpora[task.name] @ query[0]).astype(np.float64)
        top = np.argsort(-scores, kind="stable")[:k]
        relevant = set(example["relevant"] or [])
        query_text, query_image = _parts(example["item"])
        hits = []
        for position in top:
            text, image = _parts(task.corpus_items[int(position)])
            did = task.corpus_ids[int(position)]
            # The image query has no qrels: the documents showing that very image are its answer.
            same_image = (example["relevant"] is None and image is not None and query_image is not None
                          and image.tobytes() == query_image.tobytes())
            hits.append({"did": did, "text": text, "image": image, "score": float(scores[position]),
                         "relevant": did in relevant or same_image})
        results.append({"kind": example["kind"], "qid": example["qid"], "task": task.name, "text": query_text,
                        "image": query_image, "hits": hits})
    return results


def _parts(item: Any) -> tuple[str | None, Any]:
    """(text, image) of a processor item: a str, an image or {"text", "image"}."""
    if isinstance(item, str):
        return item, None
    if isinstance(item, dict):
        return item.get("text"), item.get("image")
    return None, item


def contact_sheet(examples: Sequence[Mapping[str, Any]], path: Path, thumb: int = 96) -> Path:
    """A PNG: one row per example query (the query, then its hits), relevant hits framed in green."""
    from PIL import Image, ImageDraw

    from dataset_builders.atomic import atomic_path

    columns = 1 + max(len(example["hits"]) for example in examples)
    cell_w, cell_h, label_h = thumb + 16, thumb + 56, 14
    sheet = Image.new("RGB", (columns * cell_w + 8, len(examples) * (cell_h + label_h) + 8), "white")
    draw = ImageDraw.Draw(sheet)

    def tile(x: int, y: int, image: Any, text: str | None, caption: str, frame: str | None) -> None:
        if image is not None:
            sheet.paste(image.convert("RGB").resize((thumb, thumb), Image.NEAREST), (x, y))
        else:
            draw.rectangle((x, y, x + thumb - 1, y + thumb - 1), fill=(235, 235, 235))
        if frame:
            draw.rectangle((x - 3, y - 3, x + thumb + 2, y + thumb + 2), outline=frame, width=3)
        lines = [caption] + _wrap(text or "", 17)[:3]
        for number, line in enumerate(lines):
            draw.text((x, y + thumb + 4 + 12 * number), line, fill="black")

    for row, example in enumerate(examples):
        y = 8 + row * (cell_h + label_h)
        draw.text((8, y), f"{example['kind']} query {example['qid']} -> {example['task']} corpus", fill="black")
        y += label_h
        tile(8, y, example["image"], example["text"], "query", "#3060d0")
        for column, hit in enumerate(example["hits"], start=1):
            tile(8 + column * cell_w, y, hit["image"], hit["text"], f"{column}. {hit['score']:.3f}",
                 "#20a040" if hit["relevant"] else None)
    with atomic_path(path) as temporary:
        sheet.save(temporary, format="PNG")
    return path


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + ([line] if line else [])


def examples_text(examples: Sequence[Mapping[str, Any]]) -> str:
    lines = []
    for example in examples:
        query = example["text"] if example["text"] else ""
        lines.append(f"{example['kind']} query {example['qid']}"
                     + (f" {query!r}" if query else "") + (" + its image" if example["image"] is not None and query
                                                           else "") + f" -> {example['task']} corpus:")
        for rank, hit in enumerate(example["hits"], start=1):
            what = repr(hit["text"]) if hit["text"] else "(image only)"
            if hit["text"] and hit["image"] is not None:
                what += " + image"
            lines.append(f"  {rank}. {hit['did']}  {hit['score']:.3f}  {what}" + ("  <- relevant" if hit["relevant"]
                                                                                     else ""))
    return "\n".join(lines)


def run(out: Path, quick: bool = False, seeds: Sequence[int] = (0,), max_steps: int | None = None,
        psl_ablation: bool = False) -> int:
    from eval.cache import fingerprint_model_dir
    from eval.report import write_results_json
    from unica.apps.ablation import cell_name, cell_run_dir, run_ablation
    from unica.apps.evaluate import evaluate_checkpoint
    from unica.card import write_model_card

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = demo_config(out, quick=quick, seeds=seeds, max_steps=max_steps, psl_ablation=psl_ablation)
    steps = config["train"]["training"]["max_steps"]
    logger.info("demo: concat (VISTA) vs bica (UniCA) from the same initial weights, %d steps each, seed(s) %s%s",
                steps, list(seeds), ", PSL on and off" if psl_ablation else f", PSL weight {PSL_WEIGHT}")
    eval_dir = prepare_data(config, out)
    floors = evaluate_floor(config, out)
    summary = run_ablation(config, out / "ablation")
    baseline_cell = cell_name(BASELINE, config["baseline"]["psl_weight"], config["train"]["training"]["learning_rate"])
    table = comparison(summary, floors, out / "ablation", config)
    markdown = comparison_markdown(table, _label(baseline_cell), len(seeds))
    findings = verdicts(table, _label(baseline_cell))

    # The UniCA model of the first seed becomes the demo's checkpoint.
    bica_cell = cell_name("bica", PSL_WEIGHT, config["train"]["training"]["learning_rate"])
    checkpoint = out / "unica-mini"
    if checkpoint.exists():
        shutil.rmtree(checkpoint)
    shutil.copytree(cell_run_dir(out / "ablation", bica_cell, seeds[0]) / "final", checkpoint)
    results_dir = out / "results"
    evaluate_checkpoint(checkpoint, eval_dir, out_dir=results_dir, tasks=list(TASKS), k_values=(1, 5, 10),
                        show_progress=False)
    write_model_card(checkpoint, results_path=results_dir / "results.json", ablation_path=out / "ablation" /
                     "ablation.json", checkpoint_fingerprint=fingerprint_model_dir(checkpoint),
                     training_data=f"synthetic scenes (`unica demo`: {config['train']['data']['num_scenes']} "
                                   "scenes of coloured shapes, 32 px, generated offline)")

    from sentence_transformers import SentenceTransformer

    st_model = SentenceTransformer(str(checkpoint), trust_remote_code=True, device="cpu")
    check_reload(checkpoint, st_model, "a large red circle")
    examples = search_examples(st_model, eval_dir)
    sheet = contact_sheet(examples, results_dir / "examples.png")
    write_results_json({"comparison": table, "markdown": markdown, "findings": findings, "settings": config,
                        "examples": [{**e, "image": None, "hits": [{**h, "image": None} for h in e["hits"]]}
                                     for e in examples]}, results_dir / "demo.json")

    print(f"\nRetrieval on the scenes test split ({len(seeds)} seed(s), {steps} steps per model):\n")
    print(markdown)
    print("\n" + "\n".join(findings))
    print("\nExample queries with the trained bica model (top 5):\n" + examples_text(examples))
    print(f"\ncheckpoint: {checkpoint}\nresults: {results_dir / 'demo.json'}, {results_dir / 'results.json'}\n"
          f"contact sheet: {sheet}\nablation: {out / 'ablation' / 'ablation.md'}")
    return 0
