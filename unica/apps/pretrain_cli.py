"""``unica pretrain --config FILE.yaml``: CoCoA pre-training (stages 1 and 2) -> a plain UniCA checkpoint.

The config has ``unica train``'s sections (see :mod:`unica.apps.train_cli`) plus ``pretrain:``:

```yaml
init: {text: default, vision: vit-micro, fusion: bica, pooling: cls}   # or `model: path/to/checkpoint`
data: {builder: scenes, num_scenes: 120, image_size: 32}                # the same forms as `unica train`
pretrain:                      # unica.cocoa.CoCoASettings
  stage1_steps: 20             # stage 1: masked tokens + masked patches through the fused encoder
  stage2_steps: 20             # stage 2: a decoder rebuilds the item from the pooled [CLS] embedding alone
  text_mask_ratio: 0.3         # stage 1, share of text tokens hidden behind [MASK]     (in [0, 1))
  image_mask_ratio: 0.5        # stage 1, share of image patches blanked                 (in [0, 1))
  decoder_text_mask_ratio: 0.6 # stage 2, share of the decoder's text input hidden       (in [0, 1))
  decoder_image_mask_ratio: 0.75
  image_weight: 1.0            # patch loss weight beside the token loss
  decoder_layers: 1            # decoder_heads (default: the encoder's), decoder_hidden_size (= the encoder's)
  sides: [query, pos]          # which sides of a training row become items
training:                      # TrainingArguments fields (max_steps comes from the stages)
  output_dir: runs/pretrain
  per_device_train_batch_size: 16
  learning_rate: 1.0e-4
```

Then ``unica train`` with ``model: runs/pretrain`` is stage 3, contrastive learning on that embedding.
``torchrun --nproc_per_node 2 -m unica pretrain --config ...`` trains data-parallel (gloo on CPU) with the heads
and decoder inside the DDP module; ``--resume-from-checkpoint latest`` resumes from the newest complete
``checkpoint-N``. Mask ratios, the decoder's fit to the encoder and whether the data has images (when patches
are reconstructed) are checked before the model is loaded.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from unica.apps.train_cli import (
    check_data_section,
    check_model_section,
    check_sections,
    describe_data,
    init_keys,
    load_data,
    load_model,
    model_section,
    read_config,
    run_config_trainer,
    with_torchrun_cpu_defaults,
)

logger = logging.getLogger("unica")

__all__ = ["build_pretrainer", "load_pretrain_config", "pretrain_settings", "register", "run_pretrain"]

SECTIONS = ("init", "model", "data", "pretrain", "training")
# `unica pretrain` trains only: the data section's evaluation keys have nothing to do.
EVALUATION_DATA_KEYS = ("eval_split", "eval_path", "max_eval_rows")


def register(subparsers: argparse._SubParsersAction) -> None:
    pretrain = subparsers.add_parser(
        "pretrain", help="CoCoA pre-training (masked reconstruction, then reconstruction through [CLS]) from a config",
        description="CoCoA content-reconstruction pre-training of a UniCA model; writes a plain UniCA checkpoint "
                    "to train further with `unica train`. See examples/pretrain_scenes.yaml.",
    )
    pretrain.add_argument("--config", required=True,
                          help="YAML or JSON file with init|model, data, pretrain and training")
    pretrain.add_argument(
        "--resume-from-checkpoint", metavar="latest|PATH",
        help="resume from the newest complete checkpoint-N in output_dir ('latest') or from a checkpoint folder",
    )
    pretrain.set_defaults(func=run_pretrain)


# ---------------------------------------------------------------------- config
def pretrain_keys() -> list[str]:
    """Every key ``pretrain:`` accepts (the fields of :class:`unica.cocoa.CoCoASettings`)."""
    from unica.cocoa import CoCoASettings

    return [f.name for f in fields(CoCoASettings)]


def training_keys() -> list[str]:
    """Every key ``training:`` accepts: the ``transformers.TrainingArguments`` fields."""
    from transformers import TrainingArguments

    return [f.name for f in fields(TrainingArguments) if f.init]


def pretrain_settings(config: Mapping[str, Any]) -> Any:
    """The checked :class:`unica.cocoa.CoCoASettings` of a config's ``pretrain:`` section."""
    from unica.cocoa import CoCoASettings

    return CoCoASettings(**dict(config.get("pretrain") or {}))


