"""Starting from VISTA: the EVA02-CLIP tower, `unica convert-vista` / `convert_vista`, and equality with VISTA.

The reference is FlagEmbedding 1.2.11's ``Visualized_BGE`` (installed beside the project, not into its venv:
``make vista-reference``, or set ``UNICA_VISTA_REFERENCE`` to such a ``pip install --target`` folder). It runs in
its own process (tests/vista_reference.py says why) with random weights, for a B/16-shaped tower with a BERT text
encoder (Visualized_base_en_v1.5's pairing) and an L/14-shaped tower with an XLM-RoBERTa one (Visualized_m3's), both
reduced in width and depth (``UNICA_VISTA_FULL=1`` adds the released towers' full sizes, slow). Its state dict is
converted with both fusions and every embedding compared.

Measure the differences with::

    HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_vista.py -k reference -s
    UNICA_VISTA_FULL=1 HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_vista.py \
        -k "reference and full" -s

Tests that need no reference (bad inputs, the round trip, the tower itself) build a VISTA state dict from a UniCA
model with the inverse key mapping.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from configuration_unica import EvaClipVisionConfig, UniCAConfig
from modeling_unica import EvaClipVisionModel, UniCAModel
from modeling_unica.modeling_eva_clip import rotary_tables
from unica.checkpoint import init_model, load_checkpoint
from unica.vista import KEY_PREFIXES, convert_vista, load_vista

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_SITE = Path(os.environ.get("UNICA_VISTA_REFERENCE", ROOT / ".vista-reference"))
TOLERANCE = 1e-5  # float32, per embedding component (embeddings are unit vectors)

TEXTS = ["a red circle", "two dogs playing in the snow near a wooden fence", "Lyon, 1990"]
# Sizes that exercise the resize (both orientations), its skip (one side already right) and CenterCrop's rounding
# (87 - 64 = 23: torchvision's round(11.5) = 12 where a floor gives 11).
IMAGE_SIZES = [(87, 64), (75, 130), (200, 150), (64, 64), (150, 97), (56, 91)]
PAIRS = [("a red circle on white", 0), ("what is in this picture?", 1), ("", 2), ("Lyon", 4)]
# Reference cases: a text encoder whose folder name says which VISTA it is (bge-base-en-v1.5 -> EVA02-CLIP-B-16 with
# BERT, bge-m3 -> EVA02-CLIP-L-14 with XLM-RoBERTa, as Visualized_BGE decides) and an EVA02-CLIP tower (head size 64,
# SwiGLU 2.6667x, rotary reference grid 16 as released). The default cases are reduced in width and depth, on 4 x 4
# patch grids (rotary positions rescaled, as at 224 px); the "-full" ones have the released towers' sizes at 224 px
# (with a small text encoder): slow, run with UNICA_VISTA_FULL=1.
CASES = {
    "b16": {"text": "bert", "positions": 96,
            "eva": {"name": "EVA02-CLIP-B-16", "width": 128, "layers": 2, "patch_size": 16, "image_size": 64,
                    "embed_dim": 24}},
    "l14": {"text": "xlm-roberta", "positions": 64,
            "eva": {"name": "EVA02-CLIP-L-14", "width": 192, "layers": 3, "patch_size": 14, "image_size": 56,
                    "embed_dim": 32}},
    "b16-full": {"text": "bert", "positions": 512,
                 "eva": {"name": "EVA02-CLIP-B-16", "width": 768, "layers": 12, "patch_size": 16, "image_size": 224,
                         "embed_dim": 512}},
    "l14-full": {"text": "xlm-roberta", "positions": 320,
                 "eva": {"name": "EVA02-CLIP-L-14", "width": 1024, "layers": 24, "patch_size": 14, "image_size": 224,
                         "embed_dim": 768}},
}
REDUCED, FULL = ("b16", "l14"), ("b16-full", "l14-full")
TEXT_FOLDERS = {"bert": "bge-base-en-v1.5", "xlm-roberta": "bge-m3"}
CASE_PARAMS = [pytest.param(name, marks=pytest.mark.slow) if name in FULL else name for name in CASES]


def eva_clip_json(eva: dict) -> dict:
    """An EVA-CLIP model config (the format of EVA-CLIP's model_configs/*.json) for the tower ``eva``."""
    vision = {"image_size": eva["image_size"], "layers": eva["layers"], "width": eva["width"], "head_width": 64,
              "patch_size": eva["patch_size"], "mlp_ratio": 2.6667, "eva_model_name": eva["name"].lower(),
              "drop_path_rate": 0.0, "xattn": True, "fusedLN": True, "rope": True, "pt_hw_seq_len": 16,
              "intp_freq": True, "naiveswiglu": True, "subln": True}
    text = {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}  # built, then dropped
    return {"embed_dim": eva["embed_dim"], "vision_cfg": vision, "text_cfg": text}


def make_text_encoder(kind: str, folder: Path, tokenizer_source: str, positions: int) -> str:
    """A text-encoder folder (config + the MiniLM tokenizer; no weights: the reference builds the model from the
    config, the conversion reads config and tokenizer only). ``bert``: hidden 32; ``xlm-roberta`` (bge-m3's
    architecture): hidden 48, pad_token_id 0 as the tokenizer's [PAD], so its own positions start at 1 where VISTA's
    fused sequence starts at 0."""
    from transformers import AutoTokenizer, BertConfig, XLMRobertaConfig

    sizes = {"vocab_size": 30522, "num_hidden_layers": 2, "num_attention_heads": 2,
             "max_position_embeddings": positions, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    if kind == "bert":
        config = BertConfig(hidden_size=32, intermediate_size=64, **sizes)
    else:
        config = XLMRobertaConfig(hidden_size=48, intermediate_size=96, pad_token_id=0, type_vocab_size=1, **sizes)
    config.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_source).save_pretrained(folder)
    return str(folder)


def make_images(folder: Path) -> list[str]:
    """PNG files of IMAGE_SIZES with smooth structure plus noise (so resampling and cropping matter)."""
    paths = []
    for index, (width, height) in enumerate(IMAGE_SIZES):
        rng = np.random.default_rng(index)
        base = np.kron(rng.integers(0, 256, (4, 4, 3)), np.ones((32, 32, 1)))
        base = np.asarray(Image.fromarray(base.astype(np.uint8)).resize((width, height), Image.BILINEAR), np.int64)
        noisy = np.clip(base + rng.integers(-40, 41, base.shape), 0, 255).astype(np.uint8)
        path = folder / f"image-{index}-{width}x{height}.png"
        Image.fromarray(noisy).save(path)
        paths.append(str(path))
    return paths


def run_reference(names: tuple[str, ...], work: Path, tokenizer_source: str) -> dict:
    """Run the reference for the cases ``names`` in one process: {"cases": {name: {"pth", "text", "outputs"}},
    "images": [...]}."""
    images = make_images(work)
    cases = []
    for seed, name in enumerate(names):
        case = CASES[name]
        text = make_text_encoder(case["text"], work / name / TEXT_FOLDERS[case["text"]], tokenizer_source,
                                 case["positions"])
        cases.append({"name": name, "text": text, "seed": seed, "eva_name": case["eva"]["name"],
                      "eva_config": eva_clip_json(case["eva"])})
    spec = {"site": str(REFERENCE_SITE), "work": str(work), "texts": TEXTS, "images": images, "pairs": PAIRS,
            "cases": cases}
    (work / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "vista_reference.py"), str(work / "spec.json")],
                            cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    return {"images": images, "cases": {
        case["name"]: {"pth": work / case["name"] / "Visualized.pth", "text": case["text"],
                       "outputs": torch.load(work / case["name"] / "reference.pt", weights_only=True)}
        for case in cases
    }}


