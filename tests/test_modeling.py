"""UniCAModel: the VISTA baseline construction, Bi-CA, paths per modality, dtype and checkpointing."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_VIT, make_image
from transformers import AutoModel, AutoTokenizer

from configuration_unica import UniCAConfig
from modeling_unica import UniCAModel
from unica.checkpoint import init_model


def _open_gates(model: UniCAModel, value: float = 0.5) -> None:
    """Give the Bi-CA gates a non-zero value, as after some training."""
    torch.manual_seed(1)
    with torch.no_grad():
        for layer in model.fusion_encoder.layers:
            for gate in (layer.text_attention_gate, layer.image_attention_gate, layer.text_ffn_gate,
                         layer.image_ffn_gate):
                gate.copy_(value + 0.1 * torch.randn_like(gate))


def _vista_reference(model: UniCAModel, input_ids, attention_mask, pixel_values) -> torch.Tensor:
    """VISTA's `encode_mm`, written out as in FlagEmbedding's visual_bge (BERT position ids from 0)."""
    text = model.text_model
    image_tokens = model.vision_model(pixel_values=pixel_values).last_hidden_state[:, 1:]
    image_tokens = model.visual_projection(image_tokens)
    num_image = image_tokens.shape[1]
    image_tokens = image_tokens + text.embeddings.position_embeddings(torch.arange(1, 1 + num_image))
    image_tokens = text.embeddings.LayerNorm(image_tokens)
    length = input_ids.shape[1]
    positions = torch.cat([torch.tensor([0]), torch.arange(1 + num_image, num_image + length)])
    prompt = text.embeddings(input_ids=input_ids, position_ids=positions[None].expand(input_ids.shape[0], -1),
                             token_type_ids=torch.zeros_like(input_ids))
    sequence = torch.cat([prompt[:, :1], image_tokens, prompt[:, 1:]], dim=1)
    mask = torch.cat([torch.ones(input_ids.shape[0], num_image, dtype=attention_mask.dtype), attention_mask], dim=1)
    # BERT's classic additive mask (transformers 4's get_extended_attention_mask).
    extended = (1.0 - mask[:, None, None, :].to(sequence.dtype)) * torch.finfo(sequence.dtype).min
    hidden = sequence
    for layer in text.encoder.layer:
        hidden = layer(hidden, extended)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
    if model.config.pooling == "cls":
        pooled = hidden[:, 0]
    else:
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    return F.normalize(pooled, dim=-1)


@pytest.fixture(scope="module")
def concat_pair(minilm_path):
    torch.manual_seed(0)
    model, processor = init_model(minilm_path, "vit-micro", fusion="concat", pooling="cls",
                                  vision_config_overrides=TINY_VIT)
    return model.eval(), processor


def test_text_only_equals_backbone_mean_pooling(tiny_pair, minilm_path):
    model, processor = tiny_pair
    assert model.config.pooling == "mean"  # read from the sentence-transformers folder's 1_Pooling
    texts = ["a red circle above a blue square", "the painting was made in 1990 in Lyon", "hi"]
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    backbone = AutoModel.from_pretrained(minilm_path).eval()
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = backbone(**encoded).last_hidden_state
        mask = encoded["attention_mask"][..., None].float()
        expected = F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
        got = model(**processor(text=texts)).embeddings
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_text_only_cls_pooling_equals_backbone_cls(concat_pair, minilm_path):
    model, processor = concat_pair
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    backbone = AutoModel.from_pretrained(minilm_path).eval()
    with torch.no_grad():
        expected = F.normalize(backbone(**tokenizer(["a query"], return_tensors="pt")).last_hidden_state[:, 0], dim=-1)
        got = model.get_text_features(**processor(text=["a query"])).pooler_output
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_concat_reproduces_vista_input_construction(concat_pair):
    model, processor = concat_pair
    batch = processor(text=["a red circle", "two shapes painted in 1990 by a long caption"],
                      images=[make_image(0), make_image(1)])
    with torch.no_grad():
        got = model(**batch).embeddings
        expected = _vista_reference(model, batch["input_ids"], batch["attention_mask"], batch["pixel_values"])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert got.shape == (2, 384)
    # Image tokens change the embedding: the fused embedding is not the text embedding.
    with torch.no_grad():
        text_only = model(**processor(text=["a red circle"])).embeddings
    assert F.cosine_similarity(text_only, got[:1]).item() < 0.999


def test_fresh_bica_equals_concat_and_opened_gates_differ(minilm_path):
    torch.manual_seed(0)
    bica, processor = init_model(minilm_path, "vit-micro", fusion="bica", bica_layers=2,
                                 vision_config_overrides=TINY_VIT)
    concat_config = UniCAConfig(**{**bica.config.to_dict(), "fusion": "concat"})
    concat = UniCAModel(concat_config)
    missing, unexpected = concat.load_state_dict(bica.state_dict(), strict=False)
    assert not missing and all(key.startswith("fusion_encoder.layers.") for key in unexpected) and unexpected
    bica.eval(), concat.eval()
    batch = processor(text=["a red circle", None, "a scene"], images=[make_image(2), make_image(3), None])
    with torch.no_grad():
        torch.testing.assert_close(bica(**batch).embeddings, concat(**batch).embeddings, atol=1e-6, rtol=0)
        _open_gates(bica)
        opened = bica(**batch).embeddings
        baseline = concat(**batch).embeddings
    # Items with images change once the gates open; the text-only item never goes through Bi-CA.
    assert (opened[:2] - baseline[:2]).abs().max() > 1e-3
    torch.testing.assert_close(opened[2], baseline[2], atol=1e-6, rtol=0)


def test_mixed_batch_equals_items_one_by_one(tiny_pair):
    model = copy.deepcopy(tiny_pair[0])
    processor = tiny_pair[1]
    _open_gates(model)
    texts = ["a red circle", None, "a much longer text about a blue square painted in 1990", "only text"]
    images = [make_image(4), make_image(5), make_image(6), None]
    with torch.no_grad():
        together = model(**processor(text=texts, images=images))
        alone = [model(**processor(text=[t], images=[i])).embeddings[0] for t, i in zip(texts, images)]
    torch.testing.assert_close(together.embeddings, torch.stack(alone), atol=1e-5, rtol=0)
    # last_hidden_state / attention_mask cover the longest (fused) sequence; text-only rows are padded.
    assert together.attention_mask.shape == together.last_hidden_state.shape[:2]
    assert together.attention_mask[3].sum().item() == processor(text=["only text"])["attention_mask"].sum().item()


def test_image_only_uses_empty_text_and_get_image_features(tiny_pair):
    model, processor = tiny_pair
    image = make_image(7)
    with torch.no_grad():
        via_items = model(**processor(images=[image])).embeddings
        via_empty_text = model(**processor(text=[""], images=[image])).embeddings
        pixel_values = processor(images=[image])["pixel_values"]
        via_features = model.get_image_features(pixel_values=pixel_values).pooler_output
    torch.testing.assert_close(via_items, via_empty_text, atol=1e-6, rtol=0)
    torch.testing.assert_close(via_items, via_features, atol=1e-6, rtol=0)


def test_bica_respects_text_padding(tiny_pair):
    """Padding tokens must not leak into image tokens through Bi-CA (key padding mask)."""
    model = copy.deepcopy(tiny_pair[0])
    processor = tiny_pair[1]
    _open_gates(model, 1.0)
    image = make_image(8)
    with torch.no_grad():
        short_alone = model(**processor(text=["red"], images=[image])).embeddings[0]
        padded = model(**processor(text=["red", "a far longer text that forces padding on the first"],
                                   images=[image, image])).embeddings[0]
    torch.testing.assert_close(short_alone, padded, atol=1e-5, rtol=0)


def test_clip_vision_tower_from_local_folder(minilm_path, clip_vision_path):
    model, processor = init_model(minilm_path, clip_vision_path, fusion="bica")
    assert model.config.vision_config.model_type == "clip_vision_model"
    assert model.config.num_image_tokens == 16
    # The CLIP weights were loaded, not re-initialised.
    from transformers import CLIPVisionModel

    reference = CLIPVisionModel.from_pretrained(clip_vision_path)
    torch.testing.assert_close(model.vision_model.state_dict()["embeddings.patch_embedding.weight"],
                               reference.state_dict()["embeddings.patch_embedding.weight"])
    model.eval()
    with torch.no_grad():
        out = model(**processor(text=["a cat", None], images=[make_image(9), make_image(10)]))
    assert out.embeddings.shape == (2, 384)
    torch.testing.assert_close(out.embeddings.norm(dim=-1), torch.ones(2))
    assert out.last_hidden_state.shape[1] == 1 + 16 + processor(text=["a cat"])["input_ids"].shape[1] - 1


def test_bf16_autocast_close_to_fp32(tiny_pair):
    model, processor = tiny_pair
    batch = processor(text=["a red circle", None, "text only"], images=[make_image(11), make_image(12), None])
    with torch.no_grad():
        fp32 = model(**batch).embeddings
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(**batch).embeddings
    cosine = F.cosine_similarity(fp32, bf16.float())
    assert cosine.min().item() >= 0.99, cosine


def test_gradient_checkpointing_gives_same_gradients(minilm_path):
    torch.manual_seed(0)
    model, processor = init_model(minilm_path, "vit-micro", fusion="bica", vision_config_overrides=TINY_VIT)
    _open_gates(model)
    model.train()
    for module in model.modules():  # dropout off so both passes compute the same function
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    batch = processor(text=["a red circle", None, "text"], images=[make_image(13), make_image(14), None])

    def gradients() -> dict[str, torch.Tensor]:
        model.zero_grad()
        model(**batch).embeddings.pow(3).sum().backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    plain = gradients()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert model.fusion_encoder.layers[0].gradient_checkpointing
    checkpointed = gradients()
    model.gradient_checkpointing_disable()
    assert plain.keys() == checkpointed.keys() and len(plain) > 100
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)
    # Gates get gradients, so Bi-CA can be trained from its identity start.
    assert plain["fusion_encoder.layers.0.text_attention_gate"].abs().sum() > 0


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("fusion", "late", "fusion must be one of"),
        ("pooling", "max", "pooling must be one of"),
        ("bica_layers", -1, "bica_layers must be"),
        ("bica_heads", 5, "bica_heads must be a positive divisor"),
        ("contrastive_temperature", 0.0, "contrastive_temperature must be > 0"),
        ("bica_dropout", 1.5, "bica_dropout must be in"),
        ("max_text_length", 1, "max_text_length must be"),
        ("normalize", "yes", "normalize must be"),
        ("empty_text_ids", [], "empty_text_ids must be"),
    ],
)
def test_config_rejects_invalid_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        UniCAConfig(**{field: value})


def test_config_rejects_non_bert_vision_and_too_many_patches():
    with pytest.raises(ValueError, match="vision_config.model_type must be one of"):
        UniCAConfig(vision_config={"model_type": "bert"})
    with pytest.raises(ValueError, match="position embeddings"):
        UniCAConfig(text_config={"model_type": "bert", "max_position_embeddings": 64},
                    vision_config={"model_type": "vit", "image_size": 224, "patch_size": 16})


def test_model_input_errors(tiny_pair):
    model, processor = tiny_pair
    batch = processor(text=["a", "b"], images=[make_image(0), None])
    with pytest.raises(ValueError, match="image_mask marks 1 of 2 items"):
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
              pixel_values=torch.cat([batch["pixel_values"]] * 2), image_mask=batch["image_mask"])
    with pytest.raises(ValueError, match="needs input_ids, pixel_values or both"):
        model()
    with pytest.raises(TypeError, match="unexpected inputs"):
        model(**batch, labels=torch.tensor([1]))


def test_same_seed_gives_bica_and_concat_the_same_shared_weights(minilm_path):
    """What makes the fusion ablation fair: with one seed, Bi-CA is the only difference."""
    models = {}
    for fusion in ("concat", "bica"):
        torch.manual_seed(123)
        models[fusion], processor = init_model(minilm_path, "vit-micro", fusion=fusion,
                                               vision_config_overrides=TINY_VIT)
    concat, bica = models["concat"].state_dict(), models["bica"].state_dict()
    shared = [k for k in bica if not k.startswith("fusion_encoder.")]
    assert set(shared) == set(concat)
    for key in shared:
        torch.testing.assert_close(bica[key], concat[key], atol=0, rtol=0, msg=key)
    batch = processor(text=["a red circle", None], images=[make_image(50), make_image(51)])
    with torch.no_grad():
        torch.testing.assert_close(models["bica"].eval()(**batch).embeddings,
                                   models["concat"].eval()(**batch).embeddings, atol=1e-6, rtol=0)
