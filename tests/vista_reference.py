"""Run the reference VISTA implementation (FlagEmbedding 1.2.11's ``FlagEmbedding.visual.Visualized_BGE``) with
random weights, in its own process, and save its state dict and embeddings for tests/test_vista.py to compare with.

Usage: ``python tests/vista_reference.py SPEC.json`` (tests/test_vista.py writes the spec and runs this). The spec
names the reference install (``site``: a ``pip install --target`` folder, ``make vista-reference``), a work folder,
the texts, image files and (text, image) pairs to embed, and the cases: per case a text-encoder folder whose name
says which VISTA it is (``bge-base-en-v1.5`` -> EVA02-CLIP-B-16, ``bge-m3`` -> EVA02-CLIP-L-14, as
``Visualized_BGE`` decides) and the EVA-CLIP model config to build under that name (reduced sizes for CI time).

The reference code runs unmodified; only what it cannot do offline, on CPU, under transformers 5, is worked around,
here and nowhere else (which is why it runs in its own process):

* torchvision: the registry has only its CUDA build, whose C ops cannot load against a CPU torch; the two op
  schemas its import registers fake kernels for are declared first (its Python transforms need no ops);
* ``FlagEmbedding/__init__.py`` imports its text-only models, which fail under transformers 5: the package is
  entered without it (``FlagEmbedding.visual`` is imported as it is);
* the sdist lacks EVA-CLIP's data files: its model configs are the spec's, and the CLIP BPE vocabulary (for EVA-CLIP's
  text tower, which VISTA never builds) is an empty stand-in;
* ``Visualized_BGE.__init__`` loads a weight file and sizes ``visual_proj`` for the released models (768 / 1024):
  here there is no file yet (``load_model`` is skipped; the random weights are saved instead) and ``visual_proj``
  is sized for the reduced tower;
* VISTA passes BERT a float16 additive mask, which transformers 5's SDPA attention refuses: the reference BERT runs
  with eager attention (what transformers ran when VISTA was written);
* VISTA calls ``BertEmbeddings`` with ``past_key_values_length=0`` and ``BertEncoder`` with ``past_key_values=None``,
  which transformers 5.24 renamed ``cache_length`` / ``cache``: where the installed version lacks the old names,
  they are passed under the new ones (their values change nothing: no cache, positions from 0).
"""

from __future__ import annotations

import gzip
import json
import os
import sys
import types


def import_reference(site: str):
    """``FlagEmbedding.visual.modeling`` and ``FlagEmbedding.visual.eva_clip`` from the install at ``site``."""
    import torch

    sys.path.insert(0, site)
    library = torch.library.Library("torchvision", "DEF")
    for op in ("nms", "qnms"):
        library.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import_reference.library = library  # keep the definitions alive
    vocabulary = os.path.join(site, "FlagEmbedding", "visual", "eva_clip", "bpe_simple_vocab_16e6.txt.gz")
    if not os.path.exists(vocabulary):
        with gzip.open(vocabulary, "wt") as handle:
            handle.write("#version: 0.2\n")
    package = types.ModuleType("FlagEmbedding")
    package.__path__ = [os.path.join(site, "FlagEmbedding")]
    sys.modules["FlagEmbedding"] = package
    from FlagEmbedding.visual import eva_clip, modeling

    return modeling, eva_clip


RENAMED_ARGUMENTS = {"past_key_values_length": "cache_length", "past_key_values": "cache"}


def accept_old_argument_names(module) -> None:
    """Let ``module.forward`` take the argument names VISTA passes where the installed transformers renamed them."""
    import inspect

    forward = module.forward
    accepted = inspect.signature(forward).parameters
    renames = {old: new for old, new in RENAMED_ARGUMENTS.items() if old not in accepted and new in accepted}
    if not renames:
        return

    def renamed(*args, **kwargs):
        for old, new in renames.items():
            if old in kwargs:
                kwargs[new] = kwargs.pop(old)
        return forward(*args, **kwargs)

    module.forward = renamed


def run_case(modeling, case: dict, spec: dict) -> None:
    import torch
    from PIL import Image

    class Reference(modeling.Visualized_BGE):
        def load_model(self, model_weight):  # no weight file yet: the random weights are what gets saved
            pass

    torch.manual_seed(case["seed"])
    reference = Reference(model_name_bge=case["text"], model_weight="(random)", from_pretrained=case["text"])
    vision_width = case["eva_config"]["vision_cfg"]["width"]
    reference.visual_proj = torch.nn.Linear(vision_width, reference.bge_embeddings.word_embeddings.embedding_dim)
    with torch.no_grad():  # off the initial values, so that no two weights are alike (zero biases, unit norms)
        for parameter in reference.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    reference.eval()
    reference.bge_encoder.config._attn_implementation = "eager"
    accept_old_argument_names(reference.bge_embeddings)
    accept_old_argument_names(reference.bge_encoder)
    folder = os.path.join(spec["work"], case["name"])
    os.makedirs(folder, exist_ok=True)
    torch.save(reference.state_dict(), os.path.join(folder, "Visualized.pth"))

    texts, images = spec["texts"], spec["images"]
    pixels = torch.stack([reference.preprocess_val(Image.open(path)) for path in images])
    pair_texts = [text for text, _ in spec["pairs"]]
    pair_pixels = pixels[[index for _, index in spec["pairs"]]]
    with torch.no_grad():
        tokens = reference.tokenizer(texts, return_tensors="pt", padding=True)
        pair_tokens = reference.tokenizer(pair_texts, return_tensors="pt", padding=True)
        outputs = {
            "pixel_values": pixels,
            "text": reference.encode_text(tokens),
            "image": reference.encode_image(pixels),
            "image+text": reference.encode_mm(pair_pixels, pair_tokens),
        }
    torch.save(outputs, os.path.join(folder, "reference.pt"))


def main(spec_path: str) -> int:
    with open(spec_path, encoding="utf-8") as handle:
        spec = json.load(handle)
    modeling, eva_clip = import_reference(spec["site"])
    configs = os.path.join(spec["work"], "model_configs")
    os.makedirs(configs, exist_ok=True)
    for case in spec["cases"]:
        with open(os.path.join(configs, case["eva_name"] + ".json"), "w", encoding="utf-8") as handle:
            json.dump(case["eva_config"], handle)
    eva_clip.add_model_config(configs)
    for case in spec["cases"]:
        run_case(modeling, case, spec)
        print(f"reference {case['name']}: done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