@pytest.fixture(scope="session")
def reference(tmp_path_factory, minilm_path):
    """``reference(case)``: the reference run holding ``case`` (one process for the reduced cases, one for the
    full-size ones, each run on first use)."""
    if not (REFERENCE_SITE / "FlagEmbedding" / "visual" / "modeling.py").is_file():
        pytest.skip(f"the VISTA reference (FlagEmbedding 1.2.11) is not installed at {REFERENCE_SITE}: run "
                    "`make vista-reference` (or set UNICA_VISTA_REFERENCE to its pip --target folder)")
    runs = {}

    def run(case: str) -> dict:
        group = FULL if case in FULL else REDUCED
        if group == FULL and os.environ.get("UNICA_VISTA_FULL") != "1":
            pytest.skip("full-size EVA02-CLIP towers take minutes on a CPU: set UNICA_VISTA_FULL=1 to run them")
        if group not in runs:
            runs[group] = run_reference(group, tmp_path_factory.mktemp("vista-reference"), minilm_path)
        return runs[group]

    return run


@pytest.fixture(scope="session")
def converted(reference, tmp_path_factory):
    """``converted(case, fusion)``: the checkpoint folder converted from the reference's weights (made once)."""
    out, folders = tmp_path_factory.mktemp("vista-converted"), {}

    def convert(case: str, fusion: str) -> Path:
        if (case, fusion) not in folders:
            source = reference(case)["cases"][case]
            folders[(case, fusion)] = convert_vista(source["pth"], source["text"], out / f"{case}-{fusion}",
                                                    fusion=fusion)
        return folders[(case, fusion)]

    return convert


