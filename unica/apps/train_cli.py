"""``unica train --config FILE.yaml``: fine-tune UniCA with :class:`unica.trainer.UniCATrainer`.

The config (YAML or JSON) has these sections:

```yaml
init:                    # build a model from components (or `model: path/to/checkpoint` instead)
  text: default          # the embedded all-MiniLM-L6-v2, or a BERT-family folder / Hub id
  vision: vit-micro      # a preset or a CLIP / SigLIP / ViT folder / Hub id
  fusion: bica           # ... and any other UniCAConfig field, vision_config_overrides, max_text_length
  seed: 0                # seed for the randomly initialised parts
# model:                 # or a checkpoint folder: `model: path`, or a mapping that also switches its fusion:
#   path: ./vista-base   #   e.g. a converted VISTA (concat) checkpoint ...
#   fusion: bica         #   ... gets zero-gated Bi-CA layers (it computes the same until trained); concat drops them
#   bica_layers: 1
data:
  builder: scenes        # a builder (synthetic scenes, generated into output_dir/scenes-data if needed),
  # builder: mbeir       # or an M-BEIR-format root read as it is (every query of the split; optional
  # root: ./M-BEIR       #   query_files / pool_files relative to it, skip_missing), no UMR-S10 export needed,
  # path: rows/          # or a `save_to_disk` folder, an exported Parquet folder, or a JSONL of records
  split: train
  eval_split: test       # optional evaluation rows (eval_path: another folder / JSONL)
training:                # every UniCATrainingArguments / TrainingArguments field
  output_dir: runs/scenes
  max_steps: 20
  hard_negatives: 1
```

Numbers and booleans in ``training:`` are checked against the argument's type: ``learning_rate: 5e-5``
(a string to YAML 1.1) becomes a float, ``max_steps: "10"`` an int, and ``max_steps: ten`` an error.

Run it in one process, or data-parallel with ``torchrun --nproc_per_node 2 -m unica train ...``
(gloo on CPU; negatives are gathered across processes). ``--resume-from-checkpoint latest`` resumes
from the newest *complete* ``checkpoint-N`` in ``output_dir`` (one whose ``trainer_state.json`` was
written to the end).
"""

from __future__ import annotations

import argparse
import difflib
import functools
import gc
import inspect
import json
import logging
import math
import os
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

logger = logging.getLogger("unica")

__all__ = ["BUILDERS", "build_trainer", "find_last_checkpoint", "load_config", "register", "run_train"]

SECTIONS = ("init", "model", "data", "training")
INIT_EXTRA_KEYS = ("text", "vision", "seed", "vision_config_overrides", "max_text_length")
MODEL_KEYS = ("path", "fusion", "bica_layers")  # the mapping form of `model:`
# `data:` keys: those every form takes, then those of each form (a builder, or `path`).
DATA_COMMON_KEYS = ("split", "eval_split", "eval_path", "config", "max_rows", "max_eval_rows", "image_root")
DATA_FORM_KEYS = {
    "scenes": ("builder", "root", "num_scenes", "image_size", "seed", "task_probability"),
    "mbeir": ("builder", "root", "query_files", "pool_files", "skip_missing"),
    "path": ("path",),
}
DATA_KEYS = tuple(dict.fromkeys(DATA_COMMON_KEYS + sum(DATA_FORM_KEYS.values(), ())))
BUILDERS = ("scenes", "mbeir")
# Files a checkpoint-N folder holds once the Trainer has finished writing it (trainer_state.json is last).
COMPLETE_CHECKPOINT_FILES = ("config.json", "model.safetensors", "trainer_state.json")
_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")