def load_pretrain_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a pre-training config; errors name the bad key and what to do.

    Example:
        >>> config = load_pretrain_config("examples/pretrain_scenes.yaml")
        >>> sorted(config)
        ['data', 'init', 'pretrain', 'training']
    """
    config, file = read_config(path, SECTIONS)
    where = f"config {str(file)!r}"
    for name in ("data", "pretrain"):
        if not isinstance(config.get(name), dict):
            raise ValueError(f"{where} needs a '{name}' mapping" + (
                " (builder: scenes | mbeir, or path: a dataset folder / JSONL)" if name == "data"
                else " (at least stage1_steps and/or stage2_steps)"))
    check_sections(config, {"init": init_keys(), "pretrain": pretrain_keys(), "training": training_keys()}, file)
    training = config.get("training") or {}
    if "output_dir" not in training:
        raise ValueError(f"section 'training' of {str(file)!r} needs output_dir (where the checkpoint goes)")
    if "model" in config:
        check_model_section(config["model"], f"'model' in {str(file)!r}")
    evaluation = [key for key in EVALUATION_DATA_KEYS if key in config["data"]]
    if evaluation:
        raise ValueError(f"section 'data' of {str(file)!r} has {evaluation}: unica pretrain does not evaluate; "
                         "remove them (evaluate the trained model with `unica evaluate`)")
    check_data_section(config["data"], f"section 'data' of {str(file)!r}")
    settings = pretrain_settings(config)  # mask ratios, steps, decoder sizes: ValueError naming the key
    steps = training.get("max_steps")
    if steps not in (None, -1) and steps != settings.total_steps:
        raise ValueError(f"section 'training' of {str(file)!r}: max_steps={steps} differs from pretrain.stage1_steps + "
                         f"stage2_steps = {settings.total_steps}; leave max_steps out (the stages set it)")
    return config


def encoder_hidden_size(config: Mapping[str, Any]) -> int:
    """The text encoder's hidden size, read from its config file (no weights are loaded)."""
    section = model_section(config)
    if section is not None:
        file = Path(section["path"]) / "config.json"
        if not file.is_file():
            raise FileNotFoundError(f"model {section['path']!r} is not a UniCA checkpoint folder (no config.json)")
        return int(json.loads(file.read_text(encoding="utf-8"))["text_config"]["hidden_size"])
    from transformers import AutoConfig

    from unica.checkpoint import default_text_encoder

    text = (config.get("init") or {}).get("text", "default")
    return int(AutoConfig.from_pretrained(default_text_encoder() if text in (None, "default") else text).hidden_size)


# ---------------------------------------------------------------------- command
def build_pretrainer(config: Mapping[str, Any], callbacks: list | None = None) -> Any:
    """A ready :class:`unica.cocoa.CoCoATrainer` from a checked config (see :func:`load_pretrain_config`).

    Checked before the model is loaded: the settings, the decoder's fit to the encoder (from its config file)
    and, when patches are reconstructed, that the data has images.

    Example:
        >>> trainer = build_pretrainer(load_pretrain_config("examples/pretrain_scenes.yaml"))
        >>> trainer.train(); trainer.save_model()
    """
    from transformers import TrainingArguments

    from unica.cocoa import CoCoATrainer, ItemCollator, check_images_for_patches

    settings = pretrain_settings(config)
    settings.check_fits(encoder_hidden_size(config))
    options = with_torchrun_cpu_defaults(dict(config.get("training") or {}))
    options.setdefault("max_steps", settings.total_steps)
    options.setdefault("remove_unused_columns", False)
    args = TrainingArguments(**options)
    with args.main_process_first(desc="preparing pre-training data"):
        train, _, image_root = load_data(config["data"], args.output_dir)
    check_images_for_patches(train, settings)  # before the model is loaded
    model, processor = load_model(config)
    return CoCoATrainer(model=model, args=args, settings=settings, processing_class=processor, train_dataset=train,
                        data_collator=ItemCollator(processor, sides=settings.sides, image_root=image_root),
                        callbacks=callbacks, training_data=describe_data(config["data"]))


def run_pretrain(args: argparse.Namespace) -> int:
    def report(trainer: Any, result: Any) -> None:
        if trainer.args.should_save:
            logger.info("pre-training done: %d steps (stage 1: %d, stage 2: %d), train_loss %.4f; UniCA checkpoint "
                        "saved to %s", result.global_step, trainer.settings.stage1_steps, trainer.settings.stage2_steps,
                        result.training_loss, trainer.args.output_dir)

    config = load_pretrain_config(args.config)
    return run_config_trainer(lambda: build_pretrainer(config), args.resume_from_checkpoint, report)