def embed(model, processor, items) -> torch.Tensor:
    with torch.no_grad():
        return model(**processor.process_items(items)).embeddings


def reference_items(images: list[str]) -> dict[str, list]:
    """The inputs the reference embedded, as UniCA items."""
    return {
        "text": list(TEXTS),
        "image": [Image.open(path) for path in images],
        "image+text": [{"text": text, "image": Image.open(images[index])} for text, index in PAIRS],
    }


@pytest.mark.parametrize("fusion", ["concat", "bica"])
@pytest.mark.parametrize("case", CASE_PARAMS)
def test_converted_model_equals_the_reference(reference, converted, case, fusion):
    """Text-only, image-only (VISTA's empty text) and image + text embeddings of the same strings and image files,
    through the saved checkpoint (load_checkpoint: the processor's preprocessing included), each within 1e-5."""
    model, processor = load_checkpoint(converted(case, fusion))
    assert model.config.fusion == fusion and model.config.vision_config.model_type == "eva02_clip_vision_model"
    assert len(model.fusion_encoder.layers) == (1 if fusion == "bica" else 0)
    run = reference(case)
    outputs = run["cases"][case]["outputs"]
    items = reference_items(run["images"])
    deltas = {}
    for modality, batch in items.items():
        deltas[modality] = float((embed(model, processor, batch) - outputs[modality]).abs().max())
    mixed = [items["text"][0], items["image"][1], items["image+text"][2], items["text"][1]]  # one mixed batch
    expected = torch.stack([outputs["text"][0], outputs["image"][1], outputs["image+text"][2], outputs["text"][1]])
    deltas["mixed batch"] = float((embed(model, processor, mixed) - expected).abs().max())
    print(f"\nVISTA equality {case}/{fusion}: " + ", ".join(f"{k} max|Δ|={v:.2e}" for k, v in deltas.items()))
    assert max(deltas.values()) <= TOLERANCE, deltas


