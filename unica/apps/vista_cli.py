"""``unica convert-vista``: a UniCA checkpoint from VISTA's released weights (see ``unica.vista``)."""

from __future__ import annotations

import argparse
import logging

from unica.apps.options import FUSIONS, check_file, check_new_output, positive_int

logger = logging.getLogger("unica")


def register(subparsers: argparse._SubParsersAction) -> None:
    convert = subparsers.add_parser(
        "convert-vista", help="convert VISTA (Visualized-BGE) weights into a UniCA checkpoint folder",
        description="Convert a VISTA state dict (Visualized_base_en_v1.5.pth: bge-base-en-v1.5 + EVA02-CLIP-B/16; "
                    "Visualized_m3.pth: bge-m3 + EVA02-CLIP-L/14) into a UniCA checkpoint that embeds as VISTA does.",
    )
    convert.add_argument("weights", help="the VISTA .pth file (read with torch.load(weights_only=True))")
    convert.add_argument("--text", required=True,
                         help="the text encoder VISTA was trained with: Hub id (BAAI/bge-base-en-v1.5, BAAI/bge-m3) "
                              "or a local folder with its config.json and tokenizer (its weights are not read)")
    convert.add_argument("--out", required=True, help="checkpoint folder to write")
    convert.add_argument("--fusion", choices=FUSIONS, default="concat",
                         help="concat: VISTA itself; bica: zero-gated Bi-CA layers on top, equal to VISTA "
                              "until trained")
    convert.add_argument("--bica-layers", type=positive_int, default=1, help="Bi-CA layers with --fusion bica")
    convert.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    convert.set_defaults(func=run_convert_vista)


def run_convert_vista(args: argparse.Namespace) -> int:
    check_new_output(args.out, args.overwrite, what="checkpoint folder (--out)")
    check_file(args.weights, "VISTA weights file")
    from unica.vista import convert_vista

    path = convert_vista(args.weights, args.text, args.out, fusion=args.fusion, bica_layers=args.bica_layers,
                         overwrite=args.overwrite)
    logger.info("wrote %s; load it with AutoModel.from_pretrained(%r, trust_remote_code=True)", path, str(path))
    return 0
