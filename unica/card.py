"""Model card: ``model_card.md`` (the template) rendered into a checkpoint's ``README.md``.

Every number comes from ``results.json`` (written by ``unica evaluate``) or an ablation JSON (written
by ``unica ablate``); a metric or section with no measurement says "not measured" instead.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from dataset_builders.atomic import atomic_write

TEMPLATE = Path(__file__).parent / "templates" / "model_card.md"
_PLACEHOLDER = re.compile(r"\{\{\s*([a-z_]+)\s*\}\}")
# The paper's protocol: Recall@5, Recall@10 (M-BEIR's "Recall" = our hit@k) and MRR@1.
CARD_METRICS = ("hit@5", "hit@10", "mrr@1", "recall@5", "recall@10", "ndcg@10")
NOT_MEASURED = "not measured"


# What each JSON input must hold, for the error message when it holds something else.
_EXPECTED = {
    "results": 'a JSON object as `unica evaluate` writes it: {"tasks": {task: {"hit@5": number, ...}}, ...}',
    "ablation": 'a JSON object as `unica ablate` writes it (ablation.json): {"markdown": "...", "tasks": {...}}',
    "training record": 'a JSON object as the trainer writes it: {"psl_weight": ..., "temperature": ...}',
    "checkpoint config": "a JSON object (a model config)",
}


def _read_json(path: str | os.PathLike | None, what: str) -> dict | None:
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {str(path)!r} does not exist; run the command that writes it first")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{what} file {str(path)!r} is not valid JSON ({error.msg})") from error
    if not isinstance(data, dict):
        raise ValueError(f"{what} file {str(path)!r} holds a JSON {type(data).__name__}; expected {_EXPECTED[what]}")
    return data


def _check_results(results: Mapping[str, Any], path: str | os.PathLike | None) -> None:
    """``results["tasks"]``, when present, must map task names to dicts of metrics; ``"training"`` be a dict."""
    bad = None
    tasks, training = results.get("tasks"), results.get("training")
    if tasks is not None and not isinstance(tasks, Mapping):
        bad = f'"tasks" is a JSON {type(tasks).__name__}'
    elif tasks is not None:
        task, values = next(((t, v) for t, v in tasks.items() if not isinstance(v, Mapping)), (None, None))
        if task is not None:
            bad = f'"tasks" -> {task!r} is a JSON {type(values).__name__}'
    if bad is None and training is not None and not isinstance(training, Mapping):
        bad = f'"training" is a JSON {type(training).__name__}'
    if bad is not None:
        raise ValueError(f"results file {str(path)!r}: {bad}; expected {_EXPECTED['results']}")


def _hub_id(name: str | None) -> str | None:
    """A Hub id (org/name) recorded in a sub-config, or None for local paths and presets."""
    if name and re.match(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$", name) and not os.path.exists(name):
        return name
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, Mapping):  # {"mean": ..., "std": ...} summaries
        value = value.get("mean")
    return float(value) if isinstance(value, (int, float)) else None


def results_markdown(tasks: Mapping[str, Mapping[str, Any]] | None) -> str:
    """A table of the measured per-task metrics; columns that no task measured are left out."""
    if not tasks:
        return f"Evaluation: {NOT_MEASURED} (no results.json was given to `unica card`)."
    columns = [m for m in CARD_METRICS if any(_number(values.get(m)) is not None for values in tasks.values())]
    if not columns:
        return f"Evaluation: {NOT_MEASURED} (results.json has none of {', '.join(CARD_METRICS)})."
    lines = ["| task | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for task, values in tasks.items():
        cells = [f"{v:.4f}" if (v := _number(values.get(m))) is not None else NOT_MEASURED for m in columns]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _model_index(name: str, tasks: Mapping[str, Mapping[str, Any]] | None) -> list[dict]:
    results = []
    for task, values in (tasks or {}).items():
        metrics = [
            {"type": metric.replace("@", "_at_"), "name": metric, "value": round(value, 6)}
            for metric in CARD_METRICS
            if (value := _number(values.get(metric))) is not None
        ]
        if metrics:
            results.append({"task": {"type": "retrieval", "name": "Retrieval"},
                            "dataset": {"name": task, "type": task}, "metrics": metrics})
    return [{"name": name, "results": results}] if results else []


def render_model_card(
    checkpoint: str | os.PathLike,
    results_path: str | os.PathLike | None = None,
    ablation_path: str | os.PathLike | None = None,
    repo_id: str | None = None,
    training_data: str | None = None,
    license_name: str = "apache-2.0",
    name_or_path: str | None = None,
    checkpoint_fingerprint: str | None = None,
) -> str:
    """Render the model card for a checkpoint folder from its config and measured results.

    ``name_or_path`` is where users load the model from when there is no ``repo_id`` (default: the folder;
    a save that renders the card in a temporary folder passes the final one). With
    ``checkpoint_fingerprint`` (``eval.cache.fingerprint_model_dir`` of the folder), results measured on
    another model are refused: ``results.json`` records the fingerprint of the checkpoint it evaluated.

    Example:

    ```python
    >>> card = render_model_card("./my-model", results_path="results/results.json", repo_id="my-org/unica-base")
    ```
    """
    folder = Path(checkpoint)
    config = _read_json(folder / "config.json", "checkpoint config")
    if config is None or config.get("model_type") != "unica":
        raise ValueError(f"{str(folder)!r} is not a UniCA checkpoint (config.json model_type is not 'unica')")
    results = _read_json(results_path, "results") or {}
    _check_results(results, results_path)
    measured = (results.get("settings") or {}).get("model_fingerprint")
    if checkpoint_fingerprint is not None and measured is not None and measured != checkpoint_fingerprint:
        raise ValueError(
            f"results file {str(results_path)!r} was measured on another model (fingerprint {measured[:12]}...) than "
            f"{str(folder)!r} ({checkpoint_fingerprint[:12]}...); evaluate this checkpoint (`unica evaluate "
            f"{folder} ...`) and pass that results.json"
        )
    record = folder / "training_record.json"  # written by the trainer's save_model, when it trained this folder
    if "training" not in results and record.is_file():
        results["training"] = _read_json(record, "training record")
    ablation = _read_json(ablation_path, "ablation") or {}
    tasks = results.get("tasks")
    text_cfg, vision_cfg = config["text_config"], config["vision_config"]
    location = name_or_path or str(folder)
    name = repo_id.split("/")[-1] if repo_id else Path(location).name
    components = config.get("components") or {}
    origin = components.get("origin") or {}
    names = [(components.get(part) or {}).get("name") for part in ("text", "vision")]
    names += [text_cfg.get("_name_or_path"), vision_cfg.get("_name_or_path"), origin.get("hub_id")]
    base_models = list(dict.fromkeys(m for m in map(_hub_id, names) if m))
    training = results.get("training") or {}
    trained = bool(training)
    metadata: dict[str, Any] = {
        "library_name": "sentence-transformers",
        "pipeline_tag": "sentence-similarity",
        "license": origin.get("license") or license_name,
        "language": ["en"],
        "tags": ["unica", "multimodal", "retrieval", "feature-extraction", "sentence-transformers", "transformers",
                 "custom_code", f"fusion-{config['fusion']}"],
    }
    if base_models:
        metadata["base_model"] = base_models
    datasets = results.get("datasets") or ([training_data] if training_data and _hub_id(training_data) else None)
    if datasets:
        metadata["datasets"] = datasets
    model_index = _model_index(name, tasks)
    if model_index:
        metadata["model-index"] = model_index

    fusion = config["fusion"]
    values = {
        "metadata": yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True).strip(),
        "model_name": name,
        "repo_id": repo_id or location,
        "vision_model": vision_cfg.get("model_type", "vision"),
        "text_model": text_cfg.get("model_type", "text"),
        "fusion": fusion,
        "fusion_description": "Bi-directional Cross-Attention (Bi-CA)" if fusion == "bica"
        else "VISTA-style concatenation (the baseline)",
        "bica_detail": f" ({config['bica_layers']} Bi-CA layer(s), {config['bica_heads']} heads, zero-initialised "
        "gates)" if fusion == "bica" else "",
        "hidden_size": str(text_cfg.get("hidden_size")),
        "pooling": config["pooling"].upper() if config["pooling"] == "cls" else config["pooling"],
        "max_text_length": str(config["max_text_length"]),
        "components": components_markdown(components, config),
        "training_section": training_markdown(training, training_data, config),
        "metric_note": "hit@k is 1 if any relevant document is in the top k (what M-BEIR / UniIR and the UniCA paper "
        "report as Recall@k); recall@k is the share of relevant documents in the top k; mrr@1 equals hit@1.",
        "results_table": results_markdown(tasks),
        "ablation_table": ("These rows come from separate training runs (the ablation's own models, trained from the "
                           "same starting weights), not from this checkpoint.\n\n" + ablation["markdown"])
        if ablation.get("markdown") else f"Ablations: {NOT_MEASURED} (no ablation JSON was given).",
        "language_note": "Fine-tuned and evaluated on English text only." if trained else
        "Not fine-tuned by UniCA: the text encoder keeps its own training languages, and parts marked randomly "
        "initialised above make image embeddings meaningless until the model is trained.",
    }
    template = TEMPLATE.read_text(encoding="utf-8")
    unknown = sorted(set(_PLACEHOLDER.findall(template)) - set(values))
    if unknown:
        raise ValueError(f"model card template {TEMPLATE} uses unknown placeholders {unknown}")
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], template)


def components_markdown(components: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    """Bullets: each base component, whether its weights were pretrained or random, and a converted model's origin."""
    if not components:
        return "- Base components: not recorded in this checkpoint's config (built before `components` existed)."
    lines = []
    for part, label in (("text", "Text encoder"), ("vision", "Vision tower")):
        source = components.get(part) or {}
        if not source:
            continue
        state = "pretrained weights" if source.get("pretrained") else "randomly initialised (a preset shape, no " \
            "pretrained weights)"
        note = f"; {source['note']}" if source.get("note") else ""
        license_note = f"; licence {source['license']}" if source.get("license") else ""
        shape = ""
        if part == "vision":
            vision = config.get("vision_config") or {}
            shape = (f", {vision.get('num_hidden_layers')} layers of {vision.get('hidden_size')}, "
                     f"{config.get('image_size') or vision.get('image_size')} px images")
        lines.append(f"- {label}: `{source.get('name')}` ({state}{shape}{note}{license_note})")
    origin = components.get("origin")
    if origin:
        lines.append(f"- Converted from {origin.get('name')}: weights `{origin.get('weights')}`"
                     + (f" (licence {origin['license']}; this checkpoint keeps it)" if origin.get("license") else ""))
    return "\n".join(lines)