@pytest.mark.parametrize("case", CASE_PARAMS)
def test_processor_pixels_equal_vista_preprocess_val(reference, converted, case):
    """The converted processor's pixel values are preprocess_val's (torchvision's) bit for bit."""
    _, processor = load_checkpoint(converted(case, "concat"))
    assert processor.image_transform == "eva_clip"
    run = reference(case)
    pixels = processor(images=[Image.open(path) for path in run["images"]])["pixel_values"]
    expected = run["cases"][case]["outputs"]["pixel_values"]
    print(f"\npreprocess_val {case}: max|Δ|={float((pixels - expected).abs().max()):.2e}")
    assert pixels.dtype == torch.float32 and torch.equal(pixels, expected)


def test_converted_checkpoint_loads_without_unica_and_in_sentence_transformers(reference, converted, tmp_path):
    """AutoModel / AutoProcessor (trust_remote_code) and SentenceTransformer on the folder alone, the unica packages
    unimportable: the checkpoint's own remote code (the EVA02-CLIP files included) gives VISTA's embeddings."""
    folder = converted("b16", "bica")
    outputs = reference("b16")["cases"]["b16"]["outputs"]
    image = reference("b16")["images"][0]
    expected = torch.stack([outputs["text"][0], outputs["image"][0], outputs["image+text"][0]]).numpy()
    script = textwrap.dedent(f"""
        import sys
        for name in ("unica", "modeling_unica", "configuration_unica", "dataset_builders"):
            sys.modules[name] = None
        import numpy as np, torch
        from PIL import Image
        from sentence_transformers import SentenceTransformer
        from transformers import AutoModel, AutoProcessor
        model = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained({str(folder)!r}, trust_remote_code=True)
        assert type(model.vision_model).__module__.startswith("transformers_modules"), type(model.vision_model)
        image = Image.open({image!r})
        items = [{TEXTS[0]!r}, image, {{"text": {PAIRS[0][0]!r}, "image": image}}]
        with torch.no_grad():
            np.save("auto.npy", model(**processor.process_items(items)).embeddings.numpy())
        st = SentenceTransformer({str(folder)!r}, trust_remote_code=True, device="cpu")
        np.save("st.npy", st.encode(items, convert_to_numpy=True))
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("auto.npy", "st.npy"):
        np.testing.assert_allclose(np.load(tmp_path / name), expected, atol=TOLERANCE, rtol=0, err_msg=name)


# ---------------------------------------------------------------------- without the reference
def tiny_eva_config(**overrides) -> EvaClipVisionConfig:
    settings = {"hidden_size": 64, "intermediate_size": 170, "num_hidden_layers": 2, "num_attention_heads": 1,
                "image_size": 32, "patch_size": 16, "projection_dim": 16}
    return EvaClipVisionConfig(**{**settings, **overrides})


def unica_to_vista(model: UniCAModel) -> dict[str, torch.Tensor]:
    """A VISTA state dict holding ``model``'s weights (the inverse of the conversion's key mapping), with what
    VISTA's file has besides: the rotary tables (top level and per block), the BERT pooler, EVA's logit scale."""
    state = {}
    for key, value in model.state_dict().items():
        for vista, unica in KEY_PREFIXES:
            if key.startswith(unica):
                state[vista + key[len(unica):]] = value.clone()
    vision = model.config.vision_config
    grid = vision.image_size // vision.patch_size
    cos, sin = rotary_tables(grid, vision.hidden_size // vision.num_attention_heads, vision.rope_reference_grid,
                             vision.rope_theta)
    for prefix in ["model_visual.visual."] + [f"model_visual.visual.blocks.{i}.attn."
                                              for i in range(vision.num_hidden_layers)]:
        state[prefix + "rope.freqs_cos"], state[prefix + "rope.freqs_sin"] = cos, sin
    hidden = model.config.text_config.hidden_size
    state["bge_pooler.dense.weight"], state["bge_pooler.dense.bias"] = torch.randn(hidden, hidden), torch.randn(hidden)
    state["model_visual.logit_scale"] = torch.tensor(2.6593)
    return state


@pytest.fixture(scope="module")
def vista_pair(tiny_text_path, tmp_path_factory):
    """(a random concat UniCA model with an EVA02-CLIP tower, its weights saved as a VISTA .pth)."""
    from transformers import AutoConfig

    torch.manual_seed(0)
    config = UniCAConfig(text_config=AutoConfig.from_pretrained(tiny_text_path).to_dict(),
                         vision_config=tiny_eva_config().to_dict(), fusion="concat")
    model = UniCAModel(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    path = tmp_path_factory.mktemp("vista-pth") / "Visualized.pth"
    torch.save(unica_to_vista(model), path)
    return model, path


def converted_equals(original: UniCAModel, converted: UniCAModel) -> float:
    """Max |Δ| between two models' embeddings of texts, images and image + text on the same inputs."""
    torch.manual_seed(1)
    ids = torch.tensor([[101, 1037, 2417, 102], [101, 2048, 102, 0]])
    mask = (ids != 0).long()
    size = original.config.vision_config.image_size
    pixels = torch.randn(2, 3, size, size)
    with torch.no_grad():
        return max(float((original(**inputs).embeddings - converted(**inputs).embeddings).abs().max())
                   for inputs in ({"input_ids": ids, "attention_mask": mask}, {"pixel_values": pixels},
                                  {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}))


