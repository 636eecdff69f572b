"""``unica init``, ``unica encode``, ``unica card``, ``unica push`` and ``unica demo``.

Only the standard library and ``unica.apps.options`` are imported at module level (``unica --help`` loads no
torch); each command checks its inputs first, then imports and loads what it needs.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from unica.apps.options import (
    FUSIONS,
    POOLINGS,
    VISION_PRESET_NAMES,
    check_checkpoint_folder,
    check_file,
    check_new_output,
    key_value,
    non_negative_int,
    positive_int,
)

logger = logging.getLogger("unica")

def register(subparsers: argparse._SubParsersAction) -> None:
    init = subparsers.add_parser("init", help="build a checkpoint folder from a text encoder and a vision tower")
    init.add_argument("out", help="checkpoint folder to write")
    init.add_argument("--text", help="BERT-family encoder: Hub id or folder (default: the embedded all-MiniLM-L6-v2)")
    init.add_argument("--vision", default="vit-micro",
                      help=f"CLIP / SigLIP / ViT Hub id or folder, or a preset: {', '.join(VISION_PRESET_NAMES)}")
    init.add_argument("--fusion", choices=FUSIONS, default="bica",
                      help="bica: Bi-CA layers before the concatenation (UniCA); concat: the VISTA baseline")
    init.add_argument("--pooling", choices=POOLINGS, help="default: the text model's own (CLS unless its "
                      "sentence-transformers pooling says mean)")
    init.add_argument("--bica-layers", type=positive_int, default=1, help="Bi-CA layers (with --fusion bica)")
    init.add_argument("--image-size", type=positive_int,
                      help="image size of a preset vision tower; for a pretrained tower, the size images are "
                           "resized to (position embeddings interpolated), for towers with too many patches")
    init.add_argument("--patch-size", type=positive_int, help="patch size of a preset vision tower")
    init.add_argument("--vision-config", type=key_value, action="append", metavar="KEY=VALUE",
                      help="any ViT config field of a preset vision tower, e.g. num_hidden_layers=2 (repeatable; "
                           "numbers and true/false are parsed), as init.vision_config_overrides in a training config")
    init.add_argument("--seed", type=int, default=0, help="seed for the randomly initialised parts")
    init.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    init.set_defaults(func=run_init)

    encode = subparsers.add_parser("encode", help="embed texts, images or a JSONL of records into a .npy file")
    encode.add_argument("checkpoint", help="UniCA checkpoint folder")
    encode.add_argument("--text", action="append", help="a text (repeatable; paired with --image if both given)")
    encode.add_argument("--image", action="append", help="an image path (repeatable)")
    encode.add_argument("--jsonl", help='file of {"text": ..., "image": path} records, one per line')
    encode.add_argument("--out", required=True, help="where to write the (n, hidden) float32 .npy array")
    encode.add_argument("--batch-size", type=positive_int, default=32, help="items per forward pass")
    encode.add_argument("--dtype", choices=["auto", "fp32", "bf16"], default="auto",
                        help="compute dtype; auto: bf16 on a CPU with native bf16 (AVX-512 BF16 / AMX), fp32 elsewhere")
    encode.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    encode.add_argument("--num-workers", type=non_negative_int, default=0,
                        help="DataLoader workers that decode and preprocess the next batches while the model runs "
                             "(the same embeddings; pays where the cores outnumber the model's threads)")
    encode.set_defaults(func=run_encode)

    card = subparsers.add_parser("card", help="render a checkpoint's README.md model card from measured results")
    card.add_argument("checkpoint", help="UniCA checkpoint folder (the card is written into it)")
    card.add_argument("--results", help="results.json written by `unica evaluate`")
    card.add_argument("--ablation", help="ablation.json written by `unica ablate`")
    card.add_argument("--repo-id", help="the Hub id the card's examples load from")
    card.add_argument("--training-data", help="what the model was trained on (a Hub dataset id or a description)")
    card.set_defaults(func=run_card)

    push = subparsers.add_parser("push", help="validate a checkpoint folder and upload it to the Hub")
    push.add_argument("checkpoint", help="UniCA checkpoint folder, with its README.md model card")
    push.add_argument("--repo-id", required=True, help="the Hub model repo, e.g. my-org/unica-base")
    push.add_argument("--private", action="store_true", help="create the repo as private")
    push.add_argument("--revision", help="branch to upload to (default: main)")
    push.add_argument("--commit-message", help="commit message (default: the Hub client's)")
    push.add_argument("--dry-run", action="store_true", help="validate and list the files, upload nothing")
    push.set_defaults(func=run_push)

    demo = subparsers.add_parser("demo", help="offline demo: concat (VISTA) vs bica (UniCA) trained from the same "
                                 "weights, the untrained floor, example searches")
    demo.add_argument("--out", default="demo-output", help="folder for the demo's data, models and results "
                      "(a second run reuses what it finished)")
    demo.add_argument("--quick", action="store_true", help="tiny settings, under a minute: checks the whole path, "
                      "its numbers mean nothing")
    demo.add_argument("--seeds", default="0", help="comma-separated training seeds, e.g. 0,1,2 (mean ± std over seeds)")
    demo.add_argument("--max-steps", type=positive_int, help="fine-tuning steps per model (default: 120, 4 with "
                      "--quick)")
    demo.add_argument("--psl-ablation", action="store_true", help="also train both fusions without PSL (twice the "
                      "time)")
    demo.set_defaults(func=run_demo)


def vision_overrides(args: argparse.Namespace) -> dict:
    """``--vision-config KEY=VALUE`` pairs, then ``--image-size`` / ``--patch-size`` (which win: they are named)."""
    overrides = dict(args.vision_config or [])
    for key in ("image_size", "patch_size"):
        value = getattr(args, key)
        if value is not None:
            overrides[key] = value
    return overrides


def check_vision_config_keys(overrides: dict) -> None:
    """Unknown ViT config fields are an error naming them (a typo would otherwise be ignored by the config)."""
    from transformers import ViTConfig

    known = set(ViTConfig().to_dict())
    unknown = sorted(set(overrides) - known)
    if unknown:
        import difflib

        hints = [key + (f" (did you mean {close[0]}?)" if (close := difflib.get_close_matches(key, known, n=1)) else "")
                 for key in unknown]
        raise ValueError(f"--vision-config: {', '.join(hints)} is not a ViT config field")


def run_init(args: argparse.Namespace) -> int:
    # Every check on the arguments comes before the (slow) model build.
    check_new_output(args.out, args.overwrite, what="checkpoint folder")
    overrides = {}
    if args.pooling:
        overrides["pooling"] = args.pooling
    vision = vision_overrides(args)
    if vision and args.vision not in VISION_PRESET_NAMES:
        if set(vision) != {"image_size"}:
            option = "--patch-size" if args.patch_size is not None else "--vision-config"
            raise ValueError(f"{option} applies to preset vision towers only ({', '.join(VISION_PRESET_NAMES)})")
        overrides["image_size"] = args.image_size  # a pretrained tower keeps its weights, at this input size
    elif vision:
        check_vision_config_keys(vision)
        overrides["vision_config_overrides"] = vision
    if args.fusion == "bica":
        overrides["bica_layers"] = args.bica_layers

    import torch

    from unica.checkpoint import default_text_encoder, init_model, save_checkpoint

    torch.manual_seed(args.seed)
    text = args.text or default_text_encoder()
    model, processor = init_model(text, args.vision, fusion=args.fusion, **overrides)
    save_checkpoint(model, processor, args.out, overwrite=args.overwrite)
    logger.info("wrote %s (fusion=%s, pooling=%s, %d image tokens, %.1fM parameters)", args.out,
                model.config.fusion, model.config.pooling, model.config.num_image_tokens,
                sum(p.numel() for p in model.parameters()) / 1e6)
    return 0


def _check_encode_inputs(args: argparse.Namespace) -> None:
    """--out, --jsonl and every --image path, before the model is loaded."""
    out = Path(args.out)
    if out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a folder; pass a file name such as {str(out / 'embeddings.npy')!r}")
    if not (args.text or args.image or args.jsonl):
        raise ValueError("nothing to encode: pass --text, --image or --jsonl")
    check_checkpoint_folder(args.checkpoint)
    if args.jsonl:
        check_file(args.jsonl, "--jsonl file")
    for image in args.image or []:
        check_file(image, "--image")


def run_encode(args: argparse.Namespace) -> int:
    _check_encode_inputs(args)
    from dataset_builders.atomic import atomic_path
    from unica.encoding import encode_items, pair_cli_items, read_jsonl_items

    items = read_jsonl_items(args.jsonl) if args.jsonl else []
    for item in items:  # the JSONL's image paths, also before the model is loaded
        image = item.get("image")
        if image is not None:
            check_file(image, f"image of {args.jsonl}")
    items += pair_cli_items(args.text, args.image)

    import numpy as np
    import torch

    from unica.encoding import dtype_reason, load_for_inference, resolve_dtype

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = resolve_dtype(args.dtype)
    model, processor = load_for_inference(args.checkpoint, dtype)
    logger.info("encoding %d items in %s", len(items), dtype_reason(args.dtype))
    embeddings = encode_items(model, processor, items, batch_size=args.batch_size, dtype=dtype,
                              num_workers=args.num_workers)
    out = Path(args.out)
    with atomic_path(out) as temporary, open(temporary, "wb") as handle:
        np.save(handle, embeddings)  # a handle, so numpy appends no ".npy" to the name
    logger.info("wrote %s: %d embeddings of size %d", out, *embeddings.shape)
    return 0


def run_card(args: argparse.Namespace) -> int:
    check_checkpoint_folder(args.checkpoint)
    for option, path in (("--results", args.results), ("--ablation", args.ablation)):
        if path:
            check_file(path, option)
    from eval.cache import fingerprint_model_dir
    from unica.card import write_model_card

    path = write_model_card(args.checkpoint, results_path=args.results, ablation_path=args.ablation,
                            repo_id=args.repo_id, training_data=args.training_data,
                            checkpoint_fingerprint=fingerprint_model_dir(args.checkpoint))
    logger.info("wrote %s", path)
    return 0


def run_push(args: argparse.Namespace) -> int:
    check_checkpoint_folder(args.checkpoint)
    from unica.apps.hub import check_repo_id, upload_validated_folder
    from unica.checkpoint import validate_checkpoint

    check_repo_id(args.repo_id)
    files = validate_checkpoint(args.checkpoint)
    upload_validated_folder(args.checkpoint, args.repo_id, files, private=args.private, revision=args.revision,
                            commit_message=args.commit_message, dry_run=args.dry_run)
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from unica.apps.demo import run

    try:
        seeds = [int(seed) for seed in args.seeds.split(",") if seed.strip()]
    except ValueError:
        raise ValueError(f"--seeds {args.seeds!r} must be comma-separated integers, e.g. 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {args.seeds!r} must name at least one seed, each once, e.g. 0,1,2")
    return run(Path(args.out), quick=args.quick, seeds=seeds, max_steps=args.max_steps, psl_ablation=args.psl_ablation)
