"""``unica init``, ``unica encode`` and ``unica demo``."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import numpy as np
import torch

from configuration_unica import FUSIONS, POOLINGS
from dataset_builders.atomic import atomic_path
from modeling_unica import VISION_PRESETS

logger = logging.getLogger("unica")


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse names the option in its one-line error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    init = subparsers.add_parser("init", help="build a checkpoint folder from a text encoder and a vision tower")
    init.add_argument("out", help="checkpoint folder to write")
    init.add_argument("--text", help="BERT-family encoder: Hub id or folder (default: the embedded all-MiniLM-L6-v2)")
    init.add_argument("--vision", default="vit-micro",
                      help=f"CLIP / SigLIP / ViT Hub id or folder, or a preset: {', '.join(VISION_PRESETS)}")
    init.add_argument("--fusion", choices=FUSIONS, default="bica")
    init.add_argument("--pooling", choices=POOLINGS, help="default: the text model's own (CLS unless its "
                      "sentence-transformers pooling says mean)")
    init.add_argument("--bica-layers", type=_positive_int, default=1)
    init.add_argument("--image-size", type=_positive_int,
                      help="image size of a preset vision tower; for a pretrained tower, the size images are "
                           "resized to (position embeddings interpolated), for towers with too many patches")
    init.add_argument("--patch-size", type=_positive_int, help="patch size of a preset vision tower")
    init.add_argument("--seed", type=int, default=0, help="seed for the randomly initialised parts")
    init.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    init.set_defaults(func=run_init)

    encode = subparsers.add_parser("encode", help="embed texts, images or a JSONL of records into a .npy file")
    encode.add_argument("checkpoint", help="UniCA checkpoint folder")
    encode.add_argument("--text", action="append", help="a text (repeatable; paired with --image if both given)")
    encode.add_argument("--image", action="append", help="an image path (repeatable)")
    encode.add_argument("--jsonl", help='file of {"text": ..., "image": path} records, one per line')
    encode.add_argument("--out", required=True, help="where to write the (n, hidden) float32 .npy array")
    encode.add_argument("--batch-size", type=_positive_int, default=32)
    encode.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    encode.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    encode.set_defaults(func=run_encode)

    card = subparsers.add_parser("card", help="render a checkpoint's README.md model card from measured results")
    card.add_argument("checkpoint")
    card.add_argument("--results", help="results.json written by `unica evaluate`")
    card.add_argument("--ablation", help="ablation.json written by `unica ablate`")
    card.add_argument("--repo-id", help="the Hub id the card's examples load from")
    card.add_argument("--training-data", help="what the model was trained on (a Hub dataset id or a description)")
    card.set_defaults(func=run_card)

    push = subparsers.add_parser("push", help="validate a checkpoint folder and upload it to the Hub")
    push.add_argument("checkpoint")
    push.add_argument("--repo-id", required=True)
    push.add_argument("--private", action="store_true")
    push.add_argument("--revision")
    push.add_argument("--commit-message")
    push.add_argument("--dry-run", action="store_true", help="validate and list the files, upload nothing")
    push.set_defaults(func=run_push)

    demo = subparsers.add_parser("demo", help="the offline end-to-end demo on the embedded default model")
    demo.add_argument("--out", default="demo-output", help="folder for the demo's checkpoint and outputs")
    demo.add_argument("--max-steps", type=int, default=60, help="fine-tuning steps")
    demo.set_defaults(func=run_demo)


def run_init(args: argparse.Namespace) -> int:
    from unica.checkpoint import default_text_encoder, init_model, save_checkpoint

    overrides = {}
    if args.pooling:
        overrides["pooling"] = args.pooling
    vision_overrides = {
        k: v for k, v in (("image_size", args.image_size), ("patch_size", args.patch_size)) if v is not None
    }
    if vision_overrides and args.vision not in VISION_PRESETS:
        if args.patch_size is not None:
            raise ValueError("--patch-size applies to preset vision towers only")
        overrides["image_size"] = args.image_size  # a pretrained tower keeps its weights, at this input size
    elif vision_overrides:
        overrides["vision_config_overrides"] = vision_overrides
    if args.fusion == "bica":
        overrides["bica_layers"] = args.bica_layers
    if os.path.exists(args.out) and not args.overwrite:  # before the (slow) model build
        raise FileExistsError(f"{args.out!r} already exists; pass --overwrite to replace it")
    torch.manual_seed(args.seed)
    text = args.text or default_text_encoder()
    model, processor = init_model(text, args.vision, fusion=args.fusion, **overrides)
    save_checkpoint(model, processor, args.out, overwrite=args.overwrite)
    logger.info("wrote %s (fusion=%s, pooling=%s, %d image tokens, %.1fM parameters)", args.out,
                model.config.fusion, model.config.pooling, model.config.num_image_tokens,
                sum(p.numel() for p in model.parameters()) / 1e6)
    return 0


def run_encode(args: argparse.Namespace) -> int:
    from unica.checkpoint import load_checkpoint
    from unica.encoding import encode_items, pair_cli_items, read_jsonl_items

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    if out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a folder; pass a file name such as {str(out / 'embeddings.npy')!r}")
    items = read_jsonl_items(args.jsonl) if args.jsonl else []
    items += pair_cli_items(args.text, args.image)
    if not items:
        raise ValueError("nothing to encode: pass --text, --image or --jsonl")
    model, processor = load_checkpoint(args.checkpoint)
    embeddings = encode_items(model, processor, items, batch_size=args.batch_size, dtype=args.dtype)
    with atomic_path(out) as temporary, open(temporary, "wb") as handle:
        np.save(handle, embeddings)  # a handle, so numpy appends no ".npy" to the name
    logger.info("wrote %s: %d embeddings of size %d", out, *embeddings.shape)
    return 0


def run_card(args: argparse.Namespace) -> int:
    from eval.cache import fingerprint_model_dir
    from unica.card import write_model_card

    path = write_model_card(args.checkpoint, results_path=args.results, ablation_path=args.ablation,
                            repo_id=args.repo_id, training_data=args.training_data,
                            checkpoint_fingerprint=fingerprint_model_dir(args.checkpoint))
    logger.info("wrote %s", path)
    return 0


def run_push(args: argparse.Namespace) -> int:
    from unica.apps.hub import check_repo_id, upload_validated_folder
    from unica.checkpoint import validate_checkpoint

    check_repo_id(args.repo_id)
    files = validate_checkpoint(args.checkpoint)
    upload_validated_folder(args.checkpoint, args.repo_id, files, private=args.private, revision=args.revision,
                            commit_message=args.commit_message, dry_run=args.dry_run)
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from unica.apps.demo import run

    return run(Path(args.out), max_steps=args.max_steps)