@pytest.mark.parametrize("fusion", ["concat", "bica"])
def test_round_trip_through_vista_keys(vista_pair, tiny_text_path, fusion):
    original, path = vista_pair
    model, processor = load_vista(path, tiny_text_path, fusion=fusion)
    assert converted_equals(original, model) <= 1e-6
    vision = model.config.vision_config
    assert (vision.hidden_size, vision.intermediate_size, vision.num_hidden_layers, vision.num_attention_heads,
            vision.image_size, vision.patch_size, vision.projection_dim, vision.rope_reference_grid) == (
        64, 170, 2, 1, 32, 16, 16, 16)
    assert model.config.pooling == "cls" and model.config.fused_position_start == 0
    assert processor.image_transform == "eva_clip" and model.config.empty_text_ids == [101, 102]
    frozen = {name for name, p in model.vision_model.named_parameters() if not p.requires_grad}
    assert frozen == {"norm.weight", "norm.bias", "head.weight", "head.bias"}  # EVA-CLIP's pooling-only weights


def test_cli_convert_vista(vista_pair, tiny_text_path, tmp_path, caplog):
    from unica.apps.cli import main

    original, path = vista_pair
    out = tmp_path / "vista-bica"
    assert main(["convert-vista", str(path), "--text", tiny_text_path, "--out", str(out), "--fusion", "bica"]) == 0
    model, _ = load_checkpoint(out)
    assert model.config.fusion == "bica" and converted_equals(original, model) <= 1e-6
    # The card says where the weights come from and keeps their licence.
    from unica.card import render_model_card

    card = render_model_card(out)
    assert "- Converted from VISTA / Visualized-BGE (BAAI/bge-visualized, arXiv 2406.04292): weights " \
           "`Visualized.pth` (licence mit" in card
    assert "- Vision tower: `EVA02-CLIP-B/16 from Visualized.pth` (pretrained weights" in card
    metadata = yaml.safe_load(card.split("---")[1])
    assert metadata["license"] == "mit" and "BAAI/bge-visualized" in metadata["base_model"]
    written = sorted(p.name for p in out.iterdir())
    assert main(["convert-vista", str(path), "--text", tiny_text_path, "--out", str(out)]) == 1
    assert "already exists" in caplog.text and sorted(p.name for p in out.iterdir()) == written


class NotATensor:
    """Any class: a pickle holding an instance is refused by torch.load(weights_only=True)."""


@pytest.mark.parametrize("problem", ["not-vista", "unknown-key", "missing-key", "pickle", "not-a-file", "text-size",
                                     "text-offline"])
