"""Building from components and the inputs UniCA takes (issue 12, items 10 and 11).

* pooling of a sentence-transformers text encoder given by Hub id (resolved like transformers resolves files);
* vision towers with more patch tokens than the text encoder has positions: the ``image_size`` override;
* the image processor backend pinned to PIL in saved checkpoints;
* processor / model inputs that are honoured or refused, never silently dropped.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY_VIT, make_image

from configuration_unica import UniCAConfig
from modeling_unica import UniCAModel
from unica.checkpoint import init_model, load_checkpoint, save_checkpoint

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
# Tiny towers whose native 80 px images in 8 px patches make 100 image tokens: more than the tiny text
# encoder's (conftest.make_tiny_text_encoder) 96 position embeddings.
NATIVE_SIZE, PATCH, OVERRIDE = 80, 8, 48
TOWER = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
         "image_size": NATIVE_SIZE, "patch_size": PATCH}


# ---------------------------------------------------------------------- item 10 (a): pooling by Hub id
def _hub_cache_with(repo_id: str, source: Path, cache: Path) -> None:
    """Lay out ``source`` as the Hub cache snapshot of ``repo_id`` (what a download leaves behind)."""
    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / sha
    for file in source.rglob("*"):
        if file.is_file():
            target = snapshot / file.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(file)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)


def test_sentence_transformers_pooling_of_a_hub_id_from_the_cache(minilm_path, tmp_path, monkeypatch):
    """all-MiniLM-L6-v2 by Hub id (offline, from the HF cache) gets its mean pooling, not the CLS default."""
    import huggingface_hub.constants

    _hub_cache_with(MINILM_ID, Path(minilm_path), tmp_path / "hub")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    model = UniCAModel.from_components(MINILM_ID, "vit-micro", vision_config_overrides=TINY_VIT)
    assert model.config.pooling == "mean"


def _st_folder(tiny_text_path: str, folder: Path, modules: list[dict] | None, poolings: dict[str, dict]) -> str:
    """A copy of the tiny text encoder made a sentence-transformers folder (modules.json + pooling configs)."""
    shutil.copytree(tiny_text_path, folder)
    if modules is not None:
        (folder / "modules.json").write_text(json.dumps(modules))
    for path, config in poolings.items():
        (folder / path).mkdir()
        (folder / path / "config.json").write_text(json.dumps(config))
    return str(folder)


def _modules(pooling_path: str) -> list[dict]:
    return [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": pooling_path, "type": "sentence_transformers.models.Pooling"}]


@pytest.mark.parametrize(
    ("modules", "poolings", "expected"),
    [
        # modules.json names the pooling module's folder; 1_Pooling is not it
        (_modules("pool"), {"pool": {"pooling_mode": "mean"}, "1_Pooling": {"pooling_mode_cls_token": True}}, "mean"),
        (_modules("pool"), {"pool": {"pooling_mode": "cls"}, "1_Pooling": {"pooling_mode_mean_tokens": True}}, "cls"),
        # sentence-transformers >= 6 writes "pooling_mode" instead of the pooling_mode_* flags
        (None, {"1_Pooling": {"pooling_mode": "mean"}}, "mean"),
        (None, {"1_Pooling": {"pooling_mode": ["mean"]}}, "mean"),
    ],
)
def test_pooling_follows_modules_json(tiny_text_path, tmp_path, modules, poolings, expected):
    text = _st_folder(tiny_text_path, tmp_path / "st-text", modules, poolings)
    model = UniCAModel.from_components(text, "vit-micro", vision_config_overrides=TINY_VIT)
    assert model.config.pooling == expected


def test_unsupported_sentence_transformers_pooling_is_refused_unless_overridden(tiny_text_path, tmp_path):
    text = _st_folder(tiny_text_path, tmp_path / "st-text", _modules("1_Pooling"),
                      {"1_Pooling": {"pooling_mode_max_tokens": True}})
    with pytest.raises(ValueError, match=r"pools with 'max'.*UniCA pools with 'cls' or 'mean'.*pooling="):
        UniCAModel.from_components(text, "vit-micro", vision_config_overrides=TINY_VIT)
    model = UniCAModel.from_components(text, "vit-micro", vision_config_overrides=TINY_VIT, pooling="mean")
    assert model.config.pooling == "mean"


# ---------------------------------------------------------------------- item 10 (b): image_size override
def _save_tower(kind: str, folder: Path) -> str:
    """A tiny random vision tower of ``kind`` with its (PIL) image processor, as a local model folder."""
    from transformers import (
        BitImageProcessorPil,
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        CLIPVisionModel,
        Dinov2Config,
        Dinov2Model,
        SiglipImageProcessorPil,
        SiglipVisionConfig,
        SiglipVisionModel,
        ViTConfig,
        ViTImageProcessorPil,
        ViTModel,
    )

    torch.manual_seed(0)
    square = {"height": NATIVE_SIZE, "width": NATIVE_SIZE}
    if kind == "clip":
        model = CLIPVisionModel(CLIPVisionConfig(**TOWER))
        processor = CLIPImageProcessorPil(size={"shortest_edge": NATIVE_SIZE}, crop_size=square)
    elif kind == "vit":
        model = ViTModel(ViTConfig(**TOWER), add_pooling_layer=False)
        processor = ViTImageProcessorPil(size=square)
    elif kind == "siglip":
        model = SiglipVisionModel(SiglipVisionConfig(**TOWER))
        processor = SiglipImageProcessorPil(size=square)
    else:  # DINOv2 resizes the short side to 256/224 of the crop, then center-crops
        model = Dinov2Model(Dinov2Config(**TOWER))
        processor = BitImageProcessorPil(size={"shortest_edge": NATIVE_SIZE * 256 // 224}, crop_size=square)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


def test_too_many_image_tokens_names_the_numbers_and_the_image_size_override():
    text = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 64, "max_position_embeddings": 96}
    with pytest.raises(ValueError, match=r"100 image tokens \(80 px images in 8 px patches\).*96 position "
                                         r"embeddings.*image_size=72 or smaller"):
        UniCAConfig(text_config=text, vision_config={"model_type": "clip_vision_model", **TOWER})
    with pytest.raises(ValueError, match=r"image_size must be an integer >= vision_config.patch_size \(8\), got 4"):
        UniCAConfig(text_config=text, vision_config={"model_type": "clip_vision_model", **TOWER}, image_size=4)


@pytest.mark.parametrize("kind", ["clip", "vit", "siglip", "dinov2"])
def test_image_size_override_builds_a_tower_with_too_many_native_tokens(kind, tiny_text_path, tmp_path):
    vision = _save_tower(kind, tmp_path / kind)
    with pytest.raises(ValueError, match=r"100 image tokens.*image_size="):
        init_model(tiny_text_path, vision)

    model, processor = init_model(tiny_text_path, vision, image_size=OVERRIDE)
    model.eval()
    assert model.config.image_size == OVERRIDE and model.config.num_image_tokens == (OVERRIDE // PATCH) ** 2
    assert model.config.vision_config.image_size == NATIVE_SIZE  # the tower keeps its own position embeddings
    batch = processor(text=["a red circle", None, "a caption"], images=[None, make_image(1, 60), make_image(2, 100)])
    assert tuple(batch["pixel_values"].shape[-2:]) == (OVERRIDE, OVERRIDE)
    with torch.no_grad():
        embeddings = model(**batch).embeddings
        # The image tokens are the tower's own output at the override size, position embeddings interpolated.
        pixels = batch["pixel_values"]
        interpolates = {} if kind == "dinov2" else {"interpolate_pos_encoding": True}
        expected = model.vision_model(pixel_values=pixels, **interpolates).last_hidden_state
        torch.testing.assert_close(model._patch_tokens(pixels), expected[:, -model.config.num_image_tokens:])
    assert embeddings.shape == (3, model.config.text_config.hidden_size) and torch.isfinite(embeddings).all()

    with pytest.raises(ValueError, match=rf"pixel_values are {NATIVE_SIZE}x{NATIVE_SIZE}.*{OVERRIDE}x{OVERRIDE}"):
        model(pixel_values=torch.zeros(1, 3, NATIVE_SIZE, NATIVE_SIZE))


def test_image_size_override_survives_a_checkpoint_round_trip(tiny_text_path, tmp_path):
    model, processor = init_model(tiny_text_path, _save_tower("clip", tmp_path / "clip"), image_size=OVERRIDE)
    save_checkpoint(model, processor, tmp_path / "ckpt")
    loaded_model, loaded_processor = load_checkpoint(tmp_path / "ckpt")
    items = [{"text": "a caption", "image": make_image(3, 90)}, make_image(4, 50)]
    with torch.no_grad():
        expected = model.eval()(**processor.process_items(items)).embeddings
        got = loaded_model(**loaded_processor.process_items(items)).embeddings
    assert loaded_model.config.image_size == OVERRIDE
    torch.testing.assert_close(got, expected, atol=0, rtol=0)


def test_unica_init_takes_image_size_for_a_pretrained_tower(tiny_text_path, tmp_path, caplog):
    from unica.apps.cli import main as unica_main

    vision = _save_tower("clip", tmp_path / "clip")
    assert unica_main(["init", str(tmp_path / "too-many"), "--text", tiny_text_path, "--vision", vision]) == 1
    assert "--image-size 72" in caplog.text
    out = tmp_path / "ckpt"
    assert unica_main(["init", str(out), "--text", tiny_text_path, "--vision", vision, "--fusion", "concat",
                       "--image-size", str(OVERRIDE)]) == 0
    assert json.loads((out / "config.json").read_text())["image_size"] == OVERRIDE
    assert unica_main(["init", str(tmp_path / "other"), "--text", tiny_text_path, "--vision", vision,
                       "--patch-size", "4"]) == 1
    assert "--patch-size applies to preset vision towers only" in caplog.text


# ---------------------------------------------------------------------- item 10 (c): PIL backend pinned
def test_saved_processor_loads_the_pil_backend_even_where_torchvision_is_installed(tiny_checkpoint, monkeypatch):
    """transformers picks the torchvision backend where torchvision is installed; a checkpoint must not."""
    from transformers import AutoProcessor, ViTImageProcessorPil
    from transformers.models.auto import image_processing_auto

    chosen = []
    resolve = image_processing_auto._resolve_backend

    def recording_resolve(*args, **kwargs):
        chosen.append(resolve(*args, **kwargs))
        return chosen[-1]

    monkeypatch.setattr(image_processing_auto, "is_torchvision_available", lambda: True)
    monkeypatch.setattr(image_processing_auto, "_resolve_backend", recording_resolve)
    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    assert chosen == ["pil"]
    assert type(processor.image_processor).__name__ == "ViTImageProcessorPil"

    saved = json.loads((Path(tiny_checkpoint) / "processor_config.json").read_text())["image_processor"]
    settings = {key: saved[key] for key in ("size", "image_mean", "image_std", "resample", "rescale_factor")}
    images = [make_image(5, 44), make_image(6, 100)]
    direct = ViTImageProcessorPil(**settings)(images=images, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(processor(images=images)["pixel_values"], direct, atol=0, rtol=0)


def test_processor_refuses_a_torchvision_image_processor(tiny_pair):
    from transformers.image_processing_backends import TorchvisionBackend

    from modeling_unica import UniCAProcessor

    class FakeTorchvisionProcessor(TorchvisionBackend):
        def __init__(self):  # no torchvision needed to stand in for one
            pass

    with pytest.raises(ValueError, match=r"PIL.*backend='pil'"):
        UniCAProcessor(FakeTorchvisionProcessor(), tiny_pair[1].tokenizer)


# ---------------------------------------------------------------------- item 11: processor inputs
def test_processor_max_length_truncates_and_is_capped(tiny_pair):
    _, processor = tiny_pair
    long_text = "word " * 40
    batch = processor(text=[long_text, "short"], max_length=10)
    assert batch["input_ids"].shape[1] == 10 and batch["input_ids"][0, -1].item() == 102  # closed by [SEP]
    assert processor.process_items([long_text], text_kwargs={"max_length": 12})["input_ids"].shape[1] == 12
    above = processor.max_text_length + 1
    with pytest.raises(ValueError, match=rf"max_length={above} is above the model's max_text_length="
                                         rf"{processor.max_text_length}"):
        processor(text=["short"], max_length=above)
    for bad in (0, 1, "10", True):
        with pytest.raises(ValueError, match="max_length must be an integer >= 2"):
            processor(text=["short"], max_length=bad)


def test_processor_truncation_false_refuses_long_texts(tiny_pair):
    _, processor = tiny_pair
    assert processor(text=["short"], truncation=False)["input_ids"].shape[1] == 3
    with pytest.raises(ValueError, match=r"input 1 has \d+ tokens, more than max_length=8.*truncation=False"):
        processor(text=["short", "word " * 20], truncation=False, max_length=8)
    for value in (True, "longest_first", "only_first"):
        assert processor(text=["word " * 20], truncation=value, max_length=8)["input_ids"].shape[1] == 8
    with pytest.raises(ValueError, match="truncation must be one of"):
        processor(text=["short"], truncation="only_second")


def test_processor_padding(tiny_pair):
    model, processor = tiny_pair
    texts = ["a red circle", "a much longer text about a blue square"]
    longest = processor(text=texts)
    for value in (True, "longest"):
        torch.testing.assert_close(processor(text=texts, padding=value)["input_ids"], longest["input_ids"])
    padded = processor(text=texts, images=[make_image(7), None], padding="max_length", max_length=20)
    assert padded["input_ids"].shape[1] == 20 and padded["attention_mask"][:, 12:].sum() == 0
    with torch.no_grad():  # padding changes no embedding
        unpadded = model(**processor(text=texts, images=[make_image(7), None])).embeddings
        torch.testing.assert_close(model(**padded).embeddings, unpadded, atol=1e-5, rtol=0)
    # without max_length, padding="max_length" pads to the most the model takes
    assert processor(text=texts, padding="max_length")["input_ids"].shape[1] == processor.max_text_length
    for value in (False, "do_not_pad"):
        with pytest.raises(ValueError, match=r"padding=.* is not supported: the processor returns tensors"):
            processor(text=texts, padding=value)


def test_processor_refuses_keyword_groups_it_cannot_honour(tiny_pair):
    _, processor = tiny_pair
    with pytest.raises(TypeError, match=r"images_kwargs.*'size'.*image processor"):
        processor(images=[make_image(8)], images_kwargs={"size": {"height": 8, "width": 8}})
    with pytest.raises(TypeError, match=r"text_kwargs.*'return_token_type_ids'"):
        processor(text=["a"], text_kwargs={"return_token_type_ids": True})
    with pytest.raises(TypeError, match="max_length is given twice"):
        processor(text=["a"], max_length=8, text_kwargs={"max_length": 9})


# ---------------------------------------------------------------------- item 11: model inputs
def test_output_hidden_states_of_every_path(tiny_pair):
    model, processor = tiny_pair
    layers = model.config.text_config.num_hidden_layers
    items = ["a red circle", make_image(9), {"text": "Red Circle, 1990", "image": make_image(10)}]
    with torch.no_grad():
        mixed = model(**processor.process_items(items), output_hidden_states=True)
        assert len(mixed.hidden_states) == layers + 1
        torch.testing.assert_close(mixed.hidden_states[-1], mixed.last_hidden_state)
        for row, item in enumerate(items):  # each row's states are the item's own, in batch order
            alone = model(**processor.process_items([item]), output_hidden_states=True)
            length = alone.last_hidden_state.shape[1]
            for got, expected in zip(mixed.hidden_states, alone.hidden_states):
                torch.testing.assert_close(got[row, :length], expected[0], atol=1e-5, rtol=0)
        text = processor(text=["a red circle"])
        own = model.text_model(**text, output_hidden_states=True).hidden_states  # text only: the encoder's own
        for got, expected in zip(model.get_text_features(**text, output_hidden_states=True).hidden_states, own):
            torch.testing.assert_close(got, expected)
        assert model(**text).hidden_states is None and model(**text, output_hidden_states=False).hidden_states is None


def test_output_attentions_and_position_ids_are_refused(tiny_pair):
    model, processor = tiny_pair
    batch = processor(text=["a red circle"])
    with pytest.raises(TypeError, match=r"output_attentions=True is not supported.*drop output_attentions"):
        model(**batch, output_attentions=True)
    with pytest.raises(TypeError, match=r"position_ids are not accepted.*UniCA assigns positions itself"):
        model(**batch, position_ids=torch.arange(batch["input_ids"].shape[1])[None])
    with pytest.raises(TypeError, match="position_ids"):
        model.get_image_features(pixel_values=processor(images=[make_image(11)])["pixel_values"],
                                 position_ids=torch.zeros(1, 3, dtype=torch.long))
    with torch.no_grad():
        expected = model(**batch).embeddings
        got = model(**batch, output_attentions=False, position_ids=None).embeddings
    torch.testing.assert_close(got, expected, atol=0, rtol=0)


def test_token_type_ids_must_be_zero(tiny_pair):
    model, processor = tiny_pair
    batch = processor(text=["a red circle"], images=[make_image(12)])
    with torch.no_grad():
        expected = model(**batch).embeddings
        got = model(**batch, token_type_ids=torch.zeros_like(batch["input_ids"])).embeddings
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
    with pytest.raises(ValueError, match=r"token_type_ids must be all 0.*drop token_type_ids"):
        model(**batch, token_type_ids=torch.ones_like(batch["input_ids"]))