def training_markdown(training: Mapping[str, Any], training_data: str | None, config: Mapping[str, Any]) -> str:
    """What this checkpoint was trained on and how long, from its training record; says so when it was not."""
    if not training:
        data = f" Data it is meant for: {training_data}." if training_data else ""
        return ("This checkpoint was not fine-tuned by UniCA's trainer (it has no training record): its weights are "
                f"the base components listed above.{data}")
    steps = training.get("steps")
    rows = training.get("train_rows")
    length = (f"{steps} optimiser steps" if steps is not None else "steps not recorded") + (
        f" over {rows} training rows ({training.get('epochs')} epochs)" if rows else "")
    objective = training.get("objective") or (
        f"InfoNCE (temperature {training.get('temperature', config.get('contrastive_temperature'))}) + PSL weight "
        f"{training.get('psl_weight', NOT_MEASURED)}")
    lines = [
        f"- Data: {training_data or training.get('data') or 'not recorded'}",
        f"- Length: {length}, batch {training.get('per_device_train_batch_size', '?')} per device x "
        f"{training.get('world_size', 1)} process(es)",
        f"- Objective: {objective}, temperature {training.get('temperature', config.get('contrastive_temperature'))}, "
        f"{training.get('hard_negatives', 0)} hard negative(s) per query",
        f"- Learning rate: {training.get('learning_rate', 'not recorded')}"
        + (f" (fusion layers and projection: {training['fusion_learning_rate']})"
           if training.get("fusion_learning_rate") else ""),
        f"- Fusion: `{config.get('fusion')}`",
    ]
    return "\n".join(lines)


def write_model_card(checkpoint: str | os.PathLike, **kwargs) -> Path:
    """Render the card and write it as the checkpoint's ``README.md`` (atomically, via a unique temporary)."""
    text = render_model_card(checkpoint, **kwargs)
    return atomic_write(Path(checkpoint) / "README.md", text)