def test_bad_inputs_are_clear_errors_and_write_nothing(problem, vista_pair, tiny_text_path, minilm_path, tmp_path):
    from transformers import BertConfig, BertModel

    _, good = vista_pair
    state = torch.load(good, weights_only=True)
    weights, text = tmp_path / "input.pth", tiny_text_path
    expected = {
        "not-vista": r"is not a VISTA \(Visualized-BGE\) state dict: unexpected keys \(\d+\): embeddings\..*"
                     r"missing keys \(\d+\): .*model_visual\.visual\.cls_token",
        "unknown-key": r"unexpected keys \(1\): model_visual\.visual\.extra_token",
        "missing-key": r"missing keys \(1\): bge_encoder\.layer\.1\.output\.dense\.bias",
        "pickle": r"holds Python objects besides tensors, which torch\.load\(weights_only=True\) refuses",
        "not-a-file": r"is not a PyTorch checkpoint torch\.load can read",
        "text-size": r"has hidden size 384 but the text encoder in .* has 32",
        "text-offline": r"text encoder 'BAAI/no-such-model' is neither a local folder nor a Hub id that could be "
                        r"resolved .*unset HF_HUB_OFFLINE",
    }[problem]
    if problem == "not-vista":
        torch.save(BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=64)).state_dict(), weights)
    elif problem == "unknown-key":
        torch.save({**state, "model_visual.visual.extra_token": torch.zeros(1)}, weights)
    elif problem == "missing-key":
        torch.save({k: v for k, v in state.items() if k != "bge_encoder.layer.1.output.dense.bias"}, weights)
    elif problem == "pickle":
        torch.save({**state, "note": NotATensor()}, weights)
    elif problem == "not-a-file":
        weights.write_text("not a checkpoint")
    else:
        torch.save(state, weights)
        text = minilm_path if problem == "text-size" else "BAAI/no-such-model"
    before = sorted(tmp_path.iterdir())
    with pytest.raises(ValueError, match=expected):
        convert_vista(weights, text, tmp_path / "out")
    assert sorted(tmp_path.iterdir()) == before  # no folder, no staging leftovers


def test_missing_weights_and_existing_out(vista_pair, tiny_text_path, tmp_path):
    _, good = vista_pair
    with pytest.raises(FileNotFoundError, match="do not exist"):
        convert_vista(tmp_path / "absent.pth", tiny_text_path, tmp_path / "out")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="already exists; choose another --out or pass --overwrite"):
        convert_vista(good, tiny_text_path, tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


def test_eva_tower_from_components_and_at_another_image_size(tiny_text_path, tmp_path):
    """from_components / init_model take a saved EVA02-CLIP tower (with a CLIP image processor) like any tower;
    a smaller image_size interpolates its position embeddings (and rescales its rotary positions)."""
    from transformers import CLIPImageProcessorPil

    torch.manual_seed(0)
    tower = EvaClipVisionModel(tiny_eva_config(image_size=64))
    tower.save_pretrained(tmp_path / "eva")
    CLIPImageProcessorPil(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}).save_pretrained(
        tmp_path / "eva")
    model, processor = init_model(tiny_text_path, str(tmp_path / "eva"), fusion="concat")
    assert torch.equal(model.vision_model.pos_embed, tower.pos_embed)
    small, small_processor = init_model(tiny_text_path, str(tmp_path / "eva"), fusion="concat", image_size=32)
    for m, p, tokens in ((model, processor, 16), (small, small_processor, 4)):
        batch = p.process_items([{"text": "a red circle", "image": Image.new("RGB", (50, 40), "red")}])
        with torch.no_grad():
            assert m.eval()(**batch).last_hidden_state.shape[1] == tokens + 5  # [CLS] + image + 4 text tokens
    with pytest.raises(ValueError, match="resize the images or pass interpolate_pos_encoding=True"):
        tower(pixel_values=torch.zeros(1, 3, 32, 32))


def test_eva_config_refuses_impossible_sizes():
    with pytest.raises(ValueError, match="multiple of 4"):
        tiny_eva_config(hidden_size=60, num_attention_heads=2)
    with pytest.raises(ValueError, match="num_hidden_layers must be a positive integer"):
        tiny_eva_config(num_hidden_layers=0)