def register(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser(
        "train", help="fine-tune a UniCA model (InfoNCE + PSL) from a YAML / JSON config",
        description="Fine-tune UniCA with the Transformers Trainer. See examples/train_scenes.yaml.",
    )
    train.add_argument("--config", required=True, help="YAML or JSON file with init|model, data and training")
    train.add_argument(
        "--resume-from-checkpoint", metavar="latest|PATH",
        help="resume from the newest complete checkpoint-N in output_dir ('latest') or from a checkpoint folder",
    )
    train.set_defaults(func=run_train)


# ---------------------------------------------------------------------- config
def check_keys(section: Mapping[str, Any], valid: list[str] | tuple[str, ...], where: str) -> None:
    """``ValueError`` naming every key of ``section`` not in ``valid`` (with the closest valid one) and ``where``."""
    unknown = [key for key in section if key not in valid]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(str(key), valid, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ValueError(f"unknown key(s) {', '.join(hints)} in {where}; valid keys: {', '.join(sorted(valid))}")


def check_model_section(section: Any, where: str) -> None:
    """``model:`` is a checkpoint folder path, or a mapping ``{path, fusion, bica_layers}`` (``ValueError`` otherwise)."""
    from configuration_unica import FUSIONS

    if isinstance(section, str):
        return
    if not isinstance(section, Mapping) or not isinstance(section.get("path"), str):
        raise ValueError(f"{where} must be a checkpoint folder path or a mapping with 'path' (and optionally 'fusion', "
                         f"'bica_layers'), got {section!r}")
    check_keys(section, MODEL_KEYS, where)
    if "fusion" in section and section["fusion"] not in FUSIONS:
        raise ValueError(f"fusion in {where} must be one of {FUSIONS}, got {section['fusion']!r}")
    layers = section.get("bica_layers")
    if layers is not None and (not isinstance(layers, int) or isinstance(layers, bool) or layers < 1):
        raise ValueError(f"bica_layers in {where} must be a positive integer, got {layers!r}")
    if layers is not None and "fusion" not in section:
        raise ValueError(f"bica_layers in {where} applies with fusion: bica; add fusion: bica")


def training_argument_names() -> list[str]:
    """Every field ``training:`` accepts (those of :class:`UniCATrainingArguments`)."""
    from unica.trainer import UniCATrainingArguments

    return [f.name for f in fields(UniCATrainingArguments) if f.init]


@functools.lru_cache(maxsize=1)
def training_argument_kinds() -> dict[str, tuple[type, bool]]:
    """``{field: (int | float | bool, None allowed)}`` for the numeric and boolean training arguments.

    Fields of other types (strings, enums, unions with ``str``, lists, dicts) are not in it: their
    values go to ``UniCATrainingArguments`` unchanged.
    """
    from unica.trainer import UniCATrainingArguments

    try:
        hints = typing.get_type_hints(UniCATrainingArguments)
    except Exception:  # an annotation transformers cannot resolve here: use the unresolved ones (str = skipped)
        hints = {f.name: f.type for f in fields(UniCATrainingArguments)}
    kinds = {}
    for name, hint in hints.items():
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        members = typing.get_args(hint) if union else (hint,)
        concrete = [member for member in members if member is not type(None)]
        if len(concrete) == 1 and concrete[0] in (int, float, bool):
            kinds[name] = (concrete[0], len(concrete) < len(members))
    return kinds


_EXPECTED = {int: "an integer (e.g. 10)", float: "a number (e.g. 5e-5)", bool: "true or false"}


def _coerce(value: Any, kind: type) -> Any:
    """``value`` as ``kind`` (int, float or bool); raises ``ValueError`` if it is not one."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise ValueError(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text)
        except ValueError:
            value = float(text)  # "5e-5", "1e3"; raises ValueError for anything else
        if kind is float:
            value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(value)
    if kind is int and isinstance(value, float):
        if not value.is_integer():
            raise ValueError(value)
        return int(value)
    return value


def coerce_training_values(section: dict[str, Any], where: str) -> None:
    """Turn the numeric and boolean values of ``training:`` into their argument's type, in place.

    PyYAML reads ``5e-5`` (no dot) and quoted numbers as strings: a float field accepts any number or
    numeric string, an int field integers and integral numbers / strings (``"10"``, ``1e3``), a bool
    field only true / false. Anything else raises ``ValueError`` naming the key, value and type.
    """
    kinds = training_argument_kinds()
    for key, value in section.items():
        if key not in kinds:
            continue
        kind, optional = kinds[key]
        if value is None and optional:
            continue
        try:
            section[key] = _coerce(value, kind)
        except ValueError:
            expected = _EXPECTED[kind] + (" or null" if optional else "")
            raise ValueError(f"{where}: {key}={value!r} is not {expected}") from None


def init_keys() -> list[str]:
    """Every key ``init:`` accepts: the components, the seed and the ``UniCAConfig`` fields."""
    from configuration_unica import UniCAConfig

    config_fields = [
        name for name, parameter in inspect.signature(UniCAConfig.__init__).parameters.items()
        if name not in ("self", "text_config", "vision_config") and parameter.kind is parameter.POSITIONAL_OR_KEYWORD
    ]
    return sorted(set(config_fields) | set(INIT_EXTRA_KEYS))


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a training config; errors name the unknown keys and list the valid ones.

    Example:
        >>> config = load_config("examples/train_scenes.yaml")
        >>> sorted(config)
        ['data', 'init', 'training']
    """
    config, file = read_config(path, SECTIONS)
    if "data" not in config:
        raise ValueError(f"config {str(file)!r} has no 'data' section (builder: scenes, or path: a dataset folder / JSONL)")
    check_sections(config, {"init": init_keys(), "training": training_argument_names()}, file)
    if "model" in config:
        check_model_section(config["model"], f"'model' in {str(file)!r}")
    training = config.get("training") or {}
    if "output_dir" not in training:
        raise ValueError(f"section 'training' of {str(file)!r} needs output_dir (where checkpoints go)")
    check_data_section(config["data"], f"section 'data' of {str(file)!r}")
    return config


def read_config(path: str | os.PathLike, sections: tuple[str, ...]) -> tuple[dict[str, Any], Path]:
    """``(config, file)``: the mapping in a YAML / JSON config file, checked to hold only ``sections`` and exactly one
    of ``init`` / ``model`` (``unica train`` and ``unica pretrain``); errors name the file."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"config file {str(file)!r} does not exist")
    text = file.read_text(encoding="utf-8")
    try:
        if file.suffix.lower() == ".json":
            config = json.loads(text)
        else:
            import yaml

            config = yaml.safe_load(text)
    except Exception as error:  # yaml.YAMLError / json.JSONDecodeError: report the file and the parser's words
        raise ValueError(f"config file {str(file)!r} is not valid {file.suffix.lstrip('.') or 'YAML'}: {error}") from error
    if not isinstance(config, dict):
        raise ValueError(f"config file {str(file)!r} must hold a mapping with sections {', '.join(sections)}")
    check_keys(config, sections, f"config {str(file)!r}")
    if ("init" in config) == ("model" in config):
        raise ValueError(f"config {str(file)!r} needs exactly one of 'init' (components) or 'model' (a checkpoint folder)")
    return config, file


def check_sections(config: dict[str, Any], valid: Mapping[str, list[str]], file: Path) -> None:
    """Each section of ``valid`` that ``config`` has is a mapping of its valid keys only; ``training:``'s values are
    coerced to the argument types (:func:`coerce_training_values`). ``ValueError`` naming the section and file."""
    for name, keys in valid.items():
        section = config.get(name)
        if section is None:
            continue
        if not isinstance(section, dict):
            raise ValueError(f"section {name!r} of {str(file)!r} must be a mapping, got {type(section).__name__}")
        check_keys(section, keys, f"section {name!r} of {str(file)!r}")
    if isinstance(config.get("training"), dict):
        coerce_training_values(config["training"], f"section 'training' of {str(file)!r}")


def check_data_section(data: Mapping[str, Any], where: str) -> None:
    """``data:`` has exactly one of ``builder`` or ``path``, and only the keys of that form (``ValueError``)."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{where} must be a mapping, got {type(data).__name__}")
    if ("builder" in data) == ("path" in data):
        raise ValueError(f"{where} needs exactly one of 'builder' ({', '.join(BUILDERS)}) or 'path'")
    form = data.get("builder", "path")
    if form not in BUILDERS and form != "path":
        raise ValueError(f"unknown data builder {form!r} in {where}; available: {', '.join(BUILDERS)}")
    label = f"builder: {form}" if "builder" in data else "path"
    check_keys(data, DATA_COMMON_KEYS + DATA_FORM_KEYS[form], f"{where} ({label})")
    if form == "mbeir" and not isinstance(data.get("root"), str):
        raise ValueError(
            f"{where} (builder: mbeir) needs root: the folder of M-BEIR-format data (query/, cand_pool/, "
            f"mbeir_images/), got {data.get('root')!r}"
        )
    for key in ("query_files", "pool_files"):
        value = data.get(key)
        if value is not None and not (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
            raise ValueError(f"{key} in {where} must be a list of file paths (relative to root), got {value!r}")


# ---------------------------------------------------------------------- data
def _load_jsonl(file: Path) -> Any:
    import datasets

    from dataset_builders.jsonl import iter_json_objects

    records = [record for _, record in iter_json_objects(file)]
    if not records:
        raise ValueError(f"{str(file)!r} holds no records")
    return datasets.Dataset.from_list(records)


def _load_path(path: str, split: str, config_name: str | None) -> Any:
    import datasets

    location = Path(path)
    if not location.exists():
        raise FileNotFoundError(f"data path {path!r} does not exist")
    if location.is_file():
        if location.suffix.lower() not in (".jsonl", ".json"):
            raise ValueError(f"data path {path!r} is a file but not a .jsonl of records; pass a dataset folder or JSONL")
        return _load_jsonl(location)
    if any((location / name).is_file() for name in ("dataset_info.json", "state.json", "dataset_dict.json")):
        loaded = datasets.load_from_disk(str(location))
    else:
        loaded = datasets.load_dataset(str(location), config_name)
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise ValueError(f"data path {path!r} has splits {sorted(loaded)}, not {split!r}; set data.split")
        loaded = loaded[split]
    return loaded


def scenes_root(data: Mapping[str, Any], output_dir: str) -> Path:
    from dataset_builders import generate_scenes
    from dataset_builders.scenes import check_task_probability

    root = Path(data.get("root") or Path(output_dir) / "scenes-data")
    wanted = {"num_scenes": int(data.get("num_scenes", 200)), "seed": int(data.get("seed", 0)),
              "image_size": int(data.get("image_size", 32))}
    probability = check_task_probability(data.get("task_probability"))
    metadata = root / "metadata.json"
    if metadata.is_file():
        found = json.loads(metadata.read_text(encoding="utf-8"))
        # Roots generated before task_probability was recorded used the default probabilities.
        recorded = check_task_probability(found.get("task_probability"))
        if recorded != probability:
            found["task_probability"], wanted["task_probability"] = recorded, probability
        different = {k: (found.get(k), v) for k, v in wanted.items() if found.get(k) != v}
        if different:
            raise ValueError(
                f"scenes in {str(root)!r} were generated with other settings (found, wanted): {different}; "
                "set data.root to another folder or delete it"
            )
        return root
    logger.info("generating %d synthetic scenes into %s", wanted["num_scenes"], root)
    generate_scenes(root, progress=False, task_probability=probability, **wanted)
    return root


def mbeir_rows(data: Mapping[str, Any], split: str, train: bool = True) -> Any:
    """Training rows of every query of ``split`` in the M-BEIR root ``data['root']``
    (:func:`dataset_builders.umr.load_training_rows`, the reader ``unica build-dataset umr-s10`` uses).

    ``query_files`` / ``pool_files`` (paths relative to the root) apply to the training split; the
    evaluation split reads ``query/<split>/*.jsonl`` and that split's pool.
    """
    from dataset_builders import load_training_rows

    root = Path(data["root"])
    files = {key: [root / name for name in data[key]] if train and data.get(key) else None
             for key in ("query_files", "pool_files")}
    return load_training_rows(root, split=split, skip_missing=bool(data.get("skip_missing", False)), **files)


def load_data(data: Mapping[str, Any], output_dir: str) -> tuple[Any, Any, Path | None]:
    """(train rows, eval rows or None, image root for relative paths) from the ``data:`` section."""
    split = data.get("split", "train")
    image_root = Path(data["image_root"]) if data.get("image_root") else None
    if "builder" in data:
        check_data_section(data, "section 'data'")
        if data["builder"] == "mbeir":
            train = mbeir_rows(data, split)
            evaluation = mbeir_rows(data, data["eval_split"], train=False) if data.get("eval_split") else None
        else:
            from dataset_builders import load_scenes

            root = scenes_root(data, output_dir)
            train = load_scenes(root, split=split)
            evaluation = load_scenes(root, split=data["eval_split"]) if data.get("eval_split") else None
        if data.get("eval_path"):
            evaluation = _load_path(data["eval_path"], data.get("eval_split", "test"), data.get("config"))
    else:
        train = _load_path(data["path"], split, data.get("config"))
        evaluation = None
        if data.get("eval_path") or data.get("eval_split"):
            evaluation = _load_path(data.get("eval_path") or data["path"], data.get("eval_split", "test"), data.get("config"))
        if image_root is None and Path(data["path"]).is_file():
            image_root = Path(data["path"]).resolve().parent
    for name, key in (("train", "max_rows"), ("eval", "max_eval_rows")):
        limit = data.get(key)
        dataset = train if name == "train" else evaluation
        if limit is not None and dataset is not None and len(dataset) > int(limit):
            dataset = dataset.select(range(int(limit)))
            train, evaluation = (dataset, evaluation) if name == "train" else (train, dataset)
    if len(train) == 0:
        raise ValueError("the training data has no rows")
    return train, evaluation, image_root


# ---------------------------------------------------------------------- model
def model_section(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``model:`` section as a mapping (``{"path": ...}`` for the plain path form), None without one."""
    if "model" not in config:
        return None
    section = config["model"]
    return dict(section) if isinstance(section, Mapping) else {"path": section}


def load_model(config: Mapping[str, Any]) -> tuple[Any, Any]:
    """(model, processor) from ``init:`` (components) or ``model:`` (a checkpoint folder)."""
    import torch

    from unica.checkpoint import default_text_encoder, init_model, load_checkpoint

    section = model_section(config)
    if section is not None:
        model, processor = load_checkpoint(section["path"])
        if "fusion" in section:
            from unica.fusion import set_fusion

            set_fusion(model, section["fusion"], section.get("bica_layers"))
        return model, processor
    init = dict(config["init"] or {})
    text = init.pop("text", "default")
    if text in (None, "default"):
        text = default_text_encoder()
    vision = init.pop("vision", "vit-micro")
    torch.manual_seed(int(init.pop("seed", 0)))
    return init_model(text, vision, **init)


# ---------------------------------------------------------------------- checkpoints
def checkpoint_problem(folder: str | os.PathLike) -> str | None:
    """Why a ``checkpoint-N`` folder cannot be resumed from (a missing file, or a ``trainer_state.json``
    that is not a complete Trainer state, as a save killed while writing it leaves), or None."""
    folder = Path(folder)
    missing = [name for name in COMPLETE_CHECKPOINT_FILES if not (folder / name).is_file()]
    if missing:
        return f"incomplete (missing {', '.join(missing)})"
    state_file = folder / "trainer_state.json"
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"{state_file} is not readable JSON ({error}); the save that wrote it was interrupted"
    if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
        return f"{state_file} is not a Trainer state (no integer global_step)"
    return None


def is_complete_checkpoint(folder: str | os.PathLike) -> bool:
    """Whether a ``checkpoint-N`` folder holds everything the Trainer writes (trainer_state.json comes last)
    and its ``trainer_state.json`` was written to the end."""
    return checkpoint_problem(folder) is None


def find_last_checkpoint(output_dir: str | os.PathLike) -> Path:
    """The newest complete ``checkpoint-N`` in ``output_dir``; incomplete ones (a crash mid-save: missing
    files or a truncated ``trainer_state.json``) are skipped with a warning.

    Example:
        >>> find_last_checkpoint("runs/scenes").name
        'checkpoint-20'
    """
    folder = Path(output_dir)
    candidates = []
    if folder.is_dir():
        for entry in folder.iterdir():
            match = _CHECKPOINT_NAME.match(entry.name)
            if match and entry.is_dir():
                candidates.append((int(match.group(1)), entry))
    for _, entry in sorted(candidates, reverse=True):
        problem = checkpoint_problem(entry)
        if problem is None:
            return entry
        logger.warning("skipping %s: %s; trying an older checkpoint", entry, problem)
    raise FileNotFoundError(f"no complete checkpoint-N folder in {str(folder)!r} to resume from")


def resolve_resume(value: str | None, output_dir: str) -> str | None:
    """``--resume-from-checkpoint``: None, the newest complete checkpoint-N of ``output_dir`` (``latest``) or a
    checked checkpoint folder."""
    if value is None:
        return None
    if value == "latest":
        return str(find_last_checkpoint(output_dir))
    if not Path(value).is_dir():
        raise FileNotFoundError(f"--resume-from-checkpoint {value!r} is not a folder (or use 'latest')")
    problem = checkpoint_problem(value)
    if problem is not None:
        raise ValueError(
            f"{value!r} is not a complete training checkpoint: {problem}; resume from another checkpoint-N "
            "(or 'latest', which skips incomplete ones)"
        )
    return value


# ---------------------------------------------------------------------- command
def with_torchrun_cpu_defaults(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` (TrainingArguments keywords), under torchrun on a machine without CUDA given ``use_cpu`` and the
    gloo backend unless set: accelerate only sets up multi-CPU data parallelism when told to use the CPU."""
    import torch

    if "LOCAL_RANK" in os.environ and not torch.cuda.is_available():
        options.setdefault("use_cpu", True)
        options.setdefault("ddp_backend", "gloo")
    return options


def build_trainer(config: Mapping[str, Any], callbacks: list | None = None) -> Any:
    """A ready :class:`UniCATrainer` from a checked config (see :func:`load_config`).

    Example:
        >>> trainer = build_trainer(load_config("examples/train_scenes.yaml"))
        >>> trainer.train()
    """
    from unica.collator import RetrievalCollator
    from unica.trainer import UniCATrainer, UniCATrainingArguments

    settings = with_torchrun_cpu_defaults(dict(config.get("training") or {}))
    args = UniCATrainingArguments(**settings)
    with args.main_process_first(desc="preparing training data"):
        train, evaluation, image_root = load_data(config["data"], args.output_dir)
    model, processor = load_model(config)
    prompts = {}
    section = model_section(config)
    if section is not None:  # a checkpoint's query / document prompts apply in training as at inference
        from unica.st import read_prompts

        prompts = read_prompts(section["path"])
    collator = RetrievalCollator(processor, hard_negatives=args.hard_negatives, image_root=image_root,
                                 prompts=prompts)
    if evaluation is None and args.eval_strategy != "no":
        raise ValueError(f"training.eval_strategy={args.eval_strategy!s} needs evaluation rows: set data.eval_split or data.eval_path")
    return UniCATrainer(
        model=model, args=args, train_dataset=train, eval_dataset=evaluation, data_collator=collator,
        processing_class=processor, callbacks=callbacks, training_data=describe_data(config["data"]),
    )


def describe_data(data: Mapping[str, Any]) -> str:
    """What the ``data:`` section trains on, for ``training_record.json`` and the model card.

    Example:
        >>> describe_data({"path": "my-org/UMR-S10", "split": "train"})
        'my-org/UMR-S10 (split train)'
    """
    split = data.get("split", "train")
    limit = f", first {data['max_rows']} rows" if data.get("max_rows") is not None else ""
    if data.get("builder") == "mbeir":
        return f"the M-BEIR-format data in {data['root']} (split {split}{limit})"
    if "builder" in data:
        return f"synthetic {data['builder']} generated by `unica train` (split {split})"
    return f"{data['path']} (split {split}{limit})"


def run_train(args: argparse.Namespace) -> int:
    def report(trainer: Any, result: Any) -> None:
        if trainer.args.should_save:
            logger.info("training done: %d steps, train_loss %.4f; model saved to %s", result.global_step,
                        result.training_loss, trainer.args.output_dir)
        if trainer.eval_dataset is not None:
            trainer.evaluate()

    config = load_config(args.config)
    return run_config_trainer(lambda: build_trainer(config), args.resume_from_checkpoint, report,
                              "; raise max_steps to train further")


def run_config_trainer(build: Callable[[], Any], resume_from_checkpoint: str | None,
                       report: Callable[[Any, Any], None], complete_hint: str = "") -> int:
    """Build a trainer (``unica train``, ``unica pretrain``), resume it (:func:`resolve_resume`), train, save the
    model and ``trainer_state.json`` (log history) beside it, then ``report(trainer, result)``. A run that had
    already finished trains and writes nothing. The process group, if any, is closed whatever happens
    (:func:`close_process_group`)."""
    finished = False
    trainer = None
    try:
        trainer = build()
        resume = resolve_resume(resume_from_checkpoint, trainer.args.output_dir)
        if resume:
            logger.info("resuming from %s", resume)
        result = trainer.train(resume_from_checkpoint=resume)
        if result.metrics.get("run_complete"):
            finished = True
            logger.info("nothing to do: %s already finished at step %d%s", trainer.args.output_dir,
                        result.global_step, complete_hint)
            return 0
        trainer.save_model()
        trainer.save_state()
        report(trainer, result)
        finished = True
    finally:
        close_process_group(trainer, finished)
    return 0


def close_process_group(trainer: Any, finished: bool) -> None:
    """End a data-parallel run's process group, if there is one (``unica train`` and ``unica pretrain``).

    gloo aborts at interpreter exit if a process group is still alive. After an error another process may never
    reach a barrier, so only a ``finished`` run waits for the others. DDP's reducer holds the process group: the
    trainer's references to the wrapped model are dropped and collected first.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    if finished:
        dist.barrier()
    if trainer is not None:
        trainer.accelerator.free_memory()
        trainer.model_wrapped = trainer.model
    gc.collect()
    dist.destroy_process_group()