def test_image_transform_is_checked(tiny_text_path):
    from transformers import AutoTokenizer, ViTImageProcessorPil

    from modeling_unica import UniCAProcessor

    tokenizer = AutoTokenizer.from_pretrained(tiny_text_path)
    with pytest.raises(ValueError, match="image_transform must be None"):
        UniCAProcessor(ViTImageProcessorPil(), tokenizer, image_transform="torchvision")
    with pytest.raises(ValueError, match=r"reads size\['shortest_edge'\], crop_size"):
        UniCAProcessor(ViTImageProcessorPil(), tokenizer, image_transform="eva_clip")


# ---------------------------------------------------------------------- fine-tuning from a converted model
def test_set_fusion_adds_zero_gated_bica_and_drops_it(vista_pair, tiny_text_path):
    from unica.fusion import set_fusion

    original, path = vista_pair
    model, _ = load_vista(path, tiny_text_path)  # concat
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert set_fusion(model, "bica", bica_layers=2) is model
    assert model.config.fusion == "bica" and len(model.fusion_encoder.layers) == 2 and not model.training
    assert all(not p.detach().any() for n, p in model.fusion_encoder.named_parameters() if n.endswith("_gate"))
    assert 0.01 < float(model.fusion_encoder.layers[0].text_to_image.q_proj.weight.detach().std()) < 0.03  # model init
    assert converted_equals(original, model) <= 1e-6  # still VISTA
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    with pytest.raises(ValueError, match="would discard them"):
        set_fusion(model, "bica", bica_layers=3)
    assert set_fusion(model, "concat").config.fusion == "concat" and len(model.fusion_encoder.layers) == 0
    with pytest.raises(ValueError, match="fusion must be one of"):
        set_fusion(model, "late")


def test_training_config_model_section_switches_fusion(vista_pair, tiny_text_path, tmp_path):
    from unica.apps.train_cli import load_config, load_model

    original, path = vista_pair
    folder = convert_vista(path, tiny_text_path, tmp_path / "vista")
    config_file = tmp_path / "train.yaml"
    config_file.write_text(f"model:\n  path: {folder}\n  fusion: bica\n  bica_layers: 2\n"
                           f"data:\n  builder: scenes\ntraining:\n  output_dir: {tmp_path / 'run'}\n")
    model, processor = load_model(load_config(config_file))
    assert model.config.fusion == "bica" and len(model.fusion_encoder.layers) == 2
    assert converted_equals(original, model) <= 1e-6
    for section, message in ((f"  path: {folder}\n  fusion: late\n", "must be one of"),
                             (f"  path: {folder}\n  bica_layers: 2\n", "add fusion: bica"),
                             (f"  path: {folder}\n  fuson: bica\n", "did you mean 'fusion'"),
                             ("  fusion: bica\n", "a mapping with 'path'")):
        config_file.write_text(f"model:\n{section}data:\n  builder: scenes\ntraining:\n  output_dir: x\n")
        with pytest.raises(ValueError, match=message):
            load_config(config_file)


def test_checkpoint_validation_requires_the_eva_clip_code_files(vista_pair, tiny_text_path, tmp_path):
    """The remote code imports the EVA02-CLIP files relatively: a folder without them cannot load, so it is refused."""
    from unica.checkpoint import remote_code_files, validate_checkpoint

    folder = convert_vista(vista_pair[1], tiny_text_path, tmp_path / "vista")
    assert {"configuration_eva_clip.py", "modeling_eva_clip.py"} <= set(remote_code_files(folder))
    validate_checkpoint(folder, require_card=False)
    (folder / "modeling_eva_clip.py").unlink()
    with pytest.raises(ValueError, match="missing modeling_eva_clip.py"):
        validate_checkpoint(folder, require_card=False)
